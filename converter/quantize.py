"""Static int8 quantisation of a converted model file, with accuracy, agreement and speed checks.

QDQ format, per-channel weights, MinMax calibration on real photos. Dynamic quantisation
was measured ~6x slower than fp32 on these CNNs, static ~2.9x faster, hence static only.
The in-graph normalisation (uint8 -> float) and the final softmax stay float: quantising
the normalisation would only re-quantise the uint8 pixels, and a quantised softmax would
round every probability to steps of 1/255.

The scheme (which integer types meet in each product) decides whether one file gives the
same answers on every x86 CPU: without VNNI, onnxruntime multiplies uint8 activations by
int8 weights with VPMADDUBSW, whose int16 pair sums saturate. ``SCHEMES`` says which
schemes are exact everywhere; the choice and its measurements are in converter/README.md.
"""

from __future__ import annotations

import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.model_file import INPUT_NAME, INT8_SCHEMES, ModelMetadata, model_version
from converter import bench, calibration, labelled, onnx_file, runtime
from converter.errors import ConverterError, ParityError
from converter.progress import Progress

INT8_SUFFIX = "-int8"
DEFAULT_SCHEME = "u8s8-mixed"
# Ops that start the network proper: everything between the uint8 input and these is preprocessing.
_CORE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
CALIBRATION_BATCH = 8
# MinMax calibration keeps every activation of every image it has seen until it reduces them
# (~100 MB per image for ResNet50): calibrate in chunks of at most this many batches, whose
# min/max ORT merges (CalibStridedMinMax). Not CalibMaxIntermediateOutputs: in onnxruntime
# 1.32 that option discards each full chunk instead of reducing it, so only the last partial
# chunk would calibrate the model.
MAX_CHUNK_BATCHES = 2
# Labelled ImageNet photos only mean something for a model with ImageNet-1k's classes.
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Gate:
    """What an int8 file must achieve to be written."""

    max_top1_drop: float  # points of labelled top-1 int8 may lose against fp32
    min_agreement: float  # int8 top-1 == fp32 top-1 on held-out inputs
    decisive_margin: float  # without labels: agreement is gated where fp32 leads by this much


@dataclass(frozen=True)
class Int8Report:
    """What quantisation produced and how it compares with fp32."""

    path: Path
    version: str
    size_mb: float
    scheme: str
    calibration_inputs: int
    calibration_from: str
    # Labelled accuracy on held-out photos; None when no labelled folder applies (then the
    # agreement figures below, on held-out inputs made from the calibration photos, are gated).
    accuracy: labelled.Accuracy | None
    unlabelled_reason: str
    agree: int  # top-1 agreement on the inputs where fp32 is decisive
    total: int
    agree_all: int  # top-1 agreement on every input, near-ties included
    total_all: int
    decisive_margin: float
    fp32_ips: float
    int8_ips: float
    batch_size: int
    threads: int

    @property
    def agreement(self) -> float:
        return self.agree / self.total if self.total else float("nan")


def int8_path_for(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + INT8_SUFFIX + fp32_path.suffix)


def _stem_and_depthwise_weights(model) -> tuple[str | None, list[str]]:
    """The first convolution's node name, and the weight names of the depthwise convolutions."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = [n.input[1] for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: set[str] = set()
    todo = deque([INPUT_NAME])
    while todo:  # breadth first from the input: the first Conv met is the stem
        for node in consumers.get(todo.popleft(), []):
            if node.op_type == "Conv":
                return node.name, depthwise
            if node.name not in seen:
                seen.add(node.name)
                todo.extend(node.output)
    return None, depthwise


def float_nodes(model) -> list[str]:
    """Names of the nodes to keep in float: preprocessing (input up to the first conv/matmul)
    and the softmax. Found by graph walk, not by name, so renaming by the optimiser is harmless."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: list[str] = []
    seen: set[int] = set()
    todo = deque([INPUT_NAME])
    while todo:
        for node in consumers.get(todo.popleft(), []):
            if node.op_type in _CORE_OPS or id(node) in seen:
                continue
            seen.add(id(node))
            keep.append(node.name)
            todo.extend(node.output)
    keep += [n.name for n in model.graph.node if n.op_type == "Softmax"]
    return keep


@dataclass(frozen=True)
class _Evaluation:
    """Held-out inputs, and their labels where there are labels."""

    inputs: np.ndarray
    truth: np.ndarray | None


def _calibration_and_evaluation(
    meta: ModelMetadata,
    photo_dir: Path,
    labelled_dir: Path | None,
    explicit_calibration: bool,
    calibration_count: int,
    agreement_count: int,
) -> tuple[np.ndarray, str, _Evaluation, str]:
    """(calibration inputs, where they came from, held-out evaluation, why unlabelled or "").

    With a labelled folder: calibrate on its calibration part (or on --calibration, when
    given, judging on the whole labelled folder) and judge on its held-out part; never
    both on one photo. Without one: calibrate and judge on different augmentations of
    the --calibration photos (different seeds), and say that top-1 was not measured.
    """
    size, policy = meta.input_size, meta.resize
    reason = ""
    if labelled_dir is None:
        reason = "no labelled folder (pass --labelled DIR or set IMAGENET_SAMPLE_DIR)"
    elif len(meta.labels) != IMAGENET_CLASSES:
        reason = f"the labelled folder is ImageNet-1k's; this model has {len(meta.labels)} classes"
        labelled_dir = None
    augmented = calibration.inputs(photo_dir, calibration_count, size, policy, calibration.CALIBRATION_SEED)
    if labelled_dir is None:
        held = calibration.inputs(photo_dir, agreement_count, size, policy, calibration.AGREEMENT_SEED)
        return augmented, f"{calibration_count} crops/flips of {photo_dir}", _Evaluation(held, None), reason
    photos = labelled.load(labelled_dir, len(meta.labels))
    if explicit_calibration:
        held = photos
        calib, source = augmented, f"{calibration_count} crops/flips of {photo_dir}"
    else:
        parts = labelled.split(photos)
        held = parts.held_out
        rows = labelled.model_inputs(parts.calibration, size, policy)
        calib = np.concatenate([rows, rows[:, :, ::-1]])  # and their mirror images
        source = f"{len(parts.calibration)} labelled photos of {labelled_dir} and their mirror images"
    evaluation = _Evaluation(labelled.model_inputs(held, size, policy), labelled.labels(held))
    return np.ascontiguousarray(calib), source, evaluation, reason


def quantize_file(
    fp32_path: Path,
    int8_path: Path,
    *,
    photo_dir: Path,
    labelled_dir: Path | None,
    explicit_calibration: bool,
    calibration_count: int,
    agreement_count: int,
    scheme: str,
    gate: Gate,
    threads: int,
    progress: Progress,
) -> Int8Report:
    """Write ``int8_path``, a statically quantised copy of ``fp32_path`` (a converter model file).

    Fails (ParityError, no file written) when, on held-out labelled photos, int8 top-1 is
    more than ``gate.max_top1_drop`` points below fp32's or their top-1 agreement is below
    ``gate.min_agreement``. Without labelled photos the agreement is gated on the held-out
    inputs where fp32 is decisive (its top-1 leads the runner-up by ``gate.decisive_margin``):
    where fp32 itself is split any rounding flips the top-1, which says nothing of int8.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scheme not in INT8_SCHEMES:
        raise ConverterError(f"unknown int8 scheme {scheme!r}; choose from {', '.join(INT8_SCHEMES)}")
    recipe = INT8_SCHEMES[scheme]
    fp32 = onnx_file.load(fp32_path)
    try:
        meta = ModelMetadata.from_props(onnx_file.read_props(fp32))
    except ValueError as exc:
        raise ConverterError(f"{fp32_path} is not a converter model file: {exc}") from None
    if [i.name for i in fp32.graph.input][:1] != [INPUT_NAME]:
        raise ConverterError(f"{fp32_path} has no '{INPUT_NAME}' input: not a converter model file")

    progress.stage("calibration", "decoding calibration and held-out photos with the worker's decoder")
    calib, calib_source, evaluation, unlabelled_reason = _calibration_and_evaluation(
        meta, photo_dir, labelled_dir, explicit_calibration, calibration_count, agreement_count
    )
    progress.stage("calibration", f"{len(calib)} inputs: {calib_source}")

    with tempfile.TemporaryDirectory(prefix="converter-int8-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        raw_int8 = Path(tmp) / "int8.onnx"
        progress.stage("quantising", "quant_pre_process (shape inference, graph optimisation)")
        quant_pre_process(str(fp32_path), str(prepped))
        graph = onnx_file.load(prepped)
        keep_float = float_nodes(graph)
        stem, depthwise_weights = _stem_and_depthwise_weights(graph)
        if recipe.float_stem and stem:
            keep_float.append(stem)
        overrides = {}
        if recipe.reduce_range and recipe.depthwise_full_range:
            overrides = {name: [{"axis": 0, "reduce_range": False}] for name in depthwise_weights}
        reader = calibration.Reader(calib, CALIBRATION_BATCH)
        progress.stage(
            "quantising",
            f"quantize_static QDQ {recipe.describe()}, MinMax on {len(calib)} inputs; "
            f"kept float: {len(keep_float)} nodes (normalisation, softmax"
            f"{', first conv' if recipe.float_stem and stem else ''})",
        )
        options: dict[str, object] = {
            "CalibStridedMinMax": calibration.stride(len(reader), MAX_CHUNK_BATCHES)
        }
        if overrides:
            options["TensorQuantOverrides"] = overrides
        quantize_static(
            str(prepped),
            str(raw_int8),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options=options,
        )
        int8 = onnx_file.load(raw_int8)

    int8_meta = ModelMetadata(
        name=meta.name + INT8_SUFFIX,
        labels=meta.labels,
        input_size=meta.input_size,
        resize=meta.resize,
        source=f"{meta.source}; int8 from {fp32_path.name} version {model_version(fp32_path)}",
        converter=f"{meta.converter} / onnxruntime.quantization {ort_version}",
        created=onnx_file.utc_now(),
        int8_scheme=scheme,
    )
    onnx_file.set_metadata(
        int8,
        int8_meta,
        extra={
            "quantization": (
                f"static QDQ, {recipe.describe()}, MinMax calibration on {len(calib)} inputs ({calib_source})"
            ),
        },
    )

    with onnx_file.staged(int8_path) as staged:
        onnx_file.save(int8, staged)
        s32 = runtime.session(fp32_path, threads)
        s8 = runtime.session(staged, threads)
        progress.stage("accuracy", f"fp32 and int8 on {len(evaluation.inputs)} held-out inputs")
        p32 = runtime.predict(s32, evaluation.inputs)
        p8 = runtime.predict(s8, evaluation.inputs)
        same = p32.argmax(1) == p8.argmax(1)
        top2 = np.sort(p32, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= gate.decisive_margin
        agree, total = int(same[decisive].sum()), int(decisive.sum())
        accuracy = None
        if evaluation.truth is not None:
            accuracy = labelled.accuracy(p32, p8, evaluation.truth)
            progress.stage("accuracy", accuracy.line())
            _gate_labelled(accuracy, gate)
        else:
            progress.stage("accuracy", f"labelled top-1 NOT MEASURED: {unlabelled_reason}")
            progress.stage(
                "accuracy",
                f"agreement {agree}/{total} where fp32 leads by >= {gate.decisive_margin:g}; "
                f"{int(same.sum())}/{len(same)} overall",
            )
            _gate_unlabelled(agree, total, len(same), int(same.sum()), gate)
        progress.stage("benchmark", f"fp32 vs int8, batch {CALIBRATION_BATCH}, {threads} threads")
        fp32_ips, int8_ips = bench.images_per_second([s32, s8], evaluation.inputs, CALIBRATION_BATCH)
    return Int8Report(
        path=int8_path,
        version=model_version(int8_path),
        size_mb=int8_path.stat().st_size / 1e6,
        scheme=scheme,
        calibration_inputs=len(calib),
        calibration_from=calib_source,
        accuracy=accuracy,
        unlabelled_reason=unlabelled_reason,
        agree=agree,
        total=total,
        agree_all=int(same.sum()),
        total_all=len(same),
        decisive_margin=gate.decisive_margin,
        fp32_ips=fp32_ips,
        int8_ips=int8_ips,
        batch_size=CALIBRATION_BATCH,
        threads=threads,
    )


def _gate_labelled(accuracy: labelled.Accuracy, gate: Gate) -> None:
    if accuracy.drop_points > gate.max_top1_drop:
        raise ParityError(
            f"int8 top-1 {accuracy.int8_top1:.4f} is {accuracy.drop_points:.2f} points below fp32's "
            f"{accuracy.fp32_top1:.4f} on {accuracy.photos} held-out labelled photos, over "
            f"--max-top1-drop {gate.max_top1_drop:g}"
        )
    if accuracy.agreement < gate.min_agreement:
        raise ParityError(
            f"int8 top-1 agreement with fp32 is {accuracy.agreement:.4f} ({accuracy.agree}/"
            f"{accuracy.photos} held-out labelled photos), below --min-agreement {gate.min_agreement}"
        )


def _gate_unlabelled(agree: int, total: int, n: int, agree_all: int, gate: Gate) -> None:
    if total == 0:
        raise ParityError(
            f"int8 check: fp32 is decisive (margin >= {gate.decisive_margin:g}) on none of "
            f"{n} inputs; use other --calibration photos or a lower --decisive-margin"
        )
    if agree / total < gate.min_agreement:
        raise ParityError(
            f"int8 top-1 agreement with fp32 is {agree / total:.4f} ({agree}/{total} inputs where "
            f"fp32 leads by >= {gate.decisive_margin:g}; {agree_all}/{n} overall), "
            f"below --min-agreement {gate.min_agreement}"
        )
