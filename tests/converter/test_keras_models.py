"""The ``keras`` command on small real Keras models in each accepted format."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from common.model_file import ModelMetadata, ResizePolicy
from converter import images
from tests.converter.conftest import PHOTOS, ok, predict, run_cli

pytestmark = pytest.mark.slow


def _keras_probabilities(model_path, mode: str, batch: np.ndarray, softmax: bool) -> np.ndarray:
    import keras
    from keras.applications.imagenet_utils import preprocess_input

    model = keras.models.load_model(str(model_path), compile=False)
    out = np.asarray(model(preprocess_input(batch.astype(np.float32), mode=mode)))
    if softmax:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("mode", ["tf", "torch"])
def test_keras_file_with_logits_gets_softmax_and_labels(tiny_models, tmp_path, mode):
    out = tmp_path / "mine.onnx"
    run = ok(
        run_cli(
            "keras",
            tiny_models / "logits.keras",
            "--labels",
            tiny_models / "labels5.json",
            "--preprocess",
            mode,
            "--output",
            out,
            "--name",
            "mine",
            "--resize",
            "stretch",
        )
    )
    assert "softmax will be added" in run.stdout
    model = onnx.load(str(out))
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert (meta.name, meta.labels, meta.input_size) == (
        "mine",
        ["ant", "bee", "cat", "dog", "eel"],
        (32, 32),
    )
    assert meta.resize == ResizePolicy("stretch")
    assert f"preprocess {mode}" in meta.source
    assert any(n.op_type == "Softmax" for n in model.graph.node)

    batch = images.batch(images.load_photos(PHOTOS), (32, 32), meta.resize)
    got = predict(out, batch)
    expected = _keras_probabilities(tiny_models / "logits.keras", mode, batch, softmax=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_saved_model_folder(tiny_models, tmp_path):
    out = tmp_path / "sm.onnx"
    run = ok(
        run_cli(
            "keras",
            tiny_models / "saved_model",
            "--labels",
            tiny_models / "labels5.json",
            "--preprocess",
            "caffe",
            "--output",
            out,
        )
    )
    assert run.stdout_lines[-1] == f"MODEL_PATH={out}"
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert meta.name == "saved_model" and "TF SavedModel" in meta.source
    probs = predict(out, images.noise(2, (32, 32), seed=5))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_h5_with_free_input_size_takes_size_and_keeps_its_softmax(tiny_models, tmp_path):
    out = tmp_path / "h5.onnx"
    run = ok(
        run_cli(
            "keras",
            tiny_models / "any_size.h5",
            "--labels",
            tiny_models / "labels5.json",
            "--preprocess",
            "caffe",
            "--size",
            "40,48",
            "--out-dir",
            tmp_path,
        )
    )
    assert "ends in softmax" in run.stdout
    assert run.value("MODEL_PATH") == str(tmp_path / "any_size.onnx")
    model = onnx.load(str(tmp_path / "any_size.onnx"))
    assert not any(n.op_type == "Softmax" and n.name.startswith("postprocess") for n in model.graph.node)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 40, 48, 3]
    assert not out.exists()  # --out-dir named it after the file, not "h5.onnx"


def test_keras_int8(tiny_models, tmp_path):
    out = tmp_path / "q.onnx"
    run = ok(
        run_cli(
            "keras",
            tiny_models / "logits.keras",
            "--labels",
            tiny_models / "labels5.json",
            "--preprocess",
            "tf",
            "--output",
            out,
            "--int8",
            "--calibration-count",
            "64",
            "--agreement-count",
            "200",
            "--min-agreement",
            "0.5",
            "--decisive-margin",
            "0",
        )
    )  # a random 5-class model is never decisive
    int8 = tmp_path / "q-int8.onnx"
    assert run.value("INT8_MODEL_PATH") == str(int8)
    # ImageNet's labelled photos say nothing of a 5-class model: the run says so, and what it gated.
    assert re.search(
        r"accuracy: +labelled top-1 NOT MEASURED: the labelled folder is ImageNet-1k's; this model has "
        r"5 classes; gated instead: int8 top-1 = fp32 top-1 on \d+/200",
        run.stdout,
    ), run.stdout
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(int8)).metadata_props})
    assert meta.name == "logits-int8" and meta.labels == ["ant", "bee", "cat", "dog", "eel"]
