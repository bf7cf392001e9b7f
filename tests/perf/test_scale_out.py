"""The scale-out results (``perf.scale_out``): typed, read back exactly, their derived figures agree with
their points, and the benchmark report shows them. Pure data and text: nothing is measured here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perf import report, results
from perf.paths import RESULTS_DIR
from perf.results import ScaleOut

SCALE_OUT_FILES = sorted((RESULTS_DIR / "scale_out").glob("*.json"))


def _load(path: Path) -> ScaleOut:
    return results.from_dict(ScaleOut, json.loads(path.read_text()))  # type: ignore[no-any-return]


def test_there_is_a_committed_scale_out_run() -> None:
    assert SCALE_OUT_FILES, f"no results in {RESULTS_DIR / 'scale_out'}"


@pytest.mark.parametrize("path", SCALE_OUT_FILES, ids=lambda p: p.name)
def test_a_scale_out_run_loads_typed_and_dumps_the_same_json(path: Path) -> None:
    run = _load(path)
    assert json.dumps(results.to_dict(run), sort_keys=True) == json.dumps(
        json.loads(path.read_text()), sort_keys=True
    )


@pytest.mark.parametrize("path", SCALE_OUT_FILES, ids=lambda p: p.name)
def test_its_figures_follow_from_its_points(path: Path) -> None:
    run = _load(path)
    counts = sorted({p.workers for p in run.points})
    assert counts[0] == 1 and len(counts) >= 2, "a scale-out row needs 1 worker and more"
    for n in counts:
        assert run.best_rps[str(n)] == max(p.rps for p in run.points if p.workers == n)
    for p in run.points:
        assert p.statuses.get("200", 0) > 0 and p.rps > 0
        # CPU per request is the part's cores over the requests per second, in ms.
        gateway = p.cpu_cores["gateway"] / p.rps * 1000
        assert math.isclose(p.cpu_ms_per_request["gateway"], gateway, rel_tol=1e-2, abs_tol=1e-3)
    assert math.isclose(run.rabbitmq_jobs_per_core, 1000 / run.rabbitmq_ms_per_job, rel_tol=1e-2)
    assert math.isclose(run.gateway_misses_per_core, 1000 / run.gateway_ms_per_miss, rel_tol=1e-2)
    assert run.queue.startswith("bench.")


def test_an_unknown_key_in_a_point_is_an_error() -> None:
    data = json.loads(SCALE_OUT_FILES[-1].read_text())
    data["points"][0]["p999_ms"] = 1.0
    with pytest.raises(Exception, match="p999_ms"):
        results.from_dict(ScaleOut, data)


def test_the_report_shows_the_scale_out_section_only_when_measured() -> None:
    run = results.load(sorted(RESULTS_DIR.glob("*.json"))[-1])
    run.ratios = report.ratios(run)
    run.scale_out = None  # the latest full run measured it (20261206-142506)
    without = report.markdown(run, RESULTS_DIR / "x.json")
    assert "how far one broker and one gateway carry" not in without
    run.scale_out = scaled = _load(SCALE_OUT_FILES[-1])
    text = report.markdown(run, RESULTS_DIR / "x.json")
    assert "## Scale-out on this host: how far one broker and one gateway carry" in text
    assert f"~{scaled.rabbitmq_jobs_per_core:,.0f} jobs/s per core" in text
    assert f"~{scaled.gateway_misses_per_core:,.0f} misses/s per core" in text
    section = text.split("## Scale-out on this host")[1].splitlines()
    rows = [line for line in section if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == len(scaled.points)
