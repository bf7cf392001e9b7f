"""Each model's input normalisation, as numpy (the reference) and as ONNX nodes (in the graph).

The model file takes raw uint8 RGB pixels (docs/DESIGN.md); the converter prepends the
normalisation the model was trained with, so workers never hard-code it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFIX = "preprocess/"  # node/tensor name prefix: lets quantisation leave these nodes in float


@dataclass(frozen=True, slots=True)
class Normalisation:
    """``(pixel[channel order] - mean) / std`` on float32 pixels in 0..255.

    ``bgr`` reverses RGB to BGR first; mean and std are given in the model's channel order.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Reference numpy implementation: uint8 [N,H,W,3] RGB -> float32 [N,H,W,3]."""
        x = images.astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = x - np.asarray(self.mean, dtype=np.float32)
        if any(s != 1.0 for s in self.std):
            x = x / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x)

    def describe(self) -> str:
        order = "RGB->BGR, " if self.bgr else ""
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{s:g}" for s in self.std)
        return f"{self.name}: {order}(x - [{mean}]) / [{std}]"


# Keras ``imagenet_utils.preprocess_input`` modes (x in 0..255):
#   caffe: RGB->BGR, minus the ImageNet means (BGR order), no scaling (ResNet50, VGG)
#   tf:    x / 127.5 - 1
#   torch: x / 255, minus mean, divide by std (RGB)
CAFFE = Normalisation("caffe", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True)
TF = Normalisation("tf", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
TORCH = Normalisation(
    "torch", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)
)
# EfficientNet-Lite's own training recipe (tensorflow/tpu efficientnet/lite: MEAN_RGB=127,
# STDDEV_RGB=128). Checked on the test photos: it gives the most confident correct answers
# of the candidate normalisations (see converter/README.md).
EFFICIENTNET_LITE = Normalisation("efficientnet-lite", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))

KERAS_MODES = {"caffe": CAFFE, "tf": TF, "torch": TORCH}


def onnx_nodes(
    norm: Normalisation, input_name: str, output_name: str, channels_first: bool
) -> tuple[list, list]:
    """ONNX nodes and initializers: uint8 NHWC ``input_name`` -> float ``output_name``.

    ``channels_first`` appends the NHWC->NCHW transpose a torch model needs.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    cur = PREFIX + "float"
    nodes.append(helper.make_node("Cast", [input_name], [cur], to=TensorProto.FLOAT, name=PREFIX + "cast"))
    if norm.bgr:
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), PREFIX + "bgr_order"))
        nodes.append(
            helper.make_node(
                "Gather", [cur, PREFIX + "bgr_order"], [PREFIX + "bgr"], axis=3, name=PREFIX + "rgb_to_bgr"
            )
        )
        cur = PREFIX + "bgr"
    inits.append(numpy_helper.from_array(np.asarray(norm.mean, dtype=np.float32), PREFIX + "mean"))
    nodes.append(
        helper.make_node("Sub", [cur, PREFIX + "mean"], [PREFIX + "centred"], name=PREFIX + "sub_mean")
    )
    cur = PREFIX + "centred"
    if any(s != 1.0 for s in norm.std):
        inits.append(numpy_helper.from_array(np.asarray(norm.std, dtype=np.float32), PREFIX + "std"))
        nodes.append(
            helper.make_node("Div", [cur, PREFIX + "std"], [PREFIX + "scaled"], name=PREFIX + "div_std")
        )
        cur = PREFIX + "scaled"
    if channels_first:
        nodes.append(
            helper.make_node(
                "Transpose", [cur], [PREFIX + "nchw"], perm=[0, 3, 1, 2], name=PREFIX + "to_nchw"
            )
        )
        cur = PREFIX + "nchw"
    nodes.append(helper.make_node("Identity", [cur], [output_name], name=PREFIX + "out"))
    return nodes, inits
