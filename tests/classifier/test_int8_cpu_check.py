"""The worker's start-up check: an int8 file whose scheme saturates without VNNI is refused there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from classifier.model import int8_cpu_problem
from common.cpu import parse_cpuinfo, this_cpu
from common.model_file import ModelMetadata, ResizePolicy
from tests.support.processes import REPO_ROOT

# The flags lines of two real machines of this project (trimmed to the int8-relevant part
# plus neighbours): an AMD EPYC with AVX2 only, and a Sapphire Rapids Xeon.
EPYC_AVX2 = """processor	: 0
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq
"""
XEON_VNNI = """processor	: 0
model name	: Intel(R) Xeon(R) Processor
flags		: fpu sse sse2 avx f16c fma avx2 avx512f avx512bw avx_vnni avx512_vnni amx_int8
"""


def _meta(scheme: str | None) -> ModelMetadata:
    return ModelMetadata(
        name="m",
        labels=["a"],
        input_size=(8, 8),
        resize=ResizePolicy("stretch"),
        source="s",
        converter="c",
        created="t",
        int8_scheme=scheme,
    )


def test_cpuinfo_is_read_as_lscpu_shows_it():
    epyc, xeon = parse_cpuinfo(EPYC_AVX2, "x86_64"), parse_cpuinfo(XEON_VNNI, "x86_64")
    assert epyc.model == "AMD EPYC 7B13" and not epyc.vnni and epyc.u8s8_saturates
    assert xeon.vnni and not xeon.u8s8_saturates
    assert "avx2" in epyc.describe() and "avx512_vnni" in xeon.describe()
    assert not parse_cpuinfo(EPYC_AVX2, "aarch64").u8s8_saturates  # Arm's int8 kernels do not saturate


@pytest.mark.parametrize(
    ("scheme", "refused_on_epyc"),
    [(None, False), ("u8s8-mixed", False), ("u8s8-reduce-range", False), ("u8s8", True), ("s9s9", True)],
)
def test_only_a_saturating_or_unknown_scheme_is_refused_and_only_without_vnni(scheme, refused_on_epyc):
    epyc, xeon = parse_cpuinfo(EPYC_AVX2, "x86_64"), parse_cpuinfo(XEON_VNNI, "x86_64")
    problem = int8_cpu_problem(_meta(scheme), epyc)
    assert (problem is not None) == refused_on_epyc
    if problem:
        assert "AMD EPYC 7B13" in problem and "--scheme u8s8-mixed" in problem
    assert int8_cpu_problem(_meta(scheme), xeon) is None


def _with_scheme(source: Path, scheme: str, out: Path) -> Path:
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "int8_scheme":
            prop.value = scheme
    onnx.save(model, str(out))
    return out


def test_a_real_worker_checks_the_file_it_is_given_against_this_cpu(lite0_int8_model, tmp_path):
    """The one test that depends on the CPU, by design: it checks the CPU check itself."""
    u8s8 = _with_scheme(lite0_int8_model, "u8s8", tmp_path / "u8s8.onnx")
    proc = subprocess.Popen(
        [sys.executable, "-m", "classifier", "--model", str(u8s8), "--metrics-port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A broker address where none listens: a worker that passes the check keeps retrying it.
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            "ORT_THREADS": "1",
            "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/",
        },
    )
    lines: list[str] = []
    assert proc.stderr is not None
    try:  # until it exits (refused) or reaches the broker (passed): both come within seconds
        for line in proc.stderr:
            lines.append(line)
            if "RabbitMQ unreachable" in line:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    stderr = "".join(lines)
    assert "model efficientnet-lite0-int8 version" in stderr, stderr
    if this_cpu().u8s8_saturates:
        assert proc.returncode == 2, stderr
        assert "refusing to serve" in stderr and "saturates without VNNI" in stderr
    else:  # past the check, on to the (absent) broker
        assert proc.returncode != 2 and "refusing to serve" not in stderr, stderr
