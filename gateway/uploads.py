"""Reading an upload from a request: a streaming read with limits on size, time and pace.

The bytes are checked as they arrive (413, 408, 400) and typed by content
(:mod:`gateway.images`, 415); what comes out is a plain :class:`~gateway.images.Upload`.
The content-addressed store is :mod:`gateway.store`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp.multipart
from aiohttp import BodyPartReader, MultipartReader, StreamReader, hdrs, web
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError

from common.settings import Settings
from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from gateway.images import (
    ACCEPTED_NAMES,
    BMP,
    GIF,
    JPEG,
    KINDS_BY_EXT,
    PNG,
    SNIFF_BYTES,
    TIFF,
    WEBP,
    ImageKind,
    Upload,
    sniff_image_type,
    upload_kind,
)
from gateway.store import UploadStore

# The image types and the store were here before they had modules of their own; old imports keep working.
__all__ = [
    "ACCEPTED_NAMES",
    "BMP",
    "FILE_FIELD",
    "GIF",
    "JPEG",
    "KINDS_BY_EXT",
    "MULTIPART_OVERHEAD",
    "PNG",
    "SNIFF_BYTES",
    "TIFF",
    "UPLOAD_GRACE_S",
    "WEBP",
    "ImageKind",
    "ReadLimits",
    "Upload",
    "UploadStore",
    "read_body",
    "read_upload",
    "refuse_content_encoding",
    "sniff_image_type",
    "upload_kind",
]


def _memoise_multipart_escapes() -> None:
    """aiohttp 3.14's ``parse_content_disposition`` builds a 128-character table with ``re.escape`` on
    every call (the default argument of its nested ``unescape``, evaluated per call): 41 us on
    the issue's EPYC, twice per upload (``MultipartReader.next`` and the part's ``name``), ~5 % of
    a cache hit. Its module gets ``re`` with a memoised ``escape`` (the same answers, 20 us);
    bounded, although aiohttp escapes only those 128 characters with it."""
    module = vars(aiohttp.multipart)
    if getattr(module.get("re"), "escape", None) is re.escape:
        memoised = types.SimpleNamespace(**vars(re))
        memoised.escape = functools.lru_cache(maxsize=256)(re.escape)
        module["re"] = memoised


_memoise_multipart_escapes()

FILE_FIELD = "file"
CHUNK_SIZE = 64 * 1024
# Room for multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# A form holds the file and a few fields; more parts than this is an attack, not a browser.
MAX_PARTS = 16
# Boundary, preamble and part-header lines of one multipart body (a browser sends ~5 per part).
MAX_MULTIPART_LINES = 256
# The loop gets a turn at least every this many reads of the body.
YIELD_EVERY_READS = 16
# Seconds an upload may take before its average pace is held to UPLOAD_MIN_RATE_KB_S.
UPLOAD_GRACE_S = 5.0


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The upload is larger than the limit of {limit / (1024 * 1024):g} MB.")


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What a client must respect while it sends an upload: size, time, and pace."""

    max_bytes: int
    timeout_s: float = 60.0
    min_rate: float = 16 * 1024  # bytes/s, averaged, after UPLOAD_GRACE_S

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadLimits:
        return cls(
            max_bytes=settings.max_upload_bytes,
            timeout_s=settings.upload_timeout_s,
            min_rate=settings.upload_min_rate_kb_s * 1024,
        )

    def deadline(self, started: float, received: int) -> float:
        """When the next bytes must have arrived: the total deadline, or sooner if the pace is too slow."""
        paced = started + UPLOAD_GRACE_S + received / self.min_rate if self.min_rate > 0 else float("inf")
        return min(started + self.timeout_s, paced)


class _MeteredBody:
    """The request body as it arrives: every byte counted, every read under a deadline."""

    def __init__(
        self, stream: StreamReader, limit: int, limits: ReadLimits, hold: Callable[[int], None]
    ) -> None:
        self._stream = stream
        self._limits = limits
        self._hold = hold
        self.limit = limit
        self.used = 0
        self._reads = 0
        self._started = asyncio.get_running_loop().time()

    async def read(self, n: int = CHUNK_SIZE) -> bytes:
        self._reads += 1
        if self._reads % YIELD_EVERY_READS == 0:
            await asyncio.sleep(0)  # buffered data is read without suspending: let others run
        try:
            async with asyncio.timeout_at(self._limits.deadline(self._started, self.used)):
                data = await self._stream.read(n)
        except TimeoutError:
            raise RequestTimeout(
                f"The upload did not arrive in time (the body must come within {self._limits.timeout_s:g} s, "
                f"at {self._limits.min_rate / 1024:g} KB/s or more)."
            ) from None
        self.used += len(data)
        if self.used > self.limit:
            raise _too_large(self._limits.max_bytes)
        self._hold(len(data))
        return data


class _ReceivedForm:
    """A multipart body already received in full, read the way aiohttp's MultipartReader reads a
    stream (``read``, ``readline``, ``unread_data``, ``at_eof``).

    The body is received first (metered, :class:`_MeteredBody`) and parsed from memory after:
    parsing then costs no deadline, no stream bookkeeping per line, and aiohttp's parser still
    does the parsing. The lines outside the file are capped, and the loop gets a turn every
    few reads (the parser never suspends on data in memory).
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._lines = 0
        self._reads = 0

    async def _turn(self) -> None:
        self._reads += 1
        if self._reads % YIELD_EVERY_READS == 0:
            await asyncio.sleep(0)

    async def read(self, n: int = -1) -> bytes:
        await self._turn()
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        self._lines += 1
        if self._lines > MAX_MULTIPART_LINES:
            raise BadRequest(
                "The multipart body has too many lines outside its file (preamble or part headers)."
            )
        await self._turn()
        end = self._data.find(b"\n", self._pos)
        end = len(self._data) if end < 0 else end + 1
        if max_line_length is not None and end - self._pos > max_line_length:
            raise BadRequest("A multipart header line is too long.")
        line = self._data[self._pos : end]
        self._pos = end
        return line

    def at_eof(self) -> bool:
        return self._pos >= len(self._data)

    def unread_data(self, data: bytes) -> None:
        start = self._pos - len(data)
        if start >= 0 and self._data[start : self._pos] == data:
            self._pos = start  # always so with aiohttp's reader: it gives back what it just read
        else:
            self._data, self._pos = data + self._data[self._pos :], 0


def _no_hold(_: int) -> None:
    return None


async def read_upload(
    request: web.Request,
    limits: ReadLimits | int,
    hold: Callable[[int], None] = _no_hold,
) -> Upload:
    """Read the image of a request: multipart field ``file``, or a raw body.

    Raises 413 as soon as the bytes read (all of them, multipart framing included)
    cross the limit, or up front from Content-Length, without reading the rest;
    408 when the body does not arrive in time; 400 when there is no file, it is
    empty or the multipart body is malformed or has too many parts; 415 when its
    content is not an accepted image type or the body is compressed.
    ``hold(n)`` is told of every byte held in memory (the shared receive buffer).
    """
    if isinstance(limits, int):
        limits = ReadLimits(max_bytes=limits)
    max_bytes = limits.max_bytes
    refuse_content_encoding(request)
    multipart = request.content_type.startswith("multipart/")
    allowance = max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    if request.content_length is not None and request.content_length > allowance:
        raise _too_large(max_bytes)
    if request.content_type == "application/x-www-form-urlencoded":
        raise BadRequest(
            f"No file was uploaded: send the image as the multipart form field '{FILE_FIELD}' or as the body."
        )
    body = _MeteredBody(request.content, allowance, limits, hold)
    try:
        if multipart:
            data = await _read_multipart_file(request, await _read_all(body), max_bytes)
        else:
            data = await _read_all(body)
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


async def read_body(
    request: web.Request, limits: ReadLimits, allowance: int, hold: Callable[[int], None] = _no_hold
) -> bytes:
    """A raw request body (not an upload form) under an upload's rules: every byte counted
    against ``allowance`` (413), the upload deadline and pace (408), no compressed body (415)."""
    refuse_content_encoding(request)
    if request.content_length is not None and request.content_length > allowance:
        raise _too_large(limits.max_bytes)
    body = _MeteredBody(request.content, allowance, limits, hold)
    try:
        return await _read_all(body)
    except (ClientPayloadError, HttpProcessingError, asyncio.IncompleteReadError) as exc:
        raise BadRequest(f"The request body was cut short or malformed ({exc.__class__.__name__}).") from exc


def refuse_content_encoding(request: web.Request) -> None:
    """415 for a compressed request body: the gateway does not inflate (``auto_decompress`` is off).

    Images are compressed already; inflating gzip, deflate or br bodies would let a
    few kilobytes on the wire cost the gateway megabytes of parsing.
    """
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Compressed request bodies (Content-Encoding: {encoding[:20]}) are not accepted; "
            "send the file as it is.",
            headers={hdrs.ACCEPT_ENCODING: "identity"},
        )


async def _read_all(body: _MeteredBody) -> bytes:
    chunks = []
    while chunk := await body.read(CHUNK_SIZE):
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_multipart_file(request: web.Request, form: bytes, max_bytes: int) -> bytes:
    """The bytes of the one ``file`` part of a received form; other fields are dropped."""
    try:
        reader = MultipartReader(request.headers, _ReceivedForm(form))  # type: ignore[arg-type]  # a StreamReader look-alike
    except (ValueError, AssertionError, KeyError) as exc:
        raise BadRequest(f"The multipart body is malformed: {exc}") from exc
    file_data: bytes | None = None
    for _ in range(MAX_PARTS + 1):
        try:
            part = await reader.next()
        except (ValueError, AssertionError) as exc:
            raise BadRequest(f"The multipart body is malformed: {exc}") from exc
        if part is None:
            break
        if isinstance(part, MultipartReader):
            raise BadRequest("Nested multipart bodies are not accepted.")
        if part.name != FILE_FIELD:
            async for _chunk in _part_chunks(part):
                pass
            continue
        if file_data is not None:
            raise BadRequest(f"Send one file per request (found more than one '{FILE_FIELD}' field).")
        data = bytearray()
        async for chunk in _part_chunks(part):
            data += chunk
            if len(data) > max_bytes:
                raise _too_large(max_bytes)
        file_data = bytes(data)
    else:
        raise BadRequest(f"The multipart body has more than {MAX_PARTS} parts.")
    if file_data is None:
        raise BadRequest(f"No file was uploaded: send the image in the form field '{FILE_FIELD}'.")
    return file_data


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    # read_chunk() returns raw (still transfer-encoded) bytes: browsers never encode file parts.
    while True:
        try:
            chunk = await part.read_chunk(CHUNK_SIZE)
        except (ValueError, AssertionError) as exc:  # e.g. the body ends before the part's boundary
            raise BadRequest(f"The multipart body is malformed: {exc}") from exc
        if not chunk:
            return
        yield chunk
