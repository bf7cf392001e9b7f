"""Bad input: one ``converter: error:`` line, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.converter.conftest import REPO, Run, run_cli


def _assert_clean_failure(run, out_dir, *expect: str) -> None:
    assert run.returncode != 0, run.stdout
    assert len(run.error_lines) == 1, run.stderr
    line = run.error_lines[0]
    for text in expect:
        assert text in line, line
    assert "Traceback" not in run.stderr
    # Only the error line on stderr: no framework chatter burying it.
    assert run.stderr.strip() == line, run.stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], list(out_dir.iterdir())


CASES = {
    "missing model file": (
        ["keras", "{d}/nope.keras", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["no such file", "nope.keras"],
    ),
    "missing onnx for quantize": (["quantize", "{d}/nope.onnx"], ["no such file"]),
    "missing weights file": (["resnet50", "--weights", "{d}/nope.h5"], ["no such weights file"]),
    "text file as .keras": (
        ["keras", "{d}/not_a_model.keras", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["not a Keras model"],
    ),
    "garbage .h5": (
        ["keras", "{d}/not_a_model.h5", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["not a Keras model"],
    ),
    "garbage .onnx": (["quantize", "{d}/not_a_model.onnx"], ["not an ONNX model"]),
    "folder that is not a SavedModel": (
        ["keras", "{d}/folder", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["not a SavedModel"],
    ),
    "input not an image (rank 2)": (
        ["keras", "{d}/dense.keras", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["not an image tensor", "(None, 10)"],
    ),
    "input with 1 channel": (
        ["keras", "{d}/grey.keras", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["not an image tensor", "1)"],
    ),
    "labels length mismatch": (
        ["keras", "{d}/logits.keras", "--labels", "{d}/labels4.txt", "--preprocess", "tf"],
        ["4 labels", "5 classes"],
    ),
    "labels file missing": (
        ["keras", "{d}/logits.keras", "--labels", "{d}/none.txt", "--preprocess", "tf"],
        ["labels file not found"],
    ),
    "free input size without --size": (
        ["keras", "{d}/any_size.h5", "--labels", "{d}/labels5.json", "--preprocess", "tf"],
        ["--size"],
    ),
    "no photos for parity": (
        [
            "keras",
            "{d}/logits.keras",
            "--labels",
            "{d}/labels5.json",
            "--preprocess",
            "tf",
            "--photos",
            "{d}/folder",
        ],
        ["no photos"],
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(tiny_models, tmp_path_factory) -> dict[str, tuple[Run, object]]:
    """Every case, run in one process (tests/converter/run_cases.py): TensorFlow loads once."""
    base = tmp_path_factory.mktemp("bad_input")
    outs = {case: base / f"out{i}" for i, case in enumerate(CASES)}
    argvs = [
        [a.format(d=tiny_models) for a in args] + ["--out-dir", str(outs[case])]
        for case, (args, _) in CASES.items()
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("CONVERTER_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.converter.run_cases"],
        input=json.dumps(argvs),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    return {
        case: (Run(r["returncode"], r["stdout"], r["stderr"]), outs[case])
        for case, r in zip(CASES, results, strict=True)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line(bad_input_runs, case):
    run, out = bad_input_runs[case]
    _assert_clean_failure(run, out, *CASES[case][1])


def test_one_process_runner_reports_what_a_real_run_does(bad_input_runs, tiny_models, tmp_path):
    """The batch runner is only a shortcut if it sees what separate runs see: compare one case."""
    case = "labels length mismatch"
    args, expect = CASES[case]
    out = tmp_path / "out"
    alone = run_cli(*[a.format(d=tiny_models) for a in args], "--out-dir", out)
    _assert_clean_failure(alone, out, *expect)
    batched, _ = bad_input_runs[case]
    assert (alone.returncode, alone.error_lines) == (batched.returncode, batched.error_lines)


def test_int8_below_the_gate_fails_and_writes_nothing(lite0_model, labelled_subset, tmp_path):
    """A gate nothing can pass (agreement 1.0 and no top-1 loss) on 10 labelled photos: exit 4."""
    out = tmp_path / "out" / "x-int8.onnx"
    run = run_cli(
        "quantize",
        lite0_model,
        "--output",
        out,
        "--labelled",
        labelled_subset,
        "--min-agreement",
        "1.0",
        "--max-top1-drop",
        "-100",
        "--threads",
        "2",
    )
    assert run.returncode == 4, run.stdout + run.stderr
    _assert_clean_failure(run, out.parent, "int8 top-1", "points below fp32", "--max-top1-drop -100")


def test_usage_error_is_argparse_style():
    run = run_cli("keras")
    assert run.returncode == 2
    assert "converter keras: error:" in run.stderr or "converter: error:" in run.stderr
