"""The job pipeline: accept, batch, infer, reply, cache, settle. It knows no AMQP.

The consumer (:mod:`classifier.consumer`) hands each delivery over as a
:class:`Delivery`; everything the worker *decides* about a job happens here
(docs/DESIGN.md, "RabbitMQ"), the way dramatiq's workers see a ``MessageProxy``:

1. :meth:`Pipeline.accept` (event loop): a job delivered too often (a poison
   job) is answered ``internal`` and dead-lettered without running; a malformed
   one answered ``internal`` and dead-lettered; an expired one answered
   ``expired`` and acked; otherwise its decode starts at once in the decode
   pool (so it overlaps the batch wait and the previous batch's inference) and
   the job joins the :class:`~classifier.batcher.Batcher`. A job whose image
   waits in Redis (the claim check) has it fetched first; when it is not there
   the job is answered ``image_missing`` (the gateway sends it again with the
   image) and acked. The decode thread also checks the image against its
   ``sha256`` header (the cache key): a mismatch is a malformed job too.
2. :meth:`Pipeline.run`: takes a batch, awaits its decodes, runs ONE
   ``session.run`` in the inference thread, builds one reply per job.
3. ``_settle`` (a task, so the next batch starts at once): publish every
   reply, write the successes to Redis, *then* dead-letter or requeue what
   must be, and ack the rest together (:attr:`Pipeline.acknowledge`). A job
   is acknowledged only once its answer exists.

CPU work never runs on the event loop, so heartbeats and deliveries go on
while a batch is being inferred: that is what fills the next batch under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from classifier import metrics
from classifier.batcher import Batcher
from classifier.metrics import Outcome
from classifier.model import Model
from classifier.preprocess import ImageDecodeError, Preprocessor, configure_pillow
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

log = logging.getLogger(__name__)

# Two at most: the worst decodes within MAX_PIXELS take ~400 MiB each (README, "Decode cost"),
# and decoding overlaps inference with two as well as with four.
DECODE_THREADS = max(1, min(2, os.cpu_count() or 1))


class Delivery(Protocol):
    """One job as the broker handed it over, and the ways to answer and settle it.

    :class:`classifier.consumer.AmqpDelivery` is the real one (an aio-pika
    message); the pipeline's tests use an in-memory one.
    """

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, object]: ...

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def reply_to(self) -> str | None: ...

    @property
    def delivered_before(self) -> int:
        """How many times the broker delivered this job before this delivery (0 if never)."""
        ...

    async def reply(self, reply: Reply) -> bool:
        """Publish ``reply`` to ``reply_to``; False if it was not published (never raises)."""
        ...

    async def ack(self) -> None: ...

    async def dead_letter(self) -> None:
        """Reject without requeueing: the job goes to ``<queue>.dead``."""
        ...

    async def requeue(self) -> None:
        """Give the job back to the queue (another worker, or this one, takes it again)."""
        ...


Acknowledge = Callable[[Sequence[Delivery]], Awaitable[None]]
PublishReplies = Callable[[Sequence[tuple[Delivery, Reply]]], Awaitable[list[bool]]]


async def reply_each(answers: Sequence[tuple[Delivery, Reply]]) -> list[bool]:
    """Publish each reply on its own (the default; the worker's consumer groups them per reply queue)."""
    return list(await asyncio.gather(*(delivery.reply(reply) for delivery, reply in answers)))


async def ack_each(deliveries: Sequence[Delivery]) -> None:
    """Ack deliveries one by one (the default; the worker's consumer acks a batch at once)."""
    for delivery in deliveries:
        await delivery.ack()


class ResultStore(Protocol):
    """Redis as the pipeline sees it: where successes are cached and where a job's image may wait
    (:class:`classifier.cache.ResultCache`; best-effort, never raises)."""

    async def store(self, entries: Sequence[tuple[str, bytes]]) -> bool: ...

    async def fetch_image(self, sha256: str) -> bytes | None: ...


class ImageMissing(Exception):
    """A job's image was to be in Redis and is not (expired, evicted, Redis down or restarted)."""


@dataclass(slots=True, eq=False)
class Job:
    """A delivered, well-formed request whose image is being decoded."""

    delivery: Delivery
    headers: JobHeaders
    pixels: asyncio.Future[np.ndarray]
    received: float  # event-loop clock


@dataclass(slots=True, eq=False)
class Settlement:
    """What to do with one delivery: the reply, the outcome, and ack or dead-letter."""

    delivery: Delivery
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


class Pipeline:
    """Turns deliveries into settled jobs: :meth:`accept` each one, :meth:`run` the batch loop,
    then :meth:`close` and :meth:`drain` to finish the jobs in hand, and :meth:`shutdown`."""

    def __init__(self, settings: Settings, model: Model, cache: ResultStore) -> None:
        self.settings = settings
        self.model = model
        self.cache = cache
        # How a batch's successes are acked; the worker sets its consumer's, which acks them together
        # (classifier.consumer.Consumer.acknowledge).
        self.acknowledge: Acknowledge = ack_each
        # How a batch's replies are published; the worker sets its consumer's, which sends those for
        # one reply queue in one message (classifier.consumer.Consumer.publish_replies).
        self.publish_replies: PublishReplies = reply_each
        configure_pillow(settings.max_pixels)
        self.preprocess = Preprocessor(model.input_size, model.metadata.resize, settings.max_pixels)
        self._batcher: Batcher[Job] = Batcher(settings.max_batch, settings.batch_wait_ms / 1000)
        self._decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        # One inference at a time: onnxruntime parallelises inside a run (intra-op threads).
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._settling: set[asyncio.Task[None]] = set()
        self.in_hand = 0  # delivered, not yet settled

    # -- step 1: a delivery ------------------------------------------------------------

    async def accept(self, delivery: Delivery) -> None:
        """Take one delivery; it is always settled later, whatever happens (never raises)."""
        metrics.IN_HAND.inc()
        self.in_hand += 1
        try:
            await self._accept(delivery)
        except Exception:  # a bug of ours: never leave a delivery unsettled (it would be hoarded)
            log.exception("accepting job %s failed unexpectedly", delivery.correlation_id)
            self._settle_soon([_internal(delivery, "the worker failed to accept this job")])

    async def _accept(self, delivery: Delivery) -> None:
        delivered = delivery.delivered_before
        if delivered >= self.settings.delivery_limit:
            # The quorum queue dead-letters a job returned once more after this delivery, but
            # silently: the requester would wait for its deadline. So this last delivery is not
            # run (the job may be what kills workers); it is answered and dead-lettered here.
            log.error(
                "job %s (sha256 %s) was delivered %d times without an answer; not running it, "
                "dead-lettering it",
                delivery.correlation_id,
                str(delivery.headers.get("sha256", "?"))[:12],
                delivered,
            )
            metrics.POISON_JOBS.inc()
            self._settle_soon(
                [
                    _internal(
                        delivery,
                        f"this job was delivered {delivered} times without an answer (it may crash workers); "
                        "dead-lettered",
                    )
                ]
            )
            return
        try:
            if not delivery.reply_to or not delivery.correlation_id:
                raise ContractError("no reply_to or correlation_id: nobody could receive the answer")
            headers = JobHeaders.from_amqp(dict(delivery.headers))
        except ContractError as exc:
            # A contract violation is a bug in a client, not a bad image: answer
            # (if we can) and keep the job in the dead-letter queue for a human.
            log.warning("malformed job %s dead-lettered: %s", delivery.correlation_id, exc)
            self._settle_soon([_internal(delivery, f"malformed job: {exc}")])
            return
        if headers.ms_left() <= 0:
            self._settle_soon([_expired(delivery)])
            return
        if self._batcher.closed:  # landed after the consumer was cancelled (rare): let another worker have it
            self._released()
            await _requeue_quietly(delivery)
            return
        loop = asyncio.get_running_loop()
        pixels: asyncio.Future[np.ndarray]
        if headers.image_in_redis:  # the claim check: the message holds the image's hash only
            pixels = asyncio.ensure_future(self._fetch_and_decode(headers.sha256))
        else:
            pixels = loop.run_in_executor(self._decode_pool, self._decode, delivery.body, headers.sha256)
        self._batcher.put(Job(delivery, headers, pixels, loop.time()))

    def _released(self) -> None:
        metrics.IN_HAND.dec()
        self.in_hand -= 1

    async def _fetch_and_decode(self, sha256: str) -> np.ndarray:
        body = await self.cache.fetch_image(sha256)
        if body is None:
            raise ImageMissing("the image was not in Redis (expired, evicted, or Redis unavailable)")
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, self._decode, body, sha256)

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

    async def run(self) -> None:
        """The batch loop: until :meth:`close` and the last buffered job is taken."""
        while jobs := await self._batcher.next_batch():
            try:
                settlements = await self._run_batch(jobs)
            except Exception:  # a bug of ours: never lose the jobs, never kill the loop
                log.exception("batch of %d failed unexpectedly", len(jobs))
                settlements = [_internal(job.delivery, "the worker failed on this batch") for job in jobs]
            self._settle_soon(settlements)

    async def _run_batch(self, jobs: list[Job]) -> list[Settlement]:
        settlements: list[Settlement] = []
        ready: list[tuple[Job, np.ndarray]] = []
        for job in jobs:
            try:
                pixels = await job.pixels
            except ContractError as exc:
                log.warning("malformed job %s dead-lettered: %s", job.delivery.correlation_id, exc)
                settlements.append(_internal(job.delivery, f"malformed job: {exc}"))
                continue
            except ImageMissing as exc:
                log.info(
                    "image %s missing from Redis: the gateway will send it inline", job.headers.sha256[:12]
                )
                settlements.append(
                    Settlement(
                        job.delivery, FailureReply(ErrorCode.IMAGE_MISSING, str(exc)), Outcome.IMAGE_MISSING
                    )
                )
                continue
            except ImageDecodeError as exc:
                log.info("invalid image %s: %s", job.headers.sha256[:12], exc)
                settlements.append(
                    Settlement(
                        job.delivery, FailureReply(ErrorCode.INVALID_IMAGE, str(exc)), Outcome.INVALID_IMAGE
                    )
                )
                continue
            except Exception:
                log.exception("decoding %s failed unexpectedly", job.headers.sha256[:12])
                settlements.append(_internal(job.delivery, "the worker failed to decode this image"))
                continue
            if job.headers.ms_left() <= 0:  # it expired while waiting here: spare the CPU
                settlements.append(_expired(job.delivery))
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
            return settlements + [_internal(job.delivery, "inference failed") for job, _ in ready]

        inference_ms = round(seconds * 1000, 2)
        for (job, _), row in zip(ready, probabilities, strict=True):
            settlements.append(self._success(job, row, inference_ms, len(ready)))
        return settlements

    def _success(self, job: Job, row: np.ndarray, inference_ms: float, batch_size: int) -> Settlement:
        full = SuccessReply(
            sha256=job.headers.sha256,
            model=self.model.info,
            top=self.model.top_k(row, MAX_TOP_K),
            inference_ms=inference_ms,
            batch_size=batch_size,
        )
        # The requester gets its top_k; the cache gets all MAX_TOP_K for whoever asks next.
        reply = replace(full, top=full.top[: job.headers.top_k])
        entries = [(cache_key(self.model.version, job.headers.sha256), full.to_json())]
        if job.headers.probabilities:
            vector = encode_probabilities(row.astype("<f4", copy=False).tobytes())
            reply = replace(reply, probabilities=vector)
            entries.append(
                (
                    cache_key(self.model.version, job.headers.sha256, probabilities=True),
                    replace(full, probabilities=vector).to_json(),
                )
            )
        return Settlement(job.delivery, reply, Outcome.OK, tuple(entries))

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
        # A job with nobody to answer (a malformed one) counts as answered: settling it is what matters.
        answerable = [s for s in settlements if s.delivery.reply_to and s.delivery.correlation_id]
        sent = await self.publish_replies([(s.delivery, s.reply) for s in answerable])
        published = dict(zip(answerable, sent, strict=True))
        # Cached even when the reply could not be published: the work is done, and the
        # gateway's retry (or another request for the same image) will find it.
        await self.cache.store([entry for s in settlements for entry in s.cache_entries])
        answered: list[Delivery] = []
        # Requeues and dead-letters first: the acks that remain can then go out as one.
        for settlement in settlements:
            ok = published.get(settlement, True)
            metrics.JOBS.labels(outcome=settlement.outcome.value).inc()
            delivery = settlement.delivery
            if ok and settlement.acknowledge:
                answered.append(delivery)
                continue
            try:
                if not ok:
                    # Unanswered: give it back; the quorum queue's delivery limit bounds retries.
                    await delivery.requeue()
                else:
                    await delivery.dead_letter()
            except Exception as exc:  # noqa: BLE001 - channel gone: the broker redelivers the job
                log.warning("could not settle job %s: %s", delivery.correlation_id, exc)
            finally:
                self._released()
        if not answered:
            return
        try:
            await self.acknowledge(answered)
        except Exception as exc:  # noqa: BLE001 - channel gone: the broker redelivers the jobs
            log.warning("could not ack %d job(s): %s", len(answered), exc)
        finally:
            for _ in answered:
                self._released()

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """No more deliveries will come: the batch loop stops waiting for company."""
        self._batcher.close()

    async def drain(self, batch_loop: asyncio.Task[None]) -> None:
        """After :meth:`close`: finish, answer and settle every job already accepted."""
        await batch_loop
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        log.info("all jobs in hand answered (%d left unsettled)", self.in_hand)

    def shutdown(self) -> None:
        """Stop the decode and inference threads."""
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)


def _expired(delivery: Delivery) -> Settlement:
    reply = FailureReply(ErrorCode.EXPIRED, "the request's deadline passed before it could be classified")
    return Settlement(delivery, reply, Outcome.EXPIRED)


def _internal(delivery: Delivery, text: str) -> Settlement:
    return Settlement(delivery, FailureReply(ErrorCode.INTERNAL, text), Outcome.INTERNAL)


async def _requeue_quietly(delivery: Delivery) -> None:
    try:
        await delivery.requeue()
    except Exception as exc:  # noqa: BLE001 - channel gone: the broker requeues it anyway
        log.warning("could not return job %s: %s", delivery.correlation_id, exc)
