"""An image's pixel size read from its header, without decoding it (the gateway has no Pillow).

A decompression bomb (a small file whose header claims, say, 60000x60000 pixels)
is refused here with a 422, before it is stored or published; the worker checks
again before it decodes anything (and covers TIFF, which is not parsed here).
Anything this parser does not understand is left to the worker: it returns None.
"""

from __future__ import annotations

from gateway.errors import UnprocessableImage
from gateway.images import BMP, GIF, JPEG, PNG, WEBP, ImageKind, Upload

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field (RSTn, SOI, EOI, TEM).
_JPEG_STANDALONE = frozenset({*range(0xD0, 0xDA), 0x01})
_JPEG_SOS = 0xDA
# Runs on the event loop: a file of fill bytes or empty segments must not cost more than this many steps.
_JPEG_MAX_STEPS = 1000


def image_size(data: bytes, kind: ImageKind) -> tuple[int, int] | None:
    """(width, height) as the header claims it, or None when it cannot tell."""
    if kind is PNG:
        # The IHDR chunk must come first: length 13, type, width, height (big-endian).
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if kind is GIF:
        if len(data) >= 10:  # the logical screen, which Pillow takes as the image size
            return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
        return None
    if kind is JPEG:
        return _jpeg_size(data)
    if kind is BMP:
        if len(data) < 26:
            return None
        if int.from_bytes(data[14:18], "little") == 12:  # OS/2 core header: 16-bit sizes
            return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)  # negative = top-down
        return abs(width), abs(height)
    if kind is WEBP:
        return _webp_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame."""
    pos = 2  # after SOI
    for _ in range(_JPEG_MAX_STEPS):
        if pos + 4 > len(data):
            return None
        if data[pos] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == _JPEG_SOS:
            return None  # entropy-coded data before any frame header
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas size minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def check_pixel_limit(upload: Upload, max_pixels: int) -> None:
    """Refuse (422, like the worker would) an image whose header claims more than ``max_pixels``."""
    size = image_size(upload.data, upload.kind)
    if size is None:
        return
    width, height = size
    if width * height > max_pixels:
        raise UnprocessableImage(
            f"The image is {width}x{height} ({width * height:,} pixels), over the limit of "
            f"{max_pixels:,} pixels; it was not decoded."
        )
