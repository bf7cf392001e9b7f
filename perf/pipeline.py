"""The pipeline end to end through HTTP: real gateway and worker subprocesses, a separate load generator.

Phases (each on photos the cache has not seen, unless it measures hits):

- :func:`saturation`: many clients, cache misses, one worker layout; images/s
  and latency, CPU used by every process (gateway, workers, RabbitMQ, Redis,
  load generator) and the workers' own histograms (batch size, decode, inference).
- :func:`one_client`: one client, cache misses: p50/p95 and where the time goes.
- :func:`cache_hits`: the same few photos over and over, answered from Redis,
  driven by ``wrk`` (C, one thread) when installed, else by :mod:`perf.loadgen`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from perf import scrape
from perf.paths import PERF_DIR, REPO_ROOT
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


def _loadgen_cmd(url: str, photo_dir: Path, first: int, count: int, concurrency: int,
                 seconds: float, warmup: float) -> list[str]:
    return [sys.executable, "-m", "perf.loadgen", "--url", url, "--photo-dir", str(photo_dir),
            "--first", str(first), "--count", str(count), "-c", str(concurrency),
            "-d", str(seconds), "-w", str(warmup)]


def _service_pids(stack: Stack) -> dict[str, list[int]]:
    return {
        "gateway": [stack.gateway.pid] if stack.gateway else [],
        "workers": [w.pid for w in stack.workers],
        "rabbitmq": listening_pids(RABBITMQ_PORT),
        "redis": listening_pids(REDIS_PORT),
    }


def _worker_snapshot(stack: Stack) -> scrape.Snapshot:
    return scrape.add([scrape.scrape(f"http://127.0.0.1:{p}/metrics") for p in stack.worker_metrics_ports])


def _gateway_snapshot(stack: Stack) -> scrape.Snapshot:
    return scrape.scrape(f"{stack.base_url}/metrics")


def drive(stack: Stack, photo_dir: Path, *, first: int, count: int, concurrency: int, seconds: float,
          warmup: float, path: str = "/predict") -> dict[str, object]:
    """One load run with :mod:`perf.loadgen`, plus CPU and histogram deltas over its measured window."""
    cmd = _loadgen_cmd(stack.base_url + path, photo_dir, first, count, concurrency, seconds, warmup)
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
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["cpu_cores"] = cpu
    wd, gd = scrape.delta(w1, w0), scrape.delta(g1, g0)
    result["worker"] = {
        "batch_size_mean": scrape.mean_of(wd, "classifier_batch_size"),
        "decode_ms": scrape.mean_of(wd, "classifier_decode_seconds") * 1000,
        "inference_ms_per_batch": scrape.mean_of(wd, "classifier_inference_seconds") * 1000,
        "batch_wait_ms": scrape.mean_of(wd, "classifier_batch_wait_seconds") * 1000,
    }
    result["gateway_ms"] = scrape.mean_of(gd, "gateway_request_duration_seconds", f"route={path}") * 1000
    return result


def saturation(stack: Stack, model: Path, layout: Layout, *, max_batch: int, photo_dir: Path,
               first: int, count: int, seconds: float, warmup: float) -> dict[str, object]:
    """Cache misses at saturation for one worker layout (workers started and stopped here)."""
    stack.flush_redis()
    stack.start_workers(model, layout.workers, layout.threads, max_batch, prefetch=2 * max_batch)
    try:
        concurrency = max(16, 2 * layout.workers * max_batch)
        result = drive(stack, photo_dir, first=first, count=count, concurrency=concurrency,
                       seconds=seconds, warmup=warmup)
    finally:
        stack.stop_workers()
    result["layout"] = layout.name
    result["max_batch"] = max_batch
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


def one_client(stack: Stack, photo_dir: Path, *, first: int, count: int, seconds: float) -> dict[str, object]:
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
    sent = int(miss["sent"])  # type: ignore[arg-type]
    hit = drive(stack, photo_dir, first=first, count=min(sent, count), concurrency=1,
                seconds=max(2.0, seconds / 2), warmup=0.5)
    rtt = redis_rtt_ms(stack.redis_url)
    lat_miss = miss["latency_ms"]["mean"]  # type: ignore[index]
    lat_hit = hit["latency_ms"]["mean"]  # type: ignore[index]
    worker = miss["worker"]  # type: ignore[assignment]
    decode, inference = worker["decode_ms"], worker["inference_ms_per_batch"]  # type: ignore[index]
    queue_wait = max(0.0, worker["batch_wait_ms"] - decode)  # type: ignore[index]
    upload = max(0.0, lat_hit - rtt)
    parts = {"upload/hash": upload, "cache lookup": rtt, "queue wait": queue_wait, "decode": decode,
             "inference": inference}
    known = sum(v for v in parts.values() if not math.isnan(v))
    parts["broker + reply"] = max(0.0, lat_miss - known)
    return {"miss": miss, "hit": hit, "redis_rtt_ms": rtt, "breakdown_ms": parts}


def _wrk(url: str, photo_list: Path, *, connections: int, seconds: float) -> dict[str, object]:
    env = dict(os.environ, PERF_WRK_PHOTOS=str(photo_list))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
           "-s", str(PERF_DIR / "wrk_multipart.lua"), url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((l for l in out.splitlines() if l.startswith("PERF_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out[-2000:]}")
    data = json.loads(line.removeprefix("PERF_JSON "))
    duration = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {
        "tool": "wrk 1 thread",
        "concurrency": connections,
        "rps": (data["requests"] - errors) / duration,
        "latency_ms": {"p50": data["p50_us"] / 1000, "p90": data["p90_us"] / 1000,
                       "p99": data["p99_us"] / 1000, "mean": data["mean_us"] / 1000},
        "errors": errors,
        "loadgen_cpu_cores": round((usage.ru_utime + usage.ru_stime) / duration, 3),
    }


def cache_hits(stack: Stack, photo_paths: list[Path], *, connections: int, seconds: float,
               run_dir: Path) -> dict[str, object]:
    """Requests/s and latency when every answer comes from Redis (the workers stay up, idle)."""
    bodies_dir = photo_paths[0].parent
    first = int(photo_paths[0].stem.split("-")[1])
    # Prime the cache: each photo once through the workers.
    drive(stack, bodies_dir, first=first, count=len(photo_paths), concurrency=1,
          seconds=max(1.0, 0.15 * len(photo_paths)), warmup=0.0)
    meter = CpuMeter(_service_pids(stack))
    g0 = _gateway_snapshot(stack)
    if shutil.which("wrk"):
        photo_list = run_dir / "wrk-photos.txt"
        photo_list.write_text("".join(f"{p}\n" for p in photo_paths))
        # A short unmeasured run warms the gateway's connections, then the measured one.
        _wrk(stack.base_url + "/predict", photo_list, connections=connections, seconds=1)
        g0 = _gateway_snapshot(stack)
        meter.start()
        result = _wrk(stack.base_url + "/predict", photo_list, connections=connections, seconds=seconds)
    else:
        meter.start()
        result = drive(stack, bodies_dir, first=first, count=len(photo_paths), concurrency=connections,
                       seconds=seconds, warmup=1.0)
        result["tool"] = "perf.loadgen (aiohttp, 1 process): wrk not installed"
    cpu = meter.stop()
    cpu["loadgen"] = float(result["loadgen_cpu_cores"])  # type: ignore[arg-type]
    cpu["others"] = round(max(0.0, cpu["others"] - cpu["loadgen"]), 3)  # the generator was not in the meter
    result["cpu_cores"] = cpu
    gd = scrape.delta(_gateway_snapshot(stack), g0)
    hits, misses = gd.get("gateway_cache_hits_total", 0.0), gd.get("gateway_cache_misses_total", 0.0)
    result["hit_ratio"] = hits / (hits + misses) if hits + misses else float("nan")
    return result
