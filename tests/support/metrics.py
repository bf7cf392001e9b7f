"""Read a service's Prometheus /metrics page, for assertions on what happened inside it."""

from __future__ import annotations

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


WORKER_JOBS_METRIC = "classifier_jobs_total"
