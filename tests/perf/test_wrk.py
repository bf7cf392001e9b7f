"""perf.wrk: wrk's report read from real captures, and the bench's hit ratio from the gateways' counters.

``data/wrk-gateway-hits-2p.txt``: wrk's report of one bench cache-hit round (``python -m perf.bench --only
hits``: 2 gateway processes on one port, 8 connections, 3 s). ``data/wrk-errors.txt``: wrk against a test
server that closes every other connection unanswered and answers the rest 503 (socket errors, non-2xx,
microseconds). Pure functions: no wrk, no services.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perf import wrk
from perf.loadgen import BOUNDARY
from perf.pipeline import hits_and_requests

DATA = Path(__file__).parent / "data"


def test_a_gateway_cache_hit_run_reads_as_the_bench_records_it() -> None:
    out = wrk.parse((DATA / "wrk-gateway-hits-2p.txt").read_text())
    assert (out.requests, out.rps) == (8315, 2682.32) and out.seconds == pytest.approx(3.10)
    assert out.percentiles_ms == pytest.approx({50: 2.76, 75: 3.37, 90: 4.13, 99: 6.61})
    assert [out.mean_ms, out.max_ms] == pytest.approx([2.94, 21.34])
    assert out.non_2xx == 0 and out.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    run = out.load_run(connections=8, loadgen_cpu_cores=0.19)
    assert (run.rps, run.rps_window, run.concurrency, run.loadgen_cpu_cores) == (2682.32, 2682.32, 8, 0.19)
    lat = run.latency_ms
    assert (lat.p50, lat.p90, lat.p99, lat.mean, lat.n, lat.p95) == (2.76, 4.13, 6.61, 2.94, 8315, None)
    assert run.statuses == {"2xx/3xx": 8315, "4xx/5xx": 0} and run.errors == 0
    assert run.tool == wrk.TOOL == "wrk 1 thread"


def test_errors_and_microseconds_are_read_not_dropped() -> None:
    out = wrk.parse((DATA / "wrk-errors.txt").read_text())
    assert out.percentiles_ms == pytest.approx({50: 0.081, 75: 0.107, 90: 0.141, 99: 0.336})
    assert out.mean_ms == pytest.approx(0.09573)
    assert (out.requests, out.non_2xx, out.socket_errors["read"]) == (10384, 10384, 20767)
    run = out.load_run(connections=4, loadgen_cpu_cores=0.5)
    assert run.statuses == {"2xx/3xx": 0, "4xx/5xx": 10384, "socket read": 20767}
    assert run.errors == 10384 + 20767


def test_a_report_without_the_latency_distribution_is_an_error() -> None:
    text = (DATA / "wrk-errors.txt").read_text()
    without = "\n".join(line for line in text.splitlines() if not re.match(r"\s+\d+%", line))
    with pytest.raises(ValueError, match="--latency"):
        wrk.parse(without)
    with pytest.raises(ValueError, match="Requests/sec"):
        wrk.parse(text.replace("Requests/sec", "Requests"))


def test_the_script_posts_the_photos_as_the_python_generator_does(tmp_path: Path) -> None:
    photos = sorted((Path(__file__).parents[1] / "data").glob("*.jpg"))[:2]
    bodies, script = wrk.prepare(photos, tmp_path / "w")
    assert [b.read_bytes()[: 2 + len(BOUNDARY)] for b in bodies] == [f"--{BOUNDARY}".encode()] * 2
    assert f"boundary={BOUNDARY}" in script.read_text()
    cmd = wrk.command("http://h/predict", bodies, script, connections=8, seconds=3.0)
    assert cmd[:6] == ["wrk", "-t1", "-c8", "-d3s", "--latency", "-s"]
    assert cmd[-3:] == ["--", str(bodies[0]), str(bodies[1])]


def test_the_hit_ratio_sums_every_gateway_process() -> None:
    before = {
        1: {
            "gateway_cache_hits_total": 10.0,
            "gateway_requests_total{method=POST,route=/predict,status=200}": 10.0,
        },
        2: {"gateway_cache_hits_total": 0.0},
    }
    after = {
        1: {
            "gateway_cache_hits_total": 110.0,
            "gateway_requests_total{method=POST,route=/predict,status=200}": 110.0,
            "gateway_requests_total{method=GET,route=/metrics,status=200}": 5.0,
        },
        2: {
            "gateway_cache_hits_total": 99.0,
            "gateway_requests_total{method=POST,route=/predict,status=200}": 99.0,
            "gateway_requests_total{method=POST,route=/predict,status=500}": 1.0,
        },
    }
    assert hits_and_requests(after, before) == (199.0, 200.0)
