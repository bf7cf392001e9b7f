"""Redis: the result cache, the model announcement and the images jobs refer to, all best-effort.

docs/DESIGN.md: "Redis being down degrades (no cache), it does not fail predictions."
So nothing here raises for Redis trouble. Short socket timeouts bound what a
dead Redis costs a job; after a failure, writes are skipped for a few seconds
(a small circuit breaker) so a partitioned Redis does not add a timeout to
every batch; warnings are rate-limited; redis-py reconnects by itself on the
next attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import RedisError

from classifier import metrics
from common.contract import ModelInfo, image_key, model_announcement, model_announcement_key
from common.redis_link import RedisBackoff, redis_client

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 0.5
# After a failure, skip Redis for this long before trying again.
RETRY_AFTER_S = 2.0
# At most one warning per this many seconds while Redis stays down.
WARN_EVERY_S = 30.0
# Announce the model this often, with a TTL that outlives two missed beats.
ANNOUNCE_EVERY_S = 30.0
ANNOUNCE_TTL_S = 90


class ResultCache:
    """Writes success replies and the model announcement to Redis, reads the images jobs refer to;
    never raises for Redis trouble."""

    def __init__(self, url: str, ttl_s: int, *, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.ttl_s = ttl_s
        self._timeout_s = timeout_s
        # One immediate retry (a timeout too): a pooled connection that Redis closed fails once.
        self._redis = redis_client(url, timeout_s, retry_timeouts=True, health_check_interval=30)
        self._backoff = RedisBackoff(RETRY_AFTER_S, warn_every_s=WARN_EVERY_S)
        self._recovered = asyncio.Event()

    async def store(self, entries: Sequence[tuple[str, bytes]]) -> bool:
        """SET each (key, value) with the TTL, in one round trip. False if not written."""
        if not entries:
            return True
        if self._backoff.skipping:
            metrics.CACHE_WRITE_FAILURES.inc(len(entries))
            return False
        try:
            async with asyncio.timeout(self._timeout_s * 4):  # a bound on the whole exchange
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, value in entries:
                        pipe.set(key, value, ex=self.ttl_s)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.CACHE_WRITE_FAILURES.inc(len(entries))
            self._failed("result cache write", exc)
            return False
        self._succeeded()
        return True

    async def fetch_image(self, sha256: str) -> bytes | None:
        """The image a job left in Redis (``image_key(sha256)``), or None when it is not there or
        Redis cannot say: the job is then answered ``image_missing`` and the gateway sends it inline.
        Not skipped during the write back-off: a job whose image is in Redis has no other source."""
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                data = await self._redis.get(image_key(sha256))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("image read", exc)
            return None
        self._succeeded()
        return data if isinstance(data, bytes) else None

    async def announce(self, queue: str, model: ModelInfo, ttl_s: int = ANNOUNCE_TTL_S) -> bool:
        """Tell gateways which model (hence which cache version) serves ``queue``."""
        value = model_announcement(model)
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                await self._redis.set(model_announcement_key(queue), value, ex=ttl_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("model announcement", exc)
            return False
        self._succeeded()
        return True

    async def announce_forever(self, queue: str, model: ModelInfo, first_delay_s: float) -> None:
        """Re-announce every ANNOUNCE_EVERY_S, sooner after a failure, and at once when
        Redis comes back (a restarted Redis has lost the key). Runs until cancelled."""
        delay = first_delay_s
        while True:
            self._recovered.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._recovered.wait()
            except TimeoutError:
                pass
            ok = await self.announce(queue, model)
            delay = ANNOUNCE_EVERY_S if ok else RETRY_AFTER_S * 2

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except (RedisError, OSError) as exc:  # closing a dead connection: nothing to do
            log.debug("closing Redis: %s", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._backoff.failed():
            log.warning(
                "Redis unavailable (%s: %s: %s); going on without the cache, retrying every %.0f s",
                what,
                type(exc).__name__,
                exc,
                RETRY_AFTER_S,
            )

    def _succeeded(self) -> None:
        if self._backoff.succeeded():
            self._recovered.set()
            log.info("Redis is reachable again; caching resumed")
