"""Fixtures of the classifier tests: the loaded model, an AMQP client that plays the gateway,
and a Redis client. The shared fixtures (queue_name, photos, lite0_model, workers, ...) come
from tests/conftest.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage

from classifier.model import Model
from classifier.preprocess import Preprocessor, configure_pillow
from common.contract import JobHeaders, now_ms

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="session")
def model(lite0_model: Path) -> Model:
    """The real EfficientNet-Lite0 file, loaded in-process."""
    return Model(lite0_model, threads=1)


@pytest.fixture(scope="session")
def preprocess(model: Model) -> Preprocessor:
    """The worker's preprocessing for this model (size and resize policy from its metadata)."""
    configure_pillow(MAX_PIXELS)
    return Preprocessor(model.input_size, model.metadata.resize, MAX_PIXELS)


@dataclass
class Reply:
    """One reply as the gateway would receive it."""

    message: AbstractIncomingMessage
    body: bytes
    data: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.data = json.loads(self.body)


class JobClient:
    """Publishes jobs to the request queue like the gateway does and collects the replies."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue_name: str) -> None:
        self.channel = channel
        self.queue_name = queue_name
        self.reply_queue: aio_pika.abc.AbstractQueue | None = None
        self.replies: dict[str, Reply] = {}
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        self.reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.replies[str(message.correlation_id)] = Reply(message, message.body)
            self._arrived.notify_all()

    async def publish(
        self,
        body: bytes,
        *,
        top_k: int = 5,
        deadline_ms: int | None = None,
        headers: dict[str, Any] | None = None,
        sha256: str | None = None,
    ) -> str:
        """Publish one job; returns its correlation id."""
        assert self.reply_queue is not None
        correlation_id = uuid.uuid4().hex
        if headers is None:
            headers = JobHeaders(
                sha256=sha256 or hashlib.sha256(body).hexdigest(),
                deadline_ms=deadline_ms if deadline_ms is not None else now_ms() + 30_000,
                top_k=top_k,
            ).to_amqp()
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                correlation_id=correlation_id,
                reply_to=self.reply_queue.name,
                content_type="application/octet-stream",
                headers=headers,
            ),
            routing_key=self.queue_name,
        )
        return correlation_id

    async def reply(self, correlation_id: str, timeout: float = 30) -> Reply:
        """Wait for the reply to one job."""
        return (await self.wait_for([correlation_id], timeout))[correlation_id]

    async def wait_for(self, correlation_ids: list[str], timeout: float = 60) -> dict[str, Reply]:
        """Wait for the replies to all the given jobs."""
        wanted = set(correlation_ids)
        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: wanted <= self.replies.keys()), timeout)
            except TimeoutError:
                missing = len(wanted - self.replies.keys())
                raise AssertionError(
                    f"{missing} of {len(wanted)} replies missing after {timeout} s"
                ) from None
        return {c: self.replies[c] for c in correlation_ids}


@pytest.fixture
async def jobs(rabbitmq_url: str, queue_name: str) -> AsyncIterator[JobClient]:
    """A gateway stand-in on this test's queue (the worker declares the queue itself)."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        client = JobClient(channel, queue_name)
        await client.start()
        yield client
    finally:
        await connection.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()  # down = a loud failure, not a skip
        yield client
    finally:
        await client.aclose()
