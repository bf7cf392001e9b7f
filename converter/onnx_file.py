"""The model file itself: graph wrapping (uint8 ``image`` in, ``probabilities`` out),
metadata_props, and atomic saving (never a half-written file under the final name)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from common.model_file import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from converter.errors import ConverterError
from converter.preprocess import Normalisation, onnx_nodes

BATCH_DIM = "batch"
SOFTMAX_NODE = "postprocess/softmax"


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in list(graph.value_info):
        if vi.name == old:
            vi.name = new


def wrap(
    core,
    *,
    input_size: tuple[int, int],
    normalisation: Normalisation,
    channels_first: bool,
    add_softmax: bool,
):
    """Turn a framework export (one float image input, one [batch, classes] output) into the
    contract's graph: ``image`` uint8 [batch,H,W,3] RGB -> normalisation -> core -> (softmax)
    -> ``probabilities`` float32 [batch, classes]."""
    from onnx import TensorProto, helper

    graph = core.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConverterError(
            "expected one input and one output in the exported graph, "
            f"got {len(inputs)} and {len(graph.output)}"
        )
    old_in, old_out = inputs[0].name, graph.output[0].name
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2 or not out_dims[1].dim_value:
        raise ConverterError(f"model output must be [batch, classes], got rank {len(out_dims)}")
    classes = out_dims[1].dim_value

    core_in, core_out = "core/input", "core/output"
    _rename_tensor(graph, old_in, core_in)
    _rename_tensor(graph, old_out, core_out)

    pre_nodes, pre_inits = onnx_nodes(normalisation, INPUT_NAME, core_in, channels_first)
    if add_softmax:
        post = [helper.make_node("Softmax", [core_out], [OUTPUT_NAME], axis=-1, name=SOFTMAX_NODE)]
    else:
        post = [helper.make_node("Identity", [core_out], [OUTPUT_NAME], name="postprocess/identity")]

    nodes = pre_nodes + list(graph.node) + post
    for i, node in enumerate(nodes):
        if not node.name:  # quantisation excludes nodes by name: every node needs one
            node.name = f"node_{i}_{node.op_type}"
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(pre_inits)

    h, w = input_size
    new_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH_DIM, h, w, 3])
    new_output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, classes])
    kept_inputs = [i for i in graph.input if i.name in init_names]
    del graph.input[:]
    graph.input.extend([new_input, *kept_inputs])
    del graph.output[:]
    graph.output.append(new_output)
    return core


def utc_now() -> str:
    """The ``created`` timestamp: ISO 8601, UTC, seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def set_metadata(model, meta: ModelMetadata, extra: dict[str, str] | None = None) -> None:
    """Replace the file's metadata_props with the contract's keys (plus ``extra``)."""
    props = meta.to_props() | (extra or {})
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def load(path: Path):
    """Load an ONNX file, or fail with one line when it is missing or not a model."""
    import onnx

    if not path.exists():
        raise ConverterError(f"no such file: {path}")
    if not path.is_file():
        raise ConverterError(f"not a file: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValueError, ... for non-model bytes
        raise ConverterError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ConverterError(f"{path} is not an ONNX model (empty graph)")
    return model


def check(model) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConverterError(f"converted graph is invalid: {str(exc).splitlines()[0]}") from None


@contextlib.contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``; moved onto ``final`` only if the block succeeds.

    Everything (parity, agreement checks) runs on the staged file, so a failed check
    leaves no output behind and an existing good file is never overwritten by a bad one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".onnx.tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; model files are read by other users (containers)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save(model, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))
