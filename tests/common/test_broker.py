"""common/broker.py against the real RabbitMQ: addresses, the first connection, failover on reconnect."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from common.broker import RECONNECT_INTERVAL_S, backoff_delay, connect_until_up
from common.settings import Settings, broker_addresses, redact
from tests.support import rabbitmq_api
from tests.support.processes import free_port


def test_addresses_are_split_on_commas() -> None:
    url = " amqp://u:p@a:5672/ ,amqp://u:p@b:5673/,, amqps://c/ "
    assert broker_addresses(url) == ["amqp://u:p@a:5672/", "amqp://u:p@b:5673/", "amqps://c/"]
    assert Settings(rabbitmq_url="amqp://x/").rabbitmq_addresses == ["amqp://x/"]


@pytest.mark.parametrize("url", ["", " , ", "http://a/", "amqp://a/,redis://b/"])
def test_bad_addresses_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="RABBITMQ_URL"):
        broker_addresses(url)


def test_passwords_never_reach_the_logs() -> None:
    assert redact("amqp://user:s3cret@host:5672/") == "amqp://user:******@host:5672/"
    assert "s3cret" not in redact("amqp://user:s3cret@host/")


def test_backoff_grows_then_stays() -> None:
    delays = [backoff_delay(n) for n in range(8)]
    assert delays == sorted(delays) and delays[0] < delays[-1] == delays[-2]


def dead_address() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"


async def test_first_connection_skips_a_dead_node(rabbitmq_url: str) -> None:
    connection = await asyncio.wait_for(
        connect_until_up([dead_address(), rabbitmq_url], name=f"test {uuid.uuid4().hex}"), 15
    )
    assert connection is not None
    try:
        assert connection.url.port == 5672 and connection.connected.is_set()
    finally:
        await connection.close()


async def test_stop_ends_the_wait_when_no_node_answers() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(connect_until_up([dead_address(), dead_address()], name="test", stop=stop))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is None


async def test_a_setup_that_fails_counts_as_a_failed_attempt(rabbitmq_url: str) -> None:
    calls = 0

    async def setup(connection: aio_pika.abc.AbstractRobustConnection) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("refused once")

    connection = await asyncio.wait_for(connect_until_up([rabbitmq_url], name="test", setup=setup), 15)
    assert connection is not None and calls == 2
    await connection.close()


async def test_a_lost_connection_reconnects_to_the_next_live_node(rabbitmq_url: str) -> None:
    """[node A, dead node, node B]: A drops us; the reconnect skips the dead one and lands on B,
    where the robust channel declares its queue again and consumes again."""
    node_b = rabbitmq_url.replace("127.0.0.1", "localhost")  # the same broker under a second address
    name = f"test {uuid.uuid4().hex}"
    connection = await connect_until_up([rabbitmq_url, dead_address(), node_b], name=name)
    assert connection is not None
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"test.broker.{uuid.uuid4().hex}", exclusive=True)
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.put_nowait(message.body)

        await queue.consume(on_message, no_ack=True)
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())

        assert await asyncio.to_thread(
            rabbitmq_api.wait_for, lambda: rabbitmq_api.close_connection(name), 15, "the test connection"
        )
        await asyncio.wait_for(reconnected.wait(), 5 + 3 * RECONNECT_INTERVAL_S)
        assert connection.url.host == "localhost"
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        assert await asyncio.wait_for(received.get(), 5) == b"after"
    finally:
        await connection.close()
