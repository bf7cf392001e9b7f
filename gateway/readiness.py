"""The readiness answer, asked of the broker and Redis at most once per ``READY_TTL_S``.

A probe re-declares the request queue on the channel that also carries every
publish; asked on each ``/health/ready`` call, a flood of probes would queue up
ahead of the jobs. Concurrent callers share one probe, and its answer is reused
for a moment.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.cache import ResultCache
from gateway.metrics import GatewayMetrics
from gateway.rpc import RpcClient

# How long one probe's answer stands; orchestrators probe every few seconds.
READY_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class Probe:
    """What the broker and Redis said: consumers on the request queue (None: unknown), Redis up."""

    consumers: int | None
    redis_up: bool


class ReadinessProbe:
    """Asks the broker and Redis for readiness, at most once per ``ttl_s``; callers meanwhile share it."""

    def __init__(
        self, rpc: RpcClient, cache: ResultCache, metrics: GatewayMetrics, ttl_s: float = READY_TTL_S
    ) -> None:
        self._metrics = metrics
        self._rpc = rpc
        self._cache = cache
        self._ttl_s = ttl_s
        self._answer: Probe | None = None
        self._asked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def check(self) -> Probe:
        if self._fresh():
            assert self._answer is not None
            return self._answer
        async with self._lock:  # the first caller probes; the others wait for its answer
            if not self._fresh():
                self._metrics.readiness_probes.inc()
                consumers = await self._rpc.consumer_count()
                redis_up = await self._cache.ping()
                self._answer, self._asked_at = Probe(consumers, redis_up), time.monotonic()
            assert self._answer is not None
            return self._answer

    def _fresh(self) -> bool:
        return self._answer is not None and time.monotonic() - self._asked_at < self._ttl_s
