"""Preprocessing on the real photos and on variants built from them with Pillow."""

from __future__ import annotations

import io
import random
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from classifier.preprocess import ImageDecodeError, Preprocessor
from common.model_file import ResizePolicy


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def chelsea(photos: dict[str, Path]) -> Image.Image:
    with Image.open(photos["chelsea"]) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def chelsea_input(chelsea: Image.Image, preprocess: Preprocessor) -> np.ndarray:
    """The reference: the plain RGB photo, losslessly encoded, preprocessed."""
    return preprocess(encode(chelsea, "PNG"))


@pytest.mark.parametrize("name", ["coffee", "chelsea", "astronaut"])
def test_photos_decode_to_the_model_input_size(photos, preprocess, model, name):
    array = preprocess(photos[name].read_bytes())
    h, w = model.input_size
    assert array.shape == (h, w, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous
    assert 20 < array.mean() < 235 and array.std() > 20  # a picture, not a blank


def test_center_crop_keeps_the_middle(chelsea):
    """A centre crop of a wide photo cuts the sides: not the same as stretching it."""
    data = encode(chelsea, "PNG")
    crop = Preprocessor((224, 224), ResizePolicy.parse("center_crop:0.875"), 10**8)(data)
    stretch = Preprocessor((224, 224), ResizePolicy.parse("stretch"), 10**8)(data)
    assert mean_abs_diff(crop, stretch) > 10
    # The middle row of the crop is the middle of the photo, scaled: compare with a manual crop.
    w0, h0 = chelsea.size
    scale = 224 / 0.875 / h0
    box_w, box_h = 224 / scale, 224 / scale
    box = ((w0 - box_w) / 2, (h0 - box_h) / 2, (w0 + box_w) / 2, (h0 + box_h) / 2)
    manual = np.asarray(chelsea.crop(tuple(round(v) for v in box)).resize((224, 224), Image.BILINEAR))
    assert mean_abs_diff(crop, manual) < 3


def test_non_square_input_size_is_honoured(photos):
    array = Preprocessor((120, 200), ResizePolicy.parse("stretch"), 10**8)(photos["coffee"].read_bytes())
    assert array.shape == (120, 200, 3)


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [("PNG", 0.01), ("WEBP", 6), ("GIF", 12), ("BMP", 0.01), ("TIFF", 0.01), ("JPEG", 3)],
)
def test_common_formats_decode_to_the_same_picture(chelsea, chelsea_input, preprocess, fmt, tolerance):
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    assert mean_abs_diff(preprocess(encode(chelsea, fmt, **params)), chelsea_input) <= tolerance


def test_cmyk_jpeg_is_converted_to_rgb(chelsea, chelsea_input, preprocess):
    data = encode(chelsea.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    array = preprocess(data)
    assert array.shape == chelsea_input.shape
    assert mean_abs_diff(array, chelsea_input) < 6


def test_greyscale_becomes_three_equal_channels(chelsea, chelsea_input, preprocess):
    array = preprocess(encode(chelsea.convert("L"), "JPEG", quality=95))
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
    luminance = np.asarray(Image.fromarray(chelsea_input).convert("L"))
    assert mean_abs_diff(array[..., 0], luminance) < 4


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(chelsea, preprocess):
    grey8 = np.asarray(chelsea.convert("L"))
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # full 16-bit range
    data = encode(grey16, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    array = preprocess(data)
    reference = preprocess(encode(Image.fromarray(grey8), "PNG"))
    # Clipping at 255 would give an almost white picture; rescaling gives the 8-bit one.
    assert mean_abs_diff(array, reference) < 1
    assert array.mean() < 200


def test_palette_image_is_converted(chelsea, chelsea_input, preprocess):
    data = encode(chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert mean_abs_diff(preprocess(data), chelsea_input) < 8


def test_rgba_is_composited_on_white(chelsea, chelsea_input, preprocess):
    opaque = chelsea.copy()
    opaque.putalpha(255)
    assert mean_abs_diff(preprocess(encode(opaque, "PNG")), chelsea_input) < 0.01
    transparent = chelsea.copy()
    transparent.putalpha(0)  # the colours underneath are the photo: a viewer shows white
    assert (preprocess(encode(transparent, "PNG")) == 255).all()


def test_exif_orientation_is_applied(chelsea, chelsea_input, preprocess):
    """Stored sideways (as a phone does) with orientation 6 = 'rotate 90 clockwise to view'."""
    stored = chelsea.transpose(Image.Transpose.ROTATE_90)  # 90 degrees anticlockwise
    assert stored.size == (chelsea.height, chelsea.width)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    plain_sideways = encode(stored, "JPEG", quality=95)

    upright = preprocess(rotated)
    assert mean_abs_diff(upright, chelsea_input) < 4
    assert mean_abs_diff(preprocess(plain_sideways), chelsea_input) > 20  # the check can fail
    # With a non-square input the orientation shows in the shape-independent content too.
    wide = Preprocessor((100, 150), ResizePolicy.parse("stretch"), 10**8)
    expected = wide(encode(chelsea, "PNG"))
    assert mean_abs_diff(wide(rotated), expected) < 5


def test_large_jpeg_is_decoded_reduced_with_the_same_result(chelsea, preprocess):
    """A 12-megapixel JPEG: DCT-scaled decoding, close to a full decode, and fast."""
    big = chelsea.resize((4200, 2800), Image.BICUBIC)
    jpeg = encode(big, "JPEG", quality=92)
    full = Image.open(io.BytesIO(jpeg)).convert("RGB")  # full-size reference decode, lossless re-encode
    reference = preprocess(encode(full, "BMP"))
    start = time.perf_counter()
    array = preprocess(jpeg)
    elapsed = time.perf_counter() - start
    assert mean_abs_diff(array, reference) < 2
    assert elapsed < 0.5, f"decoding took {elapsed:.3f} s"


@pytest.mark.parametrize("name", ["coffee", "chelsea", "astronaut"])
def test_phone_sized_jpeg_is_decoded_at_half_size_with_the_same_answer(
    photos, preprocess, model, name, monkeypatch
):
    """A 1024 px JPEG is decoded at half size (DCT scaling), yet gives the model the same picture
    and the same answer as a full-size decode."""
    with Image.open(photos[name]) as im:
        source = im.convert("RGB")
    ratio = 1024 / max(source.size)
    phone = source.resize((round(source.width * ratio), round(source.height * ratio)), Image.BICUBIC)
    jpeg = encode(phone, "JPEG", quality=90)
    decoded_sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):  # the real draft(), noting the size it decodes at
        result = draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    reduced = preprocess(jpeg)
    assert decoded_sizes == [(-(-phone.width // 2), -(-phone.height // 2))]  # DCT scaling rounds up
    full = Image.open(io.BytesIO(jpeg)).convert("RGB")  # the full-size decode, re-encoded losslessly
    reference = preprocess(encode(full, "BMP"))
    assert mean_abs_diff(reduced, reference) < 2
    p_reduced, p_full = model.predict(np.stack([reduced, reference]))
    assert np.abs(p_reduced - p_full).max() < 0.05
    runner_up, best = np.sort(p_full)[-2:]
    if best - runner_up >= 0.02:  # a near-tie may go either way, as with any other resampling
        assert p_reduced.argmax() == p_full.argmax()


def test_truncated_jpeg_is_refused(photos, preprocess):
    data = photos["coffee"].read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        preprocess(data[: len(data) // 2])


@pytest.mark.parametrize("size", [0, 1, 7, 4096])
def test_random_bytes_are_refused(preprocess, size):
    data = random.Random(size).randbytes(size)
    with pytest.raises(ImageDecodeError):
        preprocess(data)


def test_unaccepted_formats_are_refused(preprocess):
    """EPS would make Pillow run Ghostscript: never opened."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"0 0 moveto\n" * 10
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        preprocess(eps)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB), with a valid CRC and no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (60_000, 60_000, "more than 40,000,000 pixels"),  # 10.8 GB of RGB: Pillow's own backstop
        (7_000, 7_000, "7000x7000 .49,000,000 pixels., over the limit"),  # our header check
    ],
)
def test_decompression_bomb_is_refused_before_allocation(preprocess, width, height, message):
    data = png_header_only(width, height)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=message):
        preprocess(data)
    assert time.perf_counter() - start < 0.1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 50, f"peak memory grew by {grown_mb:.0f} MB"
