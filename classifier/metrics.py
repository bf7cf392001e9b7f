"""Prometheus metrics of the worker, served by prometheus_client's own small HTTP server.

The worker has no web framework (docs/DESIGN.md: no aiohttp web server in the
classifier); ``start_http_server`` runs in a daemon thread.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How a job ended: the ``outcome`` label of ``classifier_jobs_total``."""

    OK = "ok"
    INVALID_IMAGE = "invalid_image"
    EXPIRED = "expired"
    INTERNAL = "internal"
    IMAGE_MISSING = "image_missing"


_MS = 0.001
BATCH_SIZE = Histogram(
    "classifier_batch_size",
    "Images per onnxruntime run.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
INFERENCE_SECONDS = Histogram(
    "classifier_inference_seconds",
    "Wall time of one onnxruntime run (a whole batch).",
    buckets=tuple(x * _MS for x in (2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500)),
)
DECODE_SECONDS = Histogram(
    "classifier_decode_seconds",
    "Wall time to decode and resize one image.",
    buckets=tuple(x * _MS for x in (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)),
)
QUEUE_WAIT_SECONDS = Histogram(
    "classifier_batch_wait_seconds",
    "From a job's arrival at this worker to the start of its batch's inference.",
    buckets=tuple(x * _MS for x in (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000)),
)
JOBS = Counter("classifier_jobs_total", "Jobs finished, by outcome.", ["outcome"])
CACHE_WRITE_FAILURES = Counter(
    "classifier_cache_write_failures_total",
    "Results not written to Redis (Redis unreachable, or skipped while it is).",
)
POISON_JOBS = Counter(
    "classifier_poison_jobs_total",
    "Jobs not run because earlier deliveries got no answer (they may crash workers); dead-lettered.",
)
IN_HAND = Gauge("classifier_jobs_in_hand", "Jobs received and not yet acknowledged.")
MODEL = Info("classifier_model", "The model this worker serves.")

for _outcome in Outcome:  # export every outcome from the start, at 0
    JOBS.labels(outcome=_outcome.value)


def serve(port: int, host: str) -> None:
    """Start the metrics endpoint; never fatal (the worker's job is classifying)."""
    if port <= 0:
        log.info("metrics endpoint disabled (WORKER_METRICS_PORT=%s)", port)
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics endpoint not started on %s:%s: %s", host, port, exc)
    else:
        log.info("metrics on http://%s:%s/metrics", host, port)
