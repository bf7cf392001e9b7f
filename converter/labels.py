"""Class labels: the bundled ImageNet names, or a user's labels file."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from converter.errors import ConverterError

IMAGENET_LABELS_PATH = Path(__file__).with_name("imagenet_labels.json")


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (short, human-readable; see README.md)."""
    labels = json.loads(IMAGENET_LABELS_PATH.read_text(encoding="utf-8"))
    if len(labels) != 1000:
        raise ConverterError(f"{IMAGENET_LABELS_PATH} holds {len(labels)} labels, expected 1000")
    return tuple(labels)


def read_labels_file(path: Path) -> list[str]:
    """Labels from a JSON list of strings or a text file with one label per line.

    The word ``imagenet`` instead of a path means the bundled ImageNet names.
    """
    if str(path) == "imagenet":
        return list(imagenet_labels())
    if not path.is_file():
        raise ConverterError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConverterError(f"cannot read labels file {path}: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConverterError(f"labels file {path} is not valid JSON: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConverterError(f"labels file {path} must be a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConverterError(f"labels file {path} holds no labels")
    return labels


def check_label_count(labels: list[str], classes: int, where: str) -> None:
    """Refuse labels that do not name every output class exactly once."""
    if len(labels) != classes:
        raise ConverterError(f"{where} has {len(labels)} labels but the model outputs {classes} classes")
