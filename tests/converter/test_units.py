"""Fast checks of the converter's parts, on real (tiny) graphs and real arrays."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from common.model_file import OUTPUT_NAME, ModelMetadata, ResizePolicy
from converter import images, onnx_file, parity, preprocess, quantize
from converter.errors import ConverterError, ParityError
from converter.labels import IMAGENET_LABELS_PATH, imagenet_labels, read_labels_file
from tests.converter.conftest import PHOTOS, REPO


def _identity_core(channels_first: bool, h: int = 8, w: int = 8, classes: int = 4):
    """A tiny float graph: mean over the image, then a fixed linear map to ``classes`` logits."""
    shape = ["n", 3, h, w] if channels_first else ["n", h, w, 3]
    axes = [2, 3] if channels_first else [1, 2]
    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "core",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", classes])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def _wrapped_session(tmp_path, norm, channels_first, softmax=True):
    core, weights = _identity_core(channels_first)
    model = onnx_file.wrap(
        core, input_size=(8, 8), normalisation=norm, channels_first=channels_first, add_softmax=softmax
    )
    onnx_file.check(model)
    path = tmp_path / "m.onnx"
    onnx_file.save(model, path)
    from converter import runtime

    return runtime.session(path, 1), weights


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
@pytest.mark.parametrize("channels_first", [False, True])
def test_in_graph_normalisation_matches_keras_preprocess_input(tmp_path, mode, channels_first):
    from keras.applications.imagenet_utils import preprocess_input

    sess, weights = _wrapped_session(tmp_path, preprocess.KERAS_MODES[mode], channels_first)
    x = images.noise(3, (8, 8), seed=3)
    keras_x = preprocess_input(x.astype(np.float32), mode=mode)
    logits = keras_x.mean(axis=(1, 2)) @ weights
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = sess.run([OUTPUT_NAME], {"image": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preprocess.KERAS_MODES[mode].apply(x), keras_x, rtol=1e-5, atol=1e-4)


def test_efficientnet_lite_normalisation_is_127_128():
    x = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(preprocess.EFFICIENTNET_LITE.apply(x)[0, 0, 0], [-127 / 128, 0, 1.0])


def test_parity_failure_is_reported_with_figures(tmp_path):
    sess_path = tmp_path / "m.onnx"
    core, _weights = _identity_core(False)
    model = onnx_file.wrap(
        core, input_size=(8, 8), normalisation=preprocess.TF, channels_first=False, add_softmax=True
    )
    onnx_file.save(model, sess_path)
    from converter import runtime

    photos = images.load_photos(PHOTOS)
    right = lambda x: runtime.predict(runtime.session(sess_path, 1), x)  # noqa: E731
    report = parity.check_fp32(sess_path, right, photos, (8, 8), ResizePolicy("stretch"), 1)
    assert report.max_diff_photos == 0.0 and report.top1_same == report.top1_total == 10

    wrong = lambda x: right(x)[:, ::-1]  # noqa: E731  (a source that disagrees: reversed classes)
    with pytest.raises(ParityError, match=r"parity check failed: max\|diff\| [0-9.e+-]+ on 6 photo inputs"):
        parity.check_fp32(sess_path, wrong, photos, (8, 8), ResizePolicy("stretch"), 1)


def test_staged_save_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path):
    final = tmp_path / "model.onnx"
    final.write_bytes(b"old")
    with pytest.raises(ParityError), onnx_file.staged(final) as tmp:  # noqa: PT012 - the block is the subject
        tmp.write_bytes(b"half-written")
        raise ParityError("check failed")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

    with onnx_file.staged(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert final.stat().st_mode & 0o044 == 0o044  # readable by others


def test_metadata_written_round_trips(tmp_path):
    core, _ = _identity_core(False)
    model = onnx_file.wrap(
        core, input_size=(8, 8), normalisation=preprocess.CAFFE, channels_first=False, add_softmax=False
    )
    meta = ModelMetadata(
        "m",
        ["a", "b", "c", "d"],
        (8, 8),
        ResizePolicy("center_crop", 0.875),
        "src",
        "converter 0.1.0 / test",
        onnx_file.utc_now(),
    )
    onnx_file.set_metadata(model, meta, extra={"quantization": "none"})
    onnx_file.save(model, tmp_path / "m.onnx")
    props = onnx_file.read_props(onnx.load(str(tmp_path / "m.onnx")))
    assert ModelMetadata.from_props(props) == meta and props["quantization"] == "none"


def test_float_nodes_are_preprocessing_and_softmax():
    core, _ = _identity_core(True)
    model = onnx_file.wrap(
        core, input_size=(8, 8), normalisation=preprocess.CAFFE, channels_first=True, add_softmax=True
    )
    keep = quantize.float_nodes(model)
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert {by_name[k] for k in keep} == {
        "Cast",
        "Gather",
        "Sub",
        "Transpose",
        "Identity",
        "ReduceMean",
        "Softmax",
    }
    assert not any(by_name[k] == "MatMul" for k in keep)


def test_imagenet_labels_are_short_unique_names():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert (labels[0], labels[281], labels[282], labels[285], labels[967]) == (
        "tench",
        "tabby",
        "tiger cat",
        "Egyptian cat",
        "espresso",
    )
    assert max(map(len, labels)) <= 40 and all("," not in x for x in labels)
    assert json.loads(IMAGENET_LABELS_PATH.read_text()) == list(labels)


def test_labels_files(tmp_path):
    (tmp_path / "a.json").write_text('["x", "y"]')
    (tmp_path / "b.txt").write_text("x\n\ny\n")
    (tmp_path / "c.json").write_text('["x", 1]')
    assert read_labels_file(tmp_path / "a.json") == read_labels_file(tmp_path / "b.txt") == ["x", "y"]
    with pytest.raises(ConverterError, match="JSON list of strings"):
        read_labels_file(tmp_path / "c.json")
    assert len(read_labels_file(type(tmp_path)("imagenet"))) == 1000


def test_center_crop_resize_and_augmentation_are_deterministic():
    photos = images.load_photos(PHOTOS)
    assert len(photos) >= 3
    crop = images.resize(photos[0], (224, 224), ResizePolicy("center_crop", 0.875))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    a = images.augmented(photos, 20, (64, 64), ResizePolicy("stretch"), seed=1)
    b = images.augmented(photos, 20, (64, 64), ResizePolicy("stretch"), seed=1)
    c = images.augmented(photos, 20, (64, 64), ResizePolicy("stretch"), seed=2)
    assert a.shape == (20, 64, 64, 3) and (a == b).all() and not (a[3:] == c[3:]).all()


def test_help_and_quantize_path_do_not_import_frameworks():
    code = (
        "import sys\n"
        "from converter.cli import build_parser, main\n"
        "build_parser()\n"
        "rc = main(['quantize', 'no-such.onnx'])\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1 []", out
