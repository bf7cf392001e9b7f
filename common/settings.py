"""Configuration from environment variables, one place for every service.

Each variable has a default that works on one machine with local RabbitMQ and
Redis; the README's table documents them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.contract import DEFAULT_QUEUE


def broker_addresses(rabbitmq_url: str) -> list[str]:
    """The AMQP addresses in ``RABBITMQ_URL``: one, or the nodes of one cluster separated by commas."""
    addresses = [part.strip() for part in rabbitmq_url.split(",") if part.strip()]
    if not addresses:
        raise ValueError("RABBITMQ_URL holds no address")
    for address in addresses:
        if urlsplit(address).scheme not in ("amqp", "amqps"):
            raise ValueError(f"RABBITMQ_URL: {redact(address)!r} is not an amqp:// or amqps:// address")
    return addresses


def redact(address: str) -> str:
    """The address without its password, for logs."""
    parts = urlsplit(address)
    if not parts.password:
        return address
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:******@{host}"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the system; build it with :meth:`from_env`."""

    # One AMQP address, or the nodes of one cluster separated by commas (common/broker.py).
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = DEFAULT_QUEUE
    model_path: Path = Path("models/resnet50.onnx")
    request_timeout_s: float = 10.0
    max_upload_mb: float = 10.0
    queue_max_length: int = 256
    # Deliveries of one job before RabbitMQ dead-letters it (a job that kills workers).
    delivery_limit: int = 3
    # Replicas of each quorum queue (x-quorum-initial-group-size); a smaller cluster caps it.
    quorum_group_size: int = 3
    cache_ttl_s: int = 86_400
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    ort_threads: int = os.cpu_count() or 1
    prefetch: int = 16
    upload_dir: Path = Path("uploads")
    feedback_csv: Path = Path("feedback/feedback.csv")
    port: int = 8000
    host: str = "127.0.0.1"
    # Gateway processes sharing PORT (SO_REUSEPORT; the kernel spreads connections among them).
    # Each is started by the supervisor (make run, compose); above 1 each binds with reuse_port.
    gateway_processes: int = 1
    # A keep-alive connection is closed after this many answers (0: never), so that a client's
    # reconnection is spread again among the gateway processes (or a Service's pods); nginx's
    # keepalive_requests.
    keepalive_max_requests: int = 1000
    # The gateway's bound on requests it holds at once; beyond it, 503 at once.
    max_in_flight: int = 512
    # Hostile clients (README "Hostile clients and faults"): an upload's body must arrive within
    # UPLOAD_TIMEOUT_S, and after a few seconds' grace at an average of UPLOAD_MIN_RATE_KB_S or more.
    upload_timeout_s: float = 60.0
    upload_min_rate_kb_s: float = 16.0
    # Bodies being received at once, and the bytes they may hold in memory together; counted
    # apart from MAX_IN_FLIGHT (requests whose upload is in, waiting for a worker).
    max_receiving: int = 4096
    receive_buffer_mb: float = 512.0
    # Disk quota of the upload store (least recently used images are evicted beyond it).
    upload_store_mb: float = 1024.0
    # How a job's image reaches the worker: "redis" (claim check: the gateway puts the image in
    # Redis for the job's lifetime and the message carries its hash; in the message when Redis
    # is unavailable) or "inline" (always in the message). docs/DESIGN.md, "Images in Redis".
    image_transport: str = "redis"
    # Above 1, the gateway publishes the jobs (images in Redis) that arrive while its last publish
    # awaits the broker's confirm together, dealt over the request queue's consumers, up to this many
    # in one message; 1: a job a message. docs/DESIGN.md, "Job batches".
    max_jobs_per_message: int = 8
    # RabbitMQ's max_message_size (128 MiB by default in 3.10): MAX_UPLOAD_MB must fit in it.
    broker_max_message_mb: float = 128.0
    # Decoded images above this many pixels are refused (decompression bombs).
    max_pixels: int = 25_000_000
    worker_metrics_port: int = 9100
    # An int8 file whose scheme saturates on this CPU (u8s8 without VNNI): "refuse" to start,
    # or "warn" loudly and serve it anyway (its answers differ from the converter's checks).
    int8_on_saturating_cpu: str = "refuse"
    log_level: str = "INFO"

    @property
    def rabbitmq_addresses(self) -> list[str]:
        return broker_addresses(self.rabbitmq_url)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read ``FIELD_NAME`` (upper case) for each field; ``overrides`` win over both."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f.name.upper())
            if raw is None or raw == "":
                continue
            # Every field has a plain default (str, int, float, Path): its type parses the text.
            parse: Callable[[str], object] = Path if isinstance(f.default, Path) else type(f.default)
            values[f.name] = parse(raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
