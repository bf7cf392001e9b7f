"""The worker: consume jobs, micro-batch them, infer, reply, cache, ack.

The path of one job (docs/DESIGN.md, "RabbitMQ"):

1. ``_on_message`` (event loop): check the headers; a malformed job is
   answered ``internal`` and dead-lettered, an expired one answered ``expired``
   and acked; otherwise its decode starts at once in the decode pool (so it
   overlaps the batch wait and the previous batch's inference) and the job
   joins the :class:`~classifier.batcher.Batcher`. The decode thread also checks
   the body against its ``sha256`` header (the cache key): a mismatch is a
   malformed job too.
2. ``_batch_loop``: takes a batch, awaits its decodes, runs ONE
   ``session.run`` in the inference thread, builds one reply per job.
3. ``_settle`` (a task, so the next batch starts at once): publish every
   reply, write the successes to Redis, *then* ack (or reject to the
   dead-letter queue). A job is acknowledged only once its answer exists.

CPU work never runs on the event loop, so heartbeats and deliveries go on
while a batch is being inferred: that is what fills the next batch under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import aio_pika
import numpy as np
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from classifier import metrics
from classifier.batcher import Batcher
from classifier.cache import ANNOUNCE_EVERY_S, ResultCache
from classifier.metrics import Outcome
from classifier.model import Model
from classifier.preprocess import ImageDecodeError, Preprocessor, configure_pillow
from common.broker import backoff_delay, connect_until_up
from common.contract import (
    MAX_TOP_K,
    ContractError,
    ErrorCode,
    FailureReply,
    JobHeaders,
    Reply,
    SuccessReply,
    cache_key,
    encode_probabilities,
)
from common.settings import Settings
from common.topology import declare_request_queue

if TYPE_CHECKING:
    import aiormq

log = logging.getLogger(__name__)

# A reply publish (with its broker confirm) that takes longer than this has failed.
PUBLISH_TIMEOUT_S = 10.0
# Deliveries already on the wire when the consumer is cancelled land within this.
CANCEL_GRACE_S = 0.1
# Two at most: the worst decodes within MAX_PIXELS take ~400 MiB each (README, "Decode cost"),
# and decoding overlaps inference with two as well as with four.
DECODE_THREADS = max(1, min(2, os.cpu_count() or 1))
# Set by quorum queues on a redelivery: how many times the job was delivered before (RabbitMQ's
# header, not our contract's). On 3.10, delivery n carries n-1 (the first carries none).
DELIVERY_COUNT_HEADER = "x-delivery-count"


@dataclass(slots=True, eq=False)
class Job:
    """A delivered, well-formed request whose image is being decoded."""

    message: AbstractIncomingMessage
    headers: JobHeaders
    pixels: asyncio.Future[np.ndarray]
    received: float  # event-loop clock


@dataclass(slots=True, eq=False)
class Settlement:
    """What to do with one delivery: the reply, the outcome, and ack or dead-letter."""

    message: AbstractIncomingMessage
    reply: Reply
    outcome: Outcome
    # (key, value) pairs to write to Redis; successes only (failures are never cached). The
    # top-k entry always holds the full top-MAX_TOP_K, whatever this job's top_k: the key has
    # no top_k. A job that asked for the probabilities also caches them, under their own key.
    cache_entries: tuple[tuple[str, bytes], ...] = ()

    @property
    def acknowledge(self) -> bool:
        # internal = something is wrong with the job or with us: keep the job for a human.
        return self.outcome is not Outcome.INTERNAL


class Worker:
    """One worker process's consumer; :meth:`run` until :meth:`request_stop`."""

    def __init__(self, settings: Settings, model: Model, cache: ResultCache) -> None:
        self.settings = settings
        self.model = model
        self.cache = cache
        configure_pillow(settings.max_pixels)
        self.preprocess = Preprocessor(model.input_size, model.metadata.resize, settings.max_pixels)
        self._batcher: Batcher[Job] = Batcher(settings.max_batch, settings.batch_wait_ms / 1000)
        self._decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        # One inference at a time: onnxruntime parallelises inside a run (intra-op threads).
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._settling: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._in_hand = 0  # delivered, not yet settled
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._reconsuming: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Begin a clean shutdown (signal handlers call this)."""
        if not self._stop.is_set():
            log.info("stopping: no new jobs; finishing the %d in hand", self._in_hand)
            self._stop.set()

    async def run(self) -> None:
        """Connect, consume until asked to stop, then drain and close. Returns on clean exit."""
        announcer: asyncio.Task[None] | None = None
        batch_loop: asyncio.Task[None] | None = None
        try:
            self._connection = await self._connect()
            if self._connection is None:  # asked to stop while the broker was down
                return
            self._connection.reconnect_callbacks.add(_log_reconnected)
            self._channel = await self._connection.channel()  # type: ignore[assignment]
            assert self._channel is not None
            await self._channel.set_qos(prefetch_count=self.settings.prefetch)
            # The hook lives on the underlying AMQP channel, which a reconnect replaces.
            self._channel.reopen_callbacks.add(self._watch_consumer_cancel)
            await self._watch_consumer_cancel(self._channel)
            await self.cache.announce(self.settings.queue_name, self.model.info)
            announcer = asyncio.create_task(
                self.cache.announce_forever(self.settings.queue_name, self.model.info, ANNOUNCE_EVERY_S),
                name="announce",
            )
            batch_loop = asyncio.create_task(self._batch_loop(), name="batch-loop")
            await self._consume()
            log.info(
                "worker ready: queue=%s model=%s version=%s threads=%d batch=%d wait=%gms prefetch=%d",
                self.settings.queue_name, self.model.info.name, self.model.version,
                self.model.threads, self.settings.max_batch, self.settings.batch_wait_ms,
                self.settings.prefetch,
            )
            await self._stop.wait()
            await self._drain(batch_loop)
        finally:
            if announcer is not None:
                announcer.cancel()
            if self._reconsuming is not None:
                self._reconsuming.cancel()
            if batch_loop is not None and not batch_loop.done():
                batch_loop.cancel()
            await self._close()

    async def _connect(self) -> AbstractRobustConnection | None:
        """Connect to a node of RABBITMQ_URL, retrying while none answers (e.g. the worker started first)."""
        return await connect_until_up(
            self.settings.rabbitmq_addresses,
            name=f"classifier {socket.gethostname()} {os.getpid()}",
            stop=self._stop,
        )

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _consume(self) -> None:
        """Declare the topology (both queues) and consume the request queue."""
        assert self._channel is not None
        self._queue = await declare_request_queue(self._channel, self.settings)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def _watch_consumer_cancel(self, channel: AbstractRobustChannel) -> None:
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)

    def _on_consumer_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker cancelled our consumer (the queue was deleted, ...): without this,
        the worker would sit idle, connected and healthy-looking, forever."""
        if frame.consumer_tag != self._consumer_tag or self.stopping:
            return
        log.error(
            "RabbitMQ cancelled this worker's consumer of queue %r (was it deleted?); "
            "declaring it again and consuming again", self.settings.queue_name,
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
        while not self.stopping:
            try:
                await self._consume()
            except Exception as exc:  # noqa: BLE001 - broker trouble: retry with back-off
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning(
                    "consuming again failed (%s: %s); retrying in %g s", type(exc).__name__, exc, delay
                )
                await self._sleep_unless_stopped(delay)
                continue
            log.info("consuming queue %r again", self.settings.queue_name)
            return

    async def _drain(self, batch_loop: asyncio.Task[None]) -> None:
        """Stop taking jobs; finish, answer and ack every job already received."""
        try:
            if self._queue is not None and self._consumer_tag is not None:
                await self._queue.cancel(self._consumer_tag)
        except Exception as exc:  # noqa: BLE001 - the channel may be gone; its jobs return to the queue
            log.warning("could not cancel the consumer cleanly: %s", exc)
        await asyncio.sleep(CANCEL_GRACE_S)
        self._batcher.close()
        await batch_loop
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        log.info("all jobs in hand answered (%d left unsettled)", self._in_hand)

    async def _close(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("closing the RabbitMQ connection: %s", exc)
        await self.cache.close()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)

    # -- step 1: a delivery ------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        metrics.IN_HAND.inc()
        self._in_hand += 1
        try:
            await self._accept(message)
        except Exception:  # a bug of ours: never leave a delivery unsettled (it would be hoarded)
            log.exception("accepting job %s failed unexpectedly", message.correlation_id)
            self._settle_soon([_internal(message, "the worker failed to accept this job")])

    async def _accept(self, message: AbstractIncomingMessage) -> None:
        delivered = _delivered_before(message)
        if delivered >= self.settings.delivery_limit:
            # The quorum queue dead-letters a job returned once more after this delivery, but
            # silently: the requester would wait for its deadline. So this last delivery is not
            # run (the job may be what kills workers); it is answered and dead-lettered here.
            log.error(
                "job %s (sha256 %s) was delivered %d times without an answer; not running it, "
                "dead-lettering it", message.correlation_id,
                str((message.headers or {}).get("sha256", "?"))[:12], delivered,
            )
            metrics.POISON_JOBS.inc()
            self._settle_soon([_internal(
                message,
                f"this job was delivered {delivered} times without an answer (it may crash workers); "
                "dead-lettered",
            )])
            return
        try:
            if not message.reply_to or not message.correlation_id:
                raise ContractError("no reply_to or correlation_id: nobody could receive the answer")
            headers = JobHeaders.from_amqp(message.headers)  # type: ignore[arg-type]
        except ContractError as exc:
            # A contract violation is a bug in a client, not a bad image: answer
            # (if we can) and keep the job in the dead-letter queue for a human.
            log.warning("malformed job %s dead-lettered: %s", message.correlation_id, exc)
            self._settle_soon([_internal(message, f"malformed job: {exc}")])
            return
        if headers.ms_left() <= 0:
            self._settle_soon([_expired(message)])
            return
        if self._batcher.closed:  # landed after the consumer was cancelled (rare): let another worker have it
            self._released()
            await _nack_quietly(message)
            return
        loop = asyncio.get_running_loop()
        pixels = loop.run_in_executor(self._decode_pool, self._decode, message.body, headers.sha256)
        self._batcher.put(Job(message, headers, pixels, loop.time()))

    def _released(self) -> None:
        metrics.IN_HAND.dec()
        self._in_hand -= 1

    def _decode(self, body: bytes, sha256: str) -> np.ndarray:
        """Check the body against its sha256 header, decode it (decode thread)."""
        # The result is cached under this hash and served to anyone sending the same
        # image: a wrong header would poison the cache, so it is a contract violation.
        # (Off the event loop: hashing 10 MB takes milliseconds; hashlib releases the GIL.)
        if hashlib.sha256(body).hexdigest() != sha256:
            raise ContractError("the sha256 header does not match the body")
        start = time.perf_counter()
        try:
            return self.preprocess(body)
        finally:
            metrics.DECODE_SECONDS.observe(time.perf_counter() - start)

    # -- step 2: batches ---------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while jobs := await self._batcher.next_batch():
            try:
                settlements = await self._run_batch(jobs)
            except Exception:  # a bug of ours: never lose the jobs, never kill the loop
                log.exception("batch of %d failed unexpectedly", len(jobs))
                settlements = [_internal(job.message, "the worker failed on this batch") for job in jobs]
            self._settle_soon(settlements)

    async def _run_batch(self, jobs: list[Job]) -> list[Settlement]:
        settlements: list[Settlement] = []
        ready: list[tuple[Job, np.ndarray]] = []
        for job in jobs:
            try:
                pixels = await job.pixels
            except ContractError as exc:
                log.warning("malformed job %s dead-lettered: %s", job.message.correlation_id, exc)
                settlements.append(_internal(job.message, f"malformed job: {exc}"))
                continue
            except ImageDecodeError as exc:
                log.info("invalid image %s: %s", job.headers.sha256[:12], exc)
                settlements.append(Settlement(job.message, FailureReply(ErrorCode.INVALID_IMAGE, str(exc)),
                                              Outcome.INVALID_IMAGE))
                continue
            except Exception:
                log.exception("decoding %s failed unexpectedly", job.headers.sha256[:12])
                settlements.append(_internal(job.message, "the worker failed to decode this image"))
                continue
            if job.headers.ms_left() <= 0:  # it expired while waiting here: spare the CPU
                settlements.append(_expired(job.message))
                continue
            ready.append((job, pixels))
        if not ready:
            return settlements

        loop = asyncio.get_running_loop()
        started = loop.time()
        for job, _ in ready:
            metrics.QUEUE_WAIT_SECONDS.observe(started - job.received)
        batch = np.stack([pixels for _, pixels in ready])
        try:
            probabilities, seconds = await loop.run_in_executor(self._infer_pool, self._infer, batch)
        except Exception:
            log.exception("inference failed for a batch of %d", len(ready))
            return settlements + [_internal(job.message, "inference failed") for job, _ in ready]

        inference_ms = round(seconds * 1000, 2)
        for (job, _), row in zip(ready, probabilities, strict=True):
            full = SuccessReply(
                sha256=job.headers.sha256,
                model=self.model.info,
                top=self.model.top_k(row, MAX_TOP_K),
                inference_ms=inference_ms,
                batch_size=len(ready),
            )
            # The requester gets its top_k; the cache gets all MAX_TOP_K for whoever asks next.
            reply = replace(full, top=full.top[: job.headers.top_k])
            entries = [(cache_key(self.model.version, job.headers.sha256), full.to_json())]
            if job.headers.probabilities:
                vector = encode_probabilities(row.astype("<f4", copy=False).tobytes())
                reply = replace(reply, probabilities=vector)
                entries.append((
                    cache_key(self.model.version, job.headers.sha256, probabilities=True),
                    replace(full, probabilities=vector).to_json(),
                ))
            settlements.append(Settlement(job.message, reply, Outcome.OK, tuple(entries)))
        return settlements

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """One session.run for the whole batch (inference thread)."""
        start = time.perf_counter()
        probabilities = self.model.predict(batch)
        seconds = time.perf_counter() - start
        metrics.INFERENCE_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch))
        return probabilities, seconds

    # -- step 3: reply, cache, ack -------------------------------------------------------

    def _settle_soon(self, settlements: list[Settlement]) -> None:
        task = asyncio.create_task(self._settle(settlements))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, settlements: list[Settlement]) -> None:
        """Publish every reply, cache the successes, then ack (or dead-letter) each job."""
        published = await asyncio.gather(*(self._publish(s) for s in settlements))
        # Cached even when the reply could not be published: the work is done, and the
        # gateway's retry (or another request for the same image) will find it.
        await self.cache.store([entry for s in settlements for entry in s.cache_entries])
        for settlement, ok in zip(settlements, published, strict=True):
            metrics.JOBS.labels(outcome=settlement.outcome.value).inc()
            try:
                if not ok:
                    # Unanswered: give it back; the quorum queue's delivery limit bounds retries.
                    await settlement.message.nack(requeue=True)
                elif settlement.acknowledge:
                    await settlement.message.ack()
                else:
                    await settlement.message.reject(requeue=False)  # -> <queue>.dead
            except Exception as exc:  # noqa: BLE001 - channel gone: the broker redelivers the job
                log.warning("could not settle job %s: %s", settlement.message.correlation_id, exc)
            finally:
                self._released()

    async def _publish(self, settlement: Settlement) -> bool:
        message = settlement.message
        if not message.reply_to or not message.correlation_id:
            return True  # nobody to answer (a malformed job); settling it is what matters
        assert self._channel is not None
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    settlement.reply.to_json(),
                    correlation_id=message.correlation_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=message.reply_to,
                # A reply queue that vanished (its gateway died) just drops the reply.
                mandatory=False,
                timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the job is nacked, never left unsettled
            log.warning("reply to %s not published: %s", message.correlation_id, exc)
            return False
        return True


def _expired(message: AbstractIncomingMessage) -> Settlement:
    reply = FailureReply(ErrorCode.EXPIRED, "the request's deadline passed before it could be classified")
    return Settlement(message, reply, Outcome.EXPIRED)


def _internal(message: AbstractIncomingMessage, text: str) -> Settlement:
    return Settlement(message, FailureReply(ErrorCode.INTERNAL, text), Outcome.INTERNAL)


def _delivered_before(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this job before this delivery (0 if never)."""
    try:
        return int((message.headers or {}).get(DELIVERY_COUNT_HEADER, 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _log_reconnected(*args: object) -> None:
    # aio-pika re-opens the channel, re-applies the QoS, re-declares the queue and re-consumes
    # (on another node of the cluster if ours went away: common/broker.py).
    # aio-pika passes the connection first; its str() is the node's address without the password.
    log.info("reconnected to RabbitMQ at %s; consuming again", args[0] if args else "?")


async def _nack_quietly(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # noqa: BLE001 - channel gone: the broker requeues it anyway
        log.warning("could not return job %s: %s", message.correlation_id, exc)
