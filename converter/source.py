"""What every model source (Keras, torch) hands to the common pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.model_file import ResizePolicy
from converter.preprocess import Normalisation

# uint8 [N,H,W,3] RGB -> float32 [N, classes] probabilities, computed by the source framework.
Reference = Callable[[np.ndarray], np.ndarray]

IMAGENET_RESIZE = ResizePolicy("center_crop", 0.875)  # the ImageNet evaluation recipe


@dataclass
class Exported:
    """A model exported to ONNX by its framework, with what is needed to wrap and check it.

    ``core`` is the framework's graph (float input, normalisation not yet applied);
    ``reference`` runs the original framework model on raw pixels, using the framework's
    own preprocessing where it has one, so parity also checks the in-graph normalisation.
    """

    name: str
    core: object  # onnx.ModelProto
    input_size: tuple[int, int]
    channels_first: bool
    normalisation: Normalisation
    add_softmax: bool
    labels: list[str]
    resize: ResizePolicy
    source: str
    tool: str
    reference: Reference
