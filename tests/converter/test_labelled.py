"""Labelled photos: how they are read and split, and the gate on what int8 may lose."""

from __future__ import annotations

import numpy as np
import pytest

from converter import labelled
from converter.errors import ConverterError, ParityError
from converter.quantize import Gate, _gate_labelled


def test_the_sample_is_read_and_split_disjointly_by_class(labelled_dir):
    photos = labelled.load(labelled_dir, 1000)
    assert len(photos) == 250 and photos[0].label == int(photos[0].path.name[:3])
    parts = labelled.split(photos)
    calibration = {p.path for p in parts.calibration}
    held_out = {p.path for p in parts.held_out}
    assert not calibration & held_out  # never both on one photo
    assert len(calibration) == 100 and len(held_out) == 150
    assert labelled.split(photos) == parts  # deterministic
    # Both parts spread over the class range, not one end of it.
    for part in (parts.calibration, parts.held_out):
        assert min(p.label for p in part) < 50 and max(p.label for p in part) > 950


def test_labels_must_fit_the_model_and_names_must_carry_them(labelled_subset, tmp_path):
    with pytest.raises(ConverterError, match=r"class .* but the model has 5 classes"):
        labelled.load(labelled_subset, 5)
    (tmp_path / "cat.jpg").write_bytes(b"")  # no NNN_ prefix: not a labelled photo
    with pytest.raises(ConverterError, match="0 labelled photos"):
        labelled.load(tmp_path, 1000)


def test_inputs_are_the_workers_own_pixels(labelled_subset):
    from classifier.preprocess import Preprocessor
    from common.model_file import ResizePolicy

    photos = labelled.load(labelled_subset, 1000)
    policy = ResizePolicy("center_crop", 0.875)
    rows = labelled.model_inputs(photos, (224, 224), policy)
    worker = Preprocessor((224, 224), policy, max_pixels=25_000_000)
    assert rows.shape == (10, 224, 224, 3) and rows.dtype == np.uint8
    assert np.array_equal(rows[3], worker(photos[3].path.read_bytes()))


def test_the_gate_allows_one_point_and_demands_agreement():
    gate = Gate(max_top1_drop=1.0, min_agreement=0.95, decisive_margin=0.2)
    truth = np.arange(200) % 10
    right = np.eye(10)[truth]
    one_wrong, three_wrong = right.copy(), right.copy()
    one_wrong[0] = np.eye(10)[1]  # 1 of 200: 0.5 points
    three_wrong[:3] = np.eye(10)[(truth[:3] + 1) % 10]  # 3 of 200: 1.5 points
    _gate_labelled(labelled.accuracy(right, one_wrong, truth), gate)
    with pytest.raises(ParityError, match=r"1\.50 points below fp32"):
        _gate_labelled(labelled.accuracy(right, three_wrong, truth), gate)
    # int8 as accurate as fp32 overall, but on other photos: the agreement gate catches it.
    shuffled = right.copy()
    shuffled[:10] = np.eye(10)[(truth[:10] + 1) % 10]
    p32 = right.copy()
    p32[10:20] = np.eye(10)[(truth[10:20] + 1) % 10]
    report = labelled.accuracy(p32, shuffled, truth)
    assert report.drop_points == 0.0 and report.agreement == 0.9
    with pytest.raises(ParityError, match=r"agreement with fp32 is 0\.9000"):
        _gate_labelled(report, gate)
