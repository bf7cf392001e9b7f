"""onnxruntime sessions with explicit thread counts (timings are meaningless otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.model_file import INPUT_NAME, OUTPUT_NAME


def session(path: Path, threads: int):
    """A CPU session with ``intra_op_num_threads`` fixed, as a worker would run it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def predict(sess, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Probabilities for uint8 [N,H,W,3] images, run in batches."""
    out = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)
