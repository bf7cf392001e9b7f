"""The bare broker round trip of one job: the floor under the one-client latency.

A request at one client cannot avoid one RabbitMQ round trip: publish (with
confirm) to the request queue, delivery to a consumer, a reply to the
requester's reply queue. This measures exactly that with nothing else: a
bench-unique queue declared with the request queue's real arguments
(``common.topology``: quorum, bounded, dead-lettered), a consumer on its own
connection that answers at once, and real photo bodies with the real headers.

    python -m perf.broker_rtt --photo-dir perf/.run/photos/seed5   # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.contract import JobHeaders, dead_letter_queue, now_ms
from common.settings import Settings
from common.topology import declare_request_queue, request_queue_arguments

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def measure(photos: list[bytes], rounds: int, gap_s: float) -> dict[str, object]:
    settings = Settings.from_env(queue_name=f"perf.echo.{uuid.uuid4().hex[:8]}")
    requester = await aio_pika.connect_robust(RABBITMQ_URL)
    responder = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        publish = await requester.channel(publisher_confirms=True, on_return_raises=True)
        answer = await responder.channel()
        await answer.set_qos(prefetch_count=16)
        queue = await declare_request_queue(answer, settings)
        replies = await publish.declare_queue("", exclusive=True, auto_delete=True)
        waiting: dict[str, asyncio.Future[float]] = {}

        async def on_job(message: AbstractIncomingMessage) -> None:  # what a worker does, minus the work
            await answer.default_exchange.publish(
                aio_pika.Message(b'{"ok": true}', correlation_id=message.correlation_id,
                                 content_type="application/json"),
                routing_key=message.reply_to or "",
            )
            await message.ack()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

        job_consumer = await queue.consume(on_job)
        await replies.consume(on_reply, no_ack=True)
        times: list[float] = []
        for i in range(rounds):
            body = photos[i % len(photos)]
            headers = JobHeaders(sha256=hashlib.sha256(body).hexdigest(), deadline_ms=now_ms() + 30_000, top_k=5)
            correlation_id = uuid.uuid4().hex
            waiting[correlation_id] = asyncio.get_running_loop().create_future()
            start = time.perf_counter()
            await publish.default_exchange.publish(
                aio_pika.Message(body, content_type="image/jpeg", correlation_id=correlation_id,
                                 reply_to=replies.name, expiration=30, headers=headers.to_amqp()),
                routing_key=settings.queue_name, mandatory=True,
            )
            done = await asyncio.wait_for(waiting[correlation_id], 10)
            times.append((done - start) * 1000)
            await asyncio.sleep(gap_s)  # one client: the consumer goes idle between jobs, as in the bench
        measured = sorted(times[len(times) // 10:])  # the first tenth warms the connections up
        await queue.cancel(job_consumer)
        await answer.queue_delete(settings.queue_name)
        await answer.queue_delete(dead_letter_queue(settings.queue_name))
    finally:
        await requester.close()
        await responder.close()
    return {
        "queue_type": request_queue_arguments(settings)["x-queue-type"],
        "body_kib": round(sum(len(p) for p in photos) / len(photos) / 1024, 1),
        "jobs": len(measured),
        "rtt_ms": {"p50": statistics.median(measured), "p95": measured[int(0.95 * (len(measured) - 1))],
                   "mean": statistics.fmean(measured)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.photo_dir.glob("*.jpg"))[:100]]
    print(json.dumps(asyncio.run(measure(photos, args.rounds, args.gap_ms / 1000))))


if __name__ == "__main__":
    main()
