"""A batch's successes are acked with one ``multiple`` ack, and only where that settles nothing else.

The worker's :class:`~classifier.consumer.Consumer` on the real broker, over a private queue:
whatever an ack settles is seen by what the broker gives back once the connection closes (every
delivery left unacked returns to the queue). The rule itself (:class:`UnsettledTags`) is checked
alone first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import aiormq
import pytest

from classifier.consumer import AmqpDelivery, Consumer, UnsettledTags
from classifier.pipeline import Delivery
from common.settings import Settings

JOBS = 6


def tags_in_hand(*tags: int) -> UnsettledTags:
    unsettled = UnsettledTags()
    for tag in tags:
        unsettled.add(tag)
    return unsettled


def test_the_oldest_unsettled_deliveries_are_named_by_the_newest_of_them() -> None:
    assert tags_in_hand(1, 2, 3, 4, 5).multiple_ack_tag([3, 1, 2]) == 3
    assert tags_in_hand(4, 7, 9, 12).multiple_ack_tag([4, 7]) == 7  # earlier ones settled one by one


def test_no_multiple_ack_that_would_settle_a_delivery_still_in_hand() -> None:
    assert tags_in_hand(1, 2, 3, 4).multiple_ack_tag([2, 3]) is None  # 1 is still in hand
    assert tags_in_hand(1, 2, 3).multiple_ack_tag([1, 3]) is None  # 2 is still in hand
    assert tags_in_hand(1, 2).multiple_ack_tag([1, 2, 3]) is None  # 3 is not in hand here
    assert tags_in_hand(1, 2).multiple_ack_tag([1, 1]) is None


def test_settled_tags_are_forgotten() -> None:
    unsettled = tags_in_hand(1, 2, 3)
    unsettled.discard(1)
    assert unsettled.multiple_ack_tag([2, 3]) == 3
    unsettled.discard(2)
    unsettled.discard(3)
    assert len(unsettled) == 0


class Received:
    """The consumer's deliveries as they arrive, and the ``basic.ack`` frames it sends."""

    def __init__(self) -> None:
        self.deliveries: list[AmqpDelivery] = []
        self.arrived = asyncio.Event()
        self.acks: list[tuple[int, bool]] = []

    async def handle(self, delivery: Delivery) -> None:
        assert isinstance(delivery, AmqpDelivery)
        self.deliveries.append(delivery)
        if len(self.deliveries) == JOBS:
            self.arrived.set()


@pytest.fixture
async def consumed(
    rabbitmq_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Consumer, Received, Callable[[], Awaitable[int]]]]:
    """JOBS jobs published to the queue and delivered to a real Consumer; ``returned()``: close
    the consumer's connection and count the jobs the broker put back (those left unacked)."""
    received = Received()
    basic_ack = aiormq.Channel.basic_ack

    async def recording_ack(self: aiormq.Channel, delivery_tag: int, multiple: bool = False) -> None:
        received.acks.append((delivery_tag, multiple))
        await basic_ack(self, delivery_tag, multiple=multiple)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", recording_ack)
    stop = asyncio.Event()
    consumer = Consumer(
        Settings(rabbitmq_url=rabbitmq_url, queue_name=queue_name, prefetch=JOBS), received.handle, stop
    )
    assert await consumer.open()
    await consumer.consume()
    publisher = await aio_pika.connect(rabbitmq_url)
    channel = await publisher.channel()
    for i in range(JOBS):
        await channel.default_exchange.publish(aio_pika.Message(b"job %d" % i), routing_key=queue_name)
    await asyncio.wait_for(received.arrived.wait(), 10)

    async def returned() -> int:
        await consumer.close()
        await asyncio.sleep(0.2)  # the broker requeues what the closed channel held
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)

    try:
        yield consumer, received, returned
    finally:
        stop.set()
        await consumer.close()
        await publisher.close()


async def test_a_batch_of_the_oldest_deliveries_is_acked_with_one_frame(consumed) -> None:
    consumer, received, returned = consumed
    await consumer.acknowledge(received.deliveries[:4])
    last_tag = received.deliveries[3].message.delivery_tag
    assert received.acks == [(last_tag, True)]
    assert await returned() == JOBS - 4  # the two not acked, and only they, come back


async def test_a_batch_behind_a_job_still_in_hand_is_acked_one_by_one(consumed) -> None:
    consumer, received, returned = consumed
    batch = received.deliveries[1:4]  # the first job is still in hand (a slower batch)
    await consumer.acknowledge(batch)
    assert received.acks == [(d.message.delivery_tag, False) for d in batch]
    assert await returned() == JOBS - 3  # the first job was not settled by any of these acks


async def test_after_a_dead_letter_the_rest_of_the_batch_is_acked_at_once(consumed) -> None:
    consumer, received, returned = consumed
    rejected, *answered = received.deliveries[:3]
    await rejected.requeue()  # what the pipeline does first with a reply it could not publish
    await consumer.acknowledge(answered)
    assert received.acks == [(answered[-1].message.delivery_tag, True)]
    # The requeued job is back in the queue (and delivered again to this consumer, in hand:
    # it comes back once more at close); the three not settled come back.
    assert await returned() == JOBS - 2
