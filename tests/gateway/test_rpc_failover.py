"""The RPC client's connection handling against the real broker: addresses, and dropping a stuck channel."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from common.contract import JobHeaders, now_ms
from common.settings import Settings
from gateway.rpc import BrokerUnavailable, DeadlineExceeded, RpcClient
from tests.support.processes import free_port

SHA256 = "0" * 64


def test_a_malformed_rabbitmq_url_fails_at_start(gateway_settings: Settings) -> None:
    with pytest.raises(ValueError, match="RABBITMQ_URL"):
        RpcClient(dataclasses.replace(gateway_settings, rabbitmq_url="http://127.0.0.1/"))


async def test_the_first_live_node_of_the_list_is_used(gateway_settings: Settings) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    rpc = RpcClient(
        dataclasses.replace(gateway_settings, rabbitmq_url=f"{dead},{gateway_settings.rabbitmq_url}")
    )
    await rpc.start(wait_s=15)
    try:
        assert rpc.connected
        assert await rpc.consumer_count() == 0
    finally:
        await rpc.close()


async def test_a_dropped_connection_fails_calls_in_flight_then_publishes_again(
    gateway_settings: Settings,
) -> None:
    """What the gateway does with a channel RabbitMQ nacks for good: drop the connection, answer
    the calls in flight at once (503), and publish on a fresh channel after the robust reconnect."""
    rpc = RpcClient(gateway_settings)
    await rpc.start(wait_s=15)
    try:
        assert rpc._connection is not None
        reconnected = asyncio.Event()
        rpc._connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        waiting = asyncio.create_task(
            rpc.call(
                b"job",
                content_type="image/jpeg",
                headers=JobHeaders(sha256=SHA256, deadline_ms=now_ms() + 10_000, top_k=5),
            )
        )
        await asyncio.sleep(0.3)
        rpc._reconnect_soon("test")
        rpc._reconnect_soon("test")  # noticed twice: dropped once
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(waiting, 2)
        await asyncio.wait_for(reconnected.wait(), 10)
        assert rpc.connected
        # The broker confirmed the publish (no worker runs, so no reply comes): the new channel works.
        with pytest.raises(DeadlineExceeded, match="no reply before the deadline"):
            await rpc.call(
                b"job",
                content_type="image/jpeg",
                headers=JobHeaders(sha256=SHA256, deadline_ms=now_ms() + 1000, top_k=5),
            )
    finally:
        await rpc.close()
