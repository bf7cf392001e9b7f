"""The content-addressed store of uploads: ``<sha256>.<ext>`` files within a byte quota."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from pathlib import Path

from gateway.images import Upload, upload_kind
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# Ids of evicted uploads remembered for feedback (about 100 bytes each).
REMEMBER_EVICTED = 65_536
# An upload up to this size is written on the event loop: writing a photo into the page cache
# (~50 us for 100 KB) costs less than a thread round trip (submit, wake a pool thread, hand the
# result back), which was the largest cost of a miss after the sockets. Larger ones go to a thread.
WRITE_ON_LOOP_BYTES = 1024 * 1024


class UploadStore:
    """Uploads on disk under their content address ``<sha256>.<ext>``, within a byte quota.

    Only images a worker decoded are saved (the caller's rule). Beyond ``quota_bytes``
    the least recently used ones (saved, served or reported on) are deleted; their
    ids are remembered (up to ``REMEMBER_EVICTED``) so that feedback on a page that
    still shows one is accepted. The index lives in this process: gateways sharing
    one folder each hold their own view (each keeps the folder within its quota).
    """

    def __init__(
        self, root: Path, quota_bytes: int = 1024 * 1024 * 1024, metrics: GatewayMetrics | None = None
    ) -> None:
        self.root = root
        self._metrics = metrics
        self.quota_bytes = quota_bytes
        self.used_bytes = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._scan()

    def _scan(self) -> None:
        """Index what an earlier run left (oldest first), drop half-written files, apply the quota."""
        if not self.root.is_dir():
            return
        found: list[tuple[float, str, int]] = []
        for entry in os.scandir(self.root):
            if entry.name.startswith(".incoming-"):
                Path(entry.path).unlink(missing_ok=True)
            elif upload_kind(entry.name) is not None and entry.is_file():
                stat = entry.stat()
                found.append((stat.st_mtime, entry.name, stat.st_size))
        for _, name, size in sorted(found):
            self._sizes[name] = size
            self.used_bytes += size
        for victim in self._make_room(0):
            (self.root / victim).unlink(missing_ok=True)

    def _make_room(self, size: int) -> list[str]:
        """Forget least recently used images until ``size`` more bytes fit; the ids to delete."""
        victims: list[str] = []
        while self._sizes and self.used_bytes + size > self.quota_bytes:
            victim, victim_size = self._sizes.popitem(last=False)
            self.used_bytes -= victim_size
            self._remember_evicted(victim)
            victims.append(victim)
        if self._metrics is not None:
            self._metrics.store_evictions.inc(len(victims))
            self._metrics.store_bytes.set(self.used_bytes + size)
        return victims

    def _remember_evicted(self, image_id: str) -> None:
        self._evicted[image_id] = None
        self._evicted.move_to_end(image_id)
        while len(self._evicted) > REMEMBER_EVICTED:
            self._evicted.popitem(last=False)

    async def save(self, upload: Upload) -> bool:
        """Keep a decoded upload (within the quota); False when it could not be (too big, disk error)."""
        image_id = upload.image_id
        if image_id in self._sizes:
            self._sizes.move_to_end(image_id)
            return True
        size = len(upload.data)
        if size > self.quota_bytes:
            log.warning("not storing %s: %d bytes is over the store's quota", image_id[:12], size)
            return False
        # The books are kept on the loop; the disk work (write, deletions) in a thread.
        victims = self._make_room(size)
        self._sizes[image_id] = size
        self.used_bytes += size
        self._evicted.pop(image_id, None)
        try:
            if size <= WRITE_ON_LOOP_BYTES:
                self._save_sync(upload, victims)
            else:
                await asyncio.to_thread(self._save_sync, upload, victims)
        except OSError as exc:
            log.warning("could not store upload %s: %s", image_id[:12], exc)
            if self._sizes.pop(image_id, None) is not None:
                self.used_bytes -= size
            return False
        return True

    def _save_sync(self, upload: Upload, victims: list[str]) -> None:
        for victim in victims:  # first, so the folder never holds more than the quota
            (self.root / victim).unlink(missing_ok=True)
        # Temp file + rename: a reader never sees a half-written image, and two writers of the
        # same content both end with the same whole file. The index (not a stat per upload) says
        # it is new; the temporary name is unique per process (one save per image id at a time).
        tmp = self.root / f".incoming-{os.getpid()}-{upload.image_id}.part"
        try:
            try:
                _write_private(tmp, upload.data)
            except FileNotFoundError:  # the folder is not there (yet, or any more)
                self.root.mkdir(parents=True, exist_ok=True)
                _write_private(tmp, upload.data)
            os.replace(tmp, self.root / upload.image_id)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def path_for(self, image_id: str) -> Path | None:
        """The file of a stored upload (now the most recently used), or None. The id is validated first."""
        if upload_kind(image_id) is None:
            return None
        path = self.root / image_id
        if not path.is_file():
            return None
        if image_id in self._sizes:
            self._sizes.move_to_end(image_id)
        return path

    def was_stored(self, image_id: str) -> bool:
        """Whether this id is stored now or was evicted lately (feedback on it is still welcome)."""
        return image_id in self._evicted or self.path_for(image_id) is not None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only (0600, as tempfile.mkstemp made them)."""
    with open(path, "wb", opener=lambda name, flags: os.open(name, flags, 0o600)) as file:
        file.write(data)
