"""One real gateway and one real worker (Lite0, ORT_THREADS=1) shared by the whole OIP suite.

tritonclient and schemathesis are clients we did not write; they talk HTTP to this
stack exactly as they would to Triton or any OpenAPI service. The stack is the
security suites' (tests/security/conftest.py): same limits, a queue of its own.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import tritonclient.http as httpclient

from tests.security.conftest import Stack, _start_stack

MODEL_NAME = "efficientnet-lite0"


@pytest.fixture(scope="package")
def oip_stack(
    tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str, redis_url: str, lite0_model: Path
) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # nothing cached by an earlier run
    finally:
        client.close()
    running = _start_stack(tmp_path_factory.mktemp("oip"), rabbitmq_url, redis_url, lite0_model)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
def model_version(oip_stack: Stack) -> str:
    """The served version, as the gateway reports it (the workers' announcement)."""
    with urllib.request.urlopen(f"{oip_stack.base_url}/v2/models/{MODEL_NAME}", timeout=5) as response:
        return json.loads(response.read())["versions"][0]


@pytest.fixture
def triton(oip_stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient's HTTP client on the stack's gateway."""
    client = httpclient.InferenceServerClient(url=oip_stack.base_url.removeprefix("http://"))
    yield client
    client.close()
