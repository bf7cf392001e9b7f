"""Cache hits with one gateway process against two on one port (GATEWAY_PROCESSES), alternating.

Starts one worker (to prime the cache), one gateway on port A and two gateway processes
sharing port B (SO_REUSEPORT), all on a private queue; then drives each port in turn with
wrk (C, one thread) posting 16 variants of the test photos, which are cache hits after the first round.
Prints one line per run and a summary (median req/s, p50) with the load average, since the
machine may be shared. Needs ``wrk`` on PATH (:mod:`perf.wrk`; Debian: apt-get install wrk).

``python -m perf.hits_by_processes --rounds 3 --seconds 8 --connections 8``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

from devtools.processes import REPO_ROOT, free_port, http_ok, start_worker
from perf import wrk
from perf.loadgen import BOUNDARY
from perf.services import delete_queues, start_gateways

PHOTOS = sorted((REPO_ROOT / "tests" / "data").glob("*.jpg"))
# More distinct images than connections: every request is a cache hit of its own. (With the three
# photos alone over 8 connections, most requests joined an identical one in flight instead.)
DISTINCT_PHOTOS = 16


def distinct_photos(work: Path) -> list[Path]:
    """DISTINCT_PHOTOS files: the test photos with a few bytes after their end (same pixels, new hash)."""
    out = []
    for i in range(DISTINCT_PHOTOS):
        source = PHOTOS[i % len(PHOTOS)]
        path = work / f"{source.stem}-{i}.jpg"
        path.write_bytes(source.read_bytes() + f"variant {i}".encode())
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "efficientnet-lite0.onnx"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hits-by-processes-"))
    queue = f"bench.hits.{uuid.uuid4().hex[:8]}"
    env = {
        "QUEUE_NAME": queue,
        "REDIS_URL": args.redis_url,
        "MODEL_PATH": args.model,
        "ORT_THREADS": 1,
        "UPLOAD_DIR": work / "uploads",
        "FEEDBACK_CSV": work / "feedback.csv",
    }
    bodies, script = wrk.prepare(distinct_photos(work), work)
    started = []
    try:
        worker = start_worker({**env, "WORKER_METRICS_PORT": free_port()}, work)
        started.append(worker)
        one_port, two_port = free_port(), free_port()
        started += start_gateways({**env, "PORT": one_port, "LOG_LEVEL": "WARNING"}, 1, work, name="one")
        started += start_gateways({**env, "PORT": two_port, "LOG_LEVEL": "WARNING"}, 2, work, name="two")
        for port in (one_port, two_port):  # prime the cache: each photo once through the worker
            deadline = time.monotonic() + 60
            while not http_ok(f"http://127.0.0.1:{port}/health/ready") and time.monotonic() < deadline:
                time.sleep(0.2)
            for body in bodies:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/predict",
                    data=body.read_bytes(),
                    headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                )
                urllib.request.urlopen(request, timeout=30).read()
        worker.terminate()  # hits only from here on: its CPU is not in the way
        gateways = {
            "1 process": [psutil.Process(started[1].pid)],
            "2 processes": [psutil.Process(p.pid) for p in started[2:]],
        }
        ports = {"1 process": one_port, "2 processes": two_port}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        for round_ in range(args.rounds):
            for name, port in ports.items():
                cpu0 = sum(sum(p.cpu_times()[:2]) for p in gateways[name])
                load = os.getloadavg()[0]
                out = wrk.run(
                    f"http://127.0.0.1:{port}/predict", bodies, script, args.connections, args.seconds
                )
                run = {"rps": out.rps, "p50_ms": out.percentiles_ms[50], "non_2xx": out.non_2xx}
                run["gateway_cores"] = (
                    sum(sum(p.cpu_times()[:2]) for p in gateways[name]) - cpu0
                ) / args.seconds
                run["load1"] = load
                results[name].append(run)
                print(
                    f"round {round_ + 1} {name}: {run['rps']:.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
                    f"gateway {run['gateway_cores']:.2f} cores, non-2xx {run['non_2xx']}, "
                    f"load average {load:.2f}",
                    flush=True,
                )
        for name, runs in results.items():
            print(
                f"{name}: median {statistics.median(r['rps'] for r in runs):.0f} req/s, "
                f"p50 {statistics.median(r['p50_ms'] for r in runs):.2f} ms over {len(runs)} runs "
                f"(wrk 1 thread, {args.connections} connections, {args.seconds} s each)"
            )
    finally:
        for process in reversed(started):
            process.terminate()
        delete_queues(queue)


if __name__ == "__main__":
    main()
