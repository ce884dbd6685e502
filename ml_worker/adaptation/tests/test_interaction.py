"""Prompt simulation for interactive training: start states, 2D boxes, degraded masks, error clicks."""

from __future__ import annotations

import numpy as np
import pytest

from ml_worker.adaptation.interaction import InteractionState, degrade_mask, slice_box, start_state
from ml_worker.inference.prompts import Box2D, Box3D


def _label() -> np.ndarray:
    label = np.zeros((24, 24, 24), np.int64)
    label[4:12, 5:13, 6:14] = 1
    label[14:20, 14:20, 14:20] = 2
    return label


@pytest.mark.parametrize("start", ["nothing", "box3d", "box2d", "mask"])
def test_each_start_state_is_what_an_annotator_begins_with(start):
    label = _label()
    rng = np.random.default_rng(0)
    for _ in range(10):
        state = start_state(label, (1, 2), rng, starts={start: 1.0})
        assert state.start == start and set(state.classes) <= {1, 2} and state.classes
        assert not state.clicks
        if start == "nothing":
            assert not state.boxes and state.mask is None and state.prompts() is None
        if start == "box3d":
            assert all(isinstance(b, Box3D) for b in state.boxes) and len(state.boxes) == len(state.classes)
            for box in state.boxes:  # never cuts its structure
                inside = np.argwhere(label == box.label)
                assert (np.asarray(box.lo) <= inside.min(0)).all()
                assert (np.asarray(box.hi) >= inside.max(0)).all()
        if start == "box2d":
            for box in state.boxes:
                assert isinstance(box, Box2D)
                section = np.take(label == box.label, box.slice_index, axis=box.axis)
                assert section.any()  # the slice goes through the structure
        if start == "mask":
            assert state.mask is not None and set(np.unique(state.mask)) <= {0, *state.classes}


def test_unlabelled_or_absent_structures_are_never_prompted():
    label = _label()
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert set(start_state(label, (2,), rng).classes) == {2}
    assert start_state(np.zeros_like(label), (1, 2), rng).classes == ()


def test_slice_box_encloses_the_cross_section():
    truth = _label() == 1
    rng = np.random.default_rng(2)
    for _ in range(20):
        box = slice_box(truth, label=1, rng=rng, jitter=2)
        section = np.take(truth, box.slice_index, axis=box.axis)
        inside = np.argwhere(section)
        assert (np.asarray(box.lo) <= inside.min(0)).all() and (np.asarray(box.hi) >= inside.max(0)).all()
        assert (np.asarray(box.lo) >= inside.min(0) - 2).all()


def test_degraded_masks_are_wrong_but_near_the_structure():
    truth = _label() == 1
    rng = np.random.default_rng(3)
    overlaps = []
    for _ in range(30):
        degraded = degrade_mask(truth, rng)
        assert degraded.shape == truth.shape and degraded.dtype == bool
        overlaps.append(2 * (degraded & truth).sum() / (degraded.sum() + truth.sum()))
    overlaps = np.asarray(overlaps)
    assert (overlaps < 1.0).mean() > 0.8  # almost always something to correct
    assert (overlaps > 0.15).mean() > 0.9  # and still over the structure, not somewhere else


def test_a_round_clicks_on_the_largest_error_and_the_prediction_becomes_the_mask():
    label = _label()
    state = InteractionState(classes=(1,), start="nothing")
    probabilities = np.zeros((2, *label.shape), np.float32)
    probabilities[0][label == 1] = 0.9
    probabilities[0][4:12, 5:13, 10:14] = 0.1  # a missed block of the structure: 8x8x4 false negatives
    probabilities[0][0:2, 0:2, 0:2] = 0.9  # a small false positive elsewhere
    state.step(probabilities, label, (1, 2))
    (click,) = state.clicks
    assert click.positive and click.label == 1
    assert 4 <= click.ijk[0] < 12 and 5 <= click.ijk[1] < 13 and 10 <= click.ijk[2] < 14
    assert np.array_equal(state.mask == 1, probabilities[0] > 0.5)
