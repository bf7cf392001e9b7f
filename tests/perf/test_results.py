"""The benchmark's committed results: typed, read back exactly, and the report is what they say.

Pure data and text (no service, no locust, no matplotlib): the results files are loaded strictly
(an unknown or missing key fails) and the committed ``perf/REPORT.md`` is rebuilt from the
results file it names.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from common.cpu import CpuInt8
from perf import report, results
from perf.paths import REPORT_PATH, RESULTS_DIR
from perf.results import Machine

RESULT_FILES = sorted(RESULTS_DIR.glob("*.json"))


def _same(a: object, b: object) -> bool:
    """Equal JSON data, NaN equal to NaN (the workers' histograms are NaN where they saw nothing)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_there_are_committed_results() -> None:
    assert RESULT_FILES, f"no results in {RESULTS_DIR}"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_results_load_typed_and_dump_the_same_json(path: Path, tmp_path: Path) -> None:
    run = results.load(path)
    assert run.rounds["int8"].e2e_best == max(r.rps for r in run.rounds["int8"].e2e)
    assert math.isnan(run.one_client["fp32"].hit.worker.decode_ms)  # type: ignore[union-attr]
    out = tmp_path / path.name
    results.dump(run, out)
    assert _same(json.loads(out.read_text()), json.loads(path.read_text()))


def test_an_unknown_key_is_an_error_not_a_loss(tmp_path: Path) -> None:
    data = json.loads(RESULT_FILES[-1].read_text())
    data["cache_hits"]["p999_ms"] = 1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(Exception, match="p999_ms"):
        results.load(bad)


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_the_bars_stored_in_a_run_are_the_bars_the_report_computes(path: Path) -> None:
    """Same value for every bar the run stored, and the same verdict where the bar's limit is the one it
    had then (an older run lacks bars added since, and its verdict on a raised bar may differ)."""
    run = results.load(path)
    computed = {b.name: b for b in report.ratios(run)}
    assert run.ratios
    for bar in run.ratios:
        now = computed[report.RENAMED_BARS.get(bar.name, bar.name)]
        assert now.value == bar.value, bar.name
        if now.bar == bar.bar:
            assert now.passed == bar.passed, bar.name


def test_the_committed_report_is_its_results_file_rebuilt() -> None:
    text = REPORT_PATH.read_text()
    named = re.search(r"raw numbers in `(perf/results/[^`]+\.json)`", text)
    assert named, "REPORT.md names no results file"
    path = REPORT_PATH.parent.parent / named.group(1)
    run = results.load(path)
    run.ratios = report.ratios(run)
    assert report.markdown(run, path) == text, (
        f"perf/REPORT.md is not what {named.group(1)} gives: run `python -m perf.report {named.group(1)}`"
    )


def _machine(flags: list[str] | None, vnni: bool | None) -> Machine:
    return Machine(
        host="h",
        cpu="Some CPU",
        cores=2,
        memory_gb=1.0,
        python="3.11",
        onnxruntime="1",
        load_avg_before=[0.0],
        busy_cores_before=0.0,
        heavy_processes_before=[],
        cpu_flags=flags,
        vnni=vnni,
    )


def test_the_machine_line_names_the_cpu_and_whether_it_has_vnni() -> None:
    vnni = CpuInt8("Xeon", x86=True, flags=frozenset({"avx2", "avx512_vnni"}))
    assert report.cpu_text(_machine(sorted(vnni.flags), vnni.vnni)) == "Some CPU; avx2, avx512_vnni: VNNI"
    assert report.cpu_text(_machine(["avx2"], False)) == "Some CPU; avx2: no VNNI"
    assert "not recorded" in report.cpu_text(_machine(None, None))
