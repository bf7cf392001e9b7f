"""Stress points with locust (its own subprocess, headless): users x worker layouts.

For each point: flush the Redis db, start the workers, run locust for a few
seconds with every user spawned at once (``--reset-stats`` drops the spawn),
read its CSV. Users have no think time (``--think-time 0``) and honour
``Retry-After`` on a 503, so a point shows the capacity of the system, not of
the users. A point beyond the queue bound (``QUEUE_MAX_LENGTH`` + what the
workers hold) shows where the gateway sheds load with 503 instead of queueing.

``python -m perf.stress`` runs it alone (after ``python -m perf.bench`` made the models).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.settings import Settings
from perf.paths import FP32_MODEL, INT8_MODEL, PERF_DIR, REPO_ROOT, RUN_DIR
from perf.pipeline import Layout
from perf.results import StressPoint, to_dict
from perf.services import RABBITMQ_PORT, REDIS_PORT, Stack, ready_messages
from perf.stats import CpuMeter, listening_pids, percentile

PREDICT_ROWS = ("POST /predict", "POST / (form upload)")
USERS = (1, 8, 32, 128)


def _rows(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _failures(prefix: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"{prefix}_failures.csv", newline="") as f:
            for row in csv.DictReader(f):
                out[row["Error"][:80]] = out.get(row["Error"][:80], 0) + int(row["Occurrences"])
    except FileNotFoundError:
        pass
    return out


def run_point(stack: Stack, users: int, seconds: float, photo_dir: Path, out_dir: Path) -> StressPoint:
    """One locust run against the running stack; numbers from its CSV, its own CPU from wait4."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / f"locust-u{users}"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(PERF_DIR / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds:g}s",
        "--reset-stats",
        "--stop-timeout",
        "2",
        "--host",
        stack.base_url,
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--photo-dir",
        str(photo_dir),
        "--photo-pool",
        "distinct",
        "--think-time",
        "0",
        "--loglevel",
        "WARNING",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    log = open(f"{prefix}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    depths: list[int] = []
    meter = CpuMeter(
        {
            "gateway": [stack.gateway.pid] if stack.gateway else [],
            "workers": [w.pid for w in stack.workers],
            "rabbitmq": listening_pids(RABBITMQ_PORT),
            "redis": listening_pids(REDIS_PORT),
            "locust": [proc.pid],
        }
    )
    meter.start()
    cpu: dict[str, float] = {}
    while True:  # sample the queue depth while the point runs; wait4 gives locust's own CPU
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(1.0)
        if not cpu and time.monotonic() - started >= seconds:  # locust's run is over: close the window
            cpu = meter.stop()
        depth = ready_messages(stack.queue)
        if depth is not None:
            depths.append(depth)
    log.close()
    if proc.returncode not in (0, 1):  # locust exits 1 when any request failed
        raise RuntimeError(f"locust failed ({proc.returncode}); see {prefix}.log")
    rows = _rows(prefix)
    predict = [rows[n] for n in PREDICT_ROWS if n in rows]
    total = rows.get("Aggregated", {})
    n_pred = sum(int(r["Request Count"]) for r in predict)
    # The API client's percentiles (the page's POST / is the same path plus HTML).
    api = rows.get("POST /predict") or (predict[0] if predict else {})
    requests = int(total.get("Request Count", 0) or 0)
    failures = int(total.get("Failure Count", 0) or 0)
    errors = _failures(prefix)
    return StressPoint(
        users=users,
        seconds=seconds,
        # Successful predictions only (locust's Requests/s counts failures too).
        predictions_per_s=sum(
            float(r["Requests/s"]) * (1 - int(r["Failure Count"]) / max(1, int(r["Request Count"])))
            for r in predict
        ),
        requests_per_s=float(total.get("Requests/s", 0) or 0),
        p50_ms=float(api.get("50%", "nan") or "nan"),
        p95_ms=float(api.get("95%", "nan") or "nan"),
        failure_rate=failures / requests if requests else 0.0,
        predictions=n_pred,
        failures=errors,
        status_503=sum(n for e, n in errors.items() if "503" in e),
        queue_depth_max=max(depths, default=0),  # ready messages, sampled every second
        queue_depth_p50=percentile([float(d) for d in depths], 50) if depths else 0.0,
        locust_cpu_cores=round((usage.ru_utime + usage.ru_stime) / (seconds + 2), 3),
        cpu_cores=cpu,
    )


def stress(
    stack: Stack,
    model: Path,
    layouts: list[Layout],
    users: list[int],
    *,
    seconds: float,
    photo_dir: Path,
    max_batch: int,
    out_dir: Path,
) -> list[StressPoint]:
    """Every (layout, users) point; workers restarted per layout, Redis flushed per point."""
    out_dir.mkdir(parents=True, exist_ok=True)
    points = []
    for layout in layouts:
        stack.flush_redis()
        stack.start_workers(model, layout.workers, layout.threads, max_batch, prefetch=2 * max_batch)
        try:
            for u in users:
                stack.wait_idle()  # what the previous point left in the queue must not count here
                stack.flush_redis()  # every point on cache misses; the model announcement is kept
                point = run_point(stack, u, seconds, photo_dir, out_dir / layout.name)
                point.layout = layout.name
                points.append(point)
                print(
                    f"  stress {layout.name} {u:>4} users: {point.predictions_per_s:6.1f} pred/s  "
                    f"p50 {point.p50_ms:6.0f} ms  p95 {point.p95_ms:6.0f} ms  "
                    f"fail {point.failure_rate * 100:5.1f}%  503s {point.status_503}  "
                    f"queue max {point.queue_depth_max}",
                    flush=True,
                )
            stack.wait_idle()
        finally:
            stack.stop_workers()
    return points


def shed_point(settings: Settings, layout: Layout, max_batch: int) -> tuple[int, int]:
    """Requests the system holds before the queue refuses: what workers prefetch plus the queue bound.
    Both count messages, so: at least that many (a job a message), at most MAX_JOBS_PER_MESSAGE times
    as many (every message a full job batch)."""
    messages = layout.workers * 2 * max_batch + settings.queue_max_length
    return messages, messages * settings.max_jobs_per_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="serve the int8 model (default fp32)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--users", type=int, nargs="+", default=[*USERS, 384])
    args = parser.parse_args()
    from perf import photos

    photo_dir = photos.make_pool(1500)[0].parent
    run_dir = RUN_DIR / f"stress-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(run_dir)
    try:
        stack.start_gateway()
        points = stress(
            stack,
            INT8_MODEL if args.int8 else FP32_MODEL,
            [Layout(1, 2), Layout(2, 1)],
            args.users,
            seconds=args.seconds,
            photo_dir=photo_dir,
            max_batch=8,
            out_dir=run_dir,
        )
    finally:
        stack.close()
    print(json.dumps([to_dict(p) for p in points], indent=1))


if __name__ == "__main__":
    main()
