"""Image bytes -> the model's input: uint8 H x W x 3 RGB, resized per the model's policy.

The model graph does its own normalisation (docs/DESIGN.md, "The model file"), so the
worker only decodes, resizes, orients and converts to RGB, in that order: after the
decode every copy is model-sized (README, "Decode cost"). Everything here runs
in a worker thread: Pillow releases the GIL while it decodes and resamples.

Untrusted input is handled defensively:

- only a fixed set of raster formats is opened (Pillow's EPS plugin, for one,
  would start Ghostscript);
- the pixel count is checked from the header, *before* any pixel is decoded, so
  a decompression bomb is refused without being allocated;
- any failure inside Pillow becomes :class:`ImageDecodeError` with a message a
  human can read, so one bad upload never takes the worker down.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.model_file import ResizePolicy

# Register every plugin now: Image.open(formats=...) only knows the loaded ones.
Image.init()

# What browsers and phones upload. (Multi-picture JPEGs from cameras open as JPEG,
# and report format "MPO".)
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Decode JPEGs at no less than this multiple of the size we need: DCT scaling
# (1/2, 1/4, 1/8) is much faster than a full decode, and the final antialiased
# resize still has 25 % more pixels than it keeps. On 640-1024 px phone photos:
# decode + resize 1.5x faster than with Image.thumbnail's 2.0 (which decoded them
# at full size), mean pixel difference 0.5/255, and the same top-1 wherever the
# model's answer is not a near-tie (perf/FINDINGS.md).
DRAFT_MARGIN = 1.25

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes resized as decoded (RGBA and LA premultiplied by Pillow), then converted.
_RESAMPLED_AS_IS = (
    frozenset({"RGB", "RGBA", "L", "LA", "I", "F", "CMYK", "YCbCr", "LAB"}) | _SIXTEEN_BIT_MODES
)
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not an image this worker can classify; the message is for a human."""


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow itself refuse bombs too (a backstop for our header check).

    Pillow raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS and warns
    above it; our own check refuses everything above ``max_pixels`` anyway, so
    the warning is noise. Process-wide state, hence set once at start-up.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True, slots=True)
class Preprocessor:
    """Turns uploaded bytes into one model input row; thread-safe (it holds no state)."""

    input_size: tuple[int, int]  # (H, W), from the model's metadata
    policy: ResizePolicy
    max_pixels: int

    def __call__(self, data: bytes) -> np.ndarray:
        """Decode ``data``; return a C-contiguous uint8 array of shape (H, W, 3).

        Raises :class:`ImageDecodeError` for anything that is not a decodable,
        reasonably sized image.
        """
        if not data:
            raise ImageDecodeError("the image is empty (0 bytes)")
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise ImageDecodeError(
                f"not a recognised image; accepted formats: {', '.join(ACCEPTED_FORMATS)}"
            ) from None
        except Image.DecompressionBombError:
            raise ImageDecodeError(f"the image has more than {self.max_pixels:,} pixels; refused") from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed input
            raise ImageDecodeError(f"the image header is corrupt ({_describe(exc)})") from None

        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"the image claims an empty size {width}x{height}")
            if width * height > self.max_pixels:
                raise ImageDecodeError(
                    f"the image is {width}x{height} ({width * height:,} pixels), over the limit of "
                    f"{self.max_pixels:,} pixels"
                )
            try:
                rgb = self._decode_small_rgb(image)
            except ImageDecodeError:
                raise
            except Exception as exc:  # noqa: BLE001 - as above, while decoding
                raise ImageDecodeError(
                    f"the {image.format or 'image'} data is truncated or corrupt ({_describe(exc)})"
                ) from None
            array = np.asarray(rgb, dtype=np.uint8)
        height, width = self.input_size
        if array.shape != (height, width, 3):  # cannot happen after _to_rgb; a loud guard
            raise RuntimeError(f"preprocess produced shape {array.shape}")
        return np.ascontiguousarray(array)

    def _decode_small_rgb(self, image: Image.Image) -> Image.Image:
        """Decode (reduced when JPEG allows), resize to the model's input in the decoded mode,
        then orient and convert to RGB: every copy after the decode is model-sized.

        Orienting and converting first, as a viewer would, costs full-size copies: a 40 M
        pixel RGBA PNG of 150 KiB took +760 MiB that way (README, "Decode cost"). Resizing
        commutes with both up to rounding (Pillow resizes RGBA premultiplied).
        """
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        swap = orientation in _SWAPPING_ORIENTATIONS
        if image.format in ("JPEG", "MPO"):
            need_w, need_h = self._needed_size(image.size, swap=swap)
            image.draft("RGB", (math.ceil(need_w * DRAFT_MARGIN), math.ceil(need_h * DRAFT_MARGIN)))
        image.load()
        small = self._resize(_resizable(image), swap=swap)
        if orientation in _ORIENT:
            small = small.transpose(_ORIENT[orientation])
        return _to_rgb(small)

    def _needed_size(self, stored: tuple[int, int], *, swap: bool) -> tuple[float, float]:
        """The (w, h) the whole stored image must keep so the model input loses no detail."""
        w0, h0 = stored
        height, width = self.input_size
        if swap:  # the model's W will come from the stored image's H
            width, height = height, width
        if self.policy.mode == "stretch":
            return width, height
        scale = _cover_scale((w0, h0), (width, height), self.policy.crop_ratio)
        return w0 * scale, h0 * scale

    def _resize(self, image: Image.Image, *, swap: bool) -> Image.Image:
        """The model's input window of the stored image, at the model's size (sides swapped when
        the EXIF orientation will swap them back)."""
        height, width = self.input_size
        return resize_to_input(image, (width, height) if swap else (height, width), self.policy)


def resize_to_input(image: Image.Image, input_size: tuple[int, int], policy: ResizePolicy) -> Image.Image:
    """The resize policy, in one place: ``image`` cut and resized to ``input_size`` (H, W).

    The worker calls it on every upload and the converter (through :func:`fit_to_input`)
    on its parity, calibration and accuracy inputs, so int8 is calibrated and judged on
    the pixels workers produce.
    """
    height, width = input_size
    w0, h0 = image.size
    if policy.mode == "stretch":
        box = (0.0, 0.0, float(w0), float(h0))
    else:
        # Resize so that the image covers (W/ratio, H/ratio), keep the central W x H:
        # the ImageNet evaluation recipe. One resize with a source box does the
        # crop and the resampling in one pass, with no intermediate image. (The
        # centre crop commutes with every EXIF orientation.)
        scale = _cover_scale((w0, h0), (width, height), policy.crop_ratio)
        box_w, box_h = width / scale, height / scale
        left, top = (w0 - box_w) / 2, (h0 - box_h) / 2
        box = (left, top, left + box_w, top + box_h)
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box)


def fit_to_input(image: Image.Image, input_size: tuple[int, int], policy: ResizePolicy) -> np.ndarray:
    """An RGB image -> the model's C-contiguous uint8 (H, W, 3) row, by :func:`resize_to_input`."""
    return np.ascontiguousarray(np.asarray(resize_to_input(image, input_size, policy), dtype=np.uint8))


def _cover_scale(size: tuple[int, int], target: tuple[int, int], ratio: float) -> float:
    """Scale factor making ``size`` (w, h) cover ``target`` (w, h) divided by ``ratio``."""
    return max(target[0] / (ratio * size[0]), target[1] / (ratio * size[1]))


def _resizable(image: Image.Image) -> Image.Image:
    """``image`` in a mode Pillow can resample bilinearly (palette and 1-bit ones it cannot)."""
    mode = image.mode
    if mode in _RESAMPLED_AS_IS and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    try:
        return image.convert("RGB")  # P, HSV: full size, 3 bytes a pixel
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode!r}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, keeping what a viewer would see."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # convert("RGB") would clip 16-bit values at 255 (an all-white picture): rescale.
        values = np.asarray(image).astype(np.float32)
        if mode in _SIXTEEN_BIT_MODES or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Transparent pixels have arbitrary colour underneath; show them as a page would: on white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode!r}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
