"""The broker seam: request/reply over RabbitMQ with publisher confirms.

One robust connection and one channel per process. Each process owns an
exclusive, auto-delete reply queue with a client-chosen name, so a robust
reconnect re-declares the same name and replies keep finding it. Callers get
typed exceptions (:class:`BrokerUnavailable`, :class:`QueueFull`,
:class:`DeadlineExceeded`, :class:`MalformedReply`), never aio-pika's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from common.broker import connect_until_up
from common.contract import (
    JOB_BATCH_CONTENT_TYPE,
    REPLY_BATCH_CONTENT_TYPE,
    ContractError,
    JobHeaders,
    Reply,
    encode_job_batch,
    now_ms,
    parse_reply,
    parse_reply_batch,
)
from common.settings import Settings, redact
from common.topology import declare_request_queue, request_queue_arguments

log = logging.getLogger(__name__)

T = TypeVar("T")

# A healthy broker confirms a publish in milliseconds; one that takes longer is treated as down.
PUBLISH_CONFIRM_TIMEOUT_S = 5.0
# Bound on one readiness probe round trip.
PROBE_TIMEOUT_S = 2.0
# A queue found full is taken as full for this long: under overload, nacks cost no probe each.
FULL_VERDICT_S = 1.0
# Room for a job's properties and headers on top of its body within the broker's max_message_size.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# How long the count of the request queue's consumers stands before job batches ask the broker again.
CONSUMERS_TTL_S = 2.0
# A job batch is dealt over the workers only in shares of at least this many jobs (perf/FINDINGS.md 14).
LEAST_JOBS_A_SHARE = 2
# How long the outbox waits for company while every worker is busy anyway (a job then waits for a
# running batch, far longer than this): more jobs a message, less broker work (perf/FINDINGS.md 14).
OUTBOX_LINGER_S = 0.004


class RpcError(Exception):
    """A job could not be run over the broker."""


class BrokerUnavailable(RpcError):
    """RabbitMQ is not connected, lost the connection, or cannot route to the request queue."""


class QueueFull(RpcError):
    """The request queue is at its length limit: the broker nacked the publish."""


class DeadlineExceeded(RpcError):
    """No reply came before the job's deadline."""


class MessageTooLarge(RpcError):
    """A job over the broker's maximum message size: never published (the broker would close the channel)."""


class ChannelStuck(Exception):
    """Why the gateway drops its own connection to have a new one (see ``_nacks_without_cause``)."""


class MalformedReply(RpcError):
    """A reply that does not follow the message contract."""


@dataclass(slots=True, eq=False)
class _Outgoing:
    """A job waiting in the outbox for the next job batch, and how its caller learns it was confirmed."""

    correlation_id: str
    content_type: str
    headers: JobHeaders
    confirmed: asyncio.Future[None]


def _unconfirmed(deadline_ms: int) -> RpcError:
    """Why a publish got no confirm in its time: the job's deadline passed, or the broker is slow or gone."""
    if deadline_ms <= now_ms():
        return DeadlineExceeded("the deadline passed while publishing")
    return BrokerUnavailable("RabbitMQ did not confirm the job in time")


def deal(jobs: list[T], ways: int, most: int, least: int = LEAST_JOBS_A_SHARE) -> list[list[T]]:
    """The jobs dealt like cards over ``ways`` messages, fewer if a share would hold under ``least``
    jobs, more if one would hold over ``most``. RabbitMQ dispatches messages, not jobs, and a worker's
    prefetch counts messages: dealt, each consumer gets its share of a burst instead of one taking it
    all; a few jobs stay together, as the broker's cost is per message."""
    count = max(min(ways, len(jobs) // least), -(-len(jobs) // most))
    return [jobs[i::count] for i in range(count) if jobs[i::count]]


def reply_queue_name() -> str:
    """``gateway.reply.<host>.<pid>.<random>``: unique per process, stable across reconnects."""
    return f"gateway.reply.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


class RpcClient:
    """Publishes jobs to the request queue and matches replies to waiting callers by correlation id."""

    def __init__(self, settings: Settings, on_published: Callable[[int], object] | None = None) -> None:
        self.settings = settings
        # Told the number of jobs of each message the broker confirmed (the gateway's histogram).
        self._on_published = on_published
        self.reply_queue = reply_queue_name()
        self._addresses = settings.rabbitmq_addresses  # a malformed RABBITMQ_URL fails here, at start
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._connect_task: asyncio.Task[None] | None = None
        self._dropping: asyncio.Task[Any] | None = None
        self._found_full_at = float("-inf")
        self._ready = asyncio.Event()
        # Jobs (images in Redis) waiting to be published together; one publish of them at a time.
        self._outbox: list[_Outgoing] = []
        self._flushing: asyncio.Task[None] | None = None
        # Consumers on the request queue when last asked: over how many messages a group is dealt.
        self._consumers = 1
        self._consumers_asked_at = float("-inf")
        self._asking: asyncio.Task[int | None] | None = None

    # -- lifecycle -------------------------------------------------------

    async def start(self, wait_s: float = 5.0) -> None:
        """Connect in the background; wait up to ``wait_s`` for the first connection.

        The gateway starts even with RabbitMQ down (it then answers 503 and is
        not ready) and connects as soon as the broker comes up.
        """
        self._connect_task = asyncio.create_task(self._connect_until_up(), name="rpc-connect")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)

    async def close(self) -> None:
        for task in (self._flushing, self._asking):
            if task is not None:
                task.cancel()
        outbox, self._outbox = self._outbox, []
        for job in outbox:
            if not job.confirmed.done():
                job.confirmed.set_exception(BrokerUnavailable("the gateway is shutting down"))
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        self._fail_pending(BrokerUnavailable("the gateway is shutting down"))
        if self._connection is not None:
            await self._connection.close()

    async def _connect_until_up(self) -> None:
        connection = await connect_until_up(
            self._addresses, name=f"gateway {self.reply_queue}", setup=self._open_channel
        )
        assert connection is not None  # no stop event: it returns only once connected
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection = connection
        self._ready.set()
        log.info(
            "connected to RabbitMQ; request queue %r, reply queue %r",
            self.settings.queue_name,
            self.reply_queue,
        )

    async def _open_channel(self, connection: AbstractRobustConnection) -> None:
        """The channel, the topology and the reply queue's consumer; restored by aio-pika on every
        reconnect, so the exclusive reply queue is re-created on whichever node we reach."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_request_queue(channel, self.settings)
        reply_queue = await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self._channel = channel

    def _on_connection_lost(self, _: Any, exc: BaseException | None) -> None:
        # The exclusive reply queue dies with the connection: replies to jobs in
        # flight are lost, so tell their callers now instead of at the deadline.
        if self._pending:
            log.warning("RabbitMQ connection lost (%s); failing %d calls in flight", exc, len(self._pending))
        self._fail_pending(BrokerUnavailable("the connection to RabbitMQ was lost"))

    def _on_reconnected(self, connection: Any, *_: Any) -> None:
        log.info(
            "reconnected to RabbitMQ at %s; reply queue %r declared again",
            redact(str(connection.url)),
            self.reply_queue,
        )

    def _fail_pending(self, exc: RpcError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # -- state -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        connection, channel = self._connection, self._channel
        return (
            connection is not None
            and channel is not None
            and connection.connected.is_set()
            and not connection.is_closed
            and not channel.is_closed
        )

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def consumer_count(self) -> int | None:
        """Consumers on the request queue, or None when the broker cannot say now.

        Re-declares the queue with its exact arguments (idempotent) instead of a
        passive declare: a passive declare of a missing queue would close the
        channel that carries every call in flight.
        """
        if not self.connected or self._channel is None:
            return None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                channel = await self._channel.get_underlay_channel()
                ok = await channel.queue_declare(
                    self.settings.queue_name, durable=True, arguments=request_queue_arguments(self.settings)
                )
        except Exception as exc:  # noqa: BLE001 - also a channel closed under the probe (aiormq: a bare Exception)
            log.warning("asking RabbitMQ for the consumers of %r failed: %r", self.settings.queue_name, exc)
            return None
        self._consumers, self._consumers_asked_at = int(ok.consumer_count or 0), time.monotonic()
        return self._consumers

    # -- calls -----------------------------------------------------------

    async def call(self, body: bytes, *, content_type: str, headers: JobHeaders) -> Reply:
        """Publish one job and wait for its reply until ``headers.deadline_ms``."""
        if not self.connected or self._channel is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        if len(body) + MESSAGE_OVERHEAD_BYTES > self.settings.broker_max_message_mb * 1024 * 1024:
            raise MessageTooLarge(f"{len(body)} bytes do not fit BROKER_MAX_MESSAGE_MB")
        ms_left = headers.ms_left()
        if ms_left <= 0:
            raise DeadlineExceeded("the deadline passed before the job was sent")
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        # _on_reply reads reply batches: a worker may answer several of our jobs in one message.
        headers = replace(headers, reply_batches=True)
        try:
            if not body and headers.image_in_redis and self.settings.max_jobs_per_message > 1:
                await self._publish_in_batch(correlation_id, content_type, headers)
            else:
                await self._publish(
                    self._job_message(correlation_id, body, content_type, headers), headers.deadline_ms
                )
                self._published(1)
            try:
                async with asyncio.timeout(max(headers.ms_left(), 0) / 1000):
                    return await future
            except TimeoutError:
                raise DeadlineExceeded("no reply before the deadline") from None
        finally:
            # Forget the id: a reply that arrives later is dropped quietly in _on_reply.
            self._pending.pop(correlation_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # failed by a lost connection while the publish failed too: seen

    def _job_message(
        self, correlation_id: str, body: bytes, content_type: str, headers: JobHeaders
    ) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            content_type=content_type,
            correlation_id=correlation_id,
            reply_to=self.reply_queue,
            # The broker drops the job once nobody waits for its answer.
            expiration=max(headers.ms_left(), 1) / 1000,
            headers=headers.to_amqp(),
        )

    # -- job batches -------------------------------------------------------

    async def _publish_in_batch(self, correlation_id: str, content_type: str, headers: JobHeaders) -> None:
        """Put a job whose image is in Redis in the outbox and wait until the broker confirmed it.

        The jobs that arrive while a publish awaits its confirm go out together in the next one
        (group commit): no job waits for company, and under load one message carries several
        jobs through the quorum queue (docs/DESIGN.md, "Job batches").
        """
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(correlation_id, content_type, headers, confirmed))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_outbox(), name="rpc-outbox")
        budget_s = min(headers.ms_left() / 1000, PUBLISH_CONFIRM_TIMEOUT_S)
        try:
            async with asyncio.timeout(max(budget_s, 0.001)):
                await asyncio.shield(confirmed)  # the others of its message still wait for it
        except TimeoutError:
            raise _unconfirmed(headers.deadline_ms) from None

    async def _flush_outbox(self) -> None:
        """Publish the outbox: the jobs waiting go out dealt over one message per consumer of the
        request queue, at most MAX_JOBS_PER_MESSAGE in each, and published together. While the
        workers are all busy, the outbox first waits OUTBOX_LINGER_S for more jobs to join."""
        while self._outbox:
            self._recount_consumers()
            ways = max(self._consumers, 1)
            if len(self._pending) - len(self._outbox) >= ways:  # as many jobs out as there are workers
                await asyncio.sleep(OUTBOX_LINGER_S)
            most = self.settings.max_jobs_per_message
            taken, self._outbox = self._outbox[: most * ways], self._outbox[most * ways :]
            # A caller that gave up (its request was cancelled) no longer waits: its job is not sent.
            group = [job for job in taken if job.correlation_id in self._pending]
            await asyncio.gather(*(self._publish_jobs(part) for part in deal(group, ways, most)))

    async def _publish_jobs(self, jobs: list[_Outgoing]) -> None:
        """Publish one message of the outbox's jobs; tell each caller it was confirmed, or why not."""
        try:
            await self._publish(*self._batch_message(jobs))
        except Exception as exc:  # noqa: BLE001 - whatever it was, each caller hears of it
            why = exc if isinstance(exc, RpcError) else BrokerUnavailable(f"publishing failed: {exc!r}")
            for job in jobs:
                if not job.confirmed.done() and job.correlation_id in self._pending:
                    job.confirmed.set_exception(type(why)(str(why)))
        else:
            self._published(len(jobs))
            for job in jobs:
                if not job.confirmed.done():
                    job.confirmed.set_result(None)

    def _published(self, jobs: int) -> None:
        if self._on_published is not None:
            self._on_published(jobs)

    def _recount_consumers(self) -> None:
        """Ask the broker for the request queue's consumers in the background once the last count is
        old (workers come and go); meanwhile the outbox is dealt by the last count."""
        if time.monotonic() - self._consumers_asked_at < CONSUMERS_TTL_S:
            return
        if self._asking is None or self._asking.done():
            self._consumers_asked_at = time.monotonic()  # one probe per TTL, even if it fails
            self._asking = asyncio.create_task(self.consumer_count(), name="rpc-consumers")

    def _batch_message(self, group: list[_Outgoing]) -> tuple[aio_pika.Message, int]:
        """One job as it always went, or a job batch; and the deadline its publish may use."""
        if len(group) == 1:
            job = group[0]
            return self._job_message(
                job.correlation_id, b"", job.content_type, job.headers
            ), job.headers.deadline_ms
        deadline_ms = max(job.headers.deadline_ms for job in group)
        message = aio_pika.Message(
            encode_job_batch([(job.correlation_id, job.headers) for job in group]),
            content_type=JOB_BATCH_CONTENT_TYPE,
            reply_to=self.reply_queue,
            # Until the last of its jobs' deadlines; a worker checks each job's own.
            expiration=max(deadline_ms - now_ms(), 1) / 1000,
        )
        return message, deadline_ms

    # -- publishing ----------------------------------------------------------

    async def _publish(self, message: aio_pika.Message, deadline_ms: int) -> None:
        assert self._channel is not None
        budget_s = min((deadline_ms - now_ms()) / 1000, PUBLISH_CONFIRM_TIMEOUT_S)
        try:
            async with asyncio.timeout(max(budget_s, 0.001)):
                await self._channel.default_exchange.publish(
                    message, routing_key=self.settings.queue_name, mandatory=True
                )
        except PublishError as exc:  # basic.return: unroutable, the request queue is missing
            raise BrokerUnavailable(f"RabbitMQ cannot route to queue {self.settings.queue_name!r}") from exc
        except DeliveryError as exc:  # basic.nack: x-overflow reject-publish, the queue is full ...
            if await self._nacks_without_cause():
                raise BrokerUnavailable("RabbitMQ refused the job while its queue changed leader") from exc
            raise QueueFull(f"queue {self.settings.queue_name!r} is full") from exc
        except TimeoutError:
            raise _unconfirmed(deadline_ms) from None
        except (ChannelStuck, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(f"publishing to RabbitMQ failed: {exc}") from exc
        except Exception as exc:  # a channel closed mid-publish raises a bare Exception
            raise BrokerUnavailable(f"publishing to RabbitMQ failed ({type(exc).__name__}: {exc})") from exc

    async def _nacks_without_cause(self) -> bool:
        """... or, on RabbitMQ 3.10, a channel whose first publish to the quorum queue came while the
        queue had no leader (a node of the cluster just died): it then nacks every publish for good.
        The queue's depth tells the two apart; a stuck channel goes, with its connection."""
        assert self._channel is not None
        if time.monotonic() - self._found_full_at < FULL_VERDICT_S:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                underlay = await self._channel.get_underlay_channel()
                ok = await underlay.queue_declare(
                    self.settings.queue_name, durable=True, arguments=request_queue_arguments(self.settings)
                )
        except ChannelStuck:  # another call found the channel stuck first and dropped it
            return True
        except (TimeoutError, *CONNECTION_EXCEPTIONS):
            return False
        except Exception:  # noqa: BLE001 - the channel closed under the probe (aiormq: a bare Exception)
            return True
        if (ok.message_count or 0) >= self.settings.queue_max_length // 2:
            self._found_full_at = time.monotonic()
            return False
        self._reconnect_soon(
            f"RabbitMQ nacked a job although queue {self.settings.queue_name!r} holds "
            f"{ok.message_count or 0} of {self.settings.queue_max_length}"
        )
        return True

    def _reconnect_soon(self, why: str) -> None:
        """Drop the connection (once, however many calls notice): the robust reconnect, to the next
        node, then opens a fresh channel, as after a node failure. Calls in flight get 503."""
        transport = self._connection.transport if self._connection is not None else None
        if transport is None or (self._dropping is not None and not self._dropping.done()):
            return
        log.warning("%s: reconnecting", why)

        async def drop() -> None:
            with contextlib.suppress(Exception):  # closing is all we want; it may already be closed
                await transport.connection.close(ChannelStuck(why))

        self._dropping = asyncio.create_task(drop(), name="rpc-drop")

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        if message.content_type == REPLY_BATCH_CONTENT_TYPE:
            try:
                replies = parse_reply_batch(message.body)
            except ContractError as exc:  # nothing in it can be matched: its callers wait for the deadline
                log.warning("dropping a malformed reply batch: %s", exc)
                return
            for correlation_id, answer in replies.items():
                self._resolve(correlation_id, answer)
            return
        reply: Reply | ContractError
        try:
            reply = parse_reply(message.body)
        except ContractError as exc:
            reply = exc
        self._resolve(message.correlation_id or "", reply)

    def _resolve(self, correlation_id: str, reply: Reply | ContractError) -> None:
        """Hand a reply (or why it is malformed) to the caller waiting on ``correlation_id``."""
        future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            log.debug("dropping a reply nobody waits for (correlation id %r)", correlation_id)
        elif isinstance(reply, ContractError):
            future.set_exception(MalformedReply(str(reply)))
        else:
            future.set_result(reply)
