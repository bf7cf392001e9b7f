"""The RPC client's batches: jobs that arrive together go out in one message, and each caller gets
its own reply out of one reply message.

A stand-in worker on the real broker takes the gateway's jobs from the test's request queue and
answers them together, the way a worker answers a batch (classifier.consumer.Consumer.publish_replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from common.contract import (
    HEADER_REPLY_BATCHES,
    JOB_BATCH_CONTENT_TYPE,
    MAX_JOBS_IN_A_BATCH,
    REPLY_BATCH_CONTENT_TYPE,
    JobHeaders,
    ModelInfo,
    Prediction,
    SuccessReply,
    encode_reply_batch,
    now_ms,
    parse_job_batch,
)
from common.settings import Settings
from gateway import ConfigurationError, check_settings
from gateway.rpc import DeadlineExceeded, MalformedReply, RpcClient, deal


@contextlib.asynccontextmanager
async def rpc_and_stand_in(
    settings: Settings, on_published: Callable[[int], object] | None = None
) -> AsyncIterator[tuple[RpcClient, aio_pika.abc.AbstractChannel]]:
    """The gateway's RPC client, started, and a channel of the stand-in worker's own connection."""
    rpc = RpcClient(settings, on_published=on_published)
    await rpc.start(wait_s=15)
    worker = await aio_pika.connect(settings.rabbitmq_url)
    try:
        yield rpc, await worker.channel()
    finally:
        await worker.close()
        await rpc.close()


def _success(sha256: str) -> SuccessReply:
    return SuccessReply(
        sha256=sha256,
        model=ModelInfo("m", "0123456789ab"),
        top=[Prediction("cup", 968, 0.75)],
        inference_ms=2.0,
        batch_size=3,
    )


async def test_one_reply_batch_answers_each_caller_with_its_own_reply(gateway_settings: Settings) -> None:
    async with rpc_and_stand_in(gateway_settings) as (rpc, channel):
        jobs: list[AbstractIncomingMessage] = []
        all_in = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            jobs.append(message)
            if len(jobs) == 3:
                all_in.set()

        queue = await channel.get_queue(gateway_settings.queue_name)
        await queue.consume(take, no_ack=True)
        shas = [f"{i}" * 64 for i in range(3)]
        calls = [
            asyncio.create_task(
                rpc.call(
                    b"",
                    content_type="image/jpeg",
                    headers=JobHeaders(sha256=sha, deadline_ms=now_ms() + 3000, top_k=5),
                )
            )
            for sha in shas
        ]
        await asyncio.wait_for(all_in.wait(), 10)
        assert all(job.headers.get(HEADER_REPLY_BATCHES) is True for job in jobs)  # the gateway asks for them
        by_sha = {str(job.headers["sha256"]): job for job in jobs}
        reply_to = jobs[0].reply_to
        assert reply_to is not None and {job.reply_to for job in jobs} == {reply_to}
        # The first job answered, the second answered outside the contract, the third not at all
        # (a reply for a caller that gave up is in the batch instead).
        body = encode_reply_batch(
            [
                (str(by_sha[shas[0]].correlation_id), _success(shas[0]).to_json()),
                (str(by_sha[shas[1]].correlation_id), b'{"ok": true}'),
                ("a caller that gave up", _success(shas[2]).to_json()),
            ]
        )
        await channel.default_exchange.publish(
            aio_pika.Message(body, content_type=REPLY_BATCH_CONTENT_TYPE), routing_key=reply_to
        )

        assert await asyncio.wait_for(calls[0], 5) == _success(shas[0])
        with pytest.raises(MalformedReply):
            await asyncio.wait_for(calls[1], 5)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(calls[2], 10)
        assert rpc.in_flight == 0


async def test_a_malformed_reply_batch_breaks_nothing(gateway_settings: Settings) -> None:
    """A batch that cannot be read is dropped (its callers wait for their deadline); the reply queue's
    consumer goes on, and the next reply is delivered."""
    async with rpc_and_stand_in(gateway_settings) as (rpc, channel):
        taken: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        queue = await channel.get_queue(gateway_settings.queue_name)
        await queue.consume(taken.put, no_ack=True)
        sha = "d" * 64
        call = asyncio.create_task(
            rpc.call(
                b"",
                content_type="image/jpeg",
                headers=JobHeaders(sha256=sha, deadline_ms=now_ms() + 5000, top_k=5),
            )
        )
        job = await asyncio.wait_for(taken.get(), 10)
        assert job.reply_to is not None
        for junk in (b"\x00\xff not json", b'{"replies": ["x"]}'):
            await channel.default_exchange.publish(
                aio_pika.Message(junk, content_type=REPLY_BATCH_CONTENT_TYPE), routing_key=job.reply_to
            )
        await asyncio.sleep(0.2)
        assert not call.done()
        await channel.default_exchange.publish(
            aio_pika.Message(
                _success(sha).to_json(), correlation_id=job.correlation_id, content_type="application/json"
            ),
            routing_key=job.reply_to,
        )
        assert await asyncio.wait_for(call, 5) == _success(sha)


async def publish_together(
    settings: Settings,
    jobs: int,
    *,
    body: bytes = b"",
    consumers: int = 1,
    on_published: Callable[[int], object] | None = None,
) -> tuple[list[AbstractIncomingMessage], list[SuccessReply]]:
    """``jobs`` calls started at once (images in Redis unless ``body``); what the request queue
    received, and each call's reply once the stand-in worker (``consumers`` consumers on the queue,
    which the gateway has counted) answered every job in one reply batch."""
    async with rpc_and_stand_in(settings, on_published) as (rpc, channel):
        messages: list[AbstractIncomingMessage] = []
        entries: list[tuple[str, str]] = []  # (correlation id, sha256) of every job received
        all_in = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            messages.append(message)
            if message.content_type == JOB_BATCH_CONTENT_TYPE:
                entries.extend(
                    (cid, str(headers["sha256"])) for cid, headers in parse_job_batch(message.body)
                )
            else:
                entries.append((str(message.correlation_id), str(message.headers["sha256"])))
            if len(entries) == jobs:
                all_in.set()

        queue = await channel.get_queue(settings.queue_name)
        for _ in range(consumers):
            await queue.consume(take, no_ack=True)
        assert await rpc.consumer_count() == consumers
        shas = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(jobs)]
        calls = [
            asyncio.create_task(
                rpc.call(
                    body,
                    content_type="image/jpeg",
                    headers=JobHeaders(
                        sha256=sha, deadline_ms=now_ms() + 10_000, top_k=5, image_in_redis=not body
                    ),
                )
            )
            for sha in shas
        ]
        await asyncio.wait_for(all_in.wait(), 10)
        reply_to = messages[0].reply_to
        assert reply_to is not None
        answers = encode_reply_batch([(cid, _success(sha).to_json()) for cid, sha in entries])
        await channel.default_exchange.publish(
            aio_pika.Message(answers, content_type=REPLY_BATCH_CONTENT_TYPE), routing_key=reply_to
        )
        replies = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert replies == [_success(sha) for sha in shas]  # each caller its own
        return messages, replies


async def test_jobs_that_arrive_together_go_out_in_one_message(gateway_settings: Settings) -> None:
    messages, _ = await publish_together(dataclasses.replace(gateway_settings, max_jobs_per_message=8), 6)
    # The first publish takes every job queued before it went out: one message, six jobs.
    assert [m.content_type for m in messages] == [JOB_BATCH_CONTENT_TYPE]
    assert len(parse_job_batch(messages[0].body)) == 6
    assert messages[0].correlation_id is None and messages[0].expiration is not None


async def test_a_message_carries_at_most_max_jobs_per_message(gateway_settings: Settings) -> None:
    messages, _ = await publish_together(dataclasses.replace(gateway_settings, max_jobs_per_message=4), 6)
    assert [len(parse_job_batch(m.body)) for m in messages] == [4, 2]


@pytest.mark.parametrize(
    ("consumers", "most", "jobs", "sizes"),
    [(2, 8, 6, [3, 3]), (3, 8, 5, [3, 2]), (3, 8, 3, [3]), (3, 2, 7, [2, 2, 2, 1])],
)
async def test_jobs_that_arrive_together_are_dealt_over_the_consumers(
    gateway_settings: Settings, consumers: int, most: int, jobs: int, sizes: list[int]
) -> None:
    """One message per consumer (RabbitMQ hands out messages, not jobs), fewer if a share would hold
    under two jobs, more if one would hold over MAX_JOBS_PER_MESSAGE: each worker gets its share of
    the jobs that arrived together."""
    batching = dataclasses.replace(gateway_settings, max_jobs_per_message=most)
    messages, _ = await publish_together(batching, jobs, consumers=consumers)
    jobs_in = [
        len(parse_job_batch(m.body)) if m.content_type == JOB_BATCH_CONTENT_TYPE else 1 for m in messages
    ]
    assert sorted(jobs_in, reverse=True) == sizes


def test_deal_keeps_every_job_once_and_evens_the_shares() -> None:
    for jobs in range(20):
        for ways in range(1, 5):
            for most in range(1, 9):
                for least in (1, 2, 3):
                    group = list(range(jobs))
                    parts = deal(group, ways, most, least)
                    assert sorted(job for part in parts for job in part) == group
                    assert all(0 < len(part) <= most for part in parts)
                    assert len(parts) == max(min(ways, jobs // least), -(-jobs // most))
                    if len(parts) > 1 and len(parts) <= jobs // least:  # not split further for ``most``
                        assert all(len(part) >= least for part in parts)
                    assert max(map(len, parts), default=0) - min(map(len, parts), default=0) <= 1


async def test_one_job_a_message_with_max_jobs_per_message_1(gateway_settings: Settings) -> None:
    messages, _ = await publish_together(dataclasses.replace(gateway_settings, max_jobs_per_message=1), 4)
    assert [m.content_type for m in messages] == ["image/jpeg"] * 4
    assert all(m.correlation_id for m in messages)


async def test_a_job_with_its_image_in_the_message_goes_alone(gateway_settings: Settings) -> None:
    batching = dataclasses.replace(gateway_settings, max_jobs_per_message=8)
    messages, _ = await publish_together(batching, 3, body=b"\xff\xd8 an image")
    assert [(m.content_type, m.body) for m in messages] == [("image/jpeg", b"\xff\xd8 an image")] * 3


@pytest.mark.parametrize("jobs", [0, MAX_JOBS_IN_A_BATCH + 1])
def test_the_gateway_refuses_a_max_jobs_per_message_a_worker_would_refuse(
    gateway_settings: Settings, jobs: int
) -> None:
    check_settings(dataclasses.replace(gateway_settings, max_jobs_per_message=MAX_JOBS_IN_A_BATCH))
    with pytest.raises(ConfigurationError, match=f"MAX_JOBS_PER_MESSAGE={jobs} must be 1"):
        check_settings(dataclasses.replace(gateway_settings, max_jobs_per_message=jobs))
