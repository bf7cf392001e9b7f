"""Keras ResNet50 through tf2onnx (random weights: no internet here), converted once."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from common.model_file import INPUT_NAME, ModelMetadata, ResizePolicy
from converter import images
from tests.converter.conftest import PHOTOS, predict, run_cli

pytestmark = pytest.mark.slow


def test_resnet50_random_converts_with_parity(resnet50_random):
    out = resnet50_random.run.stdout
    assert "tf2onnx" in out
    parity = re.search(
        r"parity: +max\|diff\| ([0-9.e+-]+) on (\d+) photo inputs, ([0-9.e+-]+) on (\d+) noise", out
    )
    assert parity, out
    assert float(parity.group(1)) <= 1e-4 and float(parity.group(3)) <= 1e-4
    assert int(parity.group(2)) >= 3 and int(parity.group(4)) >= 1
    assert re.search(r"top-1 identical (\d+)/\1", out)
    assert resnet50_random.run.stdout_lines[-1] == f"MODEL_PATH={resnet50_random.path}"

    model = onnx.load(str(resnet50_random.path))
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.name == "resnet50-random"  # never to be mistaken for the real ResNet50
    assert "random weights (seed 0)" in meta.source and "tf2onnx 1.17.0" in meta.converter
    assert meta.input_size == (224, 224) and len(meta.labels) == 1000
    assert model.graph.input[0].name == INPUT_NAME


def test_resnet50_matches_keras_with_its_own_preprocessing(resnet50_random):
    """Independent of the converter's parity code: Keras' preprocess_input + model vs the file."""
    import keras
    from keras.applications.resnet50 import preprocess_input

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    photos = images.load_photos(PHOTOS)
    batch = images.batch(photos, (224, 224), ResizePolicy("center_crop", 0.875))
    expected = model.predict(preprocess_input(batch.astype(np.float32)), verbose=0)
    got = predict(resnet50_random.path, batch)
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_imagenet_weights_without_internet_fail_in_one_line(tmp_path):
    out = tmp_path / "out"
    run = run_cli("resnet50", "--out-dir", out, env={"KERAS_HOME": str(tmp_path / "keras")})
    assert run.returncode != 0
    assert len(run.error_lines) == 1, run.stderr
    assert "ImageNet weights" in run.error_lines[0] and "--weights" in run.error_lines[0]
    assert "Traceback" not in run.stderr
    assert not out.exists() or not any(out.iterdir())


def test_auto_falls_back_loudly_to_lite0(tmp_path):
    out = tmp_path / "models"
    run = run_cli("auto", "--out-dir", out, env={"KERAS_HOME": str(tmp_path / "keras")})
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warning) >= 5
    assert any("FALLING BACK to efficientnet-lite0" in line for line in warning)
    assert any("ImageNet weights" in line for line in warning)
    assert run.stdout_lines[-1] == f"MODEL_PATH={out / 'efficientnet-lite0.onnx'}"
    assert (out / "efficientnet-lite0.onnx").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["efficientnet-lite0.onnx"]  # no temp files left
