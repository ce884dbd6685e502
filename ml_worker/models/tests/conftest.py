"""Fixtures shared by the ml_worker.models tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml_worker.models.checkpoints import load_litemedsam
from ml_worker.models.litemedsam import LiteMedSAM

# ml_worker/models/tests/conftest.py -> the directory that holds ml_worker/
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data folder: $ANNOTATOR_SHARED_DATA, else shared/data beside the repository."""
    path = Path(os.environ.get("ANNOTATOR_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set ANNOTATOR_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def litemedsam() -> LiteMedSAM:
    """LiteMedSAM with the bundled weights, on CPU, in eval mode (shared: do not modify it)."""
    return load_litemedsam()
