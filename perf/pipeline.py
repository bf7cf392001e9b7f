"""The pipeline end to end through HTTP: real gateway and worker subprocesses, a separate load generator.

Phases (each on photos the cache has not seen, unless it measures hits):

- :func:`saturation`: many clients, cache misses, one worker layout; images/s
  and latency, CPU used by every process (gateway, workers, RabbitMQ, Redis,
  load generator) and the workers' own histograms (batch size, decode, inference).
- :func:`one_client`: one client, cache misses: p50/p95 and where the time goes.
- :func:`cache_hits`: the same few photos over and over, answered from Redis.

Every phase is driven by :mod:`perf.loadgen` in a process of its own, but cache hits: those by wrk
(:mod:`perf.wrk`, C, one thread) where it is on PATH, since the Python generator's own CPU would cap
what the gateway processes show on a few shared cores.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from perf import scrape, wrk
from perf.paths import REPO_ROOT
from perf.results import Cores, LoadRun, OneClient, WorkerStats, from_dict
from perf.services import RABBITMQ_PORT, REDIS_PORT, Stack
from perf.stats import CpuMeter, listening_pids


@dataclass(frozen=True)
class Layout:
    """``workers`` processes with ``threads`` onnxruntime threads each."""

    workers: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.threads}"


def loadgen_cmd(
    url: str, photo_dir: Path, first: int, count: int, concurrency: int, seconds: float, warmup: float
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "perf.loadgen",
        "--url",
        url,
        "--photo-dir",
        str(photo_dir),
        "--first",
        str(first),
        "--count",
        str(count),
        "-c",
        str(concurrency),
        "-d",
        str(seconds),
        "-w",
        str(warmup),
    ]


def _service_pids(stack: Stack) -> dict[str, list[int]]:
    return {
        "gateway": [g.pid for g in stack.gateways],
        "workers": [w.pid for w in stack.workers],
        "rabbitmq": listening_pids(RABBITMQ_PORT),
        "redis": listening_pids(REDIS_PORT),
    }


def idle_cores(seconds: float) -> Cores:
    """RabbitMQ's and Redis's CPU with nothing of ours running: the shared services' background."""
    meter = CpuMeter({"rabbitmq": listening_pids(RABBITMQ_PORT), "redis": listening_pids(REDIS_PORT)})
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def _worker_snapshot(stack: Stack) -> scrape.Snapshot:
    return scrape.add([scrape.scrape(f"http://127.0.0.1:{p}/metrics") for p in stack.worker_metrics_ports])


def _gateway_snapshot(stack: Stack) -> scrape.Snapshot:
    return scrape.scrape(f"{stack.base_url}/metrics")


def drive(
    stack: Stack,
    photo_dir: Path,
    *,
    first: int,
    count: int,
    concurrency: int,
    seconds: float,
    warmup: float,
    path: str = "/predict",
) -> LoadRun:
    """One load run with :mod:`perf.loadgen`, plus CPU and histogram deltas over its measured window."""
    cmd = loadgen_cmd(stack.base_url + path, photo_dir, first, count, concurrency, seconds, warmup)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    meter = CpuMeter({**_service_pids(stack), "loadgen": [proc.pid]})
    time.sleep(warmup + 0.3)  # + the generator's own start-up
    meter.start()
    w0, g0 = _worker_snapshot(stack), _gateway_snapshot(stack)
    time.sleep(max(0.0, seconds - 0.6))
    cpu = meter.stop()
    w1, g1 = _worker_snapshot(stack), _gateway_snapshot(stack)
    out, _ = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result: LoadRun = from_dict(LoadRun, json.loads(out.strip().splitlines()[-1]))
    result.cpu_cores = cpu
    wd, gd = scrape.delta(w1, w0), scrape.delta(g1, g0)
    result.worker = WorkerStats(
        batch_size_mean=scrape.mean_of(wd, "classifier_batch_size"),
        decode_ms=scrape.mean_of(wd, "classifier_decode_seconds") * 1000,
        inference_ms_per_batch=scrape.mean_of(wd, "classifier_inference_seconds") * 1000,
        batch_wait_ms=scrape.mean_of(wd, "classifier_batch_wait_seconds") * 1000,
    )
    result.gateway_ms = scrape.mean_of(gd, "gateway_request_duration_seconds", f"route={path}") * 1000
    return result


def saturation(
    stack: Stack,
    model: Path,
    layout: Layout,
    *,
    max_batch: int,
    photo_dir: Path,
    first: int,
    count: int,
    seconds: float,
    warmup: float,
    concurrency: int | None = None,
) -> LoadRun:
    """Cache misses at saturation for one worker layout (workers started and stopped here); by default
    ``2 x workers x MAX_BATCH`` clients (at least 16): every worker's prefetch kept full."""
    stack.flush_redis()
    stack.start_workers(model, layout.workers, layout.threads, max_batch, prefetch=2 * max_batch)
    try:
        concurrency = concurrency or max(16, 2 * layout.workers * max_batch)
        result = drive(
            stack,
            photo_dir,
            first=first,
            count=count,
            concurrency=concurrency,
            seconds=seconds,
            warmup=warmup,
        )
    finally:
        stack.stop_workers()
    result.layout, result.max_batch = layout.name, max_batch
    return result


def redis_rtt_ms(url: str, rounds: int = 300) -> float:
    """Mean round trip of one GET of a ~1 KB value (what a cache look-up costs on the wire)."""
    client = redis.Redis.from_url(url)
    client.set("perf:rtt", b"x" * 1024, ex=60)
    client.get("perf:rtt")
    t = time.perf_counter()
    for _ in range(rounds):
        client.get("perf:rtt")
    elapsed = time.perf_counter() - t
    client.delete("perf:rtt")
    client.close()
    return elapsed / rounds * 1000


def one_client(stack: Stack, photo_dir: Path, *, first: int, count: int, seconds: float) -> OneClient:
    """One client, cache misses, then the same photos again (hits): latency and its breakdown.

    The breakdown of one miss (means, ms), from the client's latency and the
    services' own histograms:

    - upload/hash: a cache hit's latency (HTTP, multipart read, SHA-256, store,
      JSON) minus one Redis round trip;
    - cache lookup: one Redis GET round trip;
    - decode, inference: the worker's histograms (batch of 1 at one client);
    - queue wait: the worker's wait from delivery to the start of inference
      beyond the decode it overlaps (the micro-batch window);
    - broker + reply: the rest (publish and confirm, RabbitMQ both ways,
      reply JSON, Redis SET, the gateway's answer).
    """
    miss = drive(stack, photo_dir, first=first, count=count, concurrency=1, seconds=seconds, warmup=1.0)
    hit = drive(
        stack,
        photo_dir,
        first=first,
        count=min(miss.sent or count, count),
        concurrency=1,
        seconds=max(2.0, seconds / 2),
        warmup=0.5,
    )
    rtt = redis_rtt_ms(stack.redis_url)
    assert miss.worker is not None
    decode, inference = miss.worker.decode_ms, miss.worker.inference_ms_per_batch
    parts = {
        "upload/hash": max(0.0, hit.latency_ms.mean - rtt),
        "cache lookup": rtt,
        "queue wait": max(0.0, miss.worker.batch_wait_ms - decode),
        "decode": decode,
        "inference": inference,
    }
    known = sum(v for v in parts.values() if not math.isnan(v))
    parts["broker + reply"] = max(0.0, miss.latency_ms.mean - known)
    return OneClient(miss=miss, hit=hit, redis_rtt_ms=rtt, breakdown_ms=parts)


def prime_cache(stack: Stack, photo_paths: list[Path]) -> None:
    """Each photo once through the workers (one client), so that from now on it is a cache hit."""
    drive(
        stack,
        photo_paths[0].parent,
        first=int(photo_paths[0].stem.split("-")[1]),
        count=len(photo_paths),
        concurrency=1,
        seconds=max(1.0, 0.15 * len(photo_paths)),
        warmup=0.0,
    )


def gateway_process_snapshots(stack: Stack, tries_per_process: int = 25) -> dict[int, scrape.Snapshot] | None:
    """Every gateway process's ``/metrics``, by pid. Several processes share the port (SO_REUSEPORT): each
    scrape is a new connection, which the kernel hands to one of them (``gateway_process_info`` says
    which), so scrape until each has answered once; None if one never did."""
    want = {g.pid for g in stack.gateways}
    seen: dict[int, scrape.Snapshot] = {}
    for _ in range(tries_per_process * len(want)):
        snap = scrape.scrape(f"{stack.base_url}/metrics")
        pid = next((int(m.group(1)) for k in snap if (m := _PROCESS_PID.match(k))), None)
        if pid in want:
            seen.setdefault(pid, snap)
        if len(seen) == len(want):
            return seen
    return None


_PROCESS_PID = re.compile(r"gateway_process_info\{pid=(\d+)")
_PREDICT_REQUESTS = "gateway_requests_total{method=POST,route=/predict,"


def hits_and_requests(
    after: dict[int, scrape.Snapshot], before: dict[int, scrape.Snapshot]
) -> tuple[float, float]:
    """Cache hits and ``POST /predict`` requests (any status) the gateway processes counted in between."""
    hits = requests = 0.0
    for pid, snap in after.items():
        d = scrape.delta(snap, before[pid])
        hits += d.get("gateway_cache_hits_total", 0.0)
        requests += sum(v for k, v in d.items() if k.startswith(_PREDICT_REQUESTS))
    return hits, requests


def drive_wrk(
    stack: Stack, photo_paths: list[Path], *, connections: int, seconds: float, warmup: float
) -> LoadRun:
    """One run of wrk (:mod:`perf.wrk`) posting ``photo_paths`` in turn, after a warm-up run of its own
    (not recorded), with the CPU of every process over its window (wrk's as the load generator's) and the
    cache hits the gateway processes counted meanwhile (wrk reads no bodies: ``hit_ratio`` is their
    ``gateway_cache_hits_total`` over their ``POST /predict`` requests; NaN if a process did not answer
    its ``/metrics``)."""
    bodies, script = wrk.prepare(photo_paths, stack.run_dir / "wrk-hits")
    url = stack.base_url + "/predict"
    if warmup > 0:
        wrk.run(url, bodies, script, connections, warmup)
    before = gateway_process_snapshots(stack)
    cmd = wrk.command(url, bodies, script, connections, seconds)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meter = CpuMeter({**_service_pids(stack), "loadgen": [proc.pid]})
    time.sleep(0.1)  # wrk connects and reads its bodies
    meter.start()
    time.sleep(max(0.5, round(seconds) - 0.3))
    cpu = meter.stop()
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err[-2000:]}")
    # wrk's own report, kept beside the run's logs
    (stack.run_dir / "wrk-hits" / f"{time.strftime('%H%M%S')}-{len(stack.gateways)}p.txt").write_text(out)
    result = wrk.parse(out).load_run(connections, cpu.get("loadgen", math.nan))
    result.cpu_cores = cpu
    time.sleep(0.1)  # the requests wrk left in flight are counted as they end
    after = gateway_process_snapshots(stack)
    if before is not None and after is not None:
        hits, requests = hits_and_requests(after, before)
        result.cached = int(hits)
        result.hit_ratio = hits / requests if requests else math.nan
        g = scrape.add([scrape.delta(after[pid], before[pid]) for pid in after])
        result.gateway_ms = scrape.mean_of(g, "gateway_request_duration_seconds", "route=/predict") * 1000
    else:
        result.hit_ratio = math.nan
    return result


def cache_hits(
    stack: Stack, photo_paths: list[Path], *, connections: int, seconds: float, use_wrk: bool | None = None
) -> LoadRun:
    """Requests/s and latency when every answer comes from Redis (:func:`prime_cache` first; the workers
    stay up, idle), through the stack's gateway processes (one or several on one port); driven by wrk
    (``use_wrk``; by default where it is on PATH), else by :mod:`perf.loadgen`. 1 s warm-up either way."""
    if use_wrk is None:
        use_wrk = wrk.available()
    if use_wrk:
        result = drive_wrk(stack, photo_paths, connections=connections, seconds=seconds, warmup=1.0)
    else:
        result = drive(
            stack,
            photo_paths[0].parent,
            first=int(photo_paths[0].stem.split("-")[1]),
            count=len(photo_paths),
            concurrency=connections,
            seconds=seconds,
            warmup=1.0,
        )
        # From the answers themselves ("cached": true), whichever of several gateway processes gave them.
        answered = (result.statuses or {}).get("200", 0)
        result.hit_ratio = (result.cached or 0) / answered if answered else float("nan")
    result.gateway_processes = len(stack.gateways)
    return result
