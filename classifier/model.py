"""The onnxruntime session and everything the model file says about itself.

The worker knows nothing model-specific: labels, input size and resize policy
come from the file's metadata_props, normalisation is inside the graph, and the
version (cache namespace) is derived from the file bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.contract import ModelInfo, Prediction
from common.cpu import CpuInt8
from common.model_file import INPUT_NAME, INT8_SCHEMES, OUTPUT_NAME, ModelMetadata, model_version

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow docs/DESIGN.md's contract."""


class Model:
    """One loaded ONNX model: ``predict`` maps uint8 [N, H, W, 3] RGB to probabilities [N, C].

    ``predict`` may be called from one thread at a time (the worker has one
    inference thread); onnxruntime parallelises inside a run with
    ``intra_op_num_threads``.
    """

    def __init__(self, path: Path, *, threads: int) -> None:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        self.path = path
        self.version = model_version(path)
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One graph, one run at a time: parallelism comes from intra-op threads only.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would otherwise spin for a while after each run, stealing
        # the cores the decode threads need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc
        try:
            self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        self._fixed_batch = self._check_signature()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=self.metadata.name, version=self.version)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.metadata.input_size

    def _check_signature(self) -> int | None:
        """Fail at start-up, not on the first job, if the graph is not what docs/DESIGN.md says.

        Returns the batch size if the graph fixes it (then predict() runs in chunks).
        """
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelError(
                f"{self.path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"got inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        image = inputs[INPUT_NAME]
        h, w = self.metadata.input_size
        if image.type != "tensor(uint8)":
            raise ModelError(f"{self.path}: input {INPUT_NAME!r} is {image.type}, expected tensor(uint8)")
        shape = list(image.shape)
        if len(shape) != 4 or shape[1:] != [h, w, 3]:
            raise ModelError(f"{self.path}: input shape {shape} does not match metadata input_size {h},{w}")
        classes = outputs[OUTPUT_NAME].shape[-1]
        if isinstance(classes, int) and classes != len(self.metadata.labels):
            raise ModelError(f"{self.path}: {classes} outputs but {len(self.metadata.labels)} labels")
        return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N, C] for uint8 images [N, H, W, 3]."""
        if self._fixed_batch is None:
            probabilities: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
            return probabilities
        # A graph exported with a fixed batch size: run it in chunks (padding the last one).
        n, step = len(images), self._fixed_batch
        parts = []
        for start in range(0, n, step):
            chunk = images[start : start + step]
            if len(chunk) < step:
                pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
        return np.concatenate(parts)[:n]

    def warm_up(self, batch: int) -> None:
        """Run once at start-up so the first real job does not pay for lazy initialisation."""
        h, w = self.metadata.input_size
        for size in sorted({1, max(1, batch)}):
            self.predict(np.zeros((size, h, w, 3), dtype=np.uint8))

    def top_k(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        """The ``k`` most probable classes of one row, best first, with labels from the metadata."""
        k = min(k, probabilities.shape[-1])
        indices = np.argpartition(probabilities, -k)[-k:]
        indices = indices[np.argsort(probabilities[indices])[::-1]]
        labels = self.metadata.labels
        return [Prediction(label=labels[i], index=int(i), score=float(probabilities[i])) for i in indices]


def int8_cpu_problem(metadata: ModelMetadata, cpu: CpuInt8) -> str | None:
    """Why this model file would give wrong answers on this CPU, or None when it is safe.

    An int8 file quantised with a scheme that saturates without VNNI (common.model_file
    .INT8_SCHEMES) loses accuracy silently on such a CPU: the converter's accuracy checks
    ran on other arithmetic. Float files and saturation-free schemes are safe everywhere.
    """
    if metadata.int8_scheme is None or not cpu.u8s8_saturates:
        return None
    scheme = INT8_SCHEMES.get(metadata.int8_scheme)
    if scheme is not None and not scheme.saturates_without_vnni:
        return None
    what = "an unknown int8 scheme" if scheme is None else "saturates without VNNI"
    return (
        f"model {metadata.name!r} is int8 scheme {metadata.int8_scheme!r} ({what}), and this CPU, "
        f"{cpu.describe()}, has no VNNI: onnxruntime's uint8 x int8 products saturate here and its "
        "answers differ from those the converter checked. Serve the fp32 file, or re-quantise with "
        "`python -m converter quantize FILE --scheme u8s8-mixed` (exact on every x86 CPU)"
    )
