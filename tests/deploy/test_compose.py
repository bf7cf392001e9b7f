"""docker-compose.yml as Compose itself resolves it (`config`): the defaults, given only the
three passwords it requires."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from common.settings import Settings
from tests.deploy.conftest import (
    BUILT,
    ENV_EXAMPLE,
    LONG_RUNNING,
    SECRETS,
    SECRETS_TEXT,
    SERVICES,
    compose_command,
    compose_config,
    compose_strings,
    compose_variables,
    depends_on,
    environment,
    mounts,
    ports,
    raw_compose,
    run_compose_config,
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


def test_config_is_valid_with_only_the_passwords_set(tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    env_file.write_text(SECRETS_TEXT)
    result = run_compose_config(env_file, None, "-q")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # e.g. an unset variable without default


@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_config_fails_clearly_without_a_password(tmp_path: Path, missing: str, how: str) -> None:
    env_file = tmp_path / "partial.env"
    env_file.write_text(
        "".join(
            f"{k}={'' if k == missing else v}\n" for k, v in SECRETS.items() if how == "empty" or k != missing
        )
    )
    result = run_compose_config(env_file, None, "-q")
    assert result.returncode != 0, f"compose accepted a stack without {missing}"
    assert f"set {missing} in .env (see .env.example)" in result.stderr, result.stderr


def test_env_example_alone_does_not_start_anything(tmp_path: Path) -> None:
    """Copied unedited, .env.example names the passwords but sets none: Compose refuses."""
    result = run_compose_config(ENV_EXAMPLE, None, "-q")
    assert result.returncode != 0 and "(see .env.example)" in result.stderr, result.stderr


def test_the_five_services(services: dict[str, Any]) -> None:
    assert {name for name, service in services.items() if not service.get("profiles")} == SERVICES


def test_the_cluster_profile_is_three_clustered_rabbitmq_nodes(
    services: dict[str, Any], tmp_path: Path
) -> None:
    nodes = {name: service for name, service in services.items() if "cluster" in service.get("profiles", [])}
    assert set(nodes) == {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
    cookies = set()
    for name, node in nodes.items():
        assert node["hostname"] == name and node["image"] == services["rabbitmq"]["image"]
        assert node.get("healthcheck") and node.get("restart") == "unless-stopped", name
        assert all(p.host_ip == "127.0.0.1" for p in ports(node)), name
        conf = [m for m in mounts(node) if m.target == "/etc/rabbitmq/conf.d/20-cluster.conf"]
        assert conf and conf[0].read_only and "classic_config" in Path(conf[0].source).read_text(), name
        env = environment(node)
        assert env["RABBITMQ_CTL_ERL_ARGS"] in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"], name
        cookies.add(env["RABBITMQ_CTL_ERL_ARGS"])
    assert len(cookies) == 1 and next(iter(cookies)).startswith("-setcookie "), cookies
    for name in ("rabbitmq-2", "rabbitmq-3"):  # they join rabbitmq-1 once it runs
        assert depends_on(nodes[name]) == {"rabbitmq-1": "service_healthy"}
    # The override file points the gateway and the workers at all three.
    env_file = tmp_path / "secrets.env"
    env_file.write_text(SECRETS_TEXT)
    result = subprocess.run(
        [
            *compose_command(),
            "--env-file",
            str(env_file),
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.cluster.yml",
            "--profile",
            "cluster",
            "config",
        ],
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in compose_variables()},
    )
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]
    for name in ("gateway", "classifier"):
        addresses = Settings(rabbitmq_url=environment(merged[name])["RABBITMQ_URL"]).rabbitmq_addresses
        assert [urlsplit(a).hostname for a in addresses] == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"], name
        assert all(depends_on(merged[name]).get(node) == "service_healthy" for node in nodes), name


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name


def test_converter_is_one_shot(services: dict[str, Any]) -> None:
    assert services["converter"].get("restart", "no") == "no"


def test_nothing_starts_before_what_it_needs(services: dict[str, Any]) -> None:
    healthy = {"rabbitmq": "service_healthy", "redis": "service_healthy"}
    assert depends_on(services["gateway"]) == healthy
    assert depends_on(services["classifier"]) == {**healthy, "converter": "service_completed_successfully"}


def test_broker_ports_are_published_on_localhost_only(services: dict[str, Any]) -> None:
    published = ports(services["rabbitmq"])
    assert {p.target for p in published} == {"5672", "15672"}
    assert all(p.host_ip == "127.0.0.1" for p in published), published
    assert all(p.host_ip == "127.0.0.1" for p in ports(services["redis"]))


def test_gateway_is_on_localhost_by_default_and_the_bind_address_is_configurable(
    services: dict[str, Any], tmp_path: Path
) -> None:
    assert ports(services["gateway"]) == [ports(services["gateway"])[0]]
    port = ports(services["gateway"])[0]
    assert (port.host_ip, port.published, port.target) == ("127.0.0.1", "8000", "8000")
    opened = compose_config(tmp_path, "GATEWAY_BIND=0.0.0.0\nGATEWAY_PORT=8080\n")["services"]
    port = ports(opened["gateway"])[0]
    assert (port.host_ip, port.published) == ("0.0.0.0", "8080")
    assert all(p.host_ip == "127.0.0.1" for p in ports(opened["rabbitmq"]))


def test_classifier_scales(services: dict[str, Any], tmp_path: Path) -> None:
    classifier = services["classifier"]
    assert "container_name" not in classifier
    assert not classifier.get("ports"), "a fixed host port would stop --scale"
    assert int(classifier["deploy"]["replicas"]) == 2
    scaled = compose_config(tmp_path, "WORKERS=5\n")["services"]["classifier"]
    assert int(scaled["deploy"]["replicas"]) == 5


def test_model_volume_is_written_by_the_converter_and_read_only_for_workers(services: dict[str, Any]) -> None:
    assert [(m.source, m.target, m.read_only) for m in mounts(services["classifier"])] == [
        ("models", "/models", True)
    ]
    assert [(m.source, m.target, m.read_only) for m in mounts(services["converter"])] == [
        ("models", "/models", False)
    ]


def test_workers_serve_the_file_the_converter_writes(services: dict[str, Any], tmp_path: Path) -> None:
    assert environment(services["classifier"])["MODEL_PATH"] == "/models/resnet50.onnx"
    assert environment(services["converter"])["MODEL"] == "resnet50"
    lite = compose_config(tmp_path, "MODEL=efficientnet-lite0-int8\n")["services"]
    assert environment(lite["classifier"])["MODEL_PATH"] == "/models/efficientnet-lite0-int8.onnx"
    assert environment(lite["converter"])["MODEL"] == "efficientnet-lite0-int8"
    assert lite["converter"]["build"]["args"]["MODEL"] == "efficientnet-lite0-int8"


def test_gateway_keeps_uploads_and_feedback_in_named_volumes(
    config: dict[str, Any], services: dict[str, Any]
) -> None:
    gateway = services["gateway"]
    env = environment(gateway)
    by_target = {m.target: m for m in mounts(gateway)}
    assert env["UPLOAD_DIR"] in by_target
    assert str(Path(env["FEEDBACK_CSV"]).parent) in by_target
    for m in by_target.values():
        assert m.source in config["volumes"] and not m.read_only, m
    assert env["HOST"] == "0.0.0.0"


def test_services_use_a_broker_user_other_than_guest(services: dict[str, Any], tmp_path: Path) -> None:
    broker = environment(services["rabbitmq"])
    user, password = broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"]
    assert user != "guest" and password == SECRETS["RABBITMQ_PASSWORD"]
    for name in ("gateway", "classifier"):
        url = urlsplit(environment(services[name])["RABBITMQ_URL"])
        assert (url.username, url.password, url.hostname, url.port) == (user, password, "rabbitmq", 5672)
    custom = compose_config(tmp_path, "RABBITMQ_USER=alice\nRABBITMQ_PASSWORD=s3cret\n")["services"]
    assert environment(custom["rabbitmq"])["RABBITMQ_DEFAULT_USER"] == "alice"
    assert urlsplit(environment(custom["classifier"])["RABBITMQ_URL"]).password == "s3cret"


def test_gateway_and_workers_declare_the_same_queue(services: dict[str, Any]) -> None:
    gateway, classifier = environment(services["gateway"]), environment(services["classifier"])
    for var in (
        "RABBITMQ_URL",
        "QUEUE_NAME",
        "QUEUE_MAX_LENGTH",
        "DELIVERY_LIMIT",
        "QUORUM_GROUP_SIZE",
        "CACHE_TTL_S",
    ):
        assert var in gateway and gateway[var] == classifier.get(var), var


def test_gateway_and_workers_log_in_to_the_same_redis_as_different_users(services: dict[str, Any]) -> None:
    gateway = urlsplit(environment(services["gateway"])["REDIS_URL"])
    worker = urlsplit(environment(services["classifier"])["REDIS_URL"])
    assert (gateway.hostname, gateway.port, gateway.path) == (worker.hostname, worker.port, worker.path)
    assert (gateway.hostname, gateway.port) == ("redis", 6379)
    assert (gateway.username, gateway.password) == ("gateway", SECRETS["REDIS_GATEWAY_PASSWORD"])
    assert (worker.username, worker.password) == ("worker", SECRETS["REDIS_WORKER_PASSWORD"])


def test_redis_never_runs_open(services: dict[str, Any]) -> None:
    command = [str(part) for part in services["redis"]["command"]]
    assert "--protected-mode" not in command
    # The default (password-less) user is switched off and stripped of every right.
    at = command.index("default")
    assert command[at - 1] == "--user" and command[at + 1 : at + 4] == ["off", "resetpass", "-@all"]
    assert "--maxmemory" in command and "allkeys-lru" in command


def test_every_setting_reaches_a_service(services: dict[str, Any]) -> None:
    """Each field of common.settings is set, or passed through from .env, for a service."""
    given = set(environment(services["gateway"])) | set(environment(services["classifier"]))
    missing = {f.upper() for f in Settings.__dataclass_fields__} - given
    assert not missing, f"settings compose does not pass on: {sorted(missing)}"


def test_images_are_built_from_the_repository_root(services: dict[str, Any]) -> None:
    repo = Path(__file__).resolve().parents[2]
    for name in BUILT:
        build = services[name]["build"]
        assert Path(build["context"]).resolve() == repo, name
        assert build["dockerfile"] == f"{name}/Dockerfile", name
        assert build.get("target") == "runtime", name


# --- .env.example ------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_documents_every_variable_of_the_compose_file() -> None:
    used, documented = compose_variables(), set(env_example())
    assert not used - documented, f"not in .env.example: {sorted(used - documented)}"
    assert not documented - used, f"in .env.example but unused: {sorted(documented - used)}"


def test_env_example_values_are_the_defaults(config: dict[str, Any], tmp_path: Path) -> None:
    """Copying .env.example to .env (and setting its passwords) changes nothing: what it
    shows is what runs without it."""
    assert compose_config(tmp_path, ENV_EXAMPLE.read_text() + SECRETS_TEXT, required_env=False) == config


def test_no_variable_lacks_a_default() -> None:
    bare = [
        v for text in compose_strings() for v in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    ]
    assert not bare, f"variables without a default: {bare}"


def test_only_passwords_are_required_and_none_has_a_default() -> None:
    """A password either must be set (${VAR:?...}) or is not a variable; never a fallback."""
    required = {v for text in compose_strings() for v in re.findall(r"\$\{([A-Za-z_]\w*):\?", text)}
    assert required == set(SECRETS)
    with_default = {v for text in compose_strings() for v in re.findall(r"\$\{([A-Za-z_]\w*):?-", text)}
    assert not {v for v in with_default if "PASSWORD" in v}, with_default


# --- the converter's one-shot script, run with a stand-in for python --------------------

STUB_PYTHON = """#!/bin/sh
# Stand-in for `python -m converter NAME [--int8] --out-dir DIR`: records its arguments
# and, unless STUB_FAIL is set, writes the files the real converter writes.
echo "$@" >> "$STUB_LOG"
[ -n "$STUB_FAIL" ] && exit 0
name="$3"; int8=""; out=""
shift 3
while [ $# -gt 0 ]; do
  case "$1" in --int8) int8=1 ;; --out-dir) out="$2"; shift ;; esac
  shift
done
echo model > "$out/$name.onnx"
[ -n "$int8" ] && echo model > "$out/$name-int8.onnx"
exit 0
"""


def run_converter_script(
    tmp_path: Path, model: str, fail: bool = False
) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    converter = raw_compose()["services"]["converter"]
    assert converter["entrypoint"][:2] == ["sh", "-ec"]
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    # Compose turns $$ into $; the script's /models becomes this test's folder.
    script = converter["command"][0].replace("$$", "$").replace("/models", str(models))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL": model, "STUB_LOG": str(log)}
    if fail:
        env["STUB_FAIL"] = "1"
    result = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, models, calls


@pytest.mark.parametrize(
    ("model", "expected_call"),
    [
        ("resnet50", "-m converter resnet50 --out-dir {models}"),
        ("resnet50-int8", "-m converter resnet50 --int8 --out-dir {models}"),
        ("efficientnet-lite0", "-m converter efficientnet-lite0 --out-dir {models}"),
        ("efficientnet-lite0-int8", "-m converter efficientnet-lite0 --int8 --out-dir {models}"),
    ],
)
def test_converter_writes_the_model_the_workers_load(tmp_path: Path, model: str, expected_call: str) -> None:
    result, models, calls = run_converter_script(tmp_path, model)
    assert result.returncode == 0, result.stderr
    assert calls == [expected_call.format(models=models)]
    assert (models / f"{model}.onnx").is_file()


def test_converter_skips_a_model_already_there(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet50.onnx").write_text("model")
    result, _, calls = run_converter_script(tmp_path, "resnet50")
    assert result.returncode == 0 and calls == []
    assert "nothing to do" in result.stdout


def test_converter_fails_when_the_model_file_is_not_written(tmp_path: Path) -> None:
    result, _, calls = run_converter_script(tmp_path, "resnet50", fail=True)
    assert result.returncode != 0 and len(calls) == 1
    assert "did not write" in result.stderr


# --- memory limits -----------------------------------------------------------------------


def memory_bytes(value: object) -> int:
    """A Compose memory size (bytes, or 512m / 1g / 1536M as v1 prints it) in bytes."""
    text = str(value).strip().lower().rstrip("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# Peak RSS measured under 16 clients with EfficientNet-Lite0 (README, "Memory limits"):
# the model and onnxruntime; ResNet50's weights (98 MB) and activations come on top.
WORKER_BASELINE_MIB = 260
RESNET50_EXTRA_MIB = 300


def test_every_long_running_service_has_a_memory_limit(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert memory_bytes(services[name].get("mem_limit", 0)) > 0, f"{name} has no memory limit"


def test_a_worker_can_afford_its_worst_decodes(services: dict[str, Any]) -> None:
    from classifier.pipeline import DECODE_THREADS
    from tests.classifier.test_decode_cost import DECODE_PEAK_BUDGET_MIB

    needed = WORKER_BASELINE_MIB + RESNET50_EXTRA_MIB + DECODE_THREADS * DECODE_PEAK_BUDGET_MIB
    assert memory_bytes(services["classifier"]["mem_limit"]) >= needed * 2**20


def test_rabbitmq_knows_its_memory_limit(services: dict[str, Any], tmp_path: Path) -> None:
    """Told its container's limit, RabbitMQ raises its memory alarm (blocking publishers: 503s)
    at 40 % of it; unaware of it, it would count the host's memory and be killed instead."""
    for config in (services, compose_config(tmp_path, "RABBITMQ_MEMORY_BYTES=2147483648\n")["services"]):
        broker = config["rabbitmq"]
        args = environment(broker)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
        assert args[:2] == ["-rabbit", "total_memory_available_override_value"]
        assert int(args[2]) == memory_bytes(broker["mem_limit"])


def test_redis_cache_fits_its_container(services: dict[str, Any]) -> None:
    command = [str(part) for part in services["redis"]["command"]]
    maxmemory = memory_bytes(command[command.index("--maxmemory") + 1])
    assert 0 < maxmemory < memory_bytes(services["redis"]["mem_limit"])


def test_compose_runs_gateway_processes_under_supervisord(services: dict[str, Any]) -> None:
    """GATEWAY_PROCESSES (default 1) gateway processes share port 8000 in the container."""
    gateway = services["gateway"]
    assert gateway["command"] == ["supervisord", "-n", "-c", "/app/gateway/supervisord.conf"]
    assert environment(gateway)["GATEWAY_PROCESSES"] == "1"
