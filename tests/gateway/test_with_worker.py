"""The gateway with a real classifier worker behind it (real model, RabbitMQ, Redis, photos)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import aiohttp
import pytest

from common.contract import cache_key
from gateway.state import GATEWAY
from tests.gateway.test_api import assert_error, form
from tests.support.rabbitmq_api import close_connection

WORKER_TIMEOUT_S = 20.0


async def test_photo_is_classified_cached_and_a_broken_jpeg_is_422(
    make_gateway, workers, photos, redis_client
) -> None:
    workers()
    client = await make_gateway(request_timeout_s=WORKER_TIMEOUT_S)
    ready = await client.get("/health/ready")
    assert ready.status == 200, await ready.text()

    # Bytes after the JPEG's end marker change its sha256, not its pixels: a cache miss for sure.
    data = photos["coffee"].read_bytes() + uuid.uuid4().bytes
    first = await client.post("/predict?top_k=3", data=form(data))
    body = await first.json()
    assert first.status == 200, body
    assert body["prediction"] == "espresso" and body["cached"] is False
    assert len(body["top_k"]) == 3 and body["top_k"][0] == {"label": "espresso", "score": body["score"]}
    assert len(body["model"]["version"]) == 12

    # The worker replies first, then caches, then acks: wait for the cache entry before asking again.
    key = cache_key(body["model"]["version"], hashlib.sha256(data).hexdigest())
    for _ in range(50):
        if redis_client.exists(key):
            break
        await asyncio.sleep(0.1)
    again = await (await client.post("/predict", data=data, headers={"Content-Type": "image/jpeg"})).json()
    assert again["cached"] is True and again["prediction"] == "espresso" and len(again["top_k"]) == 5

    # JPEG magic bytes, so the gateway lets it through; the worker cannot decode it.
    broken = await client.post("/predict", data=form(data[:600], "cut.jpg"))
    await assert_error(broken, 422, "could not be decoded")


async def test_gateway_process_stops_gracefully_on_sigterm(gateway, photos) -> None:
    """SIGTERM: the request in flight still gets its answer (here a 504: no worker), then exit 0."""
    process = gateway(REQUEST_TIMEOUT_S=3)
    async with aiohttp.ClientSession() as session:
        body = form(photos["coffee"].read_bytes())
        request = asyncio.create_task(session.post(f"{process.base_url}/predict", data=body))
        await asyncio.sleep(0.8)
        process.proc.terminate()
        response = await asyncio.wait_for(request, 10)
        assert response.status == 504
        assert (await response.json())["success"] is False
    assert await asyncio.to_thread(process.proc.wait, 15) == 0
    assert "shutting down" in process.log_text()


async def test_broker_drops_the_connection_then_the_gateway_recovers(make_gateway, workers, photos) -> None:
    client = await make_gateway(request_timeout_s=WORKER_TIMEOUT_S)
    rpc = client.app[GATEWAY].rpc
    # A job in flight with no worker yet: the cut must fail it at once (503), not at its deadline.
    waiting = asyncio.create_task(client.post("/predict", data=form(photos["chelsea"].read_bytes() + b"x")))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    for _ in range(50):  # the management API lists a new connection after a moment
        if await asyncio.to_thread(close_connection, f"gateway {rpc.reply_queue}"):
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the gateway's connection never showed in the management API")
    response = await asyncio.wait_for(waiting, 5)
    await assert_error(response, 503, "unavailable")
    assert time.monotonic() - started < 5

    # aio-pika reconnects by itself, re-declaring the same reply queue; a worker then answers.
    for _ in range(100):
        if rpc.connected:
            break
        await asyncio.sleep(0.1)
    assert rpc.connected, "no reconnect within 10 s"
    workers()
    data = photos["coffee"].read_bytes() + uuid.uuid4().bytes
    after = await client.post("/predict", data=form(data))
    body = await after.json()
    assert after.status == 200, body
    assert body["prediction"] == "espresso" and body["cached"] is False
