"""Fixtures of the gateway suite: an in-process gateway on real RabbitMQ and Redis.

``gateway_client`` builds the real application (``init_app``) on this test's own
queue and folders and serves it with aiohttp's TestServer; the process-level
fixtures (``gateway``, ``workers``) come from tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from common.contract import ModelInfo, Prediction, SuccessReply, cache_key, model_announcement_key
from common.settings import Settings
from gateway import init_app

# Small, so the deadline tests stay quick.
TEST_TIMEOUT_S = 1.5
TEST_UPLOAD_MB = 1.0

GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def gateway_settings(queue_name: str, rabbitmq_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        rabbitmq_url=rabbitmq_url,
        redis_url=redis_url,
        queue_name=queue_name,
        request_timeout_s=TEST_TIMEOUT_S,
        max_upload_mb=TEST_UPLOAD_MB,
        upload_dir=tmp_path / "uploads",
        feedback_csv=tmp_path / "feedback" / "feedback.csv",
    )


@pytest.fixture
async def make_gateway(gateway_settings: Settings) -> AsyncIterator[GatewayFactory]:
    """Factory: a running in-process gateway (settings overridable); all are closed at teardown."""
    clients: list[TestClient] = []

    async def make(**overrides: object) -> TestClient:
        settings = Settings(**{**_as_dict(gateway_settings), **overrides})
        client = TestClient(TestServer(init_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def gateway_client(make_gateway: GatewayFactory) -> TestClient:
    """A gateway with the test settings, connected to the real broker (no worker on its queue)."""
    client = await make_gateway()
    assert client.app is not None
    return client


def _as_dict(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.ping()  # a down Redis fails the test here, loudly
    yield client
    client.close()


@pytest.fixture
def announce_model(redis_client: redis.Redis, queue_name: str) -> Iterator[Callable[[ModelInfo], None]]:
    """Announce a model on the test's queue as a worker would; keys written are removed afterwards."""
    written: list[str] = []

    def announce(model: ModelInfo) -> None:
        key = model_announcement_key(queue_name)
        redis_client.set(key, json.dumps({"name": model.name, "version": model.version}), ex=300)
        written.append(key)

    yield announce
    if written:
        redis_client.delete(*written)


@pytest.fixture
def put_cached(redis_client: redis.Redis) -> Iterator[Callable[[SuccessReply], str]]:
    """Store a success reply in the result cache as a worker would; removed afterwards."""
    written: list[str] = []

    def put(reply: SuccessReply) -> str:
        key = cache_key(reply.model.version, reply.sha256)
        redis_client.set(key, reply.to_json(), ex=300)
        written.append(key)
        return key

    yield put
    if written:
        redis_client.delete(*written)


def make_reply(sha256: str, model: ModelInfo, labels: list[tuple[str, float]]) -> SuccessReply:
    return SuccessReply(
        sha256=sha256,
        model=model,
        top=[Prediction(label=label, index=i, score=score) for i, (label, score) in enumerate(labels)],
        inference_ms=12.5,
        batch_size=1,
    )
