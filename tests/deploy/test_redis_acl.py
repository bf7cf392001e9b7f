"""The Redis users of docker-compose.yml, on a real redis-server started with compose's own command.

The gateway and the worker connect with the very REDIS_URLs compose gives them
(only the host and port point at the private server): the worker writes results
and its model announcement, the gateway reads them and can write nothing, and
nobody gets in without a password.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from classifier.cache import ResultCache as WorkerCache
from common.contract import ModelInfo, Prediction, SuccessReply, cache_key
from gateway.cache import ResultCache as GatewayCache
from tests.deploy.conftest import compose_config, environment
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))["services"]


@pytest.fixture(scope="module")
def redis_port(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """redis-server with compose's command line, on a free port of 127.0.0.1."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (apt-get install redis-server)"
    command = [str(part) for part in services["redis"]["command"]]
    assert command[0] == "redis-server"
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [server, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    probe = redis.Redis(port=port, username="healthcheck", password="-", socket_timeout=1)
    try:
        for _ in range(100):
            assert process.poll() is None, process.stdout.read().decode()  # e.g. an ACL rule it refuses
            try:
                if probe.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield port
    finally:
        probe.close()
        process.terminate()
        process.wait(10)


def local_url(compose_url: str, port: int) -> str:
    """The compose URL (user, password, database) pointed at 127.0.0.1:port."""
    parts = urlsplit(compose_url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))


async def test_the_worker_writes_and_the_gateway_reads(services, redis_port) -> None:
    worker_url = local_url(environment(services["classifier"])["REDIS_URL"], redis_port)
    gateway_url = local_url(environment(services["gateway"])["REDIS_URL"], redis_port)
    model = ModelInfo("efficientnet-lite0", "0123456789ab")
    sha = "ab" * 32
    reply = SuccessReply(sha, model, [Prediction("espresso", 967, 0.9)], inference_ms=1.0, batch_size=1)

    worker = WorkerCache(worker_url, ttl_s=60)
    gateway = GatewayCache(gateway_url, "classify")
    try:
        assert await worker.announce("classify", model)
        assert await worker.store([(cache_key(model.version, sha), reply.to_json())])
        assert await gateway.ping()
        assert await gateway.model() == model
        assert await gateway.get(sha) == reply
        # The claim check: the gateway leaves a job's image, the worker reads it.
        assert await gateway.put_image(sha, b"\xff\xd8 a photo", ttl_ms=5_000)
        assert await worker.fetch_image(sha) == b"\xff\xd8 a photo"
    finally:
        await worker.close()
        await gateway.close()


def test_the_gateway_cannot_write_and_strangers_cannot_read(services, redis_port) -> None:
    gateway_url = local_url(environment(services["gateway"])["REDIS_URL"], redis_port)
    worker_url = local_url(environment(services["classifier"])["REDIS_URL"], redis_port)
    with redis.Redis.from_url(gateway_url) as gateway:
        with pytest.raises(NoPermissionError):
            gateway.set("clf:v1:0123456789ab:" + "cd" * 32, b'{"ok": true}')  # a forged answer
        with pytest.raises(NoPermissionError):
            gateway.set("clf:v1:model:classify", b"{}")  # a forged model announcement
        with pytest.raises(NoPermissionError):
            gateway.get("other")  # images are all it may write; clf:* all it may read
        with pytest.raises(NoPermissionError):
            gateway.flushall()
    with redis.Redis.from_url(worker_url) as worker:
        for forbidden in (lambda: worker.set("other", 1), worker.flushall, lambda: worker.config_get("*")):
            with pytest.raises(NoPermissionError):
                forbidden()
    with (
        redis.Redis(port=redis_port) as anonymous,
        pytest.raises((AuthenticationError, ResponseError), match=r"NOAUTH|authenticated"),
    ):
        anonymous.get("clf:v1:model:classify")
    with (
        redis.Redis(port=redis_port, username="default", password="") as default,
        pytest.raises((AuthenticationError, ResponseError)),
    ):
        default.ping()
    with (
        redis.Redis.from_url(gateway_url.replace("gateway-test-pw", "wrong")) as wrong,
        pytest.raises((AuthenticationError, ResponseError)),
    ):
        wrong.ping()


def test_the_healthcheck_command_passes(services, redis_port) -> None:
    test = services["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "redis-cli"
    result = subprocess.run(
        [*test[1:2], "-p", str(redis_port), *test[2:]],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "PONG", result
