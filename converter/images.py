"""Real photos as model inputs: loading, the resize policy, and augmented variants.

Parity, calibration and the int8 agreement check all run on real photos (noise
inputs alone hide quantisation and preprocessing errors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.model_file import ResizePolicy
from converter.errors import ConverterError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The project's test photos: the default for parity and calibration.
DEFAULT_PHOTO_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"


def load_photos(directory: Path) -> list[np.ndarray]:
    """Every photo in ``directory`` as an RGB uint8 HxWx3 array, sorted by file name."""
    from PIL import Image

    if not directory.is_dir():
        raise ConverterError(f"photo directory not found: {directory}")
    photos = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        try:
            with Image.open(path) as im:
                photos.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise ConverterError(f"cannot read photo {path}: {exc}") from None
    if not photos:
        raise ConverterError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {directory}")
    return photos


def resize(photo: np.ndarray, size: tuple[int, int], policy: ResizePolicy) -> np.ndarray:
    """Map one decoded photo onto the model input size with the worker's own resize policy
    (docs/DESIGN.md ``resize``; classifier.preprocess.fit_to_input)."""
    from PIL import Image

    from classifier.preprocess import fit_to_input

    return fit_to_input(Image.fromarray(np.ascontiguousarray(photo)), size, policy)


def batch(photos: list[np.ndarray], size: tuple[int, int], policy: ResizePolicy) -> np.ndarray:
    """The photos resized and stacked: uint8 [N, H, W, 3]."""
    return np.stack([resize(p, size, policy) for p in photos])


def augmented(
    photos: list[np.ndarray], count: int, size: tuple[int, int], policy: ResizePolicy, seed: int
) -> np.ndarray:
    """``count`` varied inputs from a few photos: random crops, flips and resolution changes.

    Deterministic for a seed; calibration and the agreement check use different seeds so
    int8 accuracy is judged on inputs the calibration did not see.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, size[0], size[1], 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        if i < len(photos):  # the untouched photos first: the ones a user will actually send
            out[i] = resize(photo, size, policy)
            continue
        ph, pw = photo.shape[:2]
        area = rng.uniform(0.25, 1.0) * ph * pw
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(ph, round(np.sqrt(area / aspect))))
        cw = int(min(pw, round(np.sqrt(area * aspect))))
        top = int(rng.integers(0, ph - ch + 1))
        left = int(rng.integers(0, pw - cw + 1))
        crop = photo[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.3:  # a low-resolution upload, scaled back up by the worker
            factor = rng.uniform(0.3, 0.7)
            small = Image.fromarray(np.ascontiguousarray(crop)).resize(
                (max(8, int(cw * factor)), max(8, int(ch * factor))), Image.BILINEAR
            )
            crop = np.asarray(small)
        out[i] = resize(np.ascontiguousarray(crop), size, policy)
    return out


def noise(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform random uint8 images: inputs far from the training distribution."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size[0], size[1], 3), dtype=np.uint8)
