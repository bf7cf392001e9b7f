"""The arithmetic behind the serving path's CPU bars, and how a bar is judged: pure functions, no services."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from perf import report, results
from perf.paths import RESULTS_DIR
from perf.results import CeilingRound, LoadRun, PipelineRound, Rounds
from perf.stats import cpu_ms_per_request


def test_cpu_per_request_is_cores_over_requests_per_second_in_ms() -> None:
    cores = {"workers": 1.8, "gateway": 0.12, "rabbitmq": 0.08, "redis": 0.01, "loadgen": 0.02}
    ms = cpu_ms_per_request(cores, 100.0, ("workers", "gateway", "loadgen"))
    assert ms == {"workers": 18.0, "gateway": 1.2, "loadgen": 0.2}


def test_a_shared_services_idle_cpu_is_subtracted_and_never_below_zero() -> None:
    cores = {"rabbitmq": 0.08, "redis": 0.001, "gateway": 0.1}
    idle = {"rabbitmq": 0.03, "redis": 0.005, "others": 0.5}
    ms = cpu_ms_per_request(cores, 50.0, ("rabbitmq", "redis", "gateway"), idle)
    assert ms["rabbitmq"] == pytest.approx(1.0)
    assert ms["redis"] == 0.0  # less than idle: noise, not a negative cost
    assert ms["gateway"] == pytest.approx(2.0)  # ours: no idle to subtract


def test_no_requests_or_an_unmeasured_part_is_nan_not_zero() -> None:
    assert all(math.isnan(v) for v in cpu_ms_per_request({"gateway": 0.5}, 0.0, ("gateway",)).values())
    assert math.isnan(cpu_ms_per_request({"gateway": 0.5}, 10.0, ("rabbitmq",))["rabbitmq"])


@pytest.mark.parametrize(
    ("value", "op", "limit", "passed"),
    [
        (0.95, ">=", 0.95, True),
        (0.949, ">=", 0.95, False),
        (1.5, "<=", 1.5, True),
        (1.51, "<=", 1.5, False),
        (math.nan, ">=", 0.9, False),
        (math.nan, "<=", 0.5, False),
    ],
)
def test_a_bar_passes_on_its_limit_and_never_on_nan(
    value: float, op: str, limit: float, passed: bool
) -> None:
    bar = report.evaluate("x", value, op, limit, "detail")
    assert (bar.passed, bar.bar, bar.op) == (passed, limit, op)


def test_an_unknown_comparison_is_an_error() -> None:
    with pytest.raises(ValueError, match="comparison"):
        report.evaluate("x", 1.0, ">", 0.5, "")


def _round(i: int, rps: float, ms: dict[str, float] | None) -> PipelineRound:
    return PipelineRound(i, rps, 100.0, 150.0, {"200": 500}, rps_window=rps, cpu_ms_per_request=ms)


def _lite0_rounds(gateway_ms: list[float], rabbitmq_ms: list[float]) -> Rounds:
    e2e = [
        _round(i + 1, 90.0 + i, {"workers": 18.0, "gateway": g, "rabbitmq": q, "redis": 0.1, "loadgen": 0.4})
        for i, (g, q) in enumerate(zip(gateway_ms, rabbitmq_ms, strict=True))
    ]
    return Rounds(
        rule="best", ceiling_config=results.BestConfig("2x1", 8), e2e_layout="2x1", e2e_max_batch=8,
        ceiling_seconds=6.0, e2e_seconds=6.0, ceiling=[CeilingRound(i + 1, 100.0, 0.0, 0.0) for i in range(len(e2e))],
        e2e=e2e, ceiling_best=100.0, e2e_best=max(x.rps for x in e2e), model="models/efficientnet-lite0.onnx", clients=16,
    )  # fmt: skip


def test_the_median_of_rounds_per_part_skips_unmeasured_rounds() -> None:
    rd = _lite0_rounds([1.4, 2.0, 1.6], [0.4, 0.9, 0.5])
    rd.e2e.append(_round(4, 80.0, None))  # a round without CPU figures counts for nothing
    med = report.median_cpu_ms(rd)
    assert med["gateway"] == pytest.approx(1.6)
    assert med["rabbitmq"] == pytest.approx(0.5)
    assert report.outside_workers(med) == pytest.approx(1.6 + 0.5 + 0.1 + 0.4)


def _latest_with_lite0(gateway_ms: list[float], rabbitmq_ms: list[float]) -> results.Results:
    run = results.load(sorted(RESULTS_DIR.glob("*.json"))[-1])
    run.rounds = {**run.rounds, "lite0-fp32": _lite0_rounds(gateway_ms, rabbitmq_ms)}
    run.idle_cores = {"rabbitmq": 0.02, "redis": 0.004, "others": 0.01}
    return run


def test_the_lite0_bars_ratio_and_cpu_take_best_rounds_and_median() -> None:
    run = _latest_with_lite0([1.4, 2.0, 1.45], [0.6, 0.4, 0.45])
    bars = {b.name: b for b in report.ratios(run)}
    ratio = bars["Lite0 fp32 end to end / in-process ceiling"]
    assert ratio.value == pytest.approx(92.0 / 100.0) and ratio.bar == 0.90 and ratio.passed
    gateway = bars["Lite0 fp32 gateway CPU per cache miss (ms)"]
    assert (gateway.value, gateway.op, gateway.bar, gateway.passed) == (1.45, "<=", 1.5, True)
    assert "median of 3 rounds" in gateway.detail
    broker = bars["Lite0 fp32 RabbitMQ CPU per cache miss (ms)"]
    assert (broker.value, broker.bar, broker.passed) == (0.45, 0.5, True)
    assert "idle 0.020 cores subtracted" in broker.detail
    assert bars["ResNet50 fp32 end to end / in-process ceiling"].bar == 0.95
    assert bars["ResNet50 int8 end to end / in-process ceiling"].bar == 0.90


def test_the_cache_hit_bars_use_two_gateway_processes_and_name_the_reach() -> None:
    run = _latest_with_lite0([1.0] * 3, [0.3] * 3)
    assert run.cache_hits is not None
    one = copy.deepcopy(run.cache_hits)
    one.gateway_processes, one.cpu_ms_per_request = 1, {"gateway": 0.66, "redis": 0.03, "loadgen": 0.17}
    two = copy.deepcopy(one)
    two.gateway_processes, two.rps, two.latency_ms.p50 = 2, 2600.0, 3.1
    run.cache_hits, run.cache_hits_2p, run.cache_hit_rounds = one, two, [one, two]
    bars = {b.name: b for b in report.ratios(run)}
    rps, p50 = bars["cache hits: requests/s"], bars["cache hits: p50 (ms)"]
    assert (rps.value, rps.bar, rps.passed) == (2600.0, 2500.0, True)
    assert (p50.value, p50.passed) == (3.1, True)
    assert "2 gateway processes" in rps.detail and f"1 process: {one.rps:.0f} req/s" in rps.detail
    # 2 cores at 0.86 ms of CPU per hit (gateway + Redis + load generator) carry ~2,326 hits/s at most.
    assert report.hits_bound(two, 2) == pytest.approx(2000 / 0.86)
    assert "out of reach" in rps.detail
    text = report.markdown(run, RESULTS_DIR / "x.json")
    assert "| 2 | 2 | 2600 **best** |" in text
    assert "### 3c. The serving path's CPU per request" in text


def test_a_partial_run_reports_only_what_it_measured(tmp_path: Path) -> None:
    run = _latest_with_lite0([1.0] * 3, [0.3] * 3)
    lite0 = run.rounds["lite0-fp32"]
    partial = results.Results(
        timestamp="t", args=results.Args(only=["lite0"]), models={}, machine=run.machine, photos=run.photos,
        settings={}, rounds={"lite0-fp32": lite0}, idle_cores=run.idle_cores,
    )  # fmt: skip
    partial.ratios = report.ratios(partial)
    assert [b.name for b in partial.ratios] == [
        "Lite0 fp32 end to end / in-process ceiling",
        "Lite0 fp32 gateway CPU per cache miss (ms)",
        "Lite0 fp32 RabbitMQ CPU per cache miss (ms)",
    ]
    out = tmp_path / "partial.json"
    results.dump(partial, out)
    again = results.load(out)
    text = report.markdown(again, RESULTS_DIR / "p.json")
    assert "A partial run" in text and "Lite0 fp32" in text
    assert "### 1. In-process ceiling" not in text and "### 5. Cache hits" not in text


def test_cache_hit_rounds_load_typed() -> None:
    hit = LoadRun(concurrency=8, rps=2000.0, latency_ms=results.Latency(3.0, 6.0, 3.2), loadgen_cpu_cores=0.3)
    hit.gateway_processes, hit.cached = 2, 9000
    data = results.to_dict(hit)
    assert results.from_dict(LoadRun, data) == hit
