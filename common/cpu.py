"""What this CPU does with int8 products: the one fact an int8 model file depends on.

x86 CPUs with VNNI (AVX512-VNNI, AVX-VNNI) or AMX multiply uint8 x int8 into int32
exactly; x86 CPUs without it (AVX2-only, e.g. AMD EPYC before Zen 4, or AVX-512 before
Cascade Lake) use VPMADDUBSW, whose int16 pair sums saturate. onnxruntime picks the
kernel at run time, so an int8 file whose scheme saturates gives other answers there
(common.model_file.INT8_SCHEMES). Read from the kernel's /proc/cpuinfo: standard
library only, and what ``lscpu`` shows an operator.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


@dataclass(frozen=True, slots=True)
class CpuInt8:
    """The CPU's model name and how it multiplies uint8 by int8."""

    model: str
    x86: bool
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool(self.flags & VNNI_FLAGS)

    @property
    def u8s8_saturates(self) -> bool:
        """True where onnxruntime's uint8 x int8 kernel is VPMADDUBSW (x86 without VNNI)."""
        return self.x86 and not self.vnni

    def describe(self) -> str:
        shown = sorted(self.flags & (VNNI_FLAGS | {"avx2", "avx512f"}))
        return f"{self.model} ({', '.join(shown) or 'no avx2/avx512/vnni'})"


def parse_cpuinfo(text: str, machine: str) -> CpuInt8:
    """The first processor's model name and flags from /proc/cpuinfo's text."""
    model, flags = "unknown CPU", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value
    return CpuInt8(model=model, x86=machine.lower() in _X86, flags=frozenset(flags.split()))


def this_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInt8:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def describe() -> str:
    return this_cpu().describe()
