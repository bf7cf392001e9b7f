"""Sampling profiles of the running services with py-spy (``py-spy record --format raw``).

:func:`record` samples several processes at once for a few seconds while a
load runs; :func:`top` folds the collapsed stacks into the functions that
use the most samples: by self time (the frame on top of the stack) and
inclusive (anywhere on it). py-spy only records threads that are running
(not idle), so the shares are of busy time.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

from perf.results import Profile

# The venv's own py-spy first (requirements/perf.txt), then one on PATH.
PY_SPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def available() -> bool:
    return PY_SPY is not None


def record(pids: dict[str, int], seconds: float, out_dir: Path, rate: int = 100) -> dict[str, Path]:
    """Start one ``py-spy record`` per process, wait for all; the raw (collapsed) files."""
    assert PY_SPY is not None, "py-spy is not installed (requirements/perf.txt)"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, files = [], {}
    for name, pid in pids.items():
        path = out_dir / f"{name}.txt"
        svg = out_dir / f"{name}.svg"
        cmd = [
            PY_SPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            str(rate),
            "--nonblocking",
            "-t",
            "-f",
            "raw",
            "-o",
            str(path),
        ]
        procs.append(
            (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), name, path, svg)
        )
    for proc, name, path, _ in procs:
        proc.wait(timeout=seconds + 60)
        if path.exists():
            files[name] = path
    return files


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``; thread frames kept as they are."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rstrip(")").rsplit("/", 1)[-1]
    return f"{name} ({file})"


def top(raw: Path, n: int = 12) -> Profile:
    """Top ``n`` functions by self and by inclusive samples, with their share of all samples."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "")
        threads[thread.split(": ")[-1] if thread else "?"] += count
        code = [_short(f) for f in frames if not f.startswith(("thread (", "process "))]
        if code:
            self_counts[code[-1]] += count
        for f in set(code):
            inclusive[f] += count
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    boring = (
        "_bootstrap",
        "Thread.run",
        "_run_module_as_main",
        "_run_code",
        "run_forever",
        "run_until_complete",
        "<module>",
        "_run_once",
        "Handle._run",
        "_worker (thread.py",
        "main (",
        "run_app (",
        "Runner.run (",
        "run (runners.py",
        "_WorkItem.run (",
    )
    return Profile(
        samples=total,
        threads=[(name, share(c)) for name, c in threads.most_common(6)],
        self=[(f, share(c)) for f, c in self_counts.most_common(n)],
        inclusive=[(f, share(c)) for f, c in inclusive.most_common(4 * n) if not any(b in f for b in boring)][
            :n
        ],
    )
