"""Fixtures shared by every suite: real services, unique queues, real photos and models.

Tests talk to the real RabbitMQ and Redis. Where one is down, the tests that
need it fail loudly (they never skip): `make test` starts them first.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import rabbitmq_api
from tests.support.processes import REPO_ROOT, ServiceProcess, free_port, start_gateway, start_worker

DATA_DIR = REPO_ROOT / "tests" / "data"
MODELS_DIR = Path(os.environ.get("TEST_MODELS_DIR", REPO_ROOT / "models"))
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# The stack tests use a Redis database of their own and empty it before each test,
# so a result cached by an earlier run never turns a cache miss into a hit.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# One prefix per pytest session, so a run never deletes the queues of another run.
TEST_QUEUE_PREFIX = f"test.{uuid.uuid4().hex[:6]}."


def _require(url: str, default_port: int, what: str) -> None:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or default_port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{what} is not reachable at {url} ({exc}); run `make services`", pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    _require(RABBITMQ_URL, 5672, "RabbitMQ")
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require(REDIS_URL, 6379, "Redis")
    return REDIS_URL


@pytest.fixture
def queue_name(rabbitmq_url: str) -> Iterator[str]:
    """A request queue of this test's own; it and its dead-letter queue are deleted afterwards."""
    name = f"{TEST_QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
    yield name
    for queue in (name, f"{name}.dead"):
        rabbitmq_api.delete_queue(queue)


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """The real photos of tests/data (scikit-image's public-domain samples), by stem."""
    found = {p.stem: p for p in DATA_DIR.glob("*.jpg")}
    missing = {"coffee", "chelsea", "astronaut"} - found.keys()
    assert not missing, f"tests/data lacks {sorted(missing)}"
    return found


def _ensure_lite0(int8: bool) -> Path:
    """The offline EfficientNet-Lite0 model files, converted once if missing."""
    fp32 = MODELS_DIR / "efficientnet-lite0.onnx"
    quantised = MODELS_DIR / "efficientnet-lite0-int8.onnx"
    wanted = quantised if int8 else fp32
    if not wanted.exists():
        subprocess.run(
            [sys.executable, "-m", "converter", "efficientnet-lite0", "--int8", "--out-dir", str(MODELS_DIR)],
            cwd=REPO_ROOT,
            check=True,
        )
    assert wanted.exists(), f"the converter did not write {wanted}"
    return wanted


@pytest.fixture(scope="session")
def lite0_model() -> Path:
    return _ensure_lite0(int8=False)


@pytest.fixture(scope="session")
def lite0_int8_model() -> Path:
    return _ensure_lite0(int8=True)


@pytest.fixture(scope="session")
def labelled_dir() -> Path:
    """The workplace's labelled ImageNet sample (never copied into the repo: its README)."""
    from converter import labelled

    found = labelled.default_dir()
    if found is None or not found.is_dir():
        pytest.fail(
            f"the labelled photos are absent ({labelled.DEFAULT_LABELLED_DIR}, or set "
            f"${labelled.LABELLED_DIR_ENV}): the int8 accuracy tests cannot run without them",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def labelled_subset(labelled_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 of the labelled photos (links), for checks that need labels but not accuracy."""
    subset = tmp_path_factory.mktemp("labelled10")
    for photo in sorted(labelled_dir.glob("*.JPEG"))[::25][:10]:
        (subset / photo.name).symlink_to(photo)
    return subset


@pytest.fixture
def empty_cache(redis_url: str) -> str:
    """The test Redis database, emptied."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def stack_env(
    queue_name: str, rabbitmq_url: str, empty_cache: str, lite0_model: Path, tmp_path: Path
) -> dict[str, object]:
    """Environment for a gateway and its workers on this test's own queue, cache and folders."""
    redis_url = empty_cache
    return {
        "RABBITMQ_URL": rabbitmq_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue_name,
        "MODEL_PATH": lite0_model,
        "UPLOAD_DIR": tmp_path / "uploads",
        "FEEDBACK_CSV": tmp_path / "feedback" / "feedback.csv",
        "PORT": free_port(),
        "WORKER_METRICS_PORT": free_port(),
        "ORT_THREADS": 1,
        "REQUEST_TIMEOUT_S": 15,
    }


@pytest.fixture
def workers(stack_env: dict[str, object], tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start a real worker on the test's queue; every one is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(**overrides: object) -> ServiceProcess:
        env = {**stack_env, "WORKER_METRICS_PORT": free_port(), **overrides}
        worker = start_worker(env, tmp_path, name=f"worker{len(started) + 1}")
        worker.metrics_port = env["WORKER_METRICS_PORT"]  # type: ignore[attr-defined]
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.terminate()


@pytest.fixture
def gateway(stack_env: dict[str, object], tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start the real gateway (a subprocess) on the test's queue; stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(**overrides: object) -> ServiceProcess:
        env = {**stack_env, **overrides}
        process = start_gateway(env, tmp_path, name=f"gateway{len(started) + 1}")
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave no test queue behind, even after a crashed test."""
    try:
        for name in rabbitmq_api.list_queues(TEST_QUEUE_PREFIX):
            rabbitmq_api.delete_queue(name)
    except OSError:
        pass


@pytest.fixture(scope="session")
def distinct_jpegs(photos: dict[str, Path]) -> list[bytes]:
    """Distinct small JPEGs cut from the real photos, so that each one is a cache miss."""
    from PIL import Image

    sources = [Image.open(photos[name]).convert("RGB") for name in ("coffee", "chelsea", "astronaut")]
    bodies: list[bytes] = []
    for i in range(240):
        image = sources[i % 3]
        dx, dy = (i // 3) % 40, (i // 120) * 7
        crop = image.crop((dx, dy, image.width - 40 + dx, image.height - 40 + dy)).resize((320, 240))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=85)
        bodies.append(buffer.getvalue())
    assert len(set(bodies)) == len(bodies)
    return bodies
