"""Prometheus metrics of one gateway process.

Each application gets its own registry, so several apps in one process (tests)
never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The gateway's counters, gauges and histograms, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Predictions whose upload is in, waiting for a worker", registry=r
        )
        self.receiving = Gauge(
            "gateway_receiving_uploads", "Upload bodies being received (apart from in flight)", registry=r
        )
        self.upload_timeouts = Counter(
            "gateway_upload_timeouts_total",
            "Uploads cut off for arriving too late or too slowly (408)",
            registry=r,
        )
        self.readiness_probes = Counter(
            "gateway_readiness_probes_total", "Readiness probes that asked the broker and Redis", registry=r
        )
        self.store_bytes = Gauge("gateway_upload_store_bytes", "Bytes in the upload store", registry=r)
        self.store_evictions = Counter(
            "gateway_upload_store_evictions_total", "Uploads evicted from the store (quota)", registry=r
        )
        self.cache_hits = Counter(
            "gateway_cache_hits_total", "Predictions answered from the Redis cache", registry=r
        )
        self.cache_misses = Counter(
            "gateway_cache_misses_total", "Predictions not in the Redis cache", registry=r
        )
        self.rpc_timeouts = Counter(
            "gateway_rpc_timeouts_total", "Jobs with no reply before the deadline", registry=r
        )
        self.rpc_rejected = Counter(
            "gateway_rpc_rejected_total",
            "Jobs refused before reaching a worker, by reason",
            ["reason"],
            registry=r,
        )
        self.jobs_sent = Counter(
            "gateway_jobs_sent_total",
            "Jobs published to the workers, by where their image travelled (redis: the claim check)",
            ["image"],
            registry=r,
        )
        # Job batches: how many jobs each published message carried (1: a job alone).
        self.jobs_per_message = Histogram(
            "gateway_jobs_per_message",
            "Jobs in each message published to the workers (a job batch carries several)",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=r,
        )
        self.shared_flights = Counter(
            "gateway_singleflight_joined_total",
            "Predictions that joined an identical one in flight",
            registry=r,
        )
        self.feedback_rows = Counter("gateway_feedback_rows_total", "Feedback rows written", registry=r)
        # Which of several gateway processes on one port answered (GATEWAY_PROCESSES).
        self.process = Info(
            "gateway_process", "This gateway process: its pid and its RabbitMQ reply queue", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
