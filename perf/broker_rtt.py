"""The bare broker round trip of one job: the floor under the one-client latency.

A request at one client cannot avoid one RabbitMQ round trip: publish (with
confirm) to the request queue, delivery to a consumer, a reply to the
requester's reply queue. This measures exactly that with nothing else: the
gateway's own :class:`~gateway.rpc.RpcClient` on a bench-unique queue declared
with the request queue's real arguments (``common.topology``: quorum, bounded,
dead-lettered), a consumer on its own connection that answers at once with a
reply of the real shape, and real photo bodies with the real headers.

    python -m perf.broker_rtt --photo-dir perf/.run/photos/seed5   # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
import uuid
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.contract import JobHeaders, ModelInfo, Prediction, SuccessReply, dead_letter_queue, now_ms
from common.settings import Settings
from common.topology import request_queue_arguments
from gateway.rpc import RpcClient

# A reply of the real size and shape (top-5), built once: the consumer does no work of its own.
_ECHO_TOP = [Prediction(label=f"class {i}", index=i, score=0.2) for i in range(5)]


async def measure(photos: list[bytes], rounds: int, gap_s: float) -> dict[str, object]:
    # The gateway's own RPC client publishes (with confirm) and waits for the reply; it also
    # declares the request queue with the real topology, here on a bench-unique name.
    settings = Settings.from_env(queue_name=f"perf.echo.{uuid.uuid4().hex[:8]}")
    rpc = RpcClient(settings)
    await rpc.start()
    responder = await aio_pika.connect_robust(settings.rabbitmq_url)
    try:
        answer = await responder.channel()
        await answer.set_qos(prefetch_count=16)
        queue = await answer.get_queue(settings.queue_name)

        async def on_job(message: AbstractIncomingMessage) -> None:  # what a worker does, minus the work
            sha256 = str((message.headers or {}).get("sha256", ""))
            reply = SuccessReply(
                sha256=sha256, model=ModelInfo("echo", "0"), top=_ECHO_TOP, inference_ms=0.0, batch_size=1
            )
            await answer.default_exchange.publish(
                aio_pika.Message(
                    reply.to_json(), correlation_id=message.correlation_id, content_type="application/json"
                ),
                routing_key=message.reply_to or "",
            )
            await message.ack()

        job_consumer = await queue.consume(on_job)
        times: list[float] = []
        for i in range(rounds):
            body = photos[i % len(photos)]
            headers = JobHeaders(
                sha256=hashlib.sha256(body).hexdigest(), deadline_ms=now_ms() + 30_000, top_k=5
            )
            start = time.perf_counter()
            reply = await rpc.call(body, content_type="image/jpeg", headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            if not isinstance(
                reply, SuccessReply
            ):  # the echo is wired wrong: the figure would be meaningless
                raise RuntimeError(f"the echo consumer answered {reply!r}")
            await asyncio.sleep(gap_s)  # one client: the consumer goes idle between jobs, as in the bench
        measured = sorted(times[len(times) // 10 :])  # the first tenth warms the connections up
        await queue.cancel(job_consumer)
        await answer.queue_delete(settings.queue_name)
        await answer.queue_delete(dead_letter_queue(settings.queue_name))
    finally:
        await rpc.close()
        await responder.close()
    return {
        "queue_type": request_queue_arguments(settings)["x-queue-type"],
        "body_kib": round(sum(len(p) for p in photos) / len(photos) / 1024, 1),
        "jobs": len(measured),
        "rtt_ms": {
            "p50": statistics.median(measured),
            "p95": measured[int(0.95 * (len(measured) - 1))],
            "mean": statistics.fmean(measured),
        },
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
