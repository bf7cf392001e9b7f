"""Read a service's Prometheus /metrics page, for assertions on what happened inside it."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on the page as (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def worker_jobs(metrics_port: int, outcome: str = "ok") -> float:
    """How many jobs a worker has finished with ``outcome`` (its own metrics port)."""
    return total(scrape(f"http://127.0.0.1:{metrics_port}/metrics"), WORKER_JOBS_METRIC, outcome=outcome)


def wait_for_worker_jobs(
    metrics_port: int, expected: float, outcome: str = "ok", timeout: float = 10
) -> float:
    """A worker counts a job once it is replied, cached and acknowledged, a moment after the
    client has its answer: poll until the count reaches ``expected`` (or time runs out)."""
    deadline = time.monotonic() + timeout
    while (count := worker_jobs(metrics_port, outcome)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


WORKER_JOBS_METRIC = "classifier_jobs_total"
