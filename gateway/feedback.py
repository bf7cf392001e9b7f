"""The feedback CSV: validation of a report and an append of one whole row under a file lock.

Several gateway processes may share the file, so each row is written by one
``write`` while holding a cross-process lock (``filelock``). Cells a spreadsheet
would run as a formula are neutralised with a leading single quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import io
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from gateway.errors import BadRequest, ServiceUnavailable

log = logging.getLogger(__name__)

HEADER = ("timestamp", "image", "predicted_label", "score", "correct_label", "model_version")
MAX_LABEL_CHARS = 200
LOCK_TIMEOUT_S = 10.0
# A full disk is not cleared in a second.
RETRY_AFTER_DISK_S = 60
_DISK_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the feedback file has reached its size limit",
    errno.EROFS: "the disk is read-only",
    errno.EACCES: "the feedback file is not writable",
    errno.EPERM: "the feedback file is not writable",
}
# What a spreadsheet takes for the start of a formula (OWASP's CSV injection list).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# C0 and C1 control characters, DEL included.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MODEL_VERSION_RE = re.compile(r"[0-9A-Za-z._-]{1,64}")


def neutralise(cell: str) -> str:
    """Prefix a single quote to a cell that would start a spreadsheet formula."""
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One user report: the prediction shown for an image and, optionally, the right label."""

    image: str
    predicted_label: str
    score: float
    correct_label: str
    model_version: str

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, default_model_version: str = "") -> FeedbackEntry:
        """Validate a form or JSON report; raises :class:`BadRequest` saying what is wrong.

        The image id's format is checked here; whether the image exists is the caller's check.
        """
        image = _text(data, "image", required=True)
        predicted = _label(data, "prediction", required=True)
        correct = _label(data, "correct_label", required=False)
        raw_score = data.get("score")
        try:
            score = float(raw_score)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadRequest("'score' must be a number between 0 and 1.") from None
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise BadRequest("'score' must be a number between 0 and 1.")
        version = _text(data, "model_version", required=False) or default_model_version
        if version and not _MODEL_VERSION_RE.fullmatch(version):
            raise BadRequest("'model_version' is not a model version.")
        return cls(
            image=image, predicted_label=predicted, score=score, correct_label=correct, model_version=version
        )

    def row(self, timestamp: datetime) -> list[str]:
        cells = [
            timestamp.isoformat(timespec="milliseconds"),
            self.image,
            self.predicted_label,
            f"{self.score:.6g}",
            self.correct_label,
            self.model_version,
        ]
        return [neutralise(cell) for cell in cells]


def _text(data: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise BadRequest(f"'{key}' is missing.")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be text.")
    return value.strip()


def _label(data: Mapping[str, Any], key: str, *, required: bool) -> str:
    label = _text(data, key, required=required)
    if required and not label:
        raise BadRequest(f"'{key}' is missing.")
    if len(label) > MAX_LABEL_CHARS:
        raise BadRequest(f"'{key}' is longer than {MAX_LABEL_CHARS} characters.")
    if _CONTROL_RE.search(label):
        raise BadRequest(f"'{key}' contains control characters.")
    return label


class FeedbackLog:
    """Appends feedback rows to one CSV file, safely across threads and processes."""

    def __init__(self, path: Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = path
        self._lock = FileLock(f"{path}.lock", timeout=lock_timeout_s)

    def append(self, entry: FeedbackEntry, timestamp: datetime | None = None) -> None:
        """Write one whole row (and the header if the file is new), or nothing at all.

        Blocking: call it off the loop. A failed write (disk full, file size limit,
        read-only disk) cuts the file back to its length before the row, under the
        lock, so no partial row is ever left for the next one to be glued onto.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        row = entry.row(timestamp or datetime.now(UTC))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                length = os.fstat(fd).st_size
                if length == 0:
                    writer.writerow(HEADER)
                writer.writerow(row)
                data = buffer.getvalue().encode("utf-8")
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, length)
                    raise
            finally:
                os.close(fd)

    async def record(self, entry: FeedbackEntry) -> None:
        """Append off the event loop; a busy lock or a disk that refuses the row is a 503."""
        try:
            await asyncio.to_thread(self.append, entry)
        except Timeout:
            raise ServiceUnavailable("The feedback file is busy; please try again.") from None
        except OSError as exc:
            log.error("feedback not recorded (%s): %s", errno.errorcode.get(exc.errno or 0, "?"), exc)
            reason = _DISK_REASONS.get(exc.errno or 0, "the feedback file cannot be written")
            raise ServiceUnavailable(
                f"Your feedback was not recorded: {reason}. Nothing was saved; please try again later.",
                retry_after=RETRY_AFTER_DISK_S,
            ) from None


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out: a short write (near a size limit) is not an error by itself."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
