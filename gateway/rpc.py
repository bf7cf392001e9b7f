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
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from common.contract import ContractError, JobHeaders, Reply, parse_reply
from common.settings import Settings
from common.topology import declare_request_queue, request_queue_arguments

log = logging.getLogger(__name__)

# A healthy broker confirms a publish in milliseconds; one that takes longer is treated as down.
PUBLISH_CONFIRM_TIMEOUT_S = 5.0
# Pause between attempts of the first connection (robust reconnects use their own interval).
CONNECT_RETRY_S = (0.5, 1.0, 2.0, 5.0)
# Interval of aio-pika's own reconnects once the first connection stands.
RECONNECT_INTERVAL_S = 2
# Bound on one readiness probe round trip.
PROBE_TIMEOUT_S = 2.0
# Room for a job's properties and headers on top of its body within the broker's max_message_size.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


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


class MalformedReply(RpcError):
    """A reply that does not follow the message contract."""


def reply_queue_name() -> str:
    """``gateway.reply.<host>.<pid>.<random>``: unique per process, stable across reconnects."""
    return f"gateway.reply.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


class RpcClient:
    """Publishes jobs to the request queue and matches replies to waiting callers by correlation id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reply_queue = reply_queue_name()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._connect_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

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
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        self._fail_pending(BrokerUnavailable("the gateway is shutting down"))
        if self._connection is not None:
            await self._connection.close()

    async def _connect_until_up(self) -> None:
        attempt = 0
        while True:
            connection: AbstractRobustConnection | None = None
            try:
                connection = await aio_pika.connect_robust(
                    self.settings.rabbitmq_url,
                    timeout=PUBLISH_CONFIRM_TIMEOUT_S,
                    reconnect_interval=RECONNECT_INTERVAL_S,
                    client_properties={"connection_name": f"gateway {self.reply_queue}"},
                )
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_request_queue(channel, self.settings)
                reply_queue = await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
                await reply_queue.consume(self._on_reply, no_ack=True)
            except asyncio.CancelledError:
                if connection is not None:
                    await connection.close()
                raise
            except Exception as exc:  # any failure here means "retry later"
                delay = CONNECT_RETRY_S[min(attempt, len(CONNECT_RETRY_S) - 1)]
                attempt += 1
                log.warning(
                    "RabbitMQ not available (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay
                )
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
                await asyncio.sleep(delay)
                continue
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            self._connection, self._channel = connection, channel
            self._ready.set()
            log.info(
                "connected to RabbitMQ; request queue %r, reply queue %r",
                self.settings.queue_name,
                self.reply_queue,
            )
            return

    def _on_connection_lost(self, _: Any, exc: BaseException | None) -> None:
        # The exclusive reply queue dies with the connection: replies to jobs in
        # flight are lost, so tell their callers now instead of at the deadline.
        if self._pending:
            log.warning("RabbitMQ connection lost (%s); failing %d calls in flight", exc, len(self._pending))
        self._fail_pending(BrokerUnavailable("the connection to RabbitMQ was lost"))

    def _on_reconnected(self, *_: Any) -> None:
        log.info("reconnected to RabbitMQ")

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
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("readiness probe of %r failed: %s", self.settings.queue_name, exc)
            return None
        return int(ok.consumer_count or 0)

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
        try:
            message = aio_pika.Message(
                body,
                content_type=content_type,
                correlation_id=correlation_id,
                reply_to=self.reply_queue,
                # The broker drops the job once nobody waits for its answer.
                expiration=ms_left / 1000,
                headers=headers.to_amqp(),
            )
            await self._publish(message, headers)
            try:
                async with asyncio.timeout(max(headers.ms_left(), 0) / 1000):
                    return await future
            except TimeoutError:
                raise DeadlineExceeded("no reply before the deadline") from None
        finally:
            # Forget the id: a reply that arrives later is dropped quietly in _on_reply.
            self._pending.pop(correlation_id, None)

    async def _publish(self, message: aio_pika.Message, headers: JobHeaders) -> None:
        assert self._channel is not None
        budget_s = min(headers.ms_left() / 1000, PUBLISH_CONFIRM_TIMEOUT_S)
        try:
            async with asyncio.timeout(max(budget_s, 0.001)):
                await self._channel.default_exchange.publish(
                    message, routing_key=self.settings.queue_name, mandatory=True
                )
        except PublishError as exc:  # basic.return: unroutable, the request queue is missing
            raise BrokerUnavailable(f"RabbitMQ cannot route to queue {self.settings.queue_name!r}") from exc
        except DeliveryError as exc:  # basic.nack: x-overflow reject-publish, the queue is full
            raise QueueFull(f"queue {self.settings.queue_name!r} is full") from exc
        except TimeoutError:
            if headers.ms_left() <= 0:
                raise DeadlineExceeded("the deadline passed while publishing") from None
            raise BrokerUnavailable("RabbitMQ did not confirm the job in time") from None
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"publishing to RabbitMQ failed: {exc}") from exc

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        correlation_id = message.correlation_id or ""
        future = self._pending.pop(correlation_id, None)
        if future is None or future.done():
            log.debug("dropping a reply nobody waits for (correlation id %r)", correlation_id)
            return
        try:
            future.set_result(parse_reply(message.body))
        except ContractError as exc:
            future.set_exception(MalformedReply(str(exc)))
