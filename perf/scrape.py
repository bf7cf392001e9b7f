"""Read Prometheus text pages (worker and gateway ``/metrics``) into sums we can subtract."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[str, float]


def scrape(url: str) -> Snapshot:
    """Sample name (labels folded in as ``name{k=v,...}``) -> value; empty when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def add(snapshots: list[Snapshot]) -> Snapshot:
    total: defaultdict[str, float] = defaultdict(float)
    for snap in snapshots:
        for k, v in snap.items():
            total[k] += v
    return dict(total)


def delta(after: Snapshot, before: Snapshot) -> Snapshot:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def mean_of(snap: Snapshot, histogram: str, labels: str = "") -> float:
    """Mean of a histogram (sum/count) in a (delta) snapshot; NaN when it saw nothing."""
    suffix = f"{{{labels}}}" if labels else ""
    count = snap.get(f"{histogram}_count{suffix}", 0.0)
    return snap.get(f"{histogram}_sum{suffix}", 0.0) / count if count else float("nan")
