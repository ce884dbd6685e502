"""Helpers for the annotation tests (fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np

from annotation.models import Case, MaskVersion
from annotation.services import Effort, mask_version_create

SHAPE = (8, 6, 4)


def labelmap(value: int = 1, shape=SHAPE) -> np.ndarray:
    """A label map with ``value`` in one corner block."""
    mask = np.zeros(shape, np.uint8)
    mask[:3, :2, :2] = value
    return mask


def save(
    case: Case, user, parent: MaskVersion | None, mask: np.ndarray | None = None, **effort
) -> MaskVersion:
    return mask_version_create(
        case=case,
        user=user,
        parent=parent,
        mask=labelmap() if mask is None else mask,
        effort=Effort(**effort),
    )
