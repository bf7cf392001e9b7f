"""The serving path's CPU per cache miss, side by side: gateway, RabbitMQ, Redis and workers.

Starts ``--workers`` workers (``--model``, ORT_THREADS=1) on a private queue, then one gateway per
``--variant``: a checkout, optionally with settings, ``PATH[:KEY=VALUE,...]`` (default: this
checkout as it is). Give two to compare, e.g. ``--variant .:IMAGE_TRANSPORT=inline --variant .``
(the image in the message, against in Redis), or a ``git worktree`` of the base commit against
``.``. In alternating rounds, each gateway gets ``--requests`` unique photos (a real photo with
random bytes after its end: a new sha256, the same pixels) from ``--clients`` closed-loop aiohttp
clients, while psutil reads the CPU time of the gateway, the workers, the RabbitMQ node (its
``beam.smp`` on 5672) and Redis; the broker's and Redis's idle CPU, measured before the first
round, is subtracted. ``--profile DIR``: also a ``py-spy record`` (raw) of each gateway during
its first round (500 samples/s: that round's figures include py-spy's cost).

``python -m perf.miss_cost --requests 400 --rounds 3 --variant .:IMAGE_TRANSPORT=inline --variant .``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from devtools.processes import REPO_ROOT, ServiceProcess, free_port, http_ok, service_env, start_worker
from perf.loadgen import BOUNDARY, multipart
from perf.pipeline import idle_cores
from perf.profile import PY_SPY
from perf.scrape import delta, mean_of, scrape
from perf.services import RABBITMQ_PORT, REDIS_PORT, delete_queues
from perf.stats import CpuMeter, cpu_ms_per_request, listening_pids

PARTS = ("gateway", "rabbitmq", "redis", "workers")

PHOTO = REPO_ROOT / "tests" / "data" / "coffee.jpg"


async def post_misses(url: str, photo: bytes, requests: int, clients: int) -> dict[int, int]:
    bodies = [multipart(photo + uuid.uuid4().bytes, "miss.jpg") for _ in range(requests)]
    statuses: dict[int, int] = {}
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while bodies:
                body = bodies.pop()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


def start_gateway_from(repo: Path, env: dict[str, object], log_dir: Path, name: str) -> ServiceProcess:
    """``python -m gateway`` of the checkout at ``repo`` (its own code, this run's services)."""
    process = ServiceProcess.__new__(ServiceProcess)
    process.name, process.log_path = name, log_dir / f"{name}.log"
    process._log = open(process.log_path, "wb")
    process.proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=repo,
        env=service_env({**env, "PYTHONPATH": repo}),
        stdout=process._log,
        stderr=subprocess.STDOUT,
    )
    process.wait_until(lambda: http_ok(f"http://127.0.0.1:{env['PORT']}/health/ready"), 60, "/health/ready")
    return process


def parse_variant(text: str) -> tuple[Path, dict[str, str]]:
    """``PATH[:KEY=VALUE,...]``: a checkout and the settings its gateway runs with."""
    path, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return Path(path).resolve(), env


def variant_name(text: str) -> str:
    path, env = parse_variant(text)
    where = "this checkout" if path == REPO_ROOT else str(path)
    return where + "".join(f" {k}={v}" for k, v in env.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="PATH[:KEY=VALUE,...] of a gateway to measure")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "efficientnet-lite0.onnx"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--profile", type=Path, help="folder for one py-spy profile per gateway")
    args = parser.parse_args()
    variants = args.variant or ["."]

    work = Path(tempfile.mkdtemp(prefix="miss-cost-"))
    queue = f"bench.miss.{uuid.uuid4().hex[:8]}"
    env = {
        "QUEUE_NAME": queue,
        "REDIS_URL": args.redis_url,
        "MODEL_PATH": args.model,
        "ORT_THREADS": 1,
        "FEEDBACK_CSV": work / "feedback.csv",
    }
    photo = PHOTO.read_bytes()
    started: list[ServiceProcess] = []
    try:
        workers = [
            start_worker({**env, "WORKER_METRICS_PORT": free_port()}, work, name=f"worker{i}")
            for i in range(args.workers)
        ]
        started.extend(workers)
        gateways = []
        for i, text in enumerate(variants):
            repo, settings = parse_variant(text)
            port = free_port()
            gateway_env = {
                **env,
                "PORT": port,
                "UPLOAD_DIR": work / f"uploads{i}",
                "LOG_LEVEL": "WARNING",
                **settings,
            }
            process = start_gateway_from(repo, gateway_env, work, f"gateway{i}")
            started.append(process)
            gateways.append((variant_name(text), port, process.proc.pid))
        for _, port, _ in gateways:  # warm up
            asyncio.run(post_misses(f"http://127.0.0.1:{port}/predict", photo, 20, 2))
        idle = idle_cores(3.0)
        print(f"idle: RabbitMQ {idle['rabbitmq']:.3f} cores, Redis {idle['redis']:.3f} cores", flush=True)
        per_miss: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in gateways}
        for round_ in range(args.rounds):
            for i, (name, port, pid) in enumerate(gateways):
                spy = start_profile(args.profile, i, pid) if args.profile and round_ == 0 else None
                meter = CpuMeter(
                    {
                        "gateway": [pid],
                        "workers": [w.proc.pid for w in workers],
                        "rabbitmq": listening_pids(RABBITMQ_PORT),
                        "redis": listening_pids(REDIS_PORT),
                    }
                )
                metrics_url = f"http://127.0.0.1:{port}/metrics"
                before = scrape(metrics_url)
                meter.start()
                t0 = time.perf_counter()
                statuses = asyncio.run(
                    post_misses(f"http://127.0.0.1:{port}/predict", photo, args.requests, args.clients)
                )
                elapsed = time.perf_counter() - t0
                cores = meter.stop()
                # A gateway of a commit before job batches has no such histogram: nan.
                per_message = mean_of(delta(scrape(metrics_url), before), "gateway_jobs_per_message")
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
                rps = args.requests / elapsed
                ms = cpu_ms_per_request(cores, rps, PARTS, idle)
                per_miss[name].append(ms)
                print(
                    f"round {round_ + 1} gateway{i} ({name}): CPU ms per miss "
                    + ", ".join(f"{part} {ms[part]:.2f}" for part in PARTS)
                    + f"; {rps:.0f} req/s, {per_message:.2f} jobs a message, statuses {statuses}, others {cores['others']:.2f} cores, "
                    f"load average {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        for i, (name, values) in enumerate(per_miss.items()):
            medians = {part: statistics.median(v[part] for v in values) for part in PARTS}
            print(
                f"gateway{i} ({name}): median CPU ms per miss "
                + ", ".join(f"{part} {medians[part]:.2f}" for part in PARTS)
            )
    finally:
        for process in reversed(started):
            process.terminate()
        delete_queues(queue)


def start_profile(folder: Path, i: int, pid: int) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [PY_SPY, "record", "--format", "raw", "--rate", "500", "--pid", str(pid),
         "--output", str(folder / f"gateway{i}.txt"), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return spy


if __name__ == "__main__":
    main()
