"""The real services as subprocesses for the benchmark: one gateway, N workers, their own queue and Redis db.

Each run gets a bench-unique queue (``perf.<stamp>``, deleted at the end), a
Redis database of its own (``PERF_REDIS_DB``, default 14, flushed before
each phase), its own upload folder, and free ports.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.contract import model_announcement_key

# The test suite's subprocess wrapper: a log file each, SIGTERM then SIGKILL.
from devtools.processes import ServiceProcess as Service
from devtools.processes import free_port, http_ok, service_env, start_gateway
from perf.stats import listening_pids

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_API = os.environ.get("RABBITMQ_API", "http://127.0.0.1:15672")
REDIS_BASE = os.environ.get("PERF_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("PERF_REDIS_DB", "14"))
RABBITMQ_PORT = urllib.parse.urlparse(RABBITMQ_URL).port or 5672
REDIS_PORT = urllib.parse.urlparse(REDIS_BASE).port or 6379


def start_gateways(
    env: dict[str, object], processes: int, log_dir: Path, name: str = "gateway"
) -> list[Service]:
    """``processes`` gateway processes on ``env["PORT"]``: with more than one, ``GATEWAY_PROCESSES`` makes
    each bind the port with SO_REUSEPORT and the kernel spreads new connections among them. Returns
    once every one of them listens (the port answering is not enough: the first answers for all)."""
    env = {**env, "GATEWAY_PROCESSES": processes}
    names = [name] if processes == 1 else [f"{name}{i}" for i in range(processes)]
    port, started = int(str(env["PORT"])), []
    try:
        for n in names:
            started.append(start_gateway(env, log_dir, name=n))
        for g in started:
            g.wait_until(lambda g=g: g.pid in listening_pids(port), 30, f"listening on {port}")
    except BaseException:
        for g in started:
            g.terminate()
        raise
    return started


@dataclass
class Stack:
    """A gateway (one or several processes on one port) and its workers on a queue of their own."""

    run_dir: Path
    queue: str = field(default_factory=lambda: f"perf.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}")
    gateway: Service | None = None  # the first (or only) gateway process
    gateways: list[Service] = field(default_factory=list)  # every gateway process on ``port``
    workers: list[Service] = field(default_factory=list)
    worker_metrics_ports: list[int] = field(default_factory=list)
    port: int = 0

    @property
    def redis_url(self) -> str:
        return f"{REDIS_BASE}/{REDIS_DB}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, **extra: object) -> dict[str, str]:
        return service_env({
            "RABBITMQ_URL": RABBITMQ_URL, "REDIS_URL": self.redis_url, "QUEUE_NAME": self.queue,
            "UPLOAD_DIR": self.run_dir / "uploads", "FEEDBACK_CSV": self.run_dir / "feedback.csv",
            "LOG_LEVEL": "INFO", **extra,
        })  # fmt: skip

    def flush_redis(self) -> None:
        """Empty this run's Redis db, keeping the workers' model announcement (if any)."""
        client = redis.Redis.from_url(self.redis_url)
        key = model_announcement_key(self.queue)
        announcement = client.get(key)
        client.flushdb()
        if announcement is not None:
            client.set(key, announcement, ex=90)
        client.close()

    def start_gateway(self, processes: int = 1, **env: object) -> Service:
        """``processes`` gateway processes on a free port (``GATEWAY_PROCESSES``); the first one."""
        self.port = free_port()
        name = "gateway" if processes == 1 else f"gateway-{processes}p-"
        self.gateways = start_gateways(self._env(PORT=self.port, **env), processes, self.run_dir, name)
        self.gateway = self.gateways[0]
        return self.gateway

    def stop_gateway(self) -> None:
        for g in self.gateways:
            g.terminate()
        self.gateways, self.gateway = [], None

    @contextmanager
    def gateway_processes(self, processes: int) -> Iterator[None]:
        """Serve through ``processes`` new gateway processes on a port of their own meanwhile (same queue,
        same Redis db); then stop them and serve through the gateway before (idle meanwhile) again."""
        before = self.port, self.gateway, self.gateways
        self.start_gateway(processes)
        try:
            yield
        finally:
            self.stop_gateway()
            self.port, self.gateway, self.gateways = before

    def start_workers(
        self,
        model: Path,
        count: int,
        threads: int,
        max_batch: int,
        prefetch: int,
        batch_wait_ms: float | None = None,
    ) -> list[Service]:
        """Start ``count`` workers and wait until each consumes and the gateway is ready."""
        extra: dict[str, object] = {
            "MODEL_PATH": model,
            "ORT_THREADS": threads,
            "MAX_BATCH": max_batch,
            "PREFETCH": prefetch,
        }
        if batch_wait_ms is not None:
            extra["BATCH_WAIT_MS"] = batch_wait_ms
        started = []
        for i in range(count):
            port = free_port()
            w = Service(
                f"worker{i}",
                [sys.executable, "-m", "classifier"],
                self._env(WORKER_METRICS_PORT=port, **extra),
                self.run_dir / f"worker{len(self.workers)}.log",
            )
            self.workers.append(w)
            self.worker_metrics_ports.append(port)
            started.append(w)
        for w in started:
            w.wait_until(
                lambda w=w: "worker ready" in w.log_path.read_text(errors="replace"), 120, "worker ready"
            )
        if self.gateway is not None:
            self.gateway.wait_until(lambda: http_ok(f"{self.base_url}/health/ready"), 30, "readiness")
        return started

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and no worker holds a job (left over from a previous load)."""
        from perf import scrape

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = sum(
                scrape.scrape(f"http://127.0.0.1:{p}/metrics").get("classifier_jobs_in_hand", 0.0)
                for p in self.worker_metrics_ports
            )
            if ready_messages(self.queue) == 0 and held == 0:
                return True
            time.sleep(0.5)
        return False

    def stop_workers(self) -> None:
        for w in self.workers:
            w.terminate()
        self.workers.clear()
        self.worker_metrics_ports.clear()

    def close(self) -> None:
        self.stop_workers()
        self.stop_gateway()
        delete_queues(self.queue)
        shutil.rmtree(self.run_dir / "uploads", ignore_errors=True)


def _management(method: str, path: str) -> object:
    request = urllib.request.Request(f"{RABBITMQ_API}/api/{path}", method=method)
    user = urllib.parse.urlparse(RABBITMQ_URL)
    auth = f"{user.username or 'guest'}:{user.password or 'guest'}"
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def management_get(path: str) -> object:
    """One GET of RabbitMQ's management API (``/api/<path>``), as JSON."""
    return _management("GET", path)


def delete_queue(name: str) -> None:
    try:
        _management("DELETE", f"queues/%2F/{urllib.parse.quote(name, safe='')}")
    except (urllib.error.URLError, OSError):
        pass  # already gone (404) or the management API is off: a stale bench queue is harmless


def delete_queues(queue: str) -> None:
    """A private request queue and its dead-letter queue: they go with the run that made them."""
    for name in (queue, f"{queue}.dead"):
        delete_queue(name)


def ready_messages(name: str) -> int | None:
    """Messages ready in the queue now, by a passive declare over AMQP (the management API lags)."""
    import asyncio

    import aio_pika

    async def ask() -> int:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await connection.close()

    try:
        return asyncio.run(ask())
    except Exception:  # noqa: BLE001 - no such queue / broker hiccup: unknown
        return None
