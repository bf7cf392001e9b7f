"""Hostile and unusual image files, built with Pillow from the real photos (or by hand)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def coffee_variants(photo: Path) -> dict[str, bytes]:
    """The coffee photo in every unusual-but-valid shape a phone or an editor produces."""
    rgb = Image.open(photo).convert("RGB")
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    alpha = Image.new("L", rgb.size, 255)
    alpha.paste(0, (0, 0, rgb.width, 40))  # a transparent band on top, a translucent one below
    alpha.paste(128, (0, rgb.height - 40, rgb.width, rgb.height))
    rgba.putalpha(alpha)
    second_frame = Image.new("RGB", rgb.size, (0, 128, 0)).quantize(256)
    sixteen = Image.frombytes("I;16", grey.size, bytes(b for v in grey.tobytes() for b in (v, v)))
    return {
        "cmyk-jpeg": encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "greyscale-jpeg": encode(grey, "JPEG", quality=90),
        "16-bit-greyscale-png": encode(sixteen, "PNG"),
        "palette-png": encode(rgb.quantize(256), "PNG"),
        "alpha-png": encode(rgba, "PNG"),
        "animated-gif": encode(
            rgb.quantize(256), "GIF", save_all=True, append_images=[second_frame], duration=100, loop=0
        ),
        "webp": encode(rgb, "WEBP", quality=90),
        "bmp": encode(rgb, "BMP"),
    }


def exif_rotated(photo: Path, orientation: int) -> bytes:
    """The photo stored sideways (or upside down) with the EXIF tag that puts it upright."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    rgb = Image.open(photo).convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(rgb.transpose(undo[orientation]), "JPEG", quality=90, exif=exif.tobytes())


def sideways(photo: Path) -> bytes:
    """The same sideways pixels as exif_rotated(photo, 6), without the tag."""
    return encode(Image.open(photo).convert("RGB").transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A well-formed PNG whose IHDR claims width x height grey pixels (3.6 GB for the default).

    The IDAT holds the first rows only (zeros compress ~1000:1): the point is the claim.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes((width + 1) * 16), 9)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def gif_bomb() -> bytes:
    """A 1x1 GIF whose logical screen claims 65535 x 65535."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65_535, 65_535)
    return bytes(data)


def jpeg_bomb() -> bytes:
    """A small JPEG whose start-of-frame claims 60000 x 60000."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 60, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return bytes(data)


def bmp_bomb() -> bytes:
    data = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", 60_000, 60_000)
    return bytes(data)


def webp_bomb() -> bytes:
    """A lossless (VP8L) WebP whose header claims 16384 x 16384, its largest."""
    data = bytearray(encode(Image.new("RGBA", (4, 4), (1, 2, 3, 100)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F, data[:32]
    bits = int.from_bytes(data[21:25], "little")
    data[21:25] = ((bits & ~0x0FFFFFFF) | 16_383 | 16_383 << 14).to_bytes(4, "little")
    return bytes(data)


def gif_polyglot() -> bytes:
    """A valid GIF (the coffee colours) whose bytes also hold an HTML page with a script."""
    html = b"<html><body><script>alert(document.cookie)</script></body></html>"
    return encode(Image.new("RGB", (64, 48), (120, 80, 40)).quantize(16), "GIF", comment=html)
