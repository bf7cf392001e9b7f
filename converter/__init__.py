"""Checkpoint -> one self-contained ONNX model file (see docs/DESIGN.md, "The model file").

Heavy frameworks (TensorFlow, torch) are imported lazily by the functions that need
them, so ``python -m converter --help`` and the int8 path for an existing ONNX stay fast.
"""

__version__ = "0.1.0"
