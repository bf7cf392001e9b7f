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
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from common.broker import backoff_delay, connect_until_up
from common.contract import Reply
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


class AmqpDelivery:
    """One aio-pika message seen as a :class:`~classifier.pipeline.Delivery`."""

    __slots__ = ("_consumer", "_message")

    def __init__(self, message: AbstractIncomingMessage, consumer: Consumer) -> None:
        self._message = message
        self._consumer = consumer

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def headers(self) -> Mapping[str, object]:
        return self._message.headers or {}

    @property
    def correlation_id(self) -> str | None:
        return self._message.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self._message.reply_to

    @property
    def delivered_before(self) -> int:
        count = self.headers.get(DELIVERY_COUNT_HEADER, 0)
        try:
            return int(count)  # type: ignore[call-overload,no-any-return]
        except (TypeError, ValueError):
            return 0

    async def reply(self, reply: Reply) -> bool:
        assert self.reply_to is not None and self.correlation_id is not None
        return await self._consumer.publish(reply.to_json(), self.reply_to, self.correlation_id)

    async def ack(self) -> None:
        await self._message.ack()

    async def dead_letter(self) -> None:
        await self._message.reject(requeue=False)  # -> <queue>.dead

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)


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
        await self._handle(AmqpDelivery(message, self))

    async def publish(self, body: bytes, reply_to: str, correlation_id: str) -> bool:
        """Publish a reply to ``reply_to``; False if it failed (never raises)."""
        assert self._channel is not None
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    correlation_id=correlation_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=reply_to,
                # A reply queue that vanished (its gateway died) just drops the reply.
                mandatory=False,
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the job is requeued, never left unsettled
            log.warning("reply to %s not published: %s", correlation_id, exc)
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


def _log_reconnected(*args: object) -> None:
    # aio-pika re-opens the channel, re-applies the QoS, re-declares the queue and re-consumes
    # (on another node of the cluster if ours went away: common/broker.py).
    # aio-pika passes the connection first; its str() is the node's address without the password.
    log.info("reconnected to RabbitMQ at %s; consuming again", args[0] if args else "?")
