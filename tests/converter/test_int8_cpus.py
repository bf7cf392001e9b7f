"""One int8 file, right on every x86 CPU: the served file is checked on the non-VNNI path too.

``qemu-x86_64 -cpu Haswell`` runs this same onnxruntime on the same file with a CPU
that has AVX2 and no VNNI. onnxruntime picks its int8 kernels from CPUID, so under
it uint8 x int8 products take VPMADDUBSW, the saturating path of AVX2-only CPUs (AMD
EPYC before Zen 4, Intel before Cascade Lake), on whichever CPU runs this test.
The emulator is Debian's qemu-user (scripts/ensure_system_packages.sh installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.model_file import INT8_SCHEMES, ModelMetadata
from converter import calibration, onnx_file
from tests.converter.conftest import PHOTOS, REPO, predict

EMULATED_CPU = "Haswell"  # AVX2, FMA, no AVX-512, no VNNI
INPUTS = 8

_RUN_IN_EMULATOR = """
import json, sys
import numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as features
from converter import runtime
from pathlib import Path
x = np.load(sys.argv[1])
out = {"cpu": {k: features[k] for k in ("AVX2", "AVX512F", "AVX512VNNI")}}
for i, path in enumerate(sys.argv[2:]):
    np.save(f"{sys.argv[1]}.{i}.npy", runtime.predict(runtime.session(Path(path), 1), x, 8))
print(json.dumps(out))
"""


def _emulated(inputs: np.ndarray, models: list[Path], tmp_path: Path) -> tuple[dict, list[np.ndarray]]:
    """Run ``models`` on ``inputs`` under the emulated AVX2-only CPU; its CPUID features and outputs."""
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 is missing: run scripts/ensure_system_packages.sh (Debian's qemu-user)"
    data = tmp_path / "inputs.npy"
    np.save(data, inputs)
    proc = subprocess.run(
        [qemu, "-cpu", EMULATED_CPU, sys.executable, "-c", _RUN_IN_EMULATOR, str(data), *map(str, models)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, [np.load(f"{data}.{i}.npy") for i in range(len(models))]


@pytest.fixture(scope="module")
def photo_inputs(lite0_model: Path) -> np.ndarray:
    meta = ModelMetadata.from_props(onnx_file.read_props(onnx_file.load(lite0_model)))
    return calibration.inputs(PHOTOS, INPUTS, meta.input_size, meta.resize, seed=7)


@pytest.fixture(scope="module")
def saturating_u8s8(lite0_model: Path, photo_inputs: np.ndarray, tmp_path_factory) -> Path:
    """The same model quantised u8s8 with full-range weights: right on VNNI CPUs only."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from converter.quantize import float_nodes

    out = tmp_path_factory.mktemp("u8s8") / "u8s8.onnx"
    quantize_static(
        str(lite0_model),
        str(out),
        calibration.Reader(photo_inputs, 8),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=float_nodes(onnx_file.load(lite0_model)),
    )
    return out


def test_the_served_int8_file_is_exact_without_vnni_and_u8s8_is_not(
    lite0_int8_model: Path, saturating_u8s8: Path, photo_inputs: np.ndarray, tmp_path: Path
):
    meta = ModelMetadata.from_props(onnx_file.read_props(onnx_file.load(lite0_int8_model)))
    assert meta.int8_scheme in INT8_SCHEMES and not INT8_SCHEMES[meta.int8_scheme].saturates_without_vnni

    report, (served, u8s8) = _emulated(photo_inputs, [lite0_int8_model, saturating_u8s8], tmp_path)
    # The emulated CPU is what the test claims, whatever CPU runs it.
    assert report["cpu"] == {"AVX2": True, "AVX512F": False, "AVX512VNNI": False}, report

    native_served, native_u8s8 = (
        predict(lite0_int8_model, photo_inputs),
        predict(saturating_u8s8, photo_inputs),
    )
    # The served scheme: the same integers on both paths, so the same probabilities.
    assert np.abs(served - native_served).max() <= 1e-5
    assert (served.argmax(1) == native_served.argmax(1)).all()
    # The check can see saturation: the u8s8 file answers differently without VNNI.
    # (Exact only where this machine has VNNI; on an AVX2-only host both sides saturate alike.)
    from common.cpu import this_cpu

    if this_cpu().vnni:
        assert np.abs(u8s8 - native_u8s8).max() > 0.01
    else:
        assert np.abs(u8s8 - native_u8s8).max() <= 1e-5
