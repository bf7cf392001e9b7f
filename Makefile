# The two commands a newcomer needs:
#   make run WORKERS=2   set up everything, then serve the page on http://127.0.0.1:8000/
#   make test            set up everything, then run the whole test suite
SHELL   := /bin/bash
VENV    ?= .venv
PY      := $(VENV)/bin/python
WORKERS ?= 2
export PYTHONPATH := $(CURDIR)

.PHONY: run test bench services system-packages models setup-run setup-dev worker lint clean cluster cluster-stop

run: setup-run services
	$(PY) scripts/run_stack.py --workers $(WORKERS)

# One more worker in the foreground, e.g. in a second terminal, to scale out.
worker: setup-run
	$(PY) -m classifier

test: setup-dev services system-packages models
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark (perf/REPORT.md): makes its own ResNet50 random-weight models once; under 10 minutes.
# system-packages: wrk, which drives its cache hits.
bench: services system-packages
	scripts/setup_venv.sh perf
	$(PY) -m perf.bench $(BENCH_ARGS)

setup-run:
	scripts/setup_venv.sh run

setup-dev:
	scripts/setup_venv.sh dev

services:
	python3 scripts/ensure_services.py

system-packages:
	scripts/ensure_system_packages.sh

# The offline model the tests serve (EfficientNet-Lite0, fp32 and int8). The run's output is kept
# beside them: the converter tests read it instead of converting the same model a second time.
models: setup-dev
	@test -f models/efficientnet-lite0-int8.onnx -a -f models/efficientnet-lite0.convert.log || { \
	  set -o pipefail && mkdir -p models && \
	  $(PY) -m converter efficientnet-lite0 --int8 --out-dir models | tee models/.convert.log.tmp && \
	  mv models/.convert.log.tmp models/efficientnet-lite0.convert.log; }

# A local three-node RabbitMQ cluster beside the machine's own node (README, "RabbitMQ cluster");
# it prints the RABBITMQ_URL that lists its nodes.
cluster:
	python3 scripts/rabbitmq_cluster.py start

cluster-stop:
	python3 scripts/rabbitmq_cluster.py stop

# Static checks (configured in pyproject.toml): ruff lint and format check over the whole tree,
# mypy strict on the services and common/, the Dockerfiles, the compose file.
lint: setup-dev system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint */Dockerfile
	# The passwords compose requires, as placeholders: only the file's shape is checked here.
	RABBITMQ_PASSWORD=x REDIS_WORKER_PASSWORD=x REDIS_GATEWAY_PASSWORD=x docker-compose -f docker-compose.yml config -q

clean:
	rm -rf $(VENV) models uploads feedback .pytest_cache
