"""Calibration and evaluation inputs for static int8 quantisation, built from real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.model_file import INPUT_NAME, ResizePolicy
from converter import images as imgs

CALIBRATION_SEED = 1
AGREEMENT_SEED = 2  # a different seed: agreement is measured on inputs calibration never saw


def inputs(photo_dir: Path, count: int, size: tuple[int, int], policy: ResizePolicy, seed: int) -> np.ndarray:
    """``count`` uint8 [H,W,3] inputs: the photos themselves, then crops/flips/resizes of them."""
    return imgs.augmented(imgs.load_photos(photo_dir), count, size, policy, seed)


class Reader:
    """onnxruntime CalibrationDataReader over uint8 images, in small batches.

    Feeds the model's real ``image`` input: the in-graph normalisation stays float and
    calibration sees the same pixels a worker will send.
    """

    def __init__(self, images: np.ndarray, batch_size: int = 8) -> None:
        self._batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._pos = 0
        self._end = len(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches [start, end) only: ORT's ``CalibStridedMinMax`` calibrates chunk by chunk."""
        self._pos, self._end = start_index, min(end_index, len(self._batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return {INPUT_NAME: self._batches[self._pos - 1]}

    def rewind(self) -> None:
        self._pos, self._end = 0, len(self._batches)

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def stride(batches: int, most: int) -> int:
    """The largest chunk (in batches) of at most ``most`` that divides ``batches`` exactly,
    as ORT's ``CalibStridedMinMax`` requires."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)
