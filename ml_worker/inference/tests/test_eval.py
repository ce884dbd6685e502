from __future__ import annotations

import json

import numpy as np
import pytest

from ml_worker.inference.eval import dice, dice_auc, find_cases, label_names, percentiles


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5], 0.5),
        ([0.0, 1.0], 0.5),
        ([0.6, 0.6, 0.6, 0.6, 0.6, 0.6], 0.6),
        ([0.5, 0.7, 0.8, 0.8, 0.9, 1.0], (0.25 + 0.7 + 0.8 + 0.8 + 0.9 + 0.5) / 5),
    ],
)
def test_dice_auc_is_the_normalised_trapezoid(values, expected):
    assert dice_auc(values) == pytest.approx(expected)


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    assert dice(a, b) == 1.0
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p95": None, "mean": None, "n": 0}
    summary = percentiles([0.1] * 19 + [1.1])
    assert summary["p50"] == pytest.approx(0.1) and summary["n"] == 20
    assert summary["p95"] == pytest.approx(0.15)


def test_cases_pair_images_and_labels_by_name(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("b.nii.gz", "a.nii"):
        (tmp_path / "images" / name).write_bytes(b"")
        (tmp_path / "labels" / name).write_bytes(b"")
    cases = find_cases(tmp_path / "images", tmp_path / "labels")
    assert [c.name for c in cases] == ["a", "b"]
    (tmp_path / "images" / "c.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="1 image\\(s\\) have no label file .*: c"):
        find_cases(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="no folder"):
        find_cases(tmp_path / "nowhere", tmp_path / "labels")


def test_label_names_come_from_dataset_json(tmp_path):
    (tmp_path / "labelsTr").mkdir()
    assert label_names(tmp_path / "labelsTr") == {}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "anterior"}}))
    assert label_names(tmp_path / "labelsTr") == {0: "background", 1: "anterior"}
