"""The gateway's header-only size reader agrees with Pillow, and never raises on garbage."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.errors import UnprocessableImage
from gateway.image_size import check_pixel_limit, image_size
from gateway.uploads import KINDS_BY_EXT, Upload, sniff_image_type
from tests.security import images


def _files(photo: Path) -> dict[str, bytes]:
    rgb = Image.open(photo).convert("RGB").resize((123, 77))
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    big_segment = b"\xff\xd8" + b"\xff\xe2" + struct.pack(">H", 65_000) + bytes(64_998)  # an APP2 before SOF
    baseline = images.encode(rgb, "JPEG")
    return {
        "jpeg": baseline,
        "jpeg-progressive": images.encode(rgb, "JPEG", progressive=True),
        "jpeg-exif": images.encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-big-app-segment": big_segment + baseline[2:],
        "jpeg-cmyk": images.encode(rgb.convert("CMYK"), "JPEG"),
        "png": images.encode(rgb, "PNG"),
        "png-16bit": images.encode(rgb.convert("I;16"), "PNG"),
        "gif": images.encode(rgb, "GIF"),
        "bmp": images.encode(rgb, "BMP"),
        "bmp-top-down": _top_down_bmp(rgb),
        "webp-lossy": images.encode(rgb, "WEBP"),
        "webp-lossless": images.encode(rgb, "WEBP", lossless=True),
        "webp-extended": images.encode(rgb.convert("RGBA"), "WEBP", exif=exif.tobytes()),
    }


def _top_down_bmp(image: Image.Image) -> bytes:
    data = bytearray(images.encode(image, "BMP"))
    data[22:26] = struct.pack("<i", -image.height)  # negative height: rows stored top-down
    return bytes(data)


def test_sizes_agree_with_pillow(photos) -> None:
    for name, data in _files(photos["coffee"]).items():
        kind = sniff_image_type(data[:32])
        assert kind is not None, name
        assert image_size(data, kind) == Image.open(io.BytesIO(data)).size == (123, 77), name


def test_tiff_and_truncated_headers_are_left_to_the_worker(photos) -> None:
    tiff = images.encode(Image.open(photos["coffee"]), "TIFF")
    assert image_size(tiff, KINDS_BY_EXT["tiff"]) is None
    for name, data in _files(photos["coffee"]).items():
        kind = sniff_image_type(data[:32])
        assert kind is not None
        assert image_size(data[:8], kind) is None, name


def test_the_limit_is_checked_on_the_claimed_size() -> None:
    bomb = images.png_bomb()
    upload = Upload(data=bomb, sha256="0" * 64, kind=KINDS_BY_EXT["png"])
    with pytest.raises(UnprocessableImage, match="60000x60000"):
        check_pixel_limit(upload, 40_000_000)
    check_pixel_limit(Upload(data=images.png_bomb(100, 100), sha256="0" * 64, kind=upload.kind), 10_000)


@settings(max_examples=300, deadline=None, database=None)
@given(ext=st.sampled_from(sorted(KINDS_BY_EXT)), data=st.binary(max_size=200))
def test_never_raises_on_garbage(ext: str, data: bytes) -> None:
    size = image_size(data, KINDS_BY_EXT[ext])
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))
