"""The worker's RabbitMQ side: connect, consume, consume again after a cancel, publish, settle, close.

Everything AMQP lives here (aio-pika, the topology, the broker's headers); the
decisions about a job live in :mod:`classifier.pipeline`, which receives each
message wrapped in an :class:`AmqpDelivery` (dramatiq's ``Consumer`` and
``MessageProxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from common.broker import backoff_delay, connect_until_up
from common.contract import (
    HEADER_DEADLINE_MS,
    HEADER_EARLIER_DELIVERIES,
    HEADER_REPLY_BATCHES,
    JOB_BATCH_CONTENT_TYPE,
    REPLY_BATCH_CONTENT_TYPE,
    ContractError,
    Reply,
    encode_reply_batch,
    now_ms,
    parse_job_batch,
)
from common.settings import Settings
from common.topology import declare_request_queue

if TYPE_CHECKING:
    import aiormq

    from classifier.pipeline import Delivery

log = logging.getLogger(__name__)

# A reply publish (with its broker confirm) that takes longer than this has failed.
PUBLISH_TIMEOUT_S = 10.0
# Deliveries already on the wire when the consumer is cancelled land within this.
CANCEL_GRACE_S = 0.1
# Set by quorum queues on a redelivery: how many times the job was delivered before (RabbitMQ's
# header, not our contract's). On 3.10, delivery n carries n-1 (the first carries none).
DELIVERY_COUNT_HEADER = "x-delivery-count"


class UnsettledTags:
    """The delivery tags of one AMQP channel handed to the pipeline and not yet settled, oldest first.

    An ack with ``multiple`` settles every unsettled delivery up to its tag on the channel, so it
    is sent only where the deliveries being acked are exactly the oldest unsettled ones: a job
    still in hand (a later batch's, or one whose reply is still on its way) is never acked by it.
    """

    __slots__ = ("_tags",)

    def __init__(self) -> None:
        # A broker numbers a channel's deliveries 1, 2, 3...: insertion order is tag order.
        self._tags: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self._tags)

    def add(self, tag: int) -> None:
        self._tags[tag] = None

    def discard(self, tag: int) -> None:
        self._tags.pop(tag, None)

    def multiple_ack_tag(self, tags: Sequence[int]) -> int | None:
        """The tag that one ack with ``multiple`` names to settle exactly ``tags``, or None when it
        would settle another delivery too (or ``tags`` holds a tag not unsettled here)."""
        wanted = set(tags)
        if len(wanted) != len(tags):
            return None
        highest = max(wanted)
        covered = 0
        for tag in self._tags:
            if tag > highest:
                break
            if tag not in wanted:
                return None
            covered += 1
        return highest if covered == len(wanted) else None


class AmqpDelivery:
    """One aio-pika message seen as a :class:`~classifier.pipeline.Delivery`."""

    __slots__ = ("channel", "consumer", "message")

    def __init__(self, message: AbstractIncomingMessage, consumer: Consumer) -> None:
        self.message = message
        self.consumer = consumer
        # The AMQP channel it came on (delivery tags are per channel; a reconnect opens another).
        # Taken now: aio-pika's ``message.channel`` raises once that channel has closed.
        self.channel: object = message.channel

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> Mapping[str, object]:
        return self.message.headers or {}

    @property
    def correlation_id(self) -> str | None:
        return self.message.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.message.reply_to

    @property
    def delivered_before(self) -> int:
        # The broker's count, plus the deliveries of the job batch it was split from, if it was.
        return _int_header(self.headers.get(DELIVERY_COUNT_HEADER)) + _int_header(
            self.headers.get(HEADER_EARLIER_DELIVERIES)
        )

    @property
    def reply_batches(self) -> bool:
        """Whether its requester also reads reply batches (the job's ``reply_batches`` header)."""
        return self.headers.get(HEADER_REPLY_BATCHES) is True

    async def reply(self, reply: Reply) -> bool:
        assert self.reply_to is not None and self.correlation_id is not None
        return await self.consumer.publish(reply.to_json(), self.reply_to, self.correlation_id)

    async def ack(self) -> None:
        self.consumer.settled([self])
        await self.message.ack()

    async def dead_letter(self) -> None:
        self.consumer.settled([self])
        await self.message.reject(requeue=False)  # -> <queue>.dead

    async def requeue(self) -> None:
        self.consumer.settled([self])
        await self.message.nack(requeue=True)


class Verdict(IntEnum):
    """How a job is settled; a job batch's message is settled by the strongest of its jobs' verdicts."""

    ACK = 0
    DEAD_LETTER = 1  # kept for a human, with the jobs that were answered beside it
    REQUEUE = 2  # a reply not published: the message comes again (its answered jobs are cheap twice)


class JobBatchMessage:
    """One AMQP message that carries several jobs (a job batch): settled once, when its last job is."""

    __slots__ = ("_left", "_verdict", "delivery")

    def __init__(self, delivery: AmqpDelivery, jobs: int) -> None:
        self.delivery = delivery
        self._left = jobs
        self._verdict = Verdict.ACK

    def settle(self, verdict: Verdict) -> Verdict | None:
        """Count one job settled; the message's verdict once every job is, else None."""
        self._left -= 1
        self._verdict = max(self._verdict, verdict)
        return self._verdict if self._left == 0 else None

    async def finish(self, verdict: Verdict) -> None:
        if verdict is Verdict.REQUEUE:
            await self.delivery.requeue()
        elif verdict is Verdict.DEAD_LETTER:
            await self.delivery.dead_letter()
        else:
            await self.delivery.ack()


class BatchedJob:
    """One job of a job batch seen as a :class:`~classifier.pipeline.Delivery` (its image is in Redis)."""

    __slots__ = ("batch", "correlation_id", "headers")

    body = b""

    def __init__(self, batch: JobBatchMessage, correlation_id: str, headers: Mapping[str, object]) -> None:
        self.batch = batch
        self.correlation_id: str | None = correlation_id
        self.headers = headers

    @property
    def reply_to(self) -> str | None:
        return self.batch.delivery.reply_to

    @property
    def delivered_before(self) -> int:
        return self.batch.delivery.delivered_before

    @property
    def reply_batches(self) -> bool:
        return self.headers.get(HEADER_REPLY_BATCHES) is True

    async def reply(self, reply: Reply) -> bool:
        assert self.reply_to is not None and self.correlation_id is not None
        return await self.batch.delivery.consumer.publish(reply.to_json(), self.reply_to, self.correlation_id)

    async def ack(self) -> None:
        await self._settle(Verdict.ACK)

    async def dead_letter(self) -> None:
        await self._settle(Verdict.DEAD_LETTER)

    async def requeue(self) -> None:
        await self._settle(Verdict.REQUEUE)

    async def _settle(self, verdict: Verdict) -> None:
        final = self.batch.settle(verdict)
        if final is not None:
            await self.batch.finish(final)


class Consumer:
    """Consumes the request queue and hands each message to ``handle`` as an :class:`AmqpDelivery`.

    :meth:`open` connects (retrying until the broker answers or ``stop`` is
    set); :meth:`consume` declares the queues and starts consuming; :meth:`cancel`
    stops new deliveries; :meth:`close` closes the connection.
    """

    def __init__(
        self, settings: Settings, handle: Callable[[Delivery], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        self.settings = settings
        self._handle = handle
        self._stop = stop
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._reconsuming: asyncio.Task[None] | None = None
        # Per AMQP channel (a reconnect opens a new one, numbering its deliveries from 1 again).
        self._unsettled: dict[object, UnsettledTags] = {}

    async def open(self) -> bool:
        """Connect to a node of RABBITMQ_URL (retrying while none answers: e.g. the worker started
        first) and open the channel. False if asked to stop while the broker was down."""
        self._connection = await connect_until_up(
            self.settings.rabbitmq_addresses,
            name=f"classifier {socket.gethostname()} {os.getpid()}",
            stop=self._stop,
        )
        if self._connection is None:
            return False
        self._connection.reconnect_callbacks.add(_log_reconnected)
        # No publisher confirms: a job's reply goes out on this channel before the job's ack, and
        # RabbitMQ handles a channel's frames in order, so an acked job's reply has been routed (a
        # lost connection loses both, and the job is delivered again). A confirm per reply cost
        # the broker CPU and the worker a round trip, and guaranteed nothing more.
        self._channel = await self._connection.channel(publisher_confirms=False)
        assert self._channel is not None
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        # The hook lives on the underlying AMQP channel, which a reconnect replaces.
        self._channel.reopen_callbacks.add(self._watch_consumer_cancel)  # type: ignore[arg-type]
        await self._watch_consumer_cancel(self._channel)
        return True

    async def consume(self) -> None:
        """Declare the topology (both queues) and consume the request queue."""
        assert self._channel is not None
        self._queue = await declare_request_queue(self._channel, self.settings)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        delivery = AmqpDelivery(message, self)
        if message.delivery_tag is not None:
            self._unsettled.setdefault(delivery.channel, UnsettledTags()).add(message.delivery_tag)
        if message.content_type != JOB_BATCH_CONTENT_TYPE:
            await self._handle(delivery)
            return
        try:
            jobs = parse_job_batch(message.body)
        except ContractError as exc:
            log.warning("%s", exc)
            await self._handle(delivery)  # no job headers, no correlation id: the pipeline dead-letters it
            return
        if delivery.delivered_before and len(jobs) > 1:
            await self._split(delivery, jobs)
            return
        batch = JobBatchMessage(delivery, len(jobs))
        for correlation_id, headers in jobs:
            await self._handle(BatchedJob(batch, correlation_id, headers))

    async def _split(self, delivery: AmqpDelivery, jobs: list[tuple[str, dict[str, Any]]]) -> None:
        """A job batch delivered again (a worker died holding it, or lost its connection): its jobs go
        back to the queue a message each, counting this batch's deliveries, so that a job that kills
        workers is dead-lettered alone, not with the jobs it travelled with.

        Without a confirm: the publishes go out on this channel before the ack, and RabbitMQ handles a
        channel's frames in order, all into the same queue's log; a lost connection loses the ack, and
        the batch comes again (its jobs run twice at worst).
        """
        assert self._channel is not None
        log.warning(
            "a job batch of %d jobs was delivered again (%d delivery(ies) before): sending its jobs "
            "one a message",
            len(jobs),
            delivery.delivered_before,
        )
        try:
            for correlation_id, headers in jobs:
                ms_left = _int_header(headers.get(HEADER_DEADLINE_MS)) - now_ms()
                await self._channel.default_exchange.publish(
                    aio_pika.Message(
                        b"",
                        correlation_id=correlation_id,
                        reply_to=delivery.reply_to,
                        expiration=max(ms_left, 1) / 1000,
                        headers={**headers, HEADER_EARLIER_DELIVERIES: delivery.delivered_before},
                    ),
                    routing_key=self.settings.queue_name,
                    timeout=PUBLISH_TIMEOUT_S,
                )
            await delivery.ack()
        except Exception as exc:  # noqa: BLE001 - e.g. the channel is gone, or a header AMQP cannot carry
            log.warning("splitting a job batch failed (%s); it goes back to the queue", exc)
            # Never held unsettled: back to the queue, counted (the delivery limit bounds the retries).
            with contextlib.suppress(Exception):
                await delivery.requeue()

    def settled(self, deliveries: Iterable[AmqpDelivery]) -> None:
        """Forget these deliveries' tags: they are being settled (or their channel is gone)."""
        for delivery in deliveries:
            tags = self._unsettled.get(delivery.channel)
            if tags is None or delivery.message.delivery_tag is None:
                continue
            tags.discard(delivery.message.delivery_tag)
            if not tags:  # nothing left in hand from this channel (a closed one is forgotten here)
                del self._unsettled[delivery.channel]

    async def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        """Ack these deliveries (a batch's successes): with one ``multiple`` ack per channel where
        they are that channel's oldest unsettled deliveries, else one ack each.

        One ack per batch instead of one per job spares the quorum queue a log entry per job
        (perf/FINDINGS.md: ~0.15 ms of the broker's CPU per job). Raises like an ack would.
        """
        by_channel: dict[object, list[AmqpDelivery]] = {}
        failure: Exception | None = None
        for delivery in deliveries:
            if isinstance(delivery, BatchedJob):  # its message is acked with its last job
                final = delivery.batch.settle(Verdict.ACK)
                if final is None:
                    continue
                if final is not Verdict.ACK:
                    try:
                        await delivery.batch.finish(final)
                    except Exception as exc:  # noqa: BLE001 - the other acks still go out
                        failure = exc
                    continue
                delivery = delivery.batch.delivery
            assert isinstance(delivery, AmqpDelivery)
            by_channel.setdefault(delivery.channel, []).append(delivery)
        for channel, group in by_channel.items():
            unsettled = self._unsettled.get(channel)
            tags = [d.message.delivery_tag for d in group if d.message.delivery_tag is not None]
            highest = unsettled.multiple_ack_tag(tags) if unsettled and len(tags) == len(group) else None
            self.settled(group)
            multiple = highest is not None and len(group) > 1
            if multiple:  # the newest of them names them all
                group = [next(d for d in group if d.message.delivery_tag == highest)]
            for delivery in group:
                try:
                    await delivery.message.ack(multiple=multiple)
                except Exception as exc:  # noqa: BLE001 - the other acks still go out
                    failure = exc
        if failure is not None:
            raise failure

    async def publish_replies(self, answers: Sequence[tuple[Delivery, Reply]]) -> list[bool]:
        """Publish each reply to its job's ``reply_to``; whether each was published (never raises).

        The replies for one reply queue whose jobs said their requester reads reply batches go
        together in one message (``REPLY_BATCH_CONTENT_TYPE``): one publish, one route and one
        delivery per batch instead of per job, for the worker, the broker and the gateway alike.
        """
        batches: dict[str, list[int]] = {}
        singles: list[int] = []
        for index, (delivery, _) in enumerate(answers):
            assert isinstance(delivery, AmqpDelivery | BatchedJob) and delivery.reply_to is not None
            if delivery.reply_batches:
                batches.setdefault(delivery.reply_to, []).append(index)
            else:
                singles.append(index)
        sends: list[tuple[list[int], Awaitable[bool]]] = []
        for reply_to, indices in batches.items():
            if len(indices) == 1:
                singles.extend(indices)
                continue
            body = encode_reply_batch(
                [(str(answers[i][0].correlation_id), answers[i][1].to_json()) for i in indices]
            )
            sends.append((indices, self._publish(body, reply_to, content_type=REPLY_BATCH_CONTENT_TYPE)))
        for index in singles:
            delivery, reply = answers[index]
            assert delivery.reply_to is not None and delivery.correlation_id is not None
            sends.append(([index], self.publish(reply.to_json(), delivery.reply_to, delivery.correlation_id)))
        published = [False] * len(answers)
        for (indices, _), ok in zip(sends, await asyncio.gather(*(send for _, send in sends)), strict=True):
            for index in indices:
                published[index] = ok
        return published

    async def publish(self, body: bytes, reply_to: str, correlation_id: str) -> bool:
        """Publish one reply to ``reply_to``; False if it failed (never raises)."""
        return await self._publish(body, reply_to, correlation_id=correlation_id)

    async def _publish(
        self,
        body: bytes,
        reply_to: str,
        *,
        correlation_id: str | None = None,
        content_type: str = "application/json",
    ) -> bool:
        assert self._channel is not None
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    correlation_id=correlation_id,
                    content_type=content_type,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=reply_to,
                # A reply queue that vanished (its gateway died) just drops the reply.
                mandatory=False,
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the job is requeued, never left unsettled
            log.warning("reply %s to %s not published: %s", correlation_id or "batch", reply_to, exc)
            return False
        return True

    async def _watch_consumer_cancel(self, channel: AbstractRobustChannel) -> None:
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)

    def _on_consumer_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker cancelled our consumer (the queue was deleted, ...): without this,
        the worker would sit idle, connected and healthy-looking, forever."""
        if frame.consumer_tag != self._consumer_tag or self._stop.is_set():
            return
        log.error(
            "RabbitMQ cancelled this worker's consumer of queue %r (was it deleted?); "
            "declaring it again and consuming again",
            self.settings.queue_name,
        )
        if self._reconsuming is None or self._reconsuming.done():
            self._reconsuming = asyncio.create_task(self._reconsume(), name="reconsume")

    async def _reconsume(self) -> None:
        queue, tag = self._queue, self._consumer_tag
        if queue is not None and tag is not None:
            # Forget the dead consumer (the broker ignores a cancel of an unknown tag), so
            # that aio-pika's own recovery does not bring it back as a second consumer.
            with contextlib.suppress(Exception):
                await queue.cancel(tag, nowait=True)
        attempt = 0
        while not self._stop.is_set():
            try:
                await self.consume()
            except Exception as exc:  # noqa: BLE001 - broker trouble: retry with back-off
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning(
                    "consuming again failed (%s: %s); retrying in %g s", type(exc).__name__, exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            log.info("consuming queue %r again", self.settings.queue_name)
            return

    async def cancel(self) -> None:
        """Stop taking deliveries; those already on the wire land within CANCEL_GRACE_S."""
        try:
            if self._queue is not None and self._consumer_tag is not None:
                await self._queue.cancel(self._consumer_tag)
        except Exception as exc:  # noqa: BLE001 - the channel may be gone; its jobs return to the queue
            log.warning("could not cancel the consumer cleanly: %s", exc)
        await asyncio.sleep(CANCEL_GRACE_S)

    async def close(self) -> None:
        if self._reconsuming is not None:
            self._reconsuming.cancel()
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("closing the RabbitMQ connection: %s", exc)


def _int_header(value: object) -> int:
    """A header's integer value: 0 when absent or not a number."""
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return 0


def _log_reconnected(*args: object) -> None:
    # aio-pika re-opens the channel, re-applies the QoS, re-declares the queue and re-consumes
    # (on another node of the cluster if ours went away: common/broker.py).
    # aio-pika passes the connection first; its str() is the node's address without the password.
    log.info("reconnected to RabbitMQ at %s; consuming again", args[0] if args else "?")
