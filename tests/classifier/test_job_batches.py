"""Job batches on the worker's side: several jobs in one message, each answered and settled as a job.

The real broker throughout: first the worker's :class:`~classifier.consumer.Consumer` alone over a
private queue (what it hands over, when the message is settled, how a batch delivered again is split
into single jobs), then the real worker (a subprocess with the real model) answering job batches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from classifier.consumer import AmqpDelivery, BatchedJob, Consumer
from classifier.pipeline import Delivery
from common.contract import (
    JOB_BATCH_CONTENT_TYPE,
    JobHeaders,
    cache_key,
    dead_letter_queue,
    encode_job_batch,
    image_key,
    now_ms,
)
from common.model_file import model_version
from common.settings import Settings
from tests.classifier.conftest import JobClient
from tests.classifier.test_worker import sha, unique_jpeg
from tests.support import rabbitmq_api
from tests.support.metrics import scrape, total
from tests.support.tally import Tally

JOBS = 3


def claimed(sha256: str) -> JobHeaders:
    return JobHeaders(sha256=sha256, deadline_ms=now_ms() + 30_000, top_k=5, image_in_redis=True)


def job_batch(reply_to: str, entries: list[tuple[str, JobHeaders]]) -> aio_pika.Message:
    return aio_pika.Message(encode_job_batch(entries), content_type=JOB_BATCH_CONTENT_TYPE, reply_to=reply_to)


class Handed(Tally):
    """What the consumer hands the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[Delivery] = []

    def size(self) -> int:
        return len(self.deliveries)

    async def handle(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.arrived()


@pytest.fixture
async def publisher(rabbitmq_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def start_consumer(rabbitmq_url: str, queue_name: str, handed: Handed) -> Consumer:
    consumer = Consumer(
        Settings(rabbitmq_url=rabbitmq_url, queue_name=queue_name, prefetch=10),
        handed.handle,
        asyncio.Event(),
    )
    assert await consumer.open()
    await consumer.consume()
    return consumer


async def messages_in(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    await asyncio.sleep(0.3)  # the broker requeues what a closed channel held
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


@pytest.fixture
async def batch_in_hand(
    rabbitmq_url: str, queue_name: str, publisher
) -> AsyncIterator[tuple[Consumer, list[Delivery], list[tuple[str, JobHeaders]]]]:
    """A job batch of JOBS jobs published and handed over by a real Consumer: the consumer, what it
    handed over, and the batch's entries. The consumer is closed afterwards."""
    handed = Handed()
    consumer = await start_consumer(rabbitmq_url, queue_name, handed)
    try:
        entries = [(f"job-{i}", claimed(f"{i}" * 64)) for i in range(JOBS)]
        await publisher.default_exchange.publish(job_batch("replies-here", entries), routing_key=queue_name)
        await handed.wait_for(JOBS)
        yield consumer, handed.deliveries, entries
    finally:
        await consumer.close()


async def test_a_job_batch_is_handed_over_as_its_jobs_and_settled_with_the_last(
    batch_in_hand, queue_name: str, publisher
) -> None:
    consumer, jobs, entries = batch_in_hand
    assert all(isinstance(job, BatchedJob) for job in jobs)
    assert [(job.correlation_id, job.reply_to, job.delivered_before) for job in jobs] == [
        (f"job-{i}", "replies-here", 0) for i in range(JOBS)
    ]
    assert [JobHeaders.from_amqp(dict(job.headers)) for job in jobs] == [h for _, h in entries]
    await consumer.acknowledge(jobs[:-1])  # the message waits for its last job
    await consumer.close()
    assert await messages_in(publisher, queue_name) == 1


async def test_a_job_dead_lettered_takes_its_message_to_the_dead_letter_queue_once_all_are_settled(
    batch_in_hand, queue_name: str, publisher
) -> None:
    consumer, (first, *rest), _ = batch_in_hand
    await first.dead_letter()  # a job kept for a human: the pipeline does this before the acks
    await consumer.acknowledge(rest)
    assert await messages_in(publisher, dead_letter_queue(queue_name)) == 1
    await consumer.close()
    assert await messages_in(publisher, queue_name) == 0


async def test_a_job_batch_delivered_again_is_split_into_single_jobs(
    rabbitmq_url: str, queue_name: str, publisher
) -> None:
    """A worker that held a batch died (here: a connection closed without an ack): the next worker
    sends its jobs back one per message, counting the batch's deliveries, and acks the batch."""
    # The queue as the worker declares it (a quorum queue: it counts deliveries), then one delivery lost.
    handed = Handed()
    await (await start_consumer(rabbitmq_url, queue_name, handed)).close()
    entries = [(f"job-{i}", claimed(f"{i}" * 64)) for i in range(JOBS)]
    await publisher.default_exchange.publish(job_batch("replies-here", entries), routing_key=queue_name)
    lost = await aio_pika.connect(rabbitmq_url)
    channel = await lost.channel()
    queue = await channel.get_queue(queue_name, ensure=False)
    taken = await queue.get(no_ack=False, timeout=5)
    assert taken.content_type == JOB_BATCH_CONTENT_TYPE
    await lost.close()  # the broker puts the batch back, delivered once

    consumer = await start_consumer(rabbitmq_url, queue_name, handed)
    try:
        await handed.wait_for(JOBS)
        singles = handed.deliveries
        assert all(isinstance(job, AmqpDelivery) for job in singles)
        assert sorted(job.correlation_id or "" for job in singles) == [cid for cid, _ in entries]
        assert all(job.reply_to == "replies-here" and job.delivered_before == 1 for job in singles)
        assert [JobHeaders.from_amqp(dict(job.headers)) for job in singles] == [h for _, h in entries]
    finally:
        await consumer.close()
    # The batch was acked; the singles, in hand and unacked, are what comes back.
    assert await messages_in(publisher, queue_name) == JOBS


async def test_a_malformed_job_batch_is_handed_over_as_it_came(
    rabbitmq_url: str, queue_name: str, publisher
) -> None:
    handed = Handed()
    consumer = await start_consumer(rabbitmq_url, queue_name, handed)
    try:
        await publisher.default_exchange.publish(
            aio_pika.Message(b'{"jobs": "none"}', content_type=JOB_BATCH_CONTENT_TYPE, reply_to="x"),
            routing_key=queue_name,
        )
        await handed.wait_for(1)
        (delivery,) = handed.deliveries
        assert (
            isinstance(delivery, AmqpDelivery) and delivery.correlation_id is None
        )  # the pipeline dead-letters it
    finally:
        await consumer.close()


async def test_the_worker_answers_each_job_of_a_batch(
    workers, jobs: JobClient, redis_client, photos, queue_name, lite0_model
) -> None:
    """Every job of a batch answered as a job; the message acked, or dead-lettered for a malformed job."""
    worker = workers(MAX_BATCH=8)
    assert jobs.reply_queue is not None
    images = [unique_jpeg(photos[name]) for name in ("coffee", "chelsea", "coffee")]
    for image in images:
        await redis_client.set(image_key(sha(image)), image, px=60_000)
    good = [(uuid.uuid4().hex, claimed(sha(image))) for image in images]
    gone = (uuid.uuid4().hex, claimed(sha(uuid.uuid4().bytes)))  # its image never put in Redis
    await jobs.channel.default_exchange.publish(
        job_batch(jobs.reply_queue.name, [*good, gone]), routing_key=queue_name
    )

    replies = await jobs.wait_for([cid for cid, _ in good] + [gone[0]])
    labels = [replies[cid].data["top"][0]["label"] for cid, _ in good]
    assert labels[0] == labels[2] == "espresso" and labels[1] in {"tabby", "tiger cat", "Egyptian cat"}
    assert replies[gone[0]].data["error"]["code"] == "image_missing"
    version = model_version(lite0_model)
    for image in images:
        assert await redis_client.exists(cache_key(version, sha(image))) == 1
    rabbitmq_api.wait_until_drained(queue_name)  # the message acked
    assert await messages_in(jobs.channel, dead_letter_queue(queue_name)) == 0
    samples = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
    assert total(samples, "classifier_batch_size_sum") == 3

    # A batch with a malformed job (no sha256): that one answered internal, the other answered, and
    # the message, once both are settled, kept in the dead-letter queue.
    image = unique_jpeg(photos["coffee"])
    await redis_client.set(image_key(sha(image)), image, px=60_000)
    fine = (uuid.uuid4().hex, claimed(sha(image)))
    bad = uuid.uuid4().hex
    body = encode_job_batch([fine]).replace(
        b"]}", b',{"correlation_id":"' + bad.encode() + b'","headers":{"top_k":5}}]}'
    )
    await jobs.channel.default_exchange.publish(
        aio_pika.Message(body, content_type=JOB_BATCH_CONTENT_TYPE, reply_to=jobs.reply_queue.name),
        routing_key=queue_name,
    )
    replies = await jobs.wait_for([fine[0], bad])
    assert replies[fine[0]].data["ok"]
    assert replies[bad].data["error"]["code"] == "internal"
    deadline = time.monotonic() + 10
    while await messages_in(jobs.channel, dead_letter_queue(queue_name)) < 1 and time.monotonic() < deadline:
        pass
    assert await messages_in(jobs.channel, dead_letter_queue(queue_name)) == 1
    assert await messages_in(jobs.channel, queue_name) == 0


async def test_a_job_batch_that_cannot_be_split_is_not_held_and_ends_dead_lettered(
    rabbitmq_url: str, queue_name: str, publisher
) -> None:
    """A batch delivered again whose jobs cannot be sent alone (a header AMQP cannot carry: an integer
    over 64 bits) goes back to the queue each time, counted, until the queue's delivery limit
    dead-letters it: never held unsettled, never handed to the pipeline."""
    handed = Handed()
    await (await start_consumer(rabbitmq_url, queue_name, handed)).close()  # declares the queues
    entries = [(f"job-{i}", claimed(f"{i}" * 64)) for i in range(2)]
    body = encode_job_batch(entries).replace(b'"top_k":5', b'"top_k":5,"huge":' + str(10**30).encode(), 1)
    await publisher.default_exchange.publish(
        aio_pika.Message(body, content_type=JOB_BATCH_CONTENT_TYPE, reply_to="x"), routing_key=queue_name
    )
    lost = await aio_pika.connect(rabbitmq_url)
    queue = await (await lost.channel()).get_queue(queue_name, ensure=False)
    await queue.get(no_ack=False, timeout=5)
    await lost.close()  # delivered once: the next delivery is split

    consumer = await start_consumer(rabbitmq_url, queue_name, handed)
    try:
        deadline = time.monotonic() + 15
        while await messages_in(publisher, dead_letter_queue(queue_name)) < 1 and time.monotonic() < deadline:
            pass
        assert await messages_in(publisher, dead_letter_queue(queue_name)) == 1
        assert await messages_in(publisher, queue_name) == 0
        assert handed.deliveries == []
    finally:
        await consumer.close()
