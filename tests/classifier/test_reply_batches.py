"""A worker answers the jobs of one reply queue together, where their requester reads reply batches.

The worker's :class:`~classifier.consumer.Consumer` on the real broker, over a private queue: jobs
from two requesters (reply queues), some asking for reply batches and some not (a gateway that
predates them), and what each reply queue then receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from classifier.consumer import AmqpDelivery, Consumer
from classifier.pipeline import Delivery
from common.contract import (
    REPLY_BATCH_CONTENT_TYPE,
    ErrorCode,
    FailureReply,
    JobHeaders,
    Reply,
    now_ms,
    parse_reply,
    parse_reply_batch,
)
from common.settings import Settings
from tests.support.tally import Tally

SHA = "c" * 64


class Inbox(Tally):
    """What one reply queue receives: every message, and the replies in them by correlation id."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[AbstractIncomingMessage] = []
        self.replies: dict[str, Reply] = {}

    def size(self) -> int:
        return len(self.replies)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)
        if message.content_type == REPLY_BATCH_CONTENT_TYPE:
            for correlation_id, reply in parse_reply_batch(message.body).items():
                assert not isinstance(reply, Exception)
                self.replies[correlation_id] = reply
        else:
            self.replies[str(message.correlation_id)] = parse_reply(message.body)
        self.arrived()


@pytest.fixture
async def broker(
    rabbitmq_url: str, queue_name: str
) -> AsyncIterator[tuple[Consumer, aio_pika.abc.AbstractChannel]]:
    stop = asyncio.Event()
    deliveries: list[AmqpDelivery] = []

    async def keep(delivery: Delivery) -> None:
        assert isinstance(delivery, AmqpDelivery)
        deliveries.append(delivery)

    consumer = Consumer(Settings(rabbitmq_url=rabbitmq_url, queue_name=queue_name, prefetch=20), keep, stop)
    assert await consumer.open()
    await consumer.consume()
    requester = await aio_pika.connect(rabbitmq_url)
    try:
        yield consumer, deliveries, await requester.channel()
    finally:
        stop.set()
        await consumer.close()
        await requester.close()


async def reply_queue(channel: aio_pika.abc.AbstractChannel) -> tuple[str, Inbox]:
    inbox = Inbox()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.consume(inbox.on_message, no_ack=True)
    return queue.name, inbox


async def publish_jobs(
    channel: aio_pika.abc.AbstractChannel,
    queue_name: str,
    jobs: list[tuple[str, bool]],
    received: list[AmqpDelivery],
) -> None:
    """Publish ``job-0``, ``job-1``, ... for these (reply queue, asks for reply batches); wait until the
    consumer has handed them all over."""
    for index, (reply_to, batches) in enumerate(jobs):
        headers = JobHeaders(sha256=SHA, deadline_ms=now_ms() + 30_000, top_k=5, reply_batches=batches)
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"", correlation_id=f"job-{index}", reply_to=reply_to, headers=headers.to_amqp()
            ),
            routing_key=queue_name,
        )
    async with asyncio.timeout(10):
        while len(received) < len(jobs):
            await asyncio.sleep(0.02)


async def test_replies_for_one_reply_queue_go_in_one_message_where_the_job_asked(
    broker, queue_name: str
) -> None:
    consumer, received, channel = broker
    first, first_inbox = await reply_queue(channel)
    second, second_inbox = await reply_queue(channel)
    # (reply queue, asks for batches): three batchable for the first requester, one for the second
    # (a batch of one is a plain reply), two from an older requester on the first queue.
    jobs = [(first, True), (first, True), (second, True), (first, False), (first, True), (first, False)]
    await publish_jobs(channel, queue_name, jobs, received)
    answers: list[tuple[Delivery, Reply]] = [
        (d, FailureReply(ErrorCode.INVALID_IMAGE, f"answer to {d.correlation_id}")) for d in received
    ]

    assert await consumer.publish_replies(answers) == [True] * len(jobs)

    await first_inbox.wait_for(5)
    await second_inbox.wait_for(1)
    for inbox in (first_inbox, second_inbox):
        for correlation_id, reply in inbox.replies.items():
            assert reply == FailureReply(ErrorCode.INVALID_IMAGE, f"answer to {correlation_id}")
    assert set(first_inbox.replies) == {"job-0", "job-1", "job-3", "job-4", "job-5"}
    batches = [m for m in first_inbox.messages if m.content_type == REPLY_BATCH_CONTENT_TYPE]
    assert len(batches) == 1 and batches[0].correlation_id is None
    assert set(parse_reply_batch(batches[0].body)) == {"job-0", "job-1", "job-4"}
    singles = [m.correlation_id for m in first_inbox.messages if m.content_type == "application/json"]
    assert sorted(singles) == ["job-3", "job-5"]  # the older requester's, one message each
    assert [(m.content_type, m.correlation_id) for m in second_inbox.messages] == [
        ("application/json", "job-2")
    ]


async def test_replies_that_cannot_be_published_say_so_and_raise_nothing(broker, queue_name: str) -> None:
    consumer, received, channel = broker
    reply_to, _ = await reply_queue(channel)
    await publish_jobs(channel, queue_name, [(reply_to, True)] * 2, received)
    await consumer.close()  # the connection is gone: the pipeline requeues both jobs
    answers: list[tuple[Delivery, Reply]] = [(d, FailureReply(ErrorCode.EXPIRED, "late")) for d in received]
    assert await consumer.publish_replies(answers) == [False, False]
