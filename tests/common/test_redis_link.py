"""common/redis_link.py: the back-off both caches use after a Redis failure, and the real client."""

from __future__ import annotations

import math
import time

import pytest
from redis.exceptions import RedisError

from common.redis_link import RedisBackoff, redis_client
from tests.support.processes import free_port


def test_a_failure_starts_the_backoff_and_warns_once() -> None:
    backoff = RedisBackoff(60)
    assert backoff.up is None and not backoff.skipping
    assert backoff.failed() is True  # the first failure deserves a warning
    assert backoff.skipping and backoff.up is False
    assert backoff.failed() is False  # still down: no second warning (warn_every_s is infinite)
    assert backoff.succeeded() is True  # back: worth a line
    assert backoff.succeeded() is False and backoff.up is True
    assert backoff.failed() is True  # a new outage warns again
    backoff.clear()
    assert not backoff.skipping


def test_warnings_repeat_while_redis_stays_down() -> None:
    backoff = RedisBackoff(0.0, warn_every_s=0.05)
    assert backoff.failed() is True and not backoff.skipping  # a zero back-off never skips
    assert backoff.failed() is False
    time.sleep(0.06)
    assert backoff.failed() is True
    assert RedisBackoff(1).warn_every_s == math.inf


async def test_the_client_gives_up_within_its_timeout() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.25, retry_timeouts=True)
    started = time.monotonic()
    with pytest.raises(RedisError):
        await client.get("x")
    assert time.monotonic() - started < 2
    await client.aclose()


async def test_the_client_talks_to_the_real_redis(redis_url: str) -> None:
    client = redis_client(redis_url, 0.5, retry_timeouts=False)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
