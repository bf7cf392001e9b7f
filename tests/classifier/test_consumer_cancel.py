"""The broker cancels the worker's consumer (its queue was deleted under it): the worker says
so in its log, declares both queues again and consumes again, as exactly one consumer."""

from __future__ import annotations

import asyncio

import aio_pika

from common.contract import dead_letter_queue
from common.topology import DEAD_LETTER_MAX_BYTES
from tests.classifier.test_worker import unique_jpeg
from tests.support import rabbitmq_api


async def consumers(rabbitmq_url: str, queue_name: str) -> int | None:
    """The broker's own count (no statistics lag); None while the queue does not exist."""
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        return queue.declaration_result.consumer_count


async def test_deleted_queue_is_declared_again_and_consumed(workers, jobs, photos, queue_name, rabbitmq_url):
    worker = workers()
    assert await consumers(rabbitmq_url, queue_name) == 1
    # The dead-letter queue first: deleting the request queue is what the worker notices.
    for name in (dead_letter_queue(queue_name), queue_name):
        rabbitmq_api.delete_queue(name)

    await asyncio.to_thread(worker.wait_for_log, "RabbitMQ cancelled this worker's consumer", 10)
    await asyncio.to_thread(worker.wait_for_log, f"consuming queue {queue_name!r} again", 30)
    assert " ERROR classifier.consumer: RabbitMQ cancelled" in worker.log_text()
    await asyncio.sleep(3)  # give aio-pika's own consumer recovery time to (not) add a second one
    assert await consumers(rabbitmq_url, queue_name) == 1
    dead = rabbitmq_api.wait_for(lambda: rabbitmq_api.queue(dead_letter_queue(queue_name)), what="the DLQ")
    assert dead["arguments"]["x-max-length-bytes"] == DEAD_LETTER_MAX_BYTES

    reply = await jobs.reply(await jobs.publish(unique_jpeg(photos["coffee"])), timeout=30)
    assert reply.data["ok"] and reply.data["top"][0]["label"] == "espresso"
    assert worker.proc.poll() is None
    assert worker.log_text().count("RabbitMQ cancelled this worker's consumer") == 1
