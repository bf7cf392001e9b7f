"""A real gateway and a real worker, started once per test module, for the security suites.

The hostile-input and fuzz suites must show that nothing they send crashes or
restarts the worker, so each module shares one pair of processes (started with
tests.support.processes) on a queue of its own, deleted at the end. The limits
are small so that the "too big" cases stay cheap.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import TEST_QUEUE_PREFIX
from tests.support import rabbitmq_api
from tests.support.metrics import scrape, total
from tests.support.processes import ServiceProcess, free_port, start_gateway, start_worker

MAX_UPLOAD_MB = 1
MAX_PIXELS = 500_000  # the test photos are 240 000 to 262 144 pixels
REQUEST_TIMEOUT_S = 15


@dataclass
class Stack:
    """One gateway and one worker on a queue of their own."""

    gateway: ServiceProcess
    worker: ServiceProcess
    queue: str
    upload_dir: Path
    feedback_csv: Path
    worker_metrics_port: int

    def stop(self) -> None:
        """Stop both processes and delete the stack's queues."""
        self.gateway.terminate()
        self.worker.terminate()
        for name in (self.queue, f"{self.queue}.dead"):
            rabbitmq_api.delete_queue(name)

    @property
    def base_url(self) -> str:
        return self.gateway.base_url  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def worker_jobs(self) -> float:
        """Jobs the worker has finished, every outcome."""
        return total(scrape(f"http://127.0.0.1:{self.worker_metrics_port}/metrics"), "classifier_jobs_total")

    def worker_start_time(self) -> float:
        samples = scrape(f"http://127.0.0.1:{self.worker_metrics_port}/metrics")
        return total(samples, "process_start_time_seconds")

    def gateway_5xx(self) -> dict[str, float]:
        """Requests the gateway answered with a 5xx, by route (from its own /metrics)."""
        counts: dict[str, float] = {}
        for name, labels, value in scrape(f"{self.base_url}/metrics"):
            if name == "gateway_requests_total" and labels["status"].startswith("5") and value:
                counts[labels["route"]] = counts.get(labels["route"], 0) + value
        return counts

    def assert_unharmed(self, worker_pid: int, started_at: float) -> None:
        """The same worker process is alive (never restarted) and nothing logged a crash."""
        assert self.worker.proc.poll() is None, self.worker.log_tail()
        assert self.worker.pid == worker_pid
        assert self.worker_start_time() == started_at, "the worker restarted"
        worker_log = self.worker.log_text()
        assert worker_log.count("worker ready") == 1
        assert "Traceback" not in worker_log and not re.search(r" (ERROR|CRITICAL) ", worker_log), worker_log
        gateway_log = self.gateway.log_text()
        assert "Traceback" not in gateway_log and "unhandled error" not in gateway_log, gateway_log
        assert self.gateway_5xx() == {}


def _start_stack(tmp: Path, rabbitmq_url: str, redis_url: str, model: Path, **overrides: object) -> Stack:
    queue = f"{TEST_QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
    env: dict[str, object] = {
        "RABBITMQ_URL": rabbitmq_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "MODEL_PATH": model,
        "UPLOAD_DIR": tmp / "uploads",
        "FEEDBACK_CSV": tmp / "feedback" / "feedback.csv",
        "PORT": free_port(),
        "WORKER_METRICS_PORT": free_port(),
        "ORT_THREADS": 1,
        "REQUEST_TIMEOUT_S": REQUEST_TIMEOUT_S,
        "MAX_UPLOAD_MB": MAX_UPLOAD_MB,
        "MAX_PIXELS": MAX_PIXELS,
        **overrides,
    }
    worker = start_worker(env, tmp, name="worker")
    try:
        gateway = start_gateway(env, tmp, name="gateway")
    except BaseException:
        worker.terminate()
        raise
    return Stack(
        gateway=gateway,
        worker=worker,
        queue=queue,
        upload_dir=tmp / "uploads",
        feedback_csv=tmp / "feedback" / "feedback.csv",
        worker_metrics_port=int(env["WORKER_METRICS_PORT"]),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq_url: str,
    redis_url: str,
    lite0_model: Path,
) -> Iterator[Stack]:
    """The module's gateway + worker; stopped and their queues deleted at the end."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # no answer cached by an earlier run: the worker sees every image
    finally:
        client.close()
    tmp = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    running = _start_stack(tmp, rabbitmq_url, redis_url, lite0_model)
    try:
        yield running
    finally:
        running.stop()
