"""Uploads: a streaming read with a size limit, type sniffing by content, a content-addressed store.

The type of an upload is judged by its first bytes (magic numbers), never by its
name or declared content type. A stored upload is named ``<sha256>.<ext>``; the
name is its id on the page, in /predict's answer and in /feedback.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

FILE_FIELD = "file"
CHUNK_SIZE = 64 * 1024
# Room for multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024


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


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The upload is larger than the limit of {limit / (1024 * 1024):g} MB.")


class _Budget:
    """Counts bytes read from a request and stops the read the moment the limit is crossed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise _too_large(self.limit)


async def read_upload(request: web.Request, max_bytes: int) -> Upload:
    """Read the image of a request: multipart field ``file``, or a raw body.

    Raises 413 as soon as the upload crosses ``max_bytes`` (or up front from
    Content-Length) without reading the rest, 400 when there is no file or it
    is empty, 415 when its content is not an accepted image type.
    """
    multipart = request.content_type.startswith("multipart/")
    allowance = max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    if request.content_length is not None and request.content_length > allowance:
        raise _too_large(max_bytes)
    if request.content_type == "application/x-www-form-urlencoded":
        raise BadRequest(
            f"No file was uploaded: send the image as the multipart form field '{FILE_FIELD}' or as the body."
        )
    try:
        if multipart:
            data = await _read_multipart_file(request, max_bytes)
        else:
            data = await _read_stream(request.content.iter_chunked(CHUNK_SIZE), _Budget(max_bytes))
            if not data:
                raise BadRequest(
                    f"No file was uploaded: send the image in the form field '{FILE_FIELD}' or as the body."
                )
    except (ClientPayloadError, HttpProcessingError, asyncio.IncompleteReadError) as exc:
        raise BadRequest(f"The upload was cut short or malformed ({exc.__class__.__name__}).") from exc
    if not data:
        raise BadRequest("The uploaded file is empty.")
    kind = sniff_image_type(data[:SNIFF_BYTES])
    if kind is None:
        raise UnsupportedMediaType(f"The file is not an image we accept; send a {ACCEPTED_NAMES} file.")
    return Upload(data=data, sha256=hashlib.sha256(data).hexdigest(), kind=kind)


async def _read_stream(chunks: AsyncIterator[bytes], budget: _Budget) -> bytes:
    buffer = bytearray()
    async for chunk in chunks:
        budget.take(len(chunk))
        buffer += chunk
    return bytes(buffer)


async def _read_multipart_file(request: web.Request, max_bytes: int) -> bytes:
    """The bytes of the one ``file`` part; other fields are read and dropped, all within one budget."""
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"The multipart body is malformed: {exc}") from exc
    budget = _Budget(max_bytes + MULTIPART_OVERHEAD)
    file_data: bytes | None = None
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise BadRequest(f"The multipart body is malformed: {exc}") from exc
        if part is None:
            break
        if isinstance(part, MultipartReader):
            raise BadRequest("Nested multipart bodies are not accepted.")
        if part.name != FILE_FIELD:
            await _read_stream(_part_chunks(part), budget)
            continue
        if file_data is not None:
            raise BadRequest(f"Send one file per request (found more than one '{FILE_FIELD}' field).")
        file_budget = _Budget(max_bytes)
        data = bytearray()
        async for chunk in _part_chunks(part):
            file_budget.take(len(chunk))
            budget.take(len(chunk))
            data += chunk
        file_data = bytes(data)
    if file_data is None:
        raise BadRequest(f"No file was uploaded: send the image in the form field '{FILE_FIELD}'.")
    return file_data


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    # read_chunk() returns raw (still transfer-encoded) bytes: browsers never encode file parts.
    while chunk := await part.read_chunk(CHUNK_SIZE):
        yield chunk


class UploadStore:
    """Uploads on disk, each stored once under its content address ``<sha256>.<ext>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def save(self, upload: Upload) -> str:
        """Store the upload unless an identical one is there; return its id."""
        # A repeated image (every cache hit) costs one stat() on the loop, not a thread
        # round trip (~0.1 ms and two wake-ups, ~15% of the gateway's CPU at 1,000 hits/s).
        if not (self.root / upload.image_id).exists():
            await asyncio.to_thread(self._save_sync, upload)
        return upload.image_id

    def _save_sync(self, upload: Upload) -> None:
        target = self.root / upload.image_id
        if target.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Temp file + rename: a reader never sees a half-written image, and two
        # writers of the same content both end with the same whole file.
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(upload.data)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def path_for(self, image_id: str) -> Path | None:
        """The file of a stored upload, or None. The id is validated before the disk is touched."""
        if upload_kind(image_id) is None:
            return None
        path = self.root / image_id
        return path if path.is_file() else None
