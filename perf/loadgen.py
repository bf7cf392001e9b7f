"""A closed-loop HTTP load generator (aiohttp client) that runs as its own process.

C clients each POST one photo, wait for the answer, and POST the next; photos
are taken in turn from a pool so every request of a run carries a different
image (a cache miss) until the pool wraps (reported as ``wrapped``).
Multipart bodies are built once up front, so the generator spends its CPU on
the sockets. Requests that start during the warm-up are excluded; the run's
own CPU use (fraction of one core) is reported, since it shares the machine.

``python -m perf.loadgen --url http://127.0.0.1:8000/predict --photo-dir D -c 8 -d 10``
prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

from perf.results import LoadRun, to_dict
from perf.stats import summary_ms

BOUNDARY = "perfbench7d3f9a1c"
CACHED = re.compile(rb'"cached":\s*true')  # the gateway's answer says it came from the cache


def multipart(body: bytes, name: str) -> bytes:
    """A multipart/form-data body with one ``file`` field, like a browser's upload."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + body + f"\r\n--{BOUNDARY}--\r\n".encode()


def burst_rate(times: list[float], gap_s: float = 0.003) -> float | None:
    """Completions per second, free of the window's edges cutting a batch in two.

    Answers come in bursts (one per micro-batch). Counting whole bursts from the
    start of the first to the start of the last: the bursts after the first
    over the time between those starts: the bursts before the last, over the
    periods they open. None when there are too few bursts.
    """
    times = sorted(times)
    starts = [0] + [i for i in range(1, len(times)) if times[i] - times[i - 1] > gap_s]
    if len(starts) < 3:
        return None
    span = times[starts[-1]] - times[starts[0]]
    return (starts[-1] - starts[0]) / span if span > 0 else None


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 30.0,
) -> LoadRun:
    """Drive the load; returns throughput, latency percentiles, statuses and own CPU."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    completions: list[float] = []
    next_photo = 0
    completed_in_window = 0
    cached_in_window = 0
    clock = time.perf_counter  # not loop.time(): uvloop's ticks in whole milliseconds
    t0 = clock()
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
    cpu0: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_photo, completed_in_window, cached_in_window
        while (now := clock()) < window_end:
            body = bodies[next_photo % len(bodies)]
            next_photo += 1
            started = now
            answer = b""
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            done = clock()
            if started >= window_start and done <= window_end:
                statuses[status] += 1
                if status == "200":
                    latencies.append(done - started)
                    cached_in_window += CACHED.search(answer) is not None
            if window_start <= done <= window_end and status == "200":
                completed_in_window += 1
                completions.append(done)

    async def mark_window() -> None:
        await asyncio.sleep(warmup_s)
        cpu0.append(_cpu())

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(mark_window(), *(client(session) for _ in range(concurrency)))
    cpu_used = _cpu() - cpu0[0]
    return LoadRun(
        concurrency=concurrency,
        duration_s=duration_s,
        rps=burst_rate(completions) or completed_in_window / duration_s,
        rps_window=completed_in_window / duration_s,
        latency_ms=summary_ms(latencies),
        statuses=dict(statuses),
        sent=next_photo,
        wrapped=next_photo > len(bodies),
        loadgen_cpu_cores=round(cpu_used / duration_s, 3),
        cached=cached_in_window,
        tool=f"perf.loadgen (aiohttp on {type(asyncio.get_running_loop()).__module__.split('.')[0]}, 1 process)",
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (less of the shared CPU spent on the generator)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--photo-dir", type=Path, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first photo of the pool to use")
    parser.add_argument("--count", type=int, default=100_000, help="photos in the pool")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-w", "--warmup", type=float, default=2.0)
    args = parser.parse_args()
    paths = sorted(args.photo_dir.glob("*.jpg"))[args.first : args.first + args.count]
    bodies = [multipart(p.read_bytes(), p.name) for p in paths]
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        result = runner.run(
            run(
                args.url, bodies, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup
            )
        )
    print(json.dumps(to_dict(result)))


if __name__ == "__main__":
    main()
