"""Small numeric helpers shared by the harness: percentiles, CPU accounting of processes."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

from perf.results import Cores, Latency


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: Sequence[float]) -> Latency:
    """p50/p90/p95/p99/mean of latencies given in seconds, in milliseconds."""
    if not seconds:
        return Latency(p50=math.nan, p90=math.nan, p95=math.nan, p99=math.nan, mean=math.nan, n=0)
    ms = [s * 1000 for s in seconds]
    return Latency(
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        mean=sum(ms) / len(ms),
        n=len(ms),
    )


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of one process (children not included: they may come and go)."""
    t = proc.cpu_times()
    return t.user + t.system


@dataclass
class CpuMeter:
    """CPU seconds used by named processes over a window: ``start()``, run the load, ``stop()``.

    A process that exits (or appears) during the window is left out rather than counted
    as a negative or a whole life.
    """

    pids: dict[str, list[int]]
    _start: dict[int, float] | None = None
    _t0: float = 0.0
    _machine0: float = 0.0

    def _sample(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for pids in self.pids.values():
            for pid in pids:
                try:
                    out[pid] = cpu_seconds(psutil.Process(pid))
                except psutil.Error:
                    pass
        return out

    def start(self) -> None:
        self._machine0 = machine_busy_seconds()
        self._start, self._t0 = self._sample(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used by each name over the window (1.0 = one core busy), plus ``others``:
        what the rest of the machine used meanwhile (other engineers' work, the kernel)."""
        assert self._start is not None, "start() first"
        end, elapsed = self._sample(), time.monotonic() - self._t0
        usage = {}
        for name, pids in self.pids.items():
            used = sum(end[p] - self._start[p] for p in pids if p in end and p in self._start)
            usage[name] = round(max(0.0, used) / elapsed, 3)
        machine = (machine_busy_seconds() - self._machine0) / elapsed
        usage["others"] = round(max(0.0, machine - sum(usage.values())), 3)
        return usage


def cpu_ms_per_request(
    cores: Cores, rps: float, parts: Sequence[str], idle: Mapping[str, float] | None = None
) -> dict[str, float]:
    """CPU milliseconds per answered request of each part over one window: (cores - idle cores) / rps.

    ``cores`` is what :class:`CpuMeter` measured over the window, ``rps`` the requests answered in that
    same window per second; ``idle`` is a part's CPU with no load of ours (a shared RabbitMQ node's or
    Redis's background, measured before), subtracted and floored at 0. NaN where nothing was answered
    or the part was not measured.
    """
    idle = idle or {}
    out = {}
    for part in parts:
        if rps <= 0 or part not in cores:
            out[part] = math.nan
        else:
            out[part] = round(max(0.0, cores[part] - idle.get(part, 0.0)) / rps * 1000, 3)
    return out


def listening_pids(port: int) -> list[int]:
    """Pids of the processes listening on a local TCP port (the real RabbitMQ, the real Redis)."""
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            found.add(conn.pid)
    return sorted(found)


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def machine_busy_cores(interval: float = 1.0) -> float:
    """Cores busy machine-wide over ``interval`` seconds (load check before a run)."""
    return psutil.cpu_percent(interval=interval) / 100 * (psutil.cpu_count() or 1)
