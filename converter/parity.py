"""fp32 parity: the source framework and onnxruntime must agree on the same raw pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.model_file import ResizePolicy
from converter import images as imgs
from converter import runtime
from converter.errors import ParityError
from converter.source import Reference

MAX_DIFF = 1e-4
# Two classes whose source probabilities differ by less than this are a numerical tie;
# either may legitimately come out on top after conversion (matters for random weights).
TIE = 1e-6
NOISE_IMAGES = 4


@dataclass(frozen=True)
class ParityReport:
    """Figures of one fp32 parity check."""

    photos: int
    noise: int
    max_diff_photos: float
    max_diff_noise: float
    top1_same: int
    top1_total: int

    def line(self) -> str:
        return (
            f"max|diff| {self.max_diff_photos:.2e} on {self.photos} photo inputs, "
            f"{self.max_diff_noise:.2e} on {self.noise} noise inputs (limit {MAX_DIFF:g}); "
            f"top-1 identical {self.top1_same}/{self.top1_total}"
        )


def top1_matches(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per row: same top-1, or a top-1 that the reference itself scores as a tie."""
    a, b = ref.argmax(1), got.argmax(1)
    rows = np.arange(len(ref))
    return (a == b) | (np.abs(ref[rows, a] - ref[rows, b]) <= TIE)


def check_fp32(
    model_path: Path,
    reference: Reference,
    photos: list[np.ndarray],
    input_size: tuple[int, int],
    resize: ResizePolicy,
    threads: int,
) -> ParityReport:
    """Compare ``reference`` (source framework) with onnxruntime on ``model_path``.

    Inputs: the real photos and their mirror images, plus uniform noise. Raises
    ParityError, with the figures, when max |diff| > 1e-4 or a top-1 differs.
    """
    photo_batch = imgs.batch(photos, input_size, resize)
    photo_batch = np.concatenate([photo_batch, photo_batch[:, :, ::-1]])
    noise_batch = imgs.noise(NOISE_IMAGES, input_size, seed=1234)
    inputs = np.ascontiguousarray(np.concatenate([photo_batch, noise_batch]))

    expected = np.asarray(reference(inputs), dtype=np.float32)
    sess = runtime.session(model_path, threads)
    got = runtime.predict(sess, inputs)
    if got.shape != expected.shape:
        raise ParityError(f"parity: onnx output shape {got.shape} != source output shape {expected.shape}")

    diff = np.abs(got - expected).max(axis=1)
    n = len(photo_batch)
    same = top1_matches(expected, got)
    report = ParityReport(
        photos=n,
        noise=len(noise_batch),
        max_diff_photos=float(diff[:n].max()),
        max_diff_noise=float(diff[n:].max()),
        top1_same=int(same.sum()),
        top1_total=len(same),
    )
    if max(report.max_diff_photos, report.max_diff_noise) > MAX_DIFF or report.top1_same != report.top1_total:
        raise ParityError(f"parity check failed: {report.line()}")
    return report
