"""Measure what the Kubernetes manifests ask for: the real gateway's and worker's memory and CPU,
and how long a worker takes to drain on SIGTERM.

    PYTHONPATH=. .venv/bin/python deploy/k8s/measure.py [--seconds 20] [--clients 24]

Starts one real gateway and one real worker (EfficientNet-Lite0, ORT_THREADS=1, as in the pods)
on a queue of its own against the RabbitMQ and Redis of RABBITMQ_URL / REDIS_URL, drives them with
photos that are each a cache miss through HTTP, and samples both processes with psutil:

1. idle: RSS after start-up;
2. load: RSS peak and CPU (cores) while CLIENTS requests are in flight, with the repository's
   photos (small) and with photos upscaled to ~36 MP (just under MAX_PIXELS, the worst case a
   worker accepts);
3. drain: with the worker holding PREFETCH jobs, SIGTERM; seconds until it exits (0 = clean).

Prints one JSON object; deploy/k8s/measured.json is a run of it (the tests hold the manifests'
figures against it) and deploy/k8s/README.md quotes it. The machine is shared: the cores a process
got are what was left to it; the CPU time per answer does not depend on that.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import aiohttp
import psutil
from PIL import Image

from tests.support import rabbitmq_api
from tests.support.processes import REPO_ROOT, ServiceProcess, free_port, start_gateway, start_worker

PHOTOS = ("coffee", "chelsea", "astronaut")


def distinct_jpegs(count: int, size: tuple[int, int], quality: int = 85) -> list[bytes]:
    """Distinct JPEGs cut from the real photos and resized to ``size``."""
    sources = [Image.open(REPO_ROOT / "tests" / "data" / f"{n}.jpg").convert("RGB") for n in PHOTOS]
    bodies = []
    for i in range(count):
        image = sources[i % 3]
        dx, dy = (i // 3) % 40, (i // 120) % 40
        crop = image.crop((dx, dy, image.width - 40 + dx, image.height - 40 + dy)).resize(size)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=quality)
        bodies.append(buffer.getvalue())
    return bodies


def unique(jpeg: bytes, n: int) -> bytes:
    """The same picture with a JPEG comment segment of its own: a new SHA-256, so a cache miss."""
    comment = f"k8s-measure {n} {uuid.uuid4().hex}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


class Sampler:
    """Samples RSS and CPU time of one process (and its threads) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def __enter__(self) -> Self:
        self._cpu0, self._t0 = self.cpu_seconds(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cores = (self.cpu_seconds() - self._cpu0) / (time.monotonic() - self._t0)
        self._stop.set()
        self._thread.join()


async def drive(
    url: str, bodies: list[bytes], clients: int, seconds: float, stop: threading.Event | None = None
) -> dict[str, int]:
    """CLIENTS concurrent uploads of distinct bodies for SECONDS (or until STOP); answers by status."""
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    next_body = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            n = next(next_body)
            body = unique(bodies[n % len(bodies)], n)
            try:
                async with session.post(
                    f"{url}/predict", data=body, headers={"Content-Type": "image/jpeg"}
                ) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError):
                status = "connection error"
            statuses[status] = statuses.get(status, 0) + 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return statuses


def load_phase(
    gateway: ServiceProcess, worker: ServiceProcess, bodies: list[bytes], clients: int, seconds: float
) -> dict[str, object]:
    with Sampler(gateway.pid) as g, Sampler(worker.pid) as w:
        statuses = asyncio.run(drive(gateway.base_url, bodies, clients, seconds))  # type: ignore[attr-defined]
    mib = 1024 * 1024
    answered = statuses.get("200", 0)

    def figures(sampler: Sampler) -> dict[str, float]:
        return {
            "rss_peak_mib": round(max(sampler.rss) / mib, 1),
            "rss_median_mib": round(statistics.median(sampler.rss) / mib, 1),
            # Cores used: bounded by what the shared machine left us. CPU time per answer is not.
            "cpu_cores": round(sampler.cores, 2),
            "cpu_ms_per_answer": round(sampler.cores * seconds * 1000 / max(answered, 1), 2),
        }

    return {
        "answers": statuses,
        "answers_per_s": round(answered / seconds, 1),
        "gateway": figures(g),
        "worker": figures(w),
    }


def drain_phase(
    gateway: ServiceProcess, worker: ServiceProcess, bodies: list[bytes], prefetch: int, metrics_port: int
) -> dict[str, object]:
    """Fill the worker's hands (PREFETCH jobs), SIGTERM it, time until it exits."""
    stop_load = threading.Event()

    def background_load() -> None:
        # More clients than PREFETCH, so the worker holds a full PREFETCH when the signal comes.
        asyncio.run(drive(gateway.base_url, bodies, prefetch * 2, 60, stop_load))  # type: ignore[attr-defined]

    load = threading.Thread(target=background_load, daemon=True)
    load.start()
    in_hand = 0.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and in_hand < prefetch:
        in_hand = jobs_in_hand(metrics_port)
        time.sleep(0.02)
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(timeout=120)
    drain_s = time.monotonic() - started
    stop_load.set()
    load.join()
    return {"jobs_in_hand_at_sigterm": int(in_hand), "drain_s": round(drain_s, 2), "exit_code": code}


def jobs_in_hand(metrics_port: int) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("classifier_jobs_in_hand "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def run_round(name: str, bodies: list[bytes], args: argparse.Namespace, log_dir: Path) -> dict[str, object]:
    queue = f"k8s-measure.{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    prefetch = 16
    env: dict[str, object] = {
        "RABBITMQ_URL": os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"),
        "QUEUE_NAME": queue,
        "MODEL_PATH": REPO_ROOT / "models" / "efficientnet-lite0.onnx",
        "UPLOAD_DIR": log_dir / "uploads",
        "FEEDBACK_CSV": log_dir / "feedback" / "feedback.csv",
        "PORT": free_port(),
        "WORKER_METRICS_PORT": metrics_port,
        "ORT_THREADS": 1,
        "PREFETCH": prefetch,
        "REQUEST_TIMEOUT_S": 30,
        "CACHE_TTL_S": 60,
    }
    worker = start_worker(env, log_dir, f"worker-{name}")
    gateway = start_gateway(env, log_dir, f"gateway-{name}")
    try:
        time.sleep(1)
        idle = {
            "gateway_rss_mib": round(psutil.Process(gateway.pid).memory_info().rss / 2**20, 1),
            "worker_rss_mib": round(psutil.Process(worker.pid).memory_info().rss / 2**20, 1),
        }
        load = load_phase(gateway, worker, bodies, args.clients, args.seconds)
        drain = drain_phase(gateway, worker, bodies, prefetch, metrics_port)
        return {"idle": idle, "load": load, "drain": drain}
    finally:
        worker.kill()
        gateway.terminate()
        for q in (queue, f"{queue}.dead"):
            rabbitmq_api.delete_queue(q)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="load time per round")
    parser.add_argument("--clients", type=int, default=24, help="concurrent uploads")
    args = parser.parse_args()
    results: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "clients": args.clients,
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory(prefix="k8s-measure-") as tmp:
        log_dir = Path(tmp)
        results["photos_320x240"] = run_round("small", distinct_jpegs(60, (320, 240)), args, log_dir)
        # ~36 MP: the largest images a worker decodes (MAX_PIXELS = 40 M); few, they are slow.
        results["photos_36mp"] = run_round(
            "large", distinct_jpegs(6, (7000, 5200), quality=70), args, log_dir
        )
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
