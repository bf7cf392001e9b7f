"""Scale-out on one host: cache misses with 1, 2, ... workers, and what one broker node and one gateway carry.

One real gateway and N real workers (``ORT_THREADS=1`` each, EfficientNet-Lite0 by default: the light
model leaves the serving path's own costs in sight) on a private queue (``bench.scale.<uuid>``,
deleted at the end) and a Redis db of their own, flushed before each point so every photo is a miss.
:mod:`perf.loadgen` drives each point closed-loop at ``2 x workers x MAX_BATCH`` clients (at least 16),
enough to keep every worker's prefetch full. Over each window, psutil's CPU time of every process on the
path: the workers, the gateway, the RabbitMQ node listening on 5672 (its ``beam.smp``: the node runs
with scheduler busy-waiting off, so its CPU time is work done) and Redis. Divided by the requests
answered, that is each part's CPU per request; the broker's, net of what it used idle before the first
point (other users of the shared node), gives "one RabbitMQ node takes ~X jobs/s per core" (a job is a
request message into the quorum queue with its confirm, plus the reply), and the gateway's "one gateway
process takes ~Y misses/s per core" (one process is one event loop: one core at most).

Worker counts run in alternating order over ``--rounds`` (1, 2, 3 then 3, 2, 1), since the shared
host's speed drifts; each count keeps its best round.

    python -m perf.scale_out --seconds 10 --rounds 2 --out perf/results/scale_out/<stamp>.json

prints one JSON line (:class:`perf.results.ScaleOut`) last; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

from perf import photos, pipeline
from perf.paths import REPO_ROOT, RUN_DIR
from perf.pipeline import idle_cores
from perf.report import scale_out_text
from perf.results import ScaleOut, ScalePoint, to_dict
from perf.services import Stack, management_get
from perf.stats import cpu_ms_per_request

LITE0 = REPO_ROOT / "models" / "efficientnet-lite0.onnx"
POOL_SIZE = 1500  # distinct photos; Redis is flushed before each point, so a point may use them all
PARTS = ("workers", "gateway", "rabbitmq", "redis")


def log(text: str) -> None:
    print(f"[scale-out {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rabbitmq_node() -> tuple[str, int]:
    """The node behind the management API (the one on 5672) and the cores its Erlang VM sees."""
    nodes = management_get("nodes")
    assert isinstance(nodes, list) and nodes, f"no RabbitMQ node in the management API: {nodes!r}"
    node = nodes[0]
    return str(node["name"]), int(node.get("processors", 0))


def queue_type(name: str) -> str:
    info = management_get(f"queues/%2F/{urllib.parse.quote(name, safe='')}")
    return str(info.get("type", "?")) if isinstance(info, dict) else "?"


def measure_point(
    stack: Stack, photo_dir: Path, workers: int, *, max_batch: int, seconds: float, warmup: float, round_: int
) -> ScalePoint:
    """Start ``workers`` workers on a flushed cache, drive them at saturation, stop them."""
    stack.stop_workers()
    stack.flush_redis()
    stack.start_workers(LITE0, workers, 1, max_batch, prefetch=2 * max_batch)
    concurrency = max(16, 2 * workers * max_batch)
    load = load_avg()
    run = pipeline.drive(
        stack, photo_dir, first=0, count=POOL_SIZE, concurrency=concurrency, seconds=seconds, warmup=warmup
    )
    stack.stop_workers()
    rps = run.rps_window or 0.0  # answers counted in the window, like the CPU (not the burst rate)
    return ScalePoint(
        round=round_,
        workers=workers,
        concurrency=concurrency,
        seconds=seconds,
        requests=round(rps * seconds),
        rps=round(rps, 2),
        p50_ms=round(run.latency_ms.p50, 1),
        p95_ms=round(run.latency_ms.p95 or float("nan"), 1),
        statuses=run.statuses or {},
        cpu_cores=run.cpu_cores,
        cpu_ms_per_request=cpu_ms_per_request(run.cpu_cores, rps, PARTS),
        load_avg=load,
        wrapped=bool(run.wrapped),
    )


def run(
    photo_dir: Path,
    *,
    counts: list[int],
    rounds: int,
    seconds: float,
    warmup: float,
    max_batch: int,
    run_dir: Path,
) -> ScaleOut:
    """Every worker count in alternating order for ``rounds`` rounds, then the per-job costs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    before = load_avg()
    node, processors = rabbitmq_node()
    stack = Stack(run_dir, queue=f"bench.scale.{uuid.uuid4().hex[:8]}")
    points: list[ScalePoint] = []
    try:
        stack.flush_redis()
        stack.start_gateway()
        kind = queue_type(stack.queue)
        idle = idle_cores(3.0)
        log(f"node {node} ({processors} cores), {kind} queue {stack.queue}; idle {idle}; load {before}")
        for i in range(1, rounds + 1):
            for workers in counts if i % 2 else list(reversed(counts)):
                p = measure_point(
                    stack, photo_dir, workers, max_batch=max_batch, seconds=seconds, warmup=warmup, round_=i
                )
                points.append(p)
                log(
                    f"round {i}, {workers} worker(s): {p.rps:.1f} req/s, p50 {p.p50_ms:.0f} ms, "
                    f"p95 {p.p95_ms:.0f} ms, {p.statuses}; CPU ms/request {p.cpu_ms_per_request}; "
                    f"cores {p.cpu_cores}; load {p.load_avg}"
                )
    finally:
        stack.close()
    broker = statistics.median(
        cpu_ms_per_request(p.cpu_cores, p.rps, ["rabbitmq"], idle)["rabbitmq"] for p in points if p.rps > 0
    )
    gateway = statistics.median(p.cpu_ms_per_request["gateway"] for p in points if p.rps > 0)
    return ScaleOut(
        timestamp=stamp,
        model=str(LITE0.relative_to(REPO_ROOT)),
        threads=1,
        max_batch=max_batch,
        queue=stack.queue,
        queue_type=kind,
        rabbitmq_node=node,
        rabbitmq_processors=processors,
        idle_cores=idle,
        points=points,
        best_rps={str(n): max(p.rps for p in points if p.workers == n) for n in counts},
        rabbitmq_ms_per_job=round(broker, 3),
        gateway_ms_per_miss=round(gateway, 3),
        rabbitmq_jobs_per_core=round(1000 / broker) if broker > 0 else float("nan"),
        gateway_misses_per_core=round(1000 / gateway) if gateway > 0 else float("nan"),
        load_avg_before=before,
        load_avg_after=load_avg(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo-dir", type=Path, help="distinct photos (default: perf.photos' pool)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3], help="worker counts")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded warm-up before each window")
    parser.add_argument("--max-batch", type=int, default=8, help="the workers' MAX_BATCH")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    photo_dir = args.photo_dir or photos.make_pool(POOL_SIZE)[0].parent
    run_dir = RUN_DIR / f"scale-out-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run(
        photo_dir,
        counts=args.workers,
        rounds=args.rounds,
        seconds=args.seconds,
        warmup=args.warmup,
        max_batch=args.max_batch,
        run_dir=run_dir,
    )
    log(scale_out_text(result))
    text = json.dumps(to_dict(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(to_dict(result), indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
