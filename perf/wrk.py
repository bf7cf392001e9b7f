"""wrk (C, one thread) posting multipart photos: the load generator for cache hits.

A cache hit costs the gateway well under a millisecond of CPU, so on a few shared cores a Python load
generator (``perf.loadgen``, ~0.3 cores at these rates) takes CPU the gateway processes would use and
caps what they show. wrk spends a fraction of that. It cannot read the answers' bodies (whether one came
from the cache is the gateways' own count, ``gateway_cache_hits_total``) and has no warm-up of its own
(a short run before the measured one serves as one).

:func:`prepare` writes the photos as multipart bodies (``perf.loadgen``'s) and the Lua script that
posts them in turn; :func:`command` is the command line; :func:`parse` reads what ``wrk --latency``
prints. Debian: ``apt-get install wrk`` (``scripts/ensure_system_packages.sh``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from perf.loadgen import BOUNDARY, multipart
from perf.results import Latency, LoadRun

TOOL = "wrk 1 thread"
SCRIPT = """
local bodies = {}
local n = 0
init = function(args)
  for i, path in ipairs(args) do
    local f = io.open(path, "rb"); bodies[i] = f:read("*a"); f:close()
  end
end
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/predict",
    {["Content-Type"] = "multipart/form-data; boundary=BOUNDARY"}, bodies[n])
end
"""
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


def available() -> bool:
    return shutil.which("wrk") is not None


def prepare(photos: list[Path], work: Path) -> tuple[list[Path], Path]:
    """Each photo as a multipart body file in ``work``, and the Lua script that posts them in turn."""
    work.mkdir(parents=True, exist_ok=True)
    bodies = []
    for photo in photos:
        path = work / f"{photo.stem}.multipart"
        path.write_bytes(multipart(photo.read_bytes(), photo.name))
        bodies.append(path)
    script = work / "hits.lua"
    script.write_text(SCRIPT.replace("BOUNDARY", BOUNDARY))
    return bodies, script


def command(url: str, bodies: list[Path], script: Path, connections: int, seconds: float) -> list[str]:
    """wrk, one thread, ``connections`` connections for ``seconds`` (whole seconds at least 1), latency
    distribution on, posting ``bodies`` in turn to ``url``."""
    duration = max(1, round(seconds))
    return ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url, "--",
            *map(str, bodies)]  # fmt: skip


def run(url: str, bodies: list[Path], script: Path, connections: int, seconds: float) -> WrkOutput:
    """One wrk run to its end, parsed."""
    out = subprocess.run(
        command(url, bodies, script, connections, seconds), check=True, capture_output=True, text=True
    )
    return parse(out.stdout)


@dataclass
class WrkOutput:
    """What ``wrk --latency`` prints: requests, their rate, the latency distribution (ms) and errors."""

    requests: int
    seconds: float
    rps: float
    mean_ms: float
    max_ms: float
    percentiles_ms: dict[int, float]  # 50, 75, 90, 99
    non_2xx: int  # wrk's "Non-2xx or 3xx responses": status 400 and above
    socket_errors: dict[str, int]  # connect, read, write, timeout (0 where wrk prints no such line)

    @property
    def latency(self) -> Latency:
        p = self.percentiles_ms
        return Latency(p50=p[50], p90=p.get(90), p99=p[99], mean=self.mean_ms, n=self.requests)

    def load_run(self, connections: int, loadgen_cpu_cores: float) -> LoadRun:
        """As the benchmark records a load run; ``statuses`` as far as wrk tells them apart."""
        statuses = {"2xx/3xx": self.requests - self.non_2xx, "4xx/5xx": self.non_2xx}
        statuses.update({f"socket {k}": v for k, v in self.socket_errors.items() if v})
        return LoadRun(
            concurrency=connections,
            rps=self.rps,
            latency_ms=self.latency,
            loadgen_cpu_cores=loadgen_cpu_cores,
            duration_s=self.seconds,
            rps_window=self.rps,
            statuses=statuses,
            sent=self.requests,
            errors=self.non_2xx + sum(self.socket_errors.values()),
            tool=TOOL,
        )


def _ms(value: str, unit: str) -> float:
    return float(value) * UNITS_MS[unit]


def parse(out: str) -> WrkOutput:
    """Read ``wrk --latency``'s report (wrk 4.x); a missing part is an error, not a zero."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk's output has no {pattern!r}:\n{out}")
        return match

    latency = find(rf"^\s+Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}")
    percentiles = {
        int(q): _ms(v, u) for q, v, u in re.findall(rf"^\s+(\d+)%\s+{_TIME}\s*$", out, re.MULTILINE)
    }
    if 50 not in percentiles or 99 not in percentiles:
        raise ValueError(f"wrk's output has no latency distribution (--latency):\n{out}")
    done = find(rf"^\s*(\d+) requests in {_TIME},")
    sockets = re.search("Socket errors: " + ", ".join(rf"{k} (?P<{k}>\d+)" for k in SOCKET_ERRORS), out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkOutput(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2), done.group(3)) / 1000,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        mean_ms=_ms(latency.group(1), latency.group(2)),
        max_ms=_ms(latency.group(5), latency.group(6)),
        percentiles_ms=percentiles,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={k: int(sockets[k]) if sockets else 0 for k in SOCKET_ERRORS},
    )
