"""The pipeline's policies, fast: no broker, no worker process.

The subject is :class:`classifier.pipeline.Pipeline`'s decisions (expiry, poison
jobs, ack vs dead-letter vs requeue, top-k, batching), so the AMQP side is an
in-memory :class:`StubDelivery` that records what the pipeline did to it. The
rest is real: the Lite0 model file, the photos, Redis (the result cache; the
``redis_client`` fixture is tests/classifier/conftest.py's).
tests/classifier/test_worker.py checks the same path through the real broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from classifier import metrics
from classifier.cache import ResultCache
from classifier.model import Model
from classifier.pipeline import Pipeline
from common.contract import (
    MAX_TOP_K,
    ErrorCode,
    FailureReply,
    JobHeaders,
    Reply,
    SuccessReply,
    cache_key,
    image_key,
    now_ms,
    parse_reply,
)
from common.settings import Settings
from tests.classifier.test_worker import unique_jpeg
from tests.support.processes import REPO_ROOT

DELIVERY_LIMIT = 3
SETTLE_TIMEOUT_S = 30


@dataclass(eq=False)
class StubDelivery:
    """An in-memory delivery: records the replies published and how the job was settled."""

    body: bytes
    headers: Mapping[str, object]
    correlation_id: str | None = "job-1"
    reply_to: str | None = "amq.gen-reply"
    delivered_before: int = 0
    publish_ok: bool = True
    replies: list[Reply] = field(default_factory=list)
    settlement: str | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    async def reply(self, reply: Reply) -> bool:
        self.replies.append(reply)
        return self.publish_ok

    async def ack(self) -> None:
        self._settle("ack")

    async def dead_letter(self) -> None:
        self._settle("dead-letter")

    async def requeue(self) -> None:
        self._settle("requeue")

    def _settle(self, how: str) -> None:
        assert self.settlement is None, f"settled twice: {self.settlement}, then {how}"
        self.settlement = how
        self.settled.set()

    async def outcome(self) -> tuple[str, Reply | None]:
        """How the job was settled and the one reply it got (None if no reply was published)."""
        await asyncio.wait_for(self.settled.wait(), SETTLE_TIMEOUT_S)
        assert len(self.replies) <= 1
        assert self.settlement is not None
        return self.settlement, (self.replies[0] if self.replies else None)


def job(
    body: bytes, *, top_k: int = MAX_TOP_K, deadline_in_ms: int = 30_000, **options: object
) -> StubDelivery:
    """A well-formed job for ``body``, as the gateway would publish it."""
    headers = JobHeaders(
        sha256=hashlib.sha256(body).hexdigest(),
        deadline_ms=now_ms() + deadline_in_ms,
        top_k=top_k,
        probabilities=bool(options.pop("probabilities", False)),
        image_in_redis=bool(options.pop("image_in_redis", False)),
    ).to_amqp()
    return StubDelivery(body, headers, **options)  # type: ignore[arg-type]


def claimed_job(body: bytes) -> StubDelivery:
    """A job whose image waits in Redis (the claim check): its message body is empty."""
    delivery = job(body, image_in_redis=True)
    delivery.body = b""
    return delivery


def metric_value(name: str, **labels: str) -> float:
    """A sample of the worker's metrics (prometheus_client's default registry); 0 before any."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def inferences() -> tuple[float, float]:
    """(session.run calls, images inferred) so far, from the worker's batch-size histogram."""
    values = {s.name: s.value for m in metrics.BATCH_SIZE.collect() for s in m.samples}
    return values["classifier_batch_size_count"], values["classifier_batch_size_sum"]


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[ResultCache]:
    result_cache = ResultCache(redis_url, ttl_s=60)
    yield result_cache
    await result_cache.close()


def make_pipeline(model: Model, cache: ResultCache, **settings: object) -> Pipeline:
    values: dict[str, object] = {"delivery_limit": DELIVERY_LIMIT, "max_batch": 4, "batch_wait_ms": 2.0}
    values.update(settings)
    return Pipeline(Settings(**values), model, cache)  # type: ignore[arg-type]


@pytest.fixture
async def running(model: Model, cache: ResultCache) -> AsyncIterator[Pipeline]:
    """A pipeline with its batch loop running (max_batch 4, 2 ms wait); drained afterwards."""
    async with started(make_pipeline(model, cache)) as pipeline:
        yield pipeline


class started:
    """Run ``pipeline``'s batch loop for the block; then close, drain and shut it down."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pipeline:
        self._loop = asyncio.create_task(self.pipeline.run())
        return self.pipeline

    async def __aexit__(self, *exc: object) -> None:
        assert self._loop is not None
        self.pipeline.close()
        await asyncio.wait_for(self.pipeline.drain(self._loop), SETTLE_TIMEOUT_S)
        self.pipeline.shutdown()
        assert self.pipeline.in_hand == 0


async def test_a_photo_is_classified_replied_cached_and_acked(running, photos, redis_client) -> None:
    body = unique_jpeg(photos["coffee"])
    delivery = job(body)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, SuccessReply)
    assert reply.top[0].label == "espresso"
    cached = await redis_client.get(cache_key(running.model.version, delivery.headers["sha256"]))  # type: ignore[arg-type]
    assert cached is not None and parse_reply(cached) == reply


async def test_an_image_left_in_redis_is_fetched_and_classified(running, photos, redis_client) -> None:
    body = unique_jpeg(photos["coffee"])
    delivery = claimed_job(body)
    await redis_client.set(image_key(str(delivery.headers["sha256"])), body, px=30_000)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, SuccessReply) and reply.top[0].label == "espresso"


async def test_an_image_missing_from_redis_is_answered_so_and_acked(running, photos) -> None:
    """Expired, evicted, or Redis restarted: the gateway sends the job again with the image."""
    delivery = claimed_job(unique_jpeg(photos["coffee"]))  # never put in Redis
    missing = metric_value("classifier_jobs_total", outcome="image_missing")
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.IMAGE_MISSING
    assert metric_value("classifier_jobs_total", outcome="image_missing") == missing + 1


async def test_an_image_in_redis_that_is_not_the_job_s_is_a_malformed_job(
    running, photos, redis_client
) -> None:
    """The bytes under the key are checked against the job's sha256 as an inline body is."""
    delivery = claimed_job(unique_jpeg(photos["coffee"]))
    await redis_client.set(
        image_key(str(delivery.headers["sha256"])), unique_jpeg(photos["chelsea"]), px=30_000
    )
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "dead-letter"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.INTERNAL
    assert "sha256" in reply.message


async def test_top_k_slices_the_reply_but_the_cache_keeps_all_five(running, photos, redis_client) -> None:
    delivery = job(unique_jpeg(photos["chelsea"]), top_k=2)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack" and isinstance(reply, SuccessReply)
    assert len(reply.top) == 2
    cached = parse_reply(
        await redis_client.get(cache_key(running.model.version, delivery.headers["sha256"]))  # type: ignore[arg-type]
    )
    assert isinstance(cached, SuccessReply)
    assert len(cached.top) == MAX_TOP_K
    assert cached.top[:2] == reply.top


async def test_probabilities_are_replied_and_cached_under_their_own_key(
    running, photos, redis_client
) -> None:
    delivery = job(unique_jpeg(photos["astronaut"]), top_k=1, probabilities=True)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack" and isinstance(reply, SuccessReply)
    vector = reply.probability_bytes()
    assert vector is not None and len(vector) == 4 * len(running.model.metadata.labels)
    sha256 = str(delivery.headers["sha256"])
    with_vector = parse_reply(
        await redis_client.get(cache_key(running.model.version, sha256, probabilities=True))
    )
    assert isinstance(with_vector, SuccessReply) and with_vector.probabilities == reply.probabilities
    plain = parse_reply(await redis_client.get(cache_key(running.model.version, sha256)))
    assert isinstance(plain, SuccessReply) and plain.probabilities is None


async def test_a_batch_of_n_jobs_is_one_inference(model, cache, photos) -> None:
    n = 4
    # A long wait: the batch closes because it is full, not because its time ran out.
    async with started(make_pipeline(model, cache, max_batch=n, batch_wait_ms=5_000)) as pipeline:
        runs, images = inferences()
        deliveries = [job(unique_jpeg(photos[("coffee", "chelsea")[i % 2]])) for i in range(n)]
        for delivery in deliveries:
            await pipeline.accept(delivery)
        outcomes = [await d.outcome() for d in deliveries]
    assert inferences() == (runs + 1, images + n)
    assert [how for how, _ in outcomes] == ["ack"] * n
    replies = [reply for _, reply in outcomes]
    assert all(isinstance(r, SuccessReply) and r.batch_size == n for r in replies)
    assert len({r.inference_ms for r in replies if isinstance(r, SuccessReply)}) == 1


async def test_an_expired_job_is_answered_expired_and_acked_without_inference(running, photos) -> None:
    runs = inferences()
    delivery = job(unique_jpeg(photos["coffee"]), deadline_in_ms=-1)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.EXPIRED
    assert inferences() == runs


async def test_a_job_that_expires_while_batched_is_not_inferred(model, cache, photos) -> None:
    # It arrives alive, then waits 300 ms for company; its deadline passes at 100 ms.
    async with started(make_pipeline(model, cache, max_batch=8, batch_wait_ms=300)) as pipeline:
        runs = inferences()
        delivery = job(unique_jpeg(photos["coffee"]), deadline_in_ms=100)
        await pipeline.accept(delivery)
        how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.EXPIRED
    assert inferences() == runs


async def test_a_poison_job_is_dead_lettered_with_an_answer_and_not_run(running, photos) -> None:
    runs = inferences()
    poisoned = metrics.POISON_JOBS._value.get()
    delivery = job(unique_jpeg(photos["coffee"]), delivered_before=DELIVERY_LIMIT)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "dead-letter"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.INTERNAL
    assert f"delivered {DELIVERY_LIMIT} times" in reply.message
    assert inferences() == runs
    assert metrics.POISON_JOBS._value.get() == poisoned + 1


async def test_a_redelivery_under_the_limit_is_run(running, photos) -> None:
    delivery = job(unique_jpeg(photos["coffee"]), delivered_before=DELIVERY_LIMIT - 1)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack" and isinstance(reply, SuccessReply)


async def test_a_garbage_image_is_answered_invalid_image_and_acked(running) -> None:
    delivery = job(b"this is not an image at all")
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "ack"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.INVALID_IMAGE


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"top_k": 5}, "missing or malformed job header"),
        ({"sha256": "0" * 64, "deadline_ms": "soon"}, "missing or malformed job header"),
        ({"sha256": "not-hex", "deadline_ms": 2**62}, "sha256 is not 64 lowercase hex digits"),
        ({"sha256": "0" * 64, "deadline_ms": 2**62, "probabilities": "yes"}, "must be a boolean"),
    ],
)
async def test_malformed_headers_are_answered_internal_and_dead_lettered(running, headers, why) -> None:
    delivery = StubDelivery(b"\xff\xd8 whatever", headers)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "dead-letter"
    assert isinstance(reply, FailureReply) and reply.code is ErrorCode.INTERNAL
    assert why in reply.message


async def test_a_body_that_does_not_match_its_sha256_is_dead_lettered(running, photos) -> None:
    delivery = job(unique_jpeg(photos["coffee"]))
    delivery.body = unique_jpeg(photos["coffee"])  # another comment, another hash
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "dead-letter"
    assert isinstance(reply, FailureReply) and "sha256 header does not match" in reply.message


async def test_a_job_nobody_can_answer_is_dead_lettered_without_a_reply(running, photos) -> None:
    delivery = job(unique_jpeg(photos["coffee"]), reply_to=None)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert (how, reply) == ("dead-letter", None)


async def test_a_reply_that_cannot_be_published_returns_the_job_to_the_queue(running, photos) -> None:
    delivery = job(unique_jpeg(photos["coffee"]), publish_ok=False)
    await running.accept(delivery)
    how, reply = await delivery.outcome()
    assert how == "requeue"
    assert isinstance(reply, SuccessReply)  # it was tried


async def test_a_job_landing_after_close_goes_back_to_the_queue_unrun(model, cache, photos) -> None:
    async with started(make_pipeline(model, cache)) as pipeline:
        pipeline.close()
        runs = inferences()
        delivery = job(unique_jpeg(photos["coffee"]))
        await pipeline.accept(delivery)
        how, reply = await delivery.outcome()
    assert (how, reply) == ("requeue", None)
    assert inferences() == runs


def test_the_pipeline_imports_no_amqp_library() -> None:
    """The seam holds: everything AMQP is classifier/consumer.py's (a fresh interpreter, so that
    what other tests imported does not count)."""
    code = (
        "import sys, classifier.pipeline\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {'aio_pika', 'aiormq', 'pamqp'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
