"""What an uploaded image is: its accepted types, sniffed from its first bytes, and its id.

The type of an upload is judged by its first bytes (magic numbers), never by its
name or declared content type. A stored upload is named ``<sha256>.<ext>``; the
name is its id on the page, in /predict's answer and in /feedback. Plain values
only: reading them from a request is :mod:`gateway.uploads`' job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImageKind:
    """An accepted image type: the extension we store it under and its content type."""

    ext: str
    content_type: str


JPEG = ImageKind("jpg", "image/jpeg")
PNG = ImageKind("png", "image/png")
GIF = ImageKind("gif", "image/gif")
WEBP = ImageKind("webp", "image/webp")
BMP = ImageKind("bmp", "image/bmp")
TIFF = ImageKind("tiff", "image/tiff")
KINDS_BY_EXT = {kind.ext: kind for kind in (JPEG, PNG, GIF, WEBP, BMP, TIFF)}
ACCEPTED_NAMES = "JPEG, PNG, GIF, WebP, BMP or TIFF"

# fullmatch, not `$`: `$` would also accept a trailing newline.
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{64}\.(jpg|png|gif|webp|bmp|tiff)")
# Sizes of the BMP info headers in the wild (core, v2..v5); "BM" alone is too weak a signature.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
SNIFF_BYTES = 32


def sniff_image_type(head: bytes) -> ImageKind | None:
    """The image type of a file from its first bytes, or None if it is not one we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if len(head) >= 18 and head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return BMP
    return None


def upload_kind(image_id: str) -> ImageKind | None:
    """The type of a stored upload from its id, or None when the id is not well formed."""
    match = UPLOAD_ID_RE.fullmatch(image_id)
    return KINDS_BY_EXT[match.group(1)] if match else None


@dataclass(frozen=True, slots=True)
class Upload:
    """One received image: its bytes (unchanged), digest and sniffed type."""

    data: bytes
    sha256: str
    kind: ImageKind

    @property
    def image_id(self) -> str:
        return f"{self.sha256}.{self.kind.ext}"
