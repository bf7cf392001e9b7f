"""Where the harness keeps its inputs and outputs (all under ``perf/``)."""

from __future__ import annotations

from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
RUN_DIR = PERF_DIR / ".run"  # scratch: photo pools, logs, uploads (git-ignored)
MODELS_DIR = PERF_DIR / "models"  # the ResNet50 random-weight models (git-ignored)
RESULTS_DIR = PERF_DIR / "results"
PLOTS_DIR = PERF_DIR / "plots"
REPORT_PATH = PERF_DIR / "REPORT.md"
SOURCE_PHOTOS = REPO_ROOT / "tests" / "data"
FP32_MODEL = MODELS_DIR / "resnet50-random.onnx"
INT8_MODEL = MODELS_DIR / "resnet50-random-int8.onnx"
