"""Stage-by-stage progress lines with elapsed time, so long conversions are not silent."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints ``[  12.3s] stage: detail`` lines to stdout as a run goes."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._start = time.perf_counter()
        self._stream = stream
        self._quiet = quiet

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def stage(self, name: str, detail: str = "") -> None:
        if self._quiet:
            return
        stream = self._stream or sys.stdout
        text = f"[{self.elapsed:7.1f}s] {name}" + (f": {detail}" if detail else "")
        print(text, file=stream, flush=True)
