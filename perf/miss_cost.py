"""The gateway's CPU per cache miss: psutil CPU time of the gateway process over N misses.

Starts one worker (``--model``, ORT_THREADS=1) and one gateway per ``--repo`` (default: this
checkout; give two to compare a change with the code before it, e.g. a ``git worktree`` of the
base commit), all on one private queue. Then, in alternating rounds, posts ``--requests``
unique photos (a real photo with random bytes after its end: a new sha256, the same pixels)
to each gateway from ``--clients`` closed-loop aiohttp clients, and reads the gateway's CPU
time (user + system) before and after. ``--profile DIR``: also a ``py-spy record`` (raw) of
each gateway during its first round (500 samples/s: that round's CPU figure includes py-spy's cost).

``python -m perf.miss_cost --requests 300 --rounds 3 [--repo /path/before --repo .]``
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
import psutil

from devtools.processes import REPO_ROOT, ServiceProcess, free_port, http_ok, service_env, start_worker
from perf.loadgen import BOUNDARY, multipart
from perf.profile import PY_SPY
from perf.services import delete_queues

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", type=Path, help="checkout whose gateway to measure")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "efficientnet-lite0.onnx"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--profile", type=Path, help="folder for one py-spy profile per gateway")
    args = parser.parse_args()
    repos = [repo.resolve() for repo in (args.repo or [REPO_ROOT])]

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
        started.append(start_worker({**env, "WORKER_METRICS_PORT": free_port()}, work))
        gateways = []
        for i, repo in enumerate(repos):
            port = free_port()
            gateway_env = {**env, "PORT": port, "UPLOAD_DIR": work / f"uploads{i}", "LOG_LEVEL": "WARNING"}
            process = start_gateway_from(repo, gateway_env, work, f"gateway{i}")
            started.append(process)
            gateways.append((str(repo), port, psutil.Process(process.proc.pid)))
        asyncio.run(post_misses(f"http://127.0.0.1:{gateways[0][1]}/predict", photo, 20, 2))  # warm up
        per_miss: dict[str, list[float]] = {repo: [] for repo, _, _ in gateways}
        for round_ in range(args.rounds):
            for i, (repo, port, proc) in enumerate(gateways):
                spy = None
                if args.profile and round_ == 0:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        [
                            PY_SPY,
                            "record",
                            "--format",
                            "raw",
                            "--rate",
                            "500",
                            "--pid",
                            str(proc.pid),
                            "--output",
                            str(args.profile / f"gateway{i}.txt"),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(0.5)
                times0, t0 = proc.cpu_times(), time.perf_counter()
                statuses = asyncio.run(
                    post_misses(f"http://127.0.0.1:{port}/predict", photo, args.requests, args.clients)
                )
                times1 = proc.cpu_times()
                user_ms = (times1.user - times0.user) * 1000 / args.requests
                system_ms = (times1.system - times0.system) * 1000 / args.requests
                cpu_ms = user_ms + system_ms
                elapsed = time.perf_counter() - t0
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
                per_miss[repo].append(cpu_ms)
                print(
                    f"round {round_ + 1} gateway{i} ({repo}): {cpu_ms:.2f} ms CPU per miss "
                    f"(user {user_ms:.2f}, kernel {system_ms:.2f}), "
                    f"{args.requests / elapsed:.0f} req/s, statuses {statuses}, "
                    f"load average {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        for i, (repo, values) in enumerate(per_miss.items()):
            print(
                f"gateway{i} ({repo}): median {statistics.median(values):.2f} ms CPU per miss "
                f"({', '.join(f'{v:.2f}' for v in values)})"
            )
    finally:
        for process in reversed(started):
            process.terminate()
        delete_queues(queue)


if __name__ == "__main__":
    main()
