"""Fixtures shared by the ml_worker.transforms tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ml_worker/transforms/tests/conftest.py -> the directory that holds ml_worker/
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data folder: $ANNOTATOR_SHARED_DATA, else shared/data beside the repository."""
    path = Path(os.environ.get("ANNOTATOR_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set ANNOTATOR_SHARED_DATA)")
    return path
