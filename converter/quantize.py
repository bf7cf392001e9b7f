"""Static int8 quantisation of a converted model file, with agreement and speed checks.

QDQ format, activations QUInt8, weights QInt8 per channel, MinMax calibration on real
photos. Dynamic quantisation was measured ~6x slower than fp32 on these CNNs, static
~2.9x faster, hence static only. The in-graph normalisation (uint8 -> float) and the final
softmax stay float: quantising the normalisation would only re-quantise the uint8 pixels,
and a quantised softmax would round every probability to steps of 1/255.
"""

from __future__ import annotations

import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.model_file import INPUT_NAME, ModelMetadata, model_version
from converter import bench, calibration, onnx_file, runtime
from converter.errors import ConverterError, ParityError
from converter.progress import Progress

INT8_SUFFIX = "-int8"
# Ops that start the network proper: everything between the uint8 input and these is preprocessing.
_CORE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
CALIBRATION_BATCH = 8
# MinMax calibration keeps every activation of every image it has seen until it reduces them
# (~100 MB per image for ResNet50): calibrate in chunks of at most this many batches, whose
# min/max ORT merges (CalibStridedMinMax). Not CalibMaxIntermediateOutputs: in onnxruntime
# 1.32 that option discards each full chunk instead of reducing it, so only the last partial
# chunk would calibrate the model.
MAX_CHUNK_BATCHES = 2


@dataclass(frozen=True)
class Int8Report:
    """What quantisation produced and how it compares with fp32."""

    path: Path
    version: str
    size_mb: float
    calibration_inputs: int
    agree: int  # top-1 agreement on the inputs where fp32 is decisive (the gated figure)
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
        return self.agree / self.total


def int8_path_for(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + INT8_SUFFIX + fp32_path.suffix)


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


def quantize_file(
    fp32_path: Path,
    int8_path: Path,
    *,
    photo_dir: Path,
    calibration_count: int,
    agreement_count: int,
    min_agreement: float,
    decisive_margin: float,
    threads: int,
    reduce_range: bool,
    progress: Progress,
) -> Int8Report:
    """Write ``int8_path``, a statically quantised copy of ``fp32_path`` (a converter model file).

    Fails (ParityError, no file written) when top-1 agreement with fp32 is below
    ``min_agreement`` on those of ``agreement_count`` photo-based inputs where fp32 is
    decisive (its top-1 probability leads the runner-up by >= ``decisive_margin``). Where
    fp32 itself is split (e.g. "tabby" 0.38 vs "tiger cat" 0.36) any rounding flips the
    top-1; that says nothing about the int8 model, so those inputs are reported, not gated.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = onnx_file.load(fp32_path)
    try:
        meta = ModelMetadata.from_props(onnx_file.read_props(fp32))
    except ValueError as exc:
        raise ConverterError(f"{fp32_path} is not a converter model file: {exc}") from None
    if [i.name for i in fp32.graph.input][:1] != [INPUT_NAME]:
        raise ConverterError(f"{fp32_path} has no '{INPUT_NAME}' input: not a converter model file")

    progress.stage("calibration", f"{calibration_count} inputs from photos in {photo_dir}")
    calib = calibration.inputs(
        photo_dir, calibration_count, meta.input_size, meta.resize, calibration.CALIBRATION_SEED
    )
    check_inputs = calibration.inputs(
        photo_dir, agreement_count, meta.input_size, meta.resize, calibration.AGREEMENT_SEED
    )

    with tempfile.TemporaryDirectory(prefix="converter-int8-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        raw_int8 = Path(tmp) / "int8.onnx"
        progress.stage("quantising", "quant_pre_process (shape inference, graph optimisation)")
        quant_pre_process(str(fp32_path), str(prepped))
        keep_float = float_nodes(onnx_file.load(prepped))
        reader = calibration.Reader(calib, CALIBRATION_BATCH)
        progress.stage(
            "quantising",
            f"quantize_static QDQ u8/s8 per-channel, MinMax on {len(calib)} inputs; "
            f"kept float: {len(keep_float)} nodes (normalisation, softmax)",
        )
        quantize_static(
            str(prepped),
            str(raw_int8),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options={"CalibStridedMinMax": calibration.stride(len(reader), MAX_CHUNK_BATCHES)},
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
    )
    onnx_file.set_metadata(
        int8,
        int8_meta,
        extra={
            "quantization": (
                "static QDQ, activations QUInt8, weights QInt8 per-channel"
                f"{', reduce_range' if reduce_range else ''}, "
                f"MinMax calibration on {len(calib)} photo-based inputs"
            ),
        },
    )

    with onnx_file.staged(int8_path) as staged:
        onnx_file.save(int8, staged)
        progress.stage("agreement", f"int8 vs fp32 top-1 on {len(check_inputs)} photo-based inputs")
        s32 = runtime.session(fp32_path, threads)
        s8 = runtime.session(staged, threads)
        p32 = runtime.predict(s32, check_inputs)
        p8 = runtime.predict(s8, check_inputs)
        same = p32.argmax(1) == p8.argmax(1)
        top2 = np.sort(p32, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= decisive_margin
        agree, total = int(same[decisive].sum()), int(decisive.sum())
        progress.stage(
            "agreement",
            f"{agree}/{total} where fp32 leads by >= {decisive_margin:g}; "
            f"{int(same.sum())}/{len(same)} overall",
        )
        if total == 0:
            raise ParityError(
                f"int8 check: fp32 is decisive (margin >= {decisive_margin:g}) on none of "
                f"{len(same)} inputs; use other --calibration photos or a lower --decisive-margin"
            )
        if agree / total < min_agreement:
            raise ParityError(
                f"int8 top-1 agreement with fp32 is {agree / total:.4f} ({agree}/{total} inputs where "
                f"fp32 leads by >= {decisive_margin:g}; {int(same.sum())}/{len(same)} overall), "
                f"below --min-agreement {min_agreement}"
            )
        progress.stage("benchmark", f"fp32 vs int8, batch {CALIBRATION_BATCH}, {threads} threads")
        fp32_ips, int8_ips = bench.images_per_second([s32, s8], check_inputs, CALIBRATION_BATCH)
    return Int8Report(
        path=int8_path,
        version=model_version(int8_path),
        size_mb=int8_path.stat().st_size / 1e6,
        calibration_inputs=len(calib),
        agree=agree,
        total=total,
        agree_all=int(same.sum()),
        total_all=len(same),
        decisive_margin=decisive_margin,
        fp32_ips=fp32_ips,
        int8_ips=int8_ips,
        batch_size=CALIBRATION_BATCH,
        threads=threads,
    )
