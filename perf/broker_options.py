"""RabbitMQ's CPU per job for the ways a job could cross the broker, side by side.

Nothing of ours but the broker: a requester publishes jobs (publisher confirms, ``mandatory``, the
real headers and an ``expiration``) to a queue declared for this run, a responder consumes them
(prefetch 16), publishes a ~400-byte reply to the requester's reply queue and acks. psutil reads the
CPU time of every ``beam.smp`` listening on ``--ports`` over each variant's window; divided by the
jobs done, that is the broker's CPU per job. Variants run in alternating rounds (the host drifts);
each keeps its lowest round. ``--pace-s`` makes each of the 16 requesters wait between jobs, to
measure at the rate the system really runs (a broker's CPU per job is higher at a low rate: fewer
jobs share each write to its log and each wake-up).

The variants (``--variants`` picks some):

- ``inline``: the ~100 KB photo in the message body, the reply published with a confirm (before issue 13);
- ``claim``: the claim check (an empty body; the image waits in Redis), the reply without a confirm (now);
- ``claim-confirmed``: the claim check, the reply with a confirm;
- ``inline-unconfirmed``: the photo in the body, the reply without a confirm;
- ``claim-batch-acks``: the claim check, and the responder acks 8 jobs at a time (``multiple``; the
  worker does so for a batch's successes);
- ``claim-direct-reply``: the claim check, replies through ``amq.rabbitmq.reply-to`` (direct reply-to:
  no reply queue) instead of the requester's own reply queue;
- ``claim-direct-batch-acks``: both;
- ``claim-job-unconfirmed``: the claim check, the job published without a confirm (a reference: the
  gateway keeps its confirms, a nack is how a full queue answers 503);
- ``claim-reply-batches``: the claim check, and the responder answers 8 jobs at a time with one reply
  message (a reply batch) and one ``multiple`` ack (the worker does both for a batch);
- ``claim-job-batches-4``: the claim check with 4 jobs in each message (a requester that batches its
  publishes), one reply message per job message, acks in pairs: jobs as the broker would see them if the
  gateway grouped the jobs it publishes at the same moment;
- ``classic``: the claim check on a classic queue (no delivery limit, no replication: a reference only).

    python -m perf.broker_options --jobs 960 --pace-s 0.15 --rounds 2
    python -m perf.broker_options --url amqp://guest:guest@127.0.0.1:5681/ --ports 5681 5682 5683 --group-size 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass

import aio_pika
import psutil
from aio_pika.abc import AbstractIncomingMessage

from devtools.processes import REPO_ROOT
from perf.stats import cpu_seconds, listening_pids

PHOTO = (REPO_ROOT / "tests" / "data" / "coffee.jpg").read_bytes()
REPLY = b'{"ok":true,"sha256":"' + b"a" * 64 + b'","top":[' + b'{"label":"espresso","score":0.5},' * 5 + b"]}"
CLIENTS = 16
ACK_EVERY = 8


@dataclass(frozen=True)
class Variant:
    """One way a job crosses the broker."""

    body: bytes
    reply_confirmed: bool
    queue_type: str = "quorum"
    ack_every: int = 1
    direct_reply: bool = False  # replies through amq.rabbitmq.reply-to instead of a reply queue
    job_confirmed: bool = True
    reply_batches: bool = False  # one reply message for the ack_every jobs held (a reply batch)
    jobs_per_message: int = 1


VARIANTS = {
    "inline": Variant(PHOTO, reply_confirmed=True),
    "claim": Variant(b"", reply_confirmed=False),
    "claim-confirmed": Variant(b"", reply_confirmed=True),
    "inline-unconfirmed": Variant(PHOTO, reply_confirmed=False),
    "claim-batch-acks": Variant(b"", reply_confirmed=False, ack_every=ACK_EVERY),
    "claim-direct-reply": Variant(b"", reply_confirmed=False, direct_reply=True),
    "claim-direct-batch-acks": Variant(b"", reply_confirmed=False, direct_reply=True, ack_every=ACK_EVERY),
    "claim-job-unconfirmed": Variant(b"", reply_confirmed=False, job_confirmed=False),
    "claim-reply-batches": Variant(b"", reply_confirmed=False, ack_every=ACK_EVERY, reply_batches=True),
    "claim-job-batches-4": Variant(b"", reply_confirmed=False, ack_every=2, jobs_per_message=4),
    "classic": Variant(b"", reply_confirmed=False, queue_type="classic"),
}


def broker_cpu_s(processes: list[psutil.Process]) -> float:
    return sum(cpu_seconds(p) for p in processes)


async def run(variant: Variant, args: argparse.Namespace, beam: list[psutil.Process]) -> tuple[float, float]:
    """(broker CPU ms per job, jobs per second) of one window."""
    queue_name = f"perf.options.{uuid.uuid4().hex[:8]}"
    requester = await aio_pika.connect(args.url)
    responder = await aio_pika.connect(args.url)
    try:
        channel = await requester.channel(publisher_confirms=variant.job_confirmed)
        arguments: dict[str, object] = {"x-queue-type": variant.queue_type}
        if variant.queue_type == "quorum":
            arguments |= {
                "x-quorum-initial-group-size": args.group_size,
                "x-delivery-limit": 3,
                "x-max-length": 256,
                "x-overflow": "reject-publish",
            }
        await channel.declare_queue(queue_name, durable=True, arguments=arguments)
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            # A reply batch names its jobs in its body (one line each); a single reply in its property.
            for correlation_id in (message.correlation_id or "", *message.body.decode().split("\n")[1:]):
                future = waiting.pop(correlation_id, None)
                if future is not None and not future.done():
                    future.set_result(message.body)

        if variant.direct_reply:
            reply_queue = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        else:
            reply_queue = await channel.declare_queue(f"{queue_name}.reply", exclusive=True, auto_delete=True)
        await reply_queue.consume(on_reply, no_ack=True)

        answer = await responder.channel(publisher_confirms=variant.reply_confirmed)
        await answer.set_qos(prefetch_count=16)
        held: list[AbstractIncomingMessage] = []

        async def on_job(message: AbstractIncomingMessage) -> None:
            if not variant.reply_batches:
                await answer.default_exchange.publish(
                    aio_pika.Message(REPLY * variant.jobs_per_message, correlation_id=message.correlation_id),
                    routing_key=message.reply_to or "",
                )
            held.append(message)
            if len(held) >= variant.ack_every:
                batch = list(held)
                held.clear()
                if variant.reply_batches:
                    names = "".join(f"\n{m.correlation_id}" for m in batch).encode()
                    await answer.default_exchange.publish(
                        aio_pika.Message(REPLY * len(batch) + names), routing_key=message.reply_to or ""
                    )
                await batch[-1].ack(multiple=variant.ack_every > 1)

        await (await answer.get_queue(queue_name, ensure=False)).consume(on_job)

        async def one_job() -> None:
            correlation_id = uuid.uuid4().hex
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting[correlation_id] = future
            headers = {"sha256": "a" * 64, "deadline_ms": 2**62, "top_k": 5}
            if not variant.body:
                headers["image_in_redis"] = True
            message = aio_pika.Message(
                variant.body or REPLY[:150] * (variant.jobs_per_message - 1),  # the other jobs' headers
                correlation_id=correlation_id,
                reply_to=reply_queue.name,
                expiration=10,
                headers=headers,
            )
            await channel.default_exchange.publish(message, routing_key=queue_name, mandatory=True)
            await future

        async def client(jobs: int) -> None:
            for _ in range(jobs // variant.jobs_per_message):
                await one_job()
                if args.pace_s:  # the same jobs per second, in fewer messages
                    await asyncio.sleep(args.pace_s * variant.jobs_per_message)

        for _ in range(4):  # warm up, whole ack batches (a reply batch goes out once ACK_EVERY are in)
            await asyncio.gather(*(one_job() for _ in range(ACK_EVERY)))
        per_client = args.jobs // CLIENTS // ACK_EVERY * ACK_EVERY
        cpu0, t0 = broker_cpu_s(beam), time.perf_counter()
        await asyncio.gather(*(client(per_client) for _ in range(CLIENTS)))
        elapsed, cpu1 = time.perf_counter() - t0, broker_cpu_s(beam)
        done = per_client * CLIENTS
        await channel.queue_delete(queue_name)
        return (cpu1 - cpu0) / done * 1000, done / elapsed
    finally:
        await responder.close()
        await requester.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--ports", type=int, nargs="+", default=[5672], help="the broker nodes' AMQP ports")
    parser.add_argument("--group-size", type=int, default=1, help="x-quorum-initial-group-size")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1536)
    parser.add_argument("--pace-s", type=float, default=0.0, help="each requester's pause between jobs")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    beam = [psutil.Process(pid) for port in args.ports for pid in listening_pids(port)]
    assert beam, f"no RabbitMQ node listens on {args.ports}"
    results: dict[str, list[float]] = {name: [] for name in args.variants}
    for round_ in range(1, args.rounds + 1):
        for name in args.variants:
            ms, rate = await run(VARIANTS[name], args, beam)
            results[name].append(ms)
            print(
                f"round {round_} {name:20s} {ms:.3f} ms of broker CPU per job, {rate:.0f} jobs/s", flush=True
            )
    for name, values in results.items():
        print(
            f"{name:20s} lowest {min(values):.3f} ms of broker CPU per job ({', '.join(f'{v:.3f}' for v in values)})"
        )


if __name__ == "__main__":
    asyncio.run(main())
