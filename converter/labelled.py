"""Labelled photos: int8 calibration on one part, top-1 accuracy on the other.

The field measures a quantised classifier by its top-1 accuracy on labelled photos
it was not calibrated on, next to the float model's on the same photos. The folder
holds photos named ``NNN_<anything>.<ext>``, where NNN is the ImageNet-1k class
index (the index order of the model's labels): the layout of this workplace's
``imagenet-sample`` folder (one photo per class for 250 classes).

Inputs are made by the worker's own decoder (:class:`classifier.preprocess.Preprocessor`),
so calibration and accuracy are measured on exactly the pixels a worker produces.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.model_file import ResizePolicy
from converter.errors import ConverterError
from converter.images import PHOTO_SUFFIXES

# Where the labelled sample lives in this workplace; a clone elsewhere has no such folder
# and passes --labelled (or goes without: the converter then says what it cannot measure).
DEFAULT_LABELLED_DIR = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"
# The same folder for a clone made elsewhere on a machine of this workplace (e.g. /tmp/fresh).
WORKPLACE_LABELLED_DIR = Path("/work/shared/imagenet-sample")
LABELLED_DIR_ENV = "IMAGENET_SAMPLE_DIR"
# Two photos in five calibrate, three in five are held out: ~100 / ~150 of 250. Calibration
# ranges settle with far fewer photos than accuracy needs to be read to within a point.
CALIBRATION_EVERY = 5
CALIBRATION_OF_EVERY = 2

_NAME = re.compile(r"^(\d{1,4})_")


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo file and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class Split:
    """Disjoint calibration and held-out parts of a labelled folder."""

    calibration: list[LabelledPhoto]
    held_out: list[LabelledPhoto]


def default_dir() -> Path | None:
    """$IMAGENET_SAMPLE_DIR, else this workplace's sample (beside the checkout, or where the
    workplace keeps it), else None (not measurable here)."""
    configured = os.environ.get(LABELLED_DIR_ENV)
    if configured:
        return Path(configured)
    return next((d for d in (DEFAULT_LABELLED_DIR, WORKPLACE_LABELLED_DIR) if d.is_dir()), None)


def load(directory: Path, classes: int) -> list[LabelledPhoto]:
    """Every ``NNN_*`` photo of ``directory``, sorted by name; labels checked against ``classes``."""
    if not directory.is_dir():
        raise ConverterError(f"labelled photo folder not found: {directory}")
    photos: list[LabelledPhoto] = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if not match or path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        label = int(match.group(1))
        if label >= classes:
            raise ConverterError(f"{path.name}: class {label} but the model has {classes} classes")
        photos.append(LabelledPhoto(path, label))
    if len(photos) < CALIBRATION_EVERY:
        raise ConverterError(
            f"{directory} has {len(photos)} labelled photos (NNN_name{'/'.join(PHOTO_SUFFIXES)}); "
            f"at least {CALIBRATION_EVERY} are needed"
        )
    return photos


def split(photos: list[LabelledPhoto]) -> Split:
    """Deterministic, disjoint: of every 5 photos in name order, 2 calibrate and 3 are held out.

    Name order is class order, so both parts spread over all the classes present.
    """
    calibration = [p for i, p in enumerate(photos) if i % CALIBRATION_EVERY < CALIBRATION_OF_EVERY]
    held_out = [p for i, p in enumerate(photos) if i % CALIBRATION_EVERY >= CALIBRATION_OF_EVERY]
    return Split(calibration, held_out)


def model_inputs(photos: list[LabelledPhoto], size: tuple[int, int], policy: ResizePolicy) -> np.ndarray:
    """uint8 [N, H, W, 3]: each photo's bytes through the worker's own decoder."""
    from classifier.preprocess import ImageDecodeError, Preprocessor

    decode = Preprocessor(size, policy, max_pixels=100_000_000)
    rows = []
    for photo in photos:
        try:
            rows.append(decode(photo.path.read_bytes()))
        except (OSError, ImageDecodeError) as exc:
            raise ConverterError(f"cannot read labelled photo {photo.path}: {exc}") from None
    return np.stack(rows)


def labels(photos: list[LabelledPhoto]) -> np.ndarray:
    return np.array([p.label for p in photos])


@dataclass(frozen=True)
class Accuracy:
    """fp32 and int8 side by side on the same held-out labelled photos."""

    photos: int
    fp32_correct: int
    int8_correct: int
    agree: int  # int8 top-1 == fp32 top-1, right or wrong

    @property
    def fp32_top1(self) -> float:
        return self.fp32_correct / self.photos

    @property
    def int8_top1(self) -> float:
        return self.int8_correct / self.photos

    @property
    def agreement(self) -> float:
        return self.agree / self.photos

    @property
    def drop_points(self) -> float:
        """fp32 top-1 minus int8 top-1, in percentage points."""
        return 100.0 * (self.fp32_top1 - self.int8_top1)

    def line(self) -> str:
        return (
            f"on {self.photos} held-out labelled photos: fp32 top-1 {self.fp32_top1:.4f} "
            f"({self.fp32_correct}), int8 top-1 {self.int8_top1:.4f} ({self.int8_correct}), "
            f"drop {self.drop_points:+.2f} points; top-1 agreement {self.agreement:.4f} ({self.agree})"
        )


def accuracy(p32: np.ndarray, p8: np.ndarray, truth: np.ndarray) -> Accuracy:
    top32, top8 = p32.argmax(1), p8.argmax(1)
    return Accuracy(
        photos=len(truth),
        fp32_correct=int((top32 == truth).sum()),
        int8_correct=int((top8 == truth).sum()),
        agree=int((top32 == top8).sum()),
    )
