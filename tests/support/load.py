"""A bounded load generator for tests: N requests over loopback, every outcome counted.

It never loops forever: each run has a request count and a wall-clock limit,
and each request a client-side timeout, so a hung gateway shows up as a count.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    """What happened to every request of one load run."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    # Requests that got no answer within deadline + grace (client gave up or it came late).
    hung: int = 0
    errors: Counter = field(default_factory=Counter)
    # (seconds since the run started when the answer came, status), for "after the fault" checks.
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + self.hung + sum(self.errors.values())

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        worst = max(self.latencies, default=0.0)
        return f"sent {self.sent}; {codes}; hung: {self.hung}; errors: {dict(self.errors)}; max {worst:.2f} s"


async def run_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    deadline_s: float,
    total: int | None = None,
    duration_s: float | None = None,
    grace_s: float = 1.0,
    unique: bool = False,
) -> LoadResult:
    """POST the bodies (cycled) as multipart `file` uploads until `total` are sent or `duration_s` passes.

    ``unique`` appends a counter after each JPEG's end-of-image marker: the pixels
    are the same, the bytes (and so the cache key) are new, so every request is a
    cache miss however long the run.
    """
    assert total or duration_s, "a load run needs a bound"
    result = LoadResult()
    bodies_cycle = itertools.cycle(bodies)
    sent = itertools.count()
    unique_ids = itertools.count()
    run_started = time.monotonic()
    stop_at = run_started + (duration_s or 3600)
    timeout = aiohttp.ClientTimeout(total=deadline_s + grace_s + 2)

    async def one(session: aiohttp.ClientSession, body: bytes) -> None:
        form = aiohttp.FormData()
        form.add_field("file", body, filename="photo.jpg", content_type="image/jpeg")
        started = time.monotonic()
        try:
            async with session.post(url, data=form) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            result.hung += 1
            return
        except aiohttp.ClientError as exc:
            result.errors[type(exc).__name__] += 1
            return
        elapsed = time.monotonic() - started
        result.latencies.append(elapsed)
        result.timeline.append((time.monotonic() - run_started, status))
        if elapsed > deadline_s + grace_s:
            result.hung += 1
        else:
            result.statuses[status] += 1

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            if total is not None and next(sent) >= total:
                return
            body = next(bodies_cycle)
            if unique:
                body += b"run-%d" % next(unique_ids)
            await one(session, body)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return result
