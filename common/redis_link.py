"""Redis for the gateway and the workers: a client with short timeouts, and a back-off after failures.

Redis is only a cache here (DESIGN: "Redis being down degrades, it does not fail
predictions"), so both services go on without it. Short socket timeouts bound what
a dead Redis costs one call; after a failure, :class:`RedisBackoff` makes them leave
Redis alone for a moment, so that a dead or partitioned Redis costs one timeout per
back-off period instead of one per request or batch.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def redis_client(
    url: str, timeout_s: float, *, retry_timeouts: bool, health_check_interval: int = 0
) -> aioredis.Redis:
    """A client whose every socket operation gives up after ``timeout_s``.

    One immediate retry on a dropped connection: after a Redis restart each pooled
    connection fails once, and without it each would cost a miss and a back-off.
    ``retry_timeouts`` retries a timeout too (a writer can afford it; for a reader
    a miss is cheaper than a slow answer).
    """
    # redis-py's default errors to retry are connection errors and timeouts.
    retry = (
        Retry(NoBackoff(), 1)
        if retry_timeouts
        else Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=retry,
        health_check_interval=health_check_interval,
    )


class RedisBackoff:
    """Whether Redis answered last time, and how long to leave it alone after it did not.

    :meth:`failed` and :meth:`succeeded` say when something is worth a log line: the
    first failure after a success (then one every ``warn_every_s`` while it lasts), and
    the first success after failures.
    """

    def __init__(self, backoff_s: float, *, warn_every_s: float = math.inf) -> None:
        self.backoff_s = backoff_s
        self.warn_every_s = warn_every_s
        self.up: bool | None = None  # None: not asked yet
        self._skip_until = -math.inf
        self._last_warning = -math.inf

    @property
    def skipping(self) -> bool:
        """Within the back-off after a failure: do not ask Redis now."""
        return time.monotonic() < self._skip_until

    def failed(self) -> bool:
        """Record a failure and start the back-off; True when it deserves a warning."""
        now = time.monotonic()
        was_up, self.up = self.up, False
        self._skip_until = now + self.backoff_s
        if was_up is not False or now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            return True
        return False

    def succeeded(self) -> bool:
        """Record a success; True when Redis was failing until now (it is back)."""
        was_up, self.up = self.up, True
        return was_up is False

    def clear(self) -> None:
        """End the back-off now (Redis answered a direct question)."""
        self._skip_until = -math.inf
