"""Private brokers for the fault suite, so that stopping them never breaks other tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster
from tests.support.private_services import PrivateRabbitMQ, PrivateRedis
from tests.support.processes import free_port
from tests.support.rabbitmq_api import ManagementAPI


@pytest.fixture
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    broker = PrivateRabbitMQ(free_port(), free_port(), free_port())
    broker.start()
    broker.api = ManagementAPI(f"http://127.0.0.1:{broker.management_port}")  # type: ignore[attr-defined]
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis", free_port())
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[LocalCluster]:
    """A three-node cluster, started once per test session (about 30 s here) and removed at its end."""
    cluster = LocalCluster()
    try:
        cluster.start()
        print(f"\n[fault] three-node cluster started in {cluster.start_s:.1f} s")
        yield cluster
    finally:
        cluster.stop()
