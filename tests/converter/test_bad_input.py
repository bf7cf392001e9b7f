"""Bad input: one ``converter: error:`` line, a non-zero exit, and nothing written."""

from __future__ import annotations

import pytest

from tests.converter.conftest import run_cli


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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line(tiny_models, tmp_path, case):
    args, expect = CASES[case]
    out = tmp_path / "out"
    run = run_cli(*[a.format(d=tiny_models) for a in args], "--out-dir", out)
    _assert_clean_failure(run, out, *expect)


@pytest.mark.slow
def test_int8_below_min_agreement_fails_and_writes_nothing(lite0, tmp_path):
    out = tmp_path / "out" / "x-int8.onnx"
    run = run_cli(
        "quantize",
        lite0.path,
        "--output",
        out,
        "--calibration-count",
        "16",
        "--agreement-count",
        "64",
        "--min-agreement",
        "1.0",
        "--decisive-margin",
        "0",
    )
    assert run.returncode == 4
    _assert_clean_failure(run, out.parent, "int8 top-1 agreement", "below --min-agreement 1.0")


def test_usage_error_is_argparse_style():
    run = run_cli("keras")
    assert run.returncode == 2
    assert "converter keras: error:" in run.stderr or "converter: error:" in run.stderr
