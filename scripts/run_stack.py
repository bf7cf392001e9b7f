"""Run the gateway and N classifier workers in the foreground under supervisord.

`make run WORKERS=N` calls this after setting up the virtual environment and the
services. It writes a supervisord configuration into a private temporary folder and
runs ``supervisord -n`` on it (README, "The supervisor of `make run`"):

- a process that dies is restarted at once, and the others keep serving; RabbitMQ
  gives the jobs a killed worker held to the others (quorum queue, unacked);
- one that cannot stay up for START_SECS is retried after 1, 2, 3... s, and after
  ``--start-retries`` failures in a row it is given up (FATAL) and reported as a
  crash loop, while the rest keep serving;
- scripts/stack_events.py prints every child's log prefixed by its name, and each
  exit, restart and crash loop;
- Ctrl-C (or SIGTERM) stops everything cleanly: the gateway first, then the
  workers together, each of which finishes and acknowledges the jobs it holds.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CANDIDATES = (Path("models/resnet50.onnx"), Path("models/efficientnet-lite0.onnx"))
DEFAULT_FIRST_METRICS_PORT = 9100
# A process that dies within this many seconds of its start did not start: it is retried
# after a growing delay (supervisord: 1 s, 2 s, 3 s...), up to --start-retries times.
START_SECS = 5
DEFAULT_START_RETRIES = 4
# A worker drains the jobs it holds (at most PREFETCH, each under its deadline) on SIGTERM;
# a process still running this long after SIGTERM is killed.
WORKER_STOP_WAIT_S = 30
GATEWAY_STOP_WAIT_S = 20


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def resolve_model() -> Path:
    """MODEL_PATH if set; else a converted model in models/; else convert one now."""
    if os.environ.get("MODEL_PATH"):
        path = Path(os.environ["MODEL_PATH"])
        if not path.exists():
            sys.exit(
                f"[run] error: MODEL_PATH={path} does not exist; convert one with `python -m converter auto`"
            )
        return path
    for candidate in MODEL_CANDIDATES:
        if (REPO_ROOT / candidate).exists():
            return candidate
    say("no model in models/: converting one (ResNet50 ImageNet, or the offline fallback)")
    result = subprocess.run(
        [sys.executable, "-m", "converter", "auto"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.exit("[run] error: the converter failed; see above")
    lines = [line for line in result.stdout.splitlines() if line.startswith("MODEL_PATH=")]
    if not lines:
        sys.exit("[run] error: the converter did not say which model it wrote")
    return Path(lines[-1].split("=", 1)[1])


def print_where_to_go(env: dict[str, str]) -> None:
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    broker = urlsplit(env.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/").split(",")[0])
    say(f"page:           http://{host}:{port}/")
    say(f"REST API:       curl -F file=@tests/data/coffee.jpg http://{host}:{port}/predict")
    say(f"metrics:        http://{host}:{port}/metrics (workers: :{env['WORKER_METRICS_PORT']} and up)")
    say(
        f"RabbitMQ UI:    http://{broker.hostname}:15672/  (user {broker.username or 'guest'}, "
        f"password as in RABBITMQ_URL; queue '{env.get('QUEUE_NAME', 'classify')}')"
    )
    say("scale out:      `make worker` in another terminal (or on another host), Ctrl-C here stops all")


def _ini(value: object) -> str:
    """A value for supervisord's configuration: it expands %(name)s, so % is doubled."""
    return str(value).replace("%", "%%")


def supervisord_conf(
    rundir: Path,
    workers: int,
    first_metrics_port: int,
    start_retries: int,
    python: str = sys.executable,
    gateway_processes: int = 1,
) -> str:
    """The whole supervisord configuration of one stack (its files live in ``rundir``)."""
    python_cmd = shlex.quote(python)
    socket = rundir / "supervisor.sock"
    password = secrets.token_hex(16)  # for supervisorctl; the file is readable by its owner only
    common = f"""directory={_ini(REPO_ROOT)}
autostart=true
autorestart=true
startsecs={START_SECS}
startretries={start_retries}
stopsignal=TERM
redirect_stderr=true
stdout_logfile=NONE
stdout_events_enabled=true
"""
    sections = [
        f"""[supervisord]
nodaemon=true
logfile={_ini(rundir / "supervisord.log")}
pidfile={_ini(rundir / "supervisord.pid")}
childlogdir={_ini(rundir)}
loglevel=info
user={_ini(pwd.getpwuid(os.getuid()).pw_name)}

[unix_http_server]
file={_ini(socket)}
chmod=0700
username=run
password={password}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{_ini(socket)}
username=run
password={password}

[eventlistener:events]
command={python_cmd} scripts/stack_events.py
directory={_ini(REPO_ROOT)}
events=PROCESS_LOG,PROCESS_STATE
buffer_size=10000
priority=1
autorestart=true
stderr_logfile=/dev/stdout
stderr_logfile_maxbytes=0
environment=RUN_STACK_CONF="{_ini(rundir / "supervisord.conf")}"
""",
        # Started after the workers, stopped before them: no new jobs while they drain.
        # GATEWAY_PROCESSES > 1: that many on one port (SO_REUSEPORT), gateway-0, gateway-1...,
        # each with its own reply queue; one that dies is restarted while the others serve.
        f"""[program:gateway]
command={python_cmd} -m gateway
process_name={"gateway" if gateway_processes == 1 else "gateway-%(process_num)d"}
numprocs={gateway_processes}
environment=GATEWAY_PROCESSES="{gateway_processes}"
priority=200
stopwaitsecs={GATEWAY_STOP_WAIT_S}
{common}""",
    ]
    names = [f"worker-{i}" for i in range(1, workers + 1)]
    for i, name in enumerate(names):
        sections.append(f"""[program:{name}]
command={python_cmd} -m classifier
environment=WORKER_METRICS_PORT="{first_metrics_port + i}"
priority=100
stopwaitsecs={WORKER_STOP_WAIT_S}
{common}""")
    # One group: Ctrl-C stops (drains) the workers together, not one after another.
    sections.append(f"[group:workers]\nprograms={','.join(names)}\npriority=100\n")
    return "\n".join(sections)


def main(workers: int, start_retries: int, gateway_processes: int = 1) -> int:
    model = resolve_model()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", MODEL_PATH=str(model))
    # Scale as processes: split the cores among the workers unless told otherwise.
    env.setdefault("ORT_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    # Workers on one host each need a metrics port of their own: N consecutive ones.
    first_metrics_port = int(env.setdefault("WORKER_METRICS_PORT", str(DEFAULT_FIRST_METRICS_PORT)))
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or shutil.which(
        "supervisord"
    )
    if supervisord is None:
        sys.exit("[run] error: supervisord is not installed: pip install -r requirements/run.txt")
    say(
        f"model {model}, {workers} worker(s) x {env['ORT_THREADS']} thread(s), "
        f"{gateway_processes} gateway process(es)"
    )

    rundir = Path(tempfile.mkdtemp(prefix="run-stack-"))
    conf = rundir / "supervisord.conf"
    conf.write_text(
        supervisord_conf(
            rundir, workers, first_metrics_port, start_retries, gateway_processes=gateway_processes
        )
    )
    conf.chmod(0o600)
    print_where_to_go(env)
    say(f"processes:      supervisorctl -c {conf} status   (restart, stop, start NAME)")
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        # Ctrl-C reaches supervisord too (same process group); a second SIGINT is harmless.
        if signum == signal.SIGINT:
            say("stopping: the gateway first, then the workers finish the jobs they hold")
        for child in children:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        # supervisord's own lines and the listener's (to /dev/stdout) come through one pipe, so a
        # redirected `make run > file` keeps them in order (a reopened file would not).
        child = subprocess.Popen(
            [supervisord, "-n", "-c", str(conf)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        children.append(child)
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        code = child.wait()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    say("stopped" if code == 0 else f"supervisord exited with {code}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    parser.add_argument(
        "--start-retries",
        type=int,
        default=DEFAULT_START_RETRIES,
        help=f"restarts of a process that dies within {START_SECS} s of its start before it "
        "is given up as a crash loop (default %(default)s)",
    )
    parser.add_argument(
        "--gateway-processes",
        type=int,
        default=int(os.environ.get("GATEWAY_PROCESSES") or "1"),
        help="gateway processes on one port, each with its own reply queue (default %(default)s)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.gateway_processes < 1:
        parser.error("--gateway-processes must be at least 1")
    sys.exit(main(args.workers, args.start_retries, args.gateway_processes))
