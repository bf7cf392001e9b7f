"""The RabbitMQ topology of the request queue, declared identically by gateway and workers.

RabbitMQ refuses a re-declaration whose arguments differ (PRECONDITION_FAILED),
so both sides must build the arguments here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue

from common.contract import dead_letter_queue
from common.settings import Settings

# The dead-letter queue is for inspection; bound it so a flood of poison cannot fill the disk:
# by count, and by bytes (10 000 jobs of up to MAX_UPLOAD_MB each could still be 100 GB).
DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_MAX_BYTES = 256 * 1024 * 1024


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of the request queue.

    A quorum queue, because only quorum queues count deliveries: a job that
    crashes worker after worker is dead-lettered after ``delivery_limit``
    attempts instead of looping forever; and because it is replicated on
    ``quorum_group_size`` nodes of a cluster, so losing a node loses no job.
    ``reject-publish`` makes a full queue nack the publish, which the gateway
    turns into an immediate 503.
    """
    return {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": settings.quorum_group_size,
        "x-max-length": settings.queue_max_length,
        "x-overflow": "reject-publish",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(settings.queue_name),
    }


def dead_letter_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of the dead-letter queue: replicated like the request queue.

    A classic queue would live on one node only: with that node down, every
    re-declaration (each reconnecting client) would be refused, and its jobs lost.
    """
    return {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": settings.quorum_group_size,
        "x-max-length": DEAD_LETTER_MAX_LENGTH,
        "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
        "x-overflow": "drop-head",
    }


async def declare_request_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """Declare the dead-letter queue and the request queue; return the request queue."""
    await channel.declare_queue(
        dead_letter_queue(settings.queue_name),
        durable=True,
        arguments=dead_letter_queue_arguments(settings),
    )
    return await channel.declare_queue(
        settings.queue_name, durable=True, arguments=request_queue_arguments(settings)
    )
