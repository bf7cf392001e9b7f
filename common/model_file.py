"""The model-file contract between the converter (writer) and the classifier (reader).

One ``.onnx`` per model holds everything a worker needs (docs/DESIGN.md, "The model
file"): a uint8 NHWC RGB input named ``image`` with normalisation inside the
graph, a softmax output named ``probabilities``, and these metadata_props.
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

# metadata_props keys
META_NAME = "name"
META_LABELS = "labels"
META_INPUT_SIZE = "input_size"
META_RESIZE = "resize"
META_SOURCE = "source"
META_CONVERTER = "converter"
META_CREATED = "created"
REQUIRED_METADATA = (
    META_NAME,
    META_LABELS,
    META_INPUT_SIZE,
    META_RESIZE,
    META_SOURCE,
    META_CONVERTER,
    META_CREATED,
)
# Optional: set on int8 files, the key of INT8_SCHEMES they were quantised with.
META_INT8_SCHEME = "int8_scheme"

VERSION_HEX_DIGITS = 12


def model_version(path: Path) -> str:
    """The model's version: the first 12 hex digits of the SHA-256 of the file bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:VERSION_HEX_DIGITS]


@dataclass(frozen=True, slots=True)
class ResizePolicy:
    """How a worker maps a photo onto the model's input size.

    ``stretch`` resizes the whole image to H x W; ``center_crop`` resizes the
    short side to ``size / crop_ratio`` and takes the central H x W (the usual
    ImageNet evaluation recipe, ratio 0.875).
    """

    mode: str  # "stretch" | "center_crop"
    crop_ratio: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ResizePolicy:
        if text == "stretch":
            return cls("stretch")
        mode, _, ratio = text.partition(":")
        if mode == "center_crop":
            value = float(ratio) if ratio else 0.875
            if not 0.0 < value <= 1.0:
                raise ValueError(f"center_crop ratio must be in (0, 1], got {value}")
            return cls("center_crop", value)
        raise ValueError(f"unknown resize policy {text!r}")

    def __str__(self) -> str:
        return "stretch" if self.mode == "stretch" else f"center_crop:{self.crop_ratio:g}"


@dataclass(frozen=True, slots=True)
class Int8Scheme:
    """Which integer types meet in an int8 file's products, and what that means per CPU.

    On x86 without VNNI, onnxruntime multiplies uint8 activations by int8 weights with
    VPMADDUBSW, whose int16 sum of two products saturates (255 x 127 x 2 > 32767): the
    same file then gives other answers than on a VNNI CPU. 7-bit weights (reduce_range)
    keep that sum in range. Depthwise convolutions run on a kernel that widens to 16 bits
    before it multiplies, so they keep full 8-bit weights; the first convolution (the
    stem, on raw pixels) is the layer 7-bit weights hurt most, so "mixed" keeps it float.
    Measured in converter/README.md ("int8 schemes").
    """

    reduce_range: bool  # 7-bit weights where the GEMM kernel multiplies
    depthwise_full_range: bool  # ... but 8-bit weights for depthwise convolutions
    float_stem: bool  # the first convolution stays float
    saturates_without_vnni: bool

    def describe(self) -> str:
        parts = ["activations uint8, weights int8 per-channel"]
        if self.reduce_range:
            parts.append(
                "7-bit (reduce_range)"
                + (" except depthwise convs (8-bit)" if self.depthwise_full_range else "")
            )
        if self.float_stem:
            parts.append("first conv float")
        return ", ".join(parts)


INT8_SCHEMES: dict[str, Int8Scheme] = {
    "u8s8-mixed": Int8Scheme(
        reduce_range=True, depthwise_full_range=True, float_stem=True, saturates_without_vnni=False
    ),
    "u8s8-reduce-range": Int8Scheme(
        reduce_range=True, depthwise_full_range=False, float_stem=False, saturates_without_vnni=False
    ),
    "u8s8": Int8Scheme(
        reduce_range=False, depthwise_full_range=False, float_stem=False, saturates_without_vnni=True
    ),
}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """The parsed metadata_props of a model file."""

    name: str
    labels: list[str]
    input_size: tuple[int, int]  # (H, W)
    resize: ResizePolicy
    source: str
    converter: str
    created: str
    int8_scheme: str | None = None  # a key of INT8_SCHEMES; None for a float model

    def to_props(self) -> dict[str, str]:
        h, w = self.input_size
        scheme = {META_INT8_SCHEME: self.int8_scheme} if self.int8_scheme else {}
        return scheme | {
            META_NAME: self.name,
            META_LABELS: json.dumps(self.labels),
            META_INPUT_SIZE: f"{h},{w}",
            META_RESIZE: str(self.resize),
            META_SOURCE: self.source,
            META_CONVERTER: self.converter,
            META_CREATED: self.created,
        }

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        missing = [k for k in REQUIRED_METADATA if k not in props]
        if missing:
            raise ValueError(f"model metadata lacks {', '.join(missing)}")
        h, w = (int(v) for v in props[META_INPUT_SIZE].split(","))
        labels = json.loads(props[META_LABELS])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("model metadata 'labels' is not a JSON list of strings")
        return cls(
            name=props[META_NAME],
            labels=labels,
            input_size=(h, w),
            resize=ResizePolicy.parse(props[META_RESIZE]),
            source=props[META_SOURCE],
            converter=props[META_CONVERTER],
            created=props[META_CREATED],
            int8_scheme=props.get(META_INT8_SCHEME),
        )
