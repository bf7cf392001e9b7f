"""The gateway's cache after a Redis restart: stale pooled connections must not cost a miss
(and a back-off) each; the first read after the restart reconnects and is served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis

from common.contract import ModelInfo, cache_key, model_announcement_key
from gateway.cache import ResultCache
from tests.gateway.conftest import make_reply
from tests.support.private_services import PrivateRedis
from tests.support.processes import free_port

MODEL = ModelInfo(name="test-model", version="0123456789ab")
SHA = "ab" * 32


def fill(url: str) -> None:
    """What a worker writes (a restarted Redis has lost it all)."""
    client = redis.Redis.from_url(url)
    try:
        client.set(model_announcement_key("q"), '{"name": "test-model", "version": "0123456789ab"}')
        client.set(cache_key(MODEL.version, SHA), make_reply(SHA, MODEL, [("cup", 1.0)]).to_json())
    finally:
        client.close()


async def test_first_reads_after_a_redis_restart_are_served(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", free_port())
    await asyncio.to_thread(server.start)
    cache = ResultCache(server.url, "q")
    try:
        fill(server.url)
        # Several reads at once leave several connections in the pool.
        assert all(await asyncio.gather(*(cache.get(SHA) for _ in range(4))))
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        fill(server.url)
        hits = [await cache.get(SHA) for _ in range(4)]
        assert all(hits), hits
        assert cache.up is True
    finally:
        await cache.close()
        await asyncio.to_thread(server.stop)
