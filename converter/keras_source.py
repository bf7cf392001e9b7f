"""Keras models (keras.applications ResNet50, or the user's own) exported with tf2onnx."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from common.model_file import ResizePolicy
from converter.errors import ConverterError, WeightsUnavailable
from converter.labels import check_label_count, imagenet_labels, read_labels_file
from converter.preprocess import CAFFE, KERAS_MODES
from converter.progress import Progress
from converter.source import IMAGENET_RESIZE, Exported

OPSET = 17
RESNET50 = "resnet50"
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
# Where and what keras.applications.ResNet50(weights="imagenet") downloads (keras/src/applications/resnet.py).
RESNET50_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_WEIGHTS_FILE
)
RESNET50_WEIGHTS_MD5 = "2cb95161c43110f7111970584f804107"
DOWNLOAD_TIMEOUT_S = 30
PREDICT_BATCH = 16


def _tf(threads: int):
    """Import TensorFlow quietly, with its thread pools sized like onnxruntime's."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's reordered float maths is what parity would then measure, and its start-up
    # notice would be the first thing on stderr; the reference run is short, plain Eigen is fine.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (tests); keep its setting
        pass
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _tool() -> str:
    import tensorflow as tf
    import tf2onnx

    return f"tf2onnx {tf2onnx.__version__} (TensorFlow {tf.__version__})"


def _to_onnx(fn, input_size: tuple[int, int], progress: Progress, what: str):
    """tf2onnx on a tf.function taking float32 NHWC [batch, H, W, 3] (already normalised)."""
    import tensorflow as tf
    import tf2onnx

    h, w = input_size
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="x"),)
    traced = tf.function(fn, input_signature=spec)
    progress.stage("tf2onnx", f"converting {what} (opset {OPSET}; the slow, memory-hungry step)")
    try:
        core, _ = tf2onnx.convert.from_function(traced, input_signature=spec, opset=OPSET)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the user gets one line
        raise ConverterError(f"tf2onnx could not convert {what}: {_short(exc)}") from None
    return core


def _looks_like_probabilities(out: np.ndarray) -> bool:
    """True when rows are already a softmax (non-negative, sum to 1): then no softmax is added."""
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _image_shape(shape, where: str, size: tuple[int, int] | None) -> tuple[int, int]:
    """Check a [batch, H, W, 3] input and settle H, W (the model's, or ``--size`` where free)."""
    dims = tuple(shape)
    if len(dims) != 4 or dims[-1] != 3:
        raise ConverterError(
            f"{where}: model input is not an image tensor: shape {dims}, "
            "expected [batch, H, W, 3] (RGB, channels last)"
        )
    h, w = dims[1], dims[2]
    if h is None or w is None:
        if size is None:
            raise ConverterError(f"{where}: model input size is not fixed {dims}: give --size H,W")
        return size
    if size is not None and size != (h, w):
        raise ConverterError(f"{where}: --size {size[0]},{size[1]} does not match the model's input {h},{w}")
    return int(h), int(w)


def _classes(shape, where: str) -> int:
    dims = tuple(shape)
    if len(dims) != 2 or dims[1] is None:
        raise ConverterError(f"{where}: model output must be [batch, classes], got shape {dims}")
    return int(dims[1])


# ---------------------------------------------------------------------------- ResNet50


def resnet50_imagenet_weights(progress: Progress) -> Path:
    """The Keras ImageNet weights file for ResNet50: from the Keras cache, else downloaded into it.

    Done without TensorFlow (plain urllib with a timeout; Keras' own download has none), so
    an offline machine gets its one-line error, or ``auto`` its fallback, in a second.
    """
    import hashlib
    import tempfile
    import urllib.request

    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models" / RESNET50_WEIGHTS_FILE

    def md5(path: Path) -> str:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    if cache.is_file() and md5(cache) == RESNET50_WEIGHTS_MD5:
        return cache
    progress.stage("downloading", RESNET50_WEIGHTS_URL)
    tmp_name = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(RESNET50_WEIGHTS_URL, timeout=DOWNLOAD_TIMEOUT_S) as r,
        ):
            while chunk := r.read(1 << 20):
                out.write(chunk)
        if md5(Path(tmp_name)) != RESNET50_WEIGHTS_MD5:
            raise OSError("downloaded file has the wrong MD5")
        os.replace(tmp_name, cache)
        return cache
    except OSError as exc:  # URLError, timeouts and disk errors are all OSErrors
        raise WeightsUnavailable(
            f"cannot download the Keras ImageNet weights for resnet50 ({_short(exc)}) and they are not in "
            f"the Keras cache ({cache}); no internet? use --weights FILE.h5 or --weights random, "
            "or `python -m converter auto` to fall back to efficientnet-lite0"
        ) from None
    finally:
        if tmp_name and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def export_resnet50(weights: str, seed: int, progress: Progress, threads: int) -> Exported:
    """Keras ResNet50: 'imagenet' weights, 'random' weights (fixed seed) or a local file."""
    if weights not in ("imagenet", "random"):
        path = Path(weights)
        if not path.exists():
            raise ConverterError(f"no such weights file: {path}")
        if not path.is_file():
            raise ConverterError(f"weights path is not a file: {path}")
    weights_file = resnet50_imagenet_weights(progress) if weights == "imagenet" else None
    _tf(threads)
    import keras

    progress.stage("loading", f"keras.applications.ResNet50, weights={weights} (keras {keras.__version__})")
    if weights_file is not None:
        model = keras.applications.ResNet50(weights=str(weights_file))
        name, source = RESNET50, f"keras.applications.ResNet50, ImageNet weights ({RESNET50_WEIGHTS_FILE})"
    elif weights == "random":
        keras.utils.set_random_seed(seed)
        model = keras.applications.ResNet50(weights=None)
        # A distinct name, so a random-weights file is never mistaken for the real model.
        name, source = f"{RESNET50}-random", f"keras.applications.ResNet50, random weights (seed {seed})"
    else:
        model = keras.applications.ResNet50(weights=None)
        try:
            model.load_weights(weights)
        except Exception as exc:  # noqa: BLE001 - Keras/h5py raise many types for a bad file
            raise ConverterError(f"cannot load ResNet50 weights from {weights}: {_short(exc)}") from None
        name, source = RESNET50, f"keras.applications.ResNet50, weights from {Path(weights).name}"

    from keras.applications.resnet50 import preprocess_input

    core = _to_onnx(lambda x: model(x, training=False), (224, 224), progress, "ResNet50")

    def reference(images: np.ndarray) -> np.ndarray:
        # Keras' own preprocess_input, not ours: parity then also checks the in-graph normalisation.
        x = preprocess_input(images.astype(np.float32))
        return np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0))

    return Exported(
        name=name,
        core=core,
        input_size=(224, 224),
        channels_first=False,
        normalisation=CAFFE,
        add_softmax=False,  # keras.applications.ResNet50 ends with a softmax layer
        labels=list(imagenet_labels()),
        resize=IMAGENET_RESIZE,
        source=source,
        tool=_tool(),
        reference=reference,
    )


# ---------------------------------------------------------------------------- user models


def _load_saved_model(tf, path: Path):
    """A TF SavedModel's serving signature as (call(x) -> array, input shape, output shape)."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises many types for a folder that is not one
        raise ConverterError(f"cannot load {path} as a SavedModel: {_short(exc)}") from None
    sigs = getattr(loaded, "signatures", {})
    key = "serving_default" if "serving_default" in sigs else next(iter(sigs), None)
    if key is None:
        raise ConverterError(f"{path}: the SavedModel has no serving signature")
    fn = sigs[key]
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConverterError(
            f"{path}: expected one input and one output in signature {key!r}, "
            f"got {len(inputs)} and {len(outputs)}"
        )
    (in_name, in_spec), (out_name, out_spec) = next(iter(inputs.items())), next(iter(outputs.items()))

    def call(x):
        return fn(**{in_name: x})[out_name]

    return loaded, call, in_spec.shape.as_list(), out_spec.shape.as_list()


def _load_keras_file(keras, path: Path):
    import zipfile

    import h5py

    # Keras reports a non-zip .keras file as "File not found"; say what is really wrong.
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ConverterError(f"{path} is not a Keras model (a .keras file is a zip archive; this is not one)")
    if path.suffix in (".h5", ".hdf5") and not h5py.is_hdf5(path):
        raise ConverterError(f"{path} is not a Keras model (not an HDF5 file)")
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a file that is not a model
        raise ConverterError(f"cannot load {path} as a Keras model: {_short(exc)}") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConverterError(
            f"{path}: expected a model with one input and one output, "
            f"got {len(model.inputs)} and {len(model.outputs)}"
        )
    return model, list(model.inputs[0].shape), list(model.outputs[0].shape)


def export_keras(
    path: Path,
    *,
    labels: Path,
    mode: str,
    size: tuple[int, int] | None,
    name: str | None,
    resize: str,
    progress: Progress,
    threads: int,
) -> Exported:
    """A user's Keras model (.keras, .h5, or a SavedModel folder) with its preprocess mode."""
    if not path.exists():
        raise ConverterError(f"no such file or folder: {path}")
    try:
        policy = ResizePolicy.parse(resize)
    except ValueError as exc:
        raise ConverterError(f"--resize: {exc}") from None
    label_list = read_labels_file(labels)  # cheap checks first: before TF is even imported
    norm = KERAS_MODES[mode]

    tf = _tf(threads)
    import keras

    progress.stage("loading", f"{path} (keras {keras.__version__})")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ConverterError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
        holder, call, in_shape, out_shape = _load_saved_model(tf, path)
        kind = "TF SavedModel"
    else:
        holder, in_shape, out_shape = _load_keras_file(keras, path)
        call = holder  # a Keras model is callable
        kind = "Keras model"
    input_size = _image_shape(in_shape, str(path), size)
    classes = _classes(out_shape, str(path))
    check_label_count(label_list, classes, f"labels file {labels}")

    def raw(x: np.ndarray) -> np.ndarray:
        outs = [
            np.asarray(call(tf.constant(x[i : i + PREDICT_BATCH]))) for i in range(0, len(x), PREDICT_BATCH)
        ]
        return np.concatenate(outs)

    from keras.applications.imagenet_utils import preprocess_input

    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, size=(2, *input_size, 3)).astype(np.float32)
    add_softmax = not _looks_like_probabilities(raw(preprocess_input(probe.copy(), mode=mode)))
    progress.stage(
        "loading",
        f"{kind}: input {input_size}, {classes} classes, "
        + ("logits: softmax will be added" if add_softmax else "ends in softmax"),
    )

    core = _to_onnx(lambda x: call(x), input_size, progress, kind)

    def reference(images: np.ndarray) -> np.ndarray:
        # keras.applications' preprocess_input for the mode, independent of our in-graph version.
        out = raw(preprocess_input(images.astype(np.float32), mode=mode))
        return _softmax(out) if add_softmax else out

    reference.holder = holder  # keeps a SavedModel's variables alive as long as the reference
    return Exported(
        name=name or (path.stem if path.is_file() else path.name),
        core=core,
        input_size=input_size,
        channels_first=False,
        normalisation=norm,
        add_softmax=add_softmax,
        labels=label_list,
        resize=policy,
        source=f"{kind} {path.name} (preprocess {mode})",
        tool=_tool(),
        reference=reference,
    )
