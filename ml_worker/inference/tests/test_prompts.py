from __future__ import annotations

import re

import numpy as np
import pytest

from ml_worker.inference.prompts import Box2D, Box3D, Click, PromptError, Prompts, validate_prompts

SHAPE = (35, 50, 36)
LABELS = {"anterior": 1, "posterior": 2}


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (
            Prompts(clicks=(Click(1, (40, 12, 3)),)),
            "click at (40, 12, 3) is outside the volume of 35x50x36 voxels",
        ),
        (
            Prompts(clicks=(Click(2, (-1, 0, 0), positive=False),)),
            "click at (-1, 0, 0) is outside the volume of 35x50x36 voxels",
        ),
        (
            Prompts(boxes=(Box3D(1, (5, 5, 5), (4, 9, 9)),)),
            "box is empty: lo (5, 5, 5) > hi (4, 9, 9) on axis i",
        ),
        (
            Prompts(boxes=(Box3D(1, (5, 5, 9), (8, 9, 3)),)),
            "box is empty: lo (5, 5, 9) > hi (8, 9, 3) on axis k",
        ),
        (
            Prompts(boxes=(Box3D(3, (0, 0, 0), (4, 4, 4)),)),
            "label 3 is not in this project's label set {anterior: 1, posterior: 2}",
        ),
        (
            Prompts(clicks=(Click(0, (1, 1, 1)),)),
            "label 0 is not in this project's label set {anterior: 1, posterior: 2}",
        ),
        (
            Prompts(boxes=(Box3D(2, (30, 10, 10), (35, 20, 20)),)),
            "box from (30, 10, 10) to (35, 20, 20) reaches outside the volume of 35x50x36 voxels on axis i "
            "(valid: 0 to 34)",
        ),
        (
            Prompts(boxes=(Box2D(1, slice_index=36, lo=(0, 0), hi=(5, 5)),)),
            "2D box from (0, 0, 36) to (5, 5, 36) reaches outside the volume of 35x50x36 voxels on axis k",
        ),
        (
            Prompts(boxes=(Box2D(1, slice_index=3, lo=(9, 0), hi=(5, 5)),)),
            "2D box is empty: lo (9, 0, 3) > hi (5, 5, 3) on axis i",
        ),
        (
            Prompts(mask=np.zeros((35, 50, 35), dtype=np.uint8)),
            "previous mask has shape 35x50x35, the volume 35x50x36",
        ),
        (
            Prompts(mask=np.full(SHAPE, 7, dtype=np.uint8)),
            "previous mask holds values [7] that are not in this project's label set",
        ),
    ],
)
def test_invalid_prompts_are_refused_with_a_clear_message(prompts, message):
    with pytest.raises(PromptError, match=re.escape(message)):
        validate_prompts(prompts, SHAPE, LABELS)


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)


@pytest.mark.parametrize(
    "prompts",
    [
        Prompts(),
        Prompts(boxes=(Box3D(1, (0, 0, 0), (34, 49, 35)),)),  # the whole volume
        Prompts(boxes=(Box3D(2, (3, 3, 3), (3, 3, 3)),)),  # one voxel
        Prompts(boxes=(Box2D(1, slice_index=0, lo=(1, 2), hi=(10, 20), axis=0),)),
        Prompts(clicks=(Click(1, (34, 49, 35)), Click(2, (0, 0, 0), positive=False))),
        Prompts(mask=np.zeros(SHAPE, dtype=np.uint8)),
    ],
)
def test_valid_prompts_pass(prompts):
    validate_prompts(prompts, SHAPE, LABELS)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (Box2D(1, slice_index=7, lo=(1, 2), hi=(3, 4)), Box3D(1, (1, 2, 7), (3, 4, 7))),
        (Box2D(1, slice_index=7, lo=(1, 2), hi=(3, 4), axis=1), Box3D(1, (1, 7, 2), (3, 7, 4))),
        (Box2D(2, slice_index=7, lo=(1, 2), hi=(3, 4), axis=0), Box3D(2, (7, 1, 2), (7, 3, 4))),
    ],
)
def test_box2d_lies_on_its_slice(box, expected):
    assert box.to_box3d() == expected


def test_prompts_for_one_label():
    prompts = Prompts(
        boxes=(Box3D(1, (0, 0, 0), (1, 1, 1)), Box3D(2, (0, 0, 0), (2, 2, 2))),
        clicks=(Click(2, (1, 1, 1)), Click(1, (0, 0, 0))),
    )
    assert prompts.labels() == [1, 2]
    only = prompts.for_label(2)
    assert only.boxes == (Box3D(2, (0, 0, 0), (2, 2, 2)),)
    assert only.clicks == (Click(2, (1, 1, 1)),)
