"""The model file as the worker loads it: metadata, signature checks, predictions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from classifier.model import Model, ModelError
from common.model_file import model_version

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def test_metadata_and_version_come_from_the_file(model: Model, lite0_model: Path):
    assert model.version == model_version(lite0_model)
    assert re.fullmatch(r"[0-9a-f]{12}", model.version)
    assert model.info.name == model.metadata.name == "efficientnet-lite0"
    assert len(model.metadata.labels) == 1000
    assert model.input_size == (224, 224)


def test_photos_are_classified(model: Model, preprocess, photos):
    batch = np.stack([preprocess(photos[n].read_bytes()) for n in ("coffee", "chelsea")])
    probabilities = model.predict(batch)
    assert probabilities.shape == (2, 1000) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    coffee, chelsea = (model.top_k(row, 5) for row in probabilities)
    assert coffee[0].label == "espresso"
    assert chelsea[0].label in CATS
    scores = [p.score for p in coffee]
    assert scores == sorted(scores, reverse=True)
    assert coffee[0].index == model.metadata.labels.index("espresso")


def test_a_batch_gives_the_same_answers_as_single_runs(model: Model, preprocess, photos):
    images = np.stack([preprocess(p.read_bytes()) for p in photos.values()])
    together = model.predict(images)
    alone = np.concatenate([model.predict(images[i : i + 1]) for i in range(len(images))])
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_returns_k_classes(model: Model, k: int):
    row = np.random.default_rng(k).random(1000).astype(np.float32)
    top = model.top_k(row, k)
    assert [p.index for p in top] == list(np.argsort(row)[::-1][:k])


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        Model(tmp_path / "absent.onnx", threads=1)


def test_file_without_metadata_is_refused(lite0_model: Path, tmp_path: Path):
    proto = onnx.load(str(lite0_model))
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="lacks"):
        Model(path, threads=1)


def test_labels_that_do_not_match_the_output_are_refused(lite0_model: Path, tmp_path: Path):
    proto = onnx.load(str(lite0_model))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = '["only", "two"]'
    path = tmp_path / "two-labels.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="1000 outputs but 2 labels"):
        Model(path, threads=1)
