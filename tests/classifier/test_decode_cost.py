"""The worst decodes an upload within the limits can cause: bounded in memory, not in speed.

Each case is the costliest small file of its kind at the default MAX_PIXELS
(scripts/decode_worst_cases.py makes them and prints the README's table). It is
decoded in a fresh process that reports its own peak RSS, so the bound holds
whatever the CPU; nothing here is timed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.pipeline import DECODE_THREADS
from classifier.preprocess import Preprocessor
from common.model_file import ResizePolicy
from common.settings import Settings
from scripts import decode_worst_cases as cases
from tests.support.processes import REPO_ROOT, service_env

# README "Decode cost": what one decode may take above the worker's baseline at the defaults.
DECODE_PEAK_BUDGET_MIB = 450
MAX_PIXELS = Settings().max_pixels


def decode_in_fresh_process(data: bytes, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "case"
    path.write_bytes(data)
    result = subprocess.run(
        [
            sys.executable,
            "scripts/decode_worst_cases.py",
            "--one",
            str(path),
            "--max-pixels",
            str(MAX_PIXELS),
        ],
        cwd=REPO_ROOT,
        env=service_env({}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "case",
    [
        "PNG RGBA, EXIF rotated",
        "PNG palette + transparency",
        "WebP lossless RGBA",
        "JPEG progressive 4:4:4",
    ],
)
def test_worst_decodes_stay_within_the_budget(case: str, tmp_path: Path) -> None:
    data = cases.CASES[case](cases._side(MAX_PIXELS))
    assert len(data) < Settings().max_upload_bytes / 10  # a small upload...
    row = decode_in_fresh_process(data, tmp_path)
    print(f"\n[decode] {case}: {row}")
    assert row["outcome"] == "decoded"  # ...of a legal size...
    assert 0 < row["peak_mib"] <= DECODE_PEAK_BUDGET_MIB, row  # ...costs at most the budget


def test_one_pixel_over_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    side = cases._side(MAX_PIXELS) + 1
    row = decode_in_fresh_process(cases.png_rgba(side), tmp_path)
    assert row["outcome"].startswith("refused") and "over the limit" in row["outcome"], row
    assert row["peak_mib"] < 20, row


def test_the_worker_can_afford_its_concurrent_decodes() -> None:
    """Two decode threads at most: the worst case, twice, stays under a gigabyte."""
    assert DECODE_THREADS <= 2
    assert DECODE_THREADS * DECODE_PEAK_BUDGET_MIB <= 1024


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_resizing_before_orienting_and_compositing_changes_nothing_visible(photos) -> None:
    """The cheap order (resize, then orient, then composite on white) gives the picture a
    viewer shows: the photo made upright and composited first, at full size."""
    with Image.open(photos["chelsea"]) as im:
        photo = im.convert("RGB")
    half = photo.copy()
    half.putalpha(Image.linear_gradient("L").resize(photo.size))  # transparent on top, opaque below
    stored = half.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    data = _encode(stored, "PNG", exif=exif.tobytes())

    white = Image.new("RGBA", half.size, (255, 255, 255, 255))
    viewed = Image.alpha_composite(white, half).convert("RGB")  # what a viewer shows
    for policy in ("center_crop:0.875", "stretch"):
        preprocess = Preprocessor((160, 240), ResizePolicy.parse(policy), MAX_PIXELS)
        got = preprocess(data).astype(np.int16)
        expected = preprocess(_encode(viewed, "PNG")).astype(np.int16)
        assert np.abs(got - expected).mean() < 1.0, policy
        assert np.abs(got - expected).max() <= 8, policy
