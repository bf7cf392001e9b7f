"""Images in Redis (the claim check, docs/DESIGN.md): the job carries the image's hash, the image
waits in Redis; and every way that can fail ends with the image in the message, never a lost job.

Real parts throughout: the in-process gateway, RabbitMQ (the job is read off the queue as a worker
would see it), Redis (an ACL user that may not write stands for a Redis that refuses images), and a
real worker process with the Lite0 model.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
import redis
from aiohttp.test_utils import TestClient

from common.contract import IMAGE_TTL_MARGIN_MS, JobHeaders, image_key
from gateway.state import GATEWAY
from tests.gateway.conftest import TEST_TIMEOUT_S
from tests.gateway.test_api import form

# Long enough for a worker process to start and answer (its model loads in a few seconds).
WORKER_WAIT_S = 30.0


def jobs_sent(client: TestClient, image: str) -> float:
    assert client.app is not None
    return client.app[GATEWAY].metrics.jobs_sent.labels(image)._value.get()


async def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def test_the_job_carries_a_reference_and_the_image_waits_in_redis(
    make_gateway, workers, photos, rabbitmq_url, queue_name, redis_client
) -> None:
    client = await make_gateway(request_timeout_s=WORKER_WAIT_S)
    data = photos["coffee"].read_bytes() + uuid.uuid4().bytes  # a miss for sure
    sha256 = hashlib.sha256(data).hexdigest()
    answer = asyncio.create_task(client.post("/predict", data=form(data)))

    # No worker yet: the job waits on the queue, read here as a worker would read it.
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        message = None
        for _ in range(100):
            message = await queue.get(fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None, "the job never reached the queue"
        headers = JobHeaders.from_amqp(dict(message.headers))
        assert message.body == b"" and headers.image_in_redis and headers.sha256 == sha256
        assert redis_client.get(image_key(sha256)) == data
        # The image lives as long as the job may: its deadline, and a little margin.
        ttl_ms = redis_client.pttl(image_key(sha256))
        assert 0 < ttl_ms <= WORKER_WAIT_S * 1000 + IMAGE_TTL_MARGIN_MS
        await message.nack(requeue=True)
    finally:
        await connection.close()

    workers()
    response = await asyncio.wait_for(answer, WORKER_WAIT_S)
    body = await response.json()
    assert response.status == 200 and body["prediction"] == "espresso", body
    assert (jobs_sent(client, "redis"), jobs_sent(client, "message")) == (1, 0)


async def test_an_image_gone_from_redis_is_sent_again_in_the_message(
    make_gateway, workers, photos, redis_client
) -> None:
    """Evicted, expired or lost with a Redis restart before a worker got to it: the worker answers
    image_missing, and the gateway sends the same job with the image in its body."""
    client = await make_gateway(request_timeout_s=WORKER_WAIT_S)
    data = photos["chelsea"].read_bytes() + uuid.uuid4().bytes
    key = image_key(hashlib.sha256(data).hexdigest())
    answer = asyncio.create_task(client.post("/predict", data=form(data)))
    await wait_for(lambda: redis_client.exists(key), "the image in Redis")
    redis_client.delete(key)

    workers()
    response = await asyncio.wait_for(answer, WORKER_WAIT_S)
    body = await response.json()
    assert response.status == 200 and body["prediction"] in {"tabby", "tiger cat", "Egyptian cat"}, body
    assert (jobs_sent(client, "redis"), jobs_sent(client, "message")) == (1, 1)


@pytest.fixture
def read_only_redis_url(redis_url: str) -> Iterator[str]:
    """The test database through a Redis ACL user that may read but not write (a Redis that
    refuses images: an older ACL, or maxmemory with noeviction)."""
    user, password = f"readonly-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["-@all", "+get", "+ping", "+select"],
    )
    try:
        yield redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    finally:
        admin.acl_deluser(user)
        admin.close()


async def test_a_redis_that_refuses_images_leaves_them_in_the_message(
    make_gateway, workers, photos, read_only_redis_url
) -> None:
    workers()
    client = await make_gateway(request_timeout_s=WORKER_WAIT_S, redis_url=read_only_redis_url)
    for _ in range(2):  # the second goes straight to the message: no write tried during the back-off
        data = photos["coffee"].read_bytes() + uuid.uuid4().bytes
        response = await client.post("/predict", data=form(data))
        body = await response.json()
        assert response.status == 200 and body["prediction"] == "espresso", body
    assert (jobs_sent(client, "redis"), jobs_sent(client, "message")) == (0, 2)
    # Reads still work: the refused write did not switch the result cache off.
    assert client.app is not None and client.app[GATEWAY].cache.up is True


async def test_image_transport_inline_never_touches_redis_with_images(
    make_gateway, workers, photos, redis_client
) -> None:
    workers()
    client = await make_gateway(request_timeout_s=WORKER_WAIT_S, image_transport="inline")
    data = photos["astronaut"].read_bytes() + uuid.uuid4().bytes
    response = await client.post("/predict", data=form(data))
    assert response.status == 200, await response.text()
    assert not redis_client.exists(image_key(hashlib.sha256(data).hexdigest()))
    assert (jobs_sent(client, "redis"), jobs_sent(client, "message")) == (0, 1)


async def test_a_job_whose_image_is_missing_twice_is_a_bad_gateway_not_a_loop(
    make_gateway, photos, rabbitmq_url, queue_name
) -> None:
    """A worker that answers image_missing to the inline job too (a bug, or a foreign worker) ends
    the request with 502 at once; the gateway sends a job at most twice."""
    client = await make_gateway(request_timeout_s=TEST_TIMEOUT_S * 4)
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)

        async def answer_image_missing(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        b'{"ok":false,"error":{"code":"image_missing","message":"not here"}}',
                        correlation_id=message.correlation_id,
                    ),
                    routing_key=message.reply_to or "",
                )

        await queue.consume(answer_image_missing)
        response = await client.post(
            "/predict", data=form(photos["coffee"].read_bytes() + uuid.uuid4().bytes)
        )
        assert response.status == 502, await response.text()
        assert (jobs_sent(client, "redis"), jobs_sent(client, "message")) == (1, 1)
    finally:
        await connection.close()
