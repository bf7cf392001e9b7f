"""Run the gateway and N classifier workers in the foreground, their logs prefixed by name.

`make run WORKERS=N` calls this after setting up the virtual environment and
the services. Ctrl-C (or SIGTERM) stops everything cleanly: each process gets
SIGTERM, and workers finish and acknowledge the jobs they hold before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CANDIDATES = (Path("models/resnet50.onnx"), Path("models/efficientnet-lite0.onnx"))
STOP_TIMEOUT_S = 30
DEFAULT_FIRST_METRICS_PORT = 9100


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def resolve_model() -> Path:
    """MODEL_PATH if set; else a converted model in models/; else convert one now."""
    if os.environ.get("MODEL_PATH"):
        path = Path(os.environ["MODEL_PATH"])
        if not path.exists():
            sys.exit(f"[run] error: MODEL_PATH={path} does not exist; convert one with `python -m converter auto`")
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


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:<9}| ".encode()
    while line := await stream.readline():
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.flush()


async def start(name: str, module: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, asyncio.Task]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    return process, asyncio.create_task(pump(name, process.stdout))


def print_where_to_go(env: dict[str, str]) -> None:
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    broker = urlsplit(env.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/").split(",")[0])
    say(f"page:           http://{host}:{port}/")
    say(f"REST API:       curl -F file=@tests/data/coffee.jpg http://{host}:{port}/predict")
    say(f"metrics:        http://{host}:{port}/metrics (workers: :{env['WORKER_METRICS_PORT']} and up)")
    say(f"RabbitMQ UI:    http://{broker.hostname}:15672/  (user {broker.username or 'guest'}, "
        f"password {broker.password or 'guest'}; queue '{env.get('QUEUE_NAME', 'classify')}')")
    say("scale out:      `make worker` in another terminal (or on another host), Ctrl-C here stops all")


async def main(workers: int) -> int:
    model = resolve_model()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", MODEL_PATH=str(model))
    # Scale as processes: split the cores among the workers unless told otherwise.
    env.setdefault("ORT_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    # Workers on one host each need a metrics port of their own: N consecutive ones.
    first_metrics_port = int(env.setdefault("WORKER_METRICS_PORT", str(DEFAULT_FIRST_METRICS_PORT)))
    say(f"model {model}, {workers} worker(s) x {env['ORT_THREADS']} thread(s)")

    children: dict[str, tuple[asyncio.subprocess.Process, asyncio.Task]] = {}
    children["gateway"] = await start("gateway", "gateway", env)
    for i in range(1, workers + 1):
        worker_env = dict(env, WORKER_METRICS_PORT=str(first_metrics_port + i - 1))
        children[f"worker-{i}"] = await start(f"worker-{i}", "classifier", worker_env)
    print_where_to_go(env)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exits = {name: asyncio.create_task(proc.wait()) for name, (proc, _) in children.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *exits.values()], return_when=asyncio.FIRST_COMPLETED)
    unexpected = [name for name, task in exits.items() if task in done]
    if unexpected:
        say(f"{', '.join(unexpected)} exited unexpectedly: stopping everything")
    else:
        say("stopping: workers finish the jobs they hold")

    for proc, _ in children.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*exits.values()), STOP_TIMEOUT_S)
    except TimeoutError:
        for name, (proc, _) in children.items():
            if proc.returncode is None:
                say(f"{name} did not stop in {STOP_TIMEOUT_S} s: killing it")
                proc.kill()
        await asyncio.gather(*exits.values())
    await asyncio.gather(*(pumper for _, pumper in children.values()))
    stopper.cancel()
    say("stopped")
    return 1 if unexpected else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    sys.exit(asyncio.run(main(args.workers)))
