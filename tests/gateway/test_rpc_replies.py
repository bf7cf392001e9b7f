"""The RPC client reads reply batches: each caller gets its own reply out of one message.

A stand-in worker on the real broker takes the gateway's jobs from the test's request queue and
answers them together, the way a worker answers a batch (classifier.consumer.Consumer.publish_replies).
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from common.contract import (
    HEADER_REPLY_BATCHES,
    REPLY_BATCH_CONTENT_TYPE,
    JobHeaders,
    ModelInfo,
    Prediction,
    SuccessReply,
    encode_reply_batch,
    now_ms,
)
from common.settings import Settings
from gateway.rpc import DeadlineExceeded, MalformedReply, RpcClient


def _success(sha256: str) -> SuccessReply:
    return SuccessReply(
        sha256=sha256,
        model=ModelInfo("m", "0123456789ab"),
        top=[Prediction("cup", 968, 0.75)],
        inference_ms=2.0,
        batch_size=3,
    )


async def test_one_reply_batch_answers_each_caller_with_its_own_reply(gateway_settings: Settings) -> None:
    rpc = RpcClient(gateway_settings)
    await rpc.start(wait_s=15)
    worker = await aio_pika.connect(gateway_settings.rabbitmq_url)
    try:
        channel = await worker.channel()
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
    finally:
        await worker.close()
        await rpc.close()


async def test_a_malformed_reply_batch_breaks_nothing(gateway_settings: Settings) -> None:
    """A batch that cannot be read is dropped (its callers wait for their deadline); the reply queue's
    consumer goes on, and the next reply is delivered."""
    rpc = RpcClient(gateway_settings)
    await rpc.start(wait_s=15)
    worker = await aio_pika.connect(gateway_settings.rabbitmq_url)
    try:
        channel = await worker.channel()
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
    finally:
        await worker.close()
        await rpc.close()
