"""The worker's configuration: environment variables (common.settings), a few CLI overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from common.settings import Settings, broker_addresses


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment; any CLI flag given wins over its variable."""
    parser = argparse.ArgumentParser(
        prog="python -m classifier",
        description="Classifier worker: consumes image jobs from RabbitMQ, answers with onnxruntime. "
        "Every option defaults to its environment variable (see the README's table).",
    )
    options = [  # flag, Settings field (its variable in upper case), type, metavar, help
        ("--model", "model_path", Path, "PATH", "ONNX model file"),
        ("--queue", "queue_name", str, "NAME", "request queue"),
        ("--threads", "ort_threads", int, "N", "onnxruntime intra-op threads"),
        ("--max-batch", "max_batch", int, "N", "images per inference"),
        ("--batch-wait-ms", "batch_wait_ms", float, "MS", "longest wait for a batch to fill"),
        ("--prefetch", "prefetch", int, "N", "unacknowledged jobs held at once"),
        ("--metrics-port", "worker_metrics_port", int, "PORT", "Prometheus port, 0 = off"),
        ("--log-level", "log_level", str, "LEVEL", "DEBUG, INFO, WARNING"),
    ]
    for flag, field, kind, metavar, text in options:
        parser.add_argument(flag, dest=field, type=kind, metavar=metavar, help=f"{text} ({field.upper()})")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings.from_env(**overrides)
    except (TypeError, ValueError) as exc:  # e.g. MAX_BATCH=eight
        parser.error(f"bad configuration: {exc}")
    _validate(parser, settings)
    return settings


def _validate(parser: argparse.ArgumentParser, settings: Settings) -> None:
    problems = []
    if settings.max_batch < 1:
        problems.append(f"MAX_BATCH must be >= 1, got {settings.max_batch}")
    if settings.batch_wait_ms < 0:
        problems.append(f"BATCH_WAIT_MS must be >= 0, got {settings.batch_wait_ms}")
    if settings.ort_threads < 1:
        problems.append(f"ORT_THREADS must be >= 1, got {settings.ort_threads}")
    if settings.prefetch < 1:
        problems.append(f"PREFETCH must be >= 1, got {settings.prefetch}")
    if settings.delivery_limit < 1:  # 0 would refuse every job as poison
        problems.append(f"DELIVERY_LIMIT must be >= 1, got {settings.delivery_limit}")
    if settings.quorum_group_size < 1:
        problems.append(f"QUORUM_GROUP_SIZE must be >= 1, got {settings.quorum_group_size}")
    try:
        broker_addresses(settings.rabbitmq_url)
    except ValueError as exc:
        problems.append(str(exc))
    if settings.max_pixels < 1:
        problems.append(f"MAX_PIXELS must be >= 1, got {settings.max_pixels}")
    if settings.int8_on_saturating_cpu not in ("refuse", "warn"):
        problems.append(
            f"INT8_ON_SATURATING_CPU must be refuse or warn, got {settings.int8_on_saturating_cpu!r}"
        )
    if problems:
        parser.error("; ".join(problems))
