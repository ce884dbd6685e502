"""Fixtures shared by the ml_worker.inference tests: shared data, the network, one encoded crop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ml_worker.inference.embeddings import EmbeddingCache, VolumeEmbeddings, cache_key, encode_volume
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, file_sha256, load_litemedsam
from ml_worker.models.litemedsam import LiteMedSAM

# ml_worker/inference/tests/conftest.py -> the directory that holds ml_worker/
REPO = Path(__file__).resolve().parents[3]

CASE = "hippocampus_001"
AXIS = 1  # slices across the hippocampus' long axis: LiteMedSAM does best on these
# The crop keeps slices j = 33..42 (10 slices: ~2 s each to encode on a 2-core CPU) and the full
# i and k ranges, so the anterior hippocampus (label 1) fills every slice of it.
CROP = (slice(None), slice(33, 43), slice(None))
MODEL_ID = f"litemedsam/{LITEMEDSAM_SHA256[:16]}"  # as `python -m ml_worker interactive-eval` keys its cache


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


@dataclass(frozen=True)
class EncodedCrop:
    folder: Path  # holds images/<CASE>.nii and labels/<CASE>.nii
    cache_dir: Path  # the crop's embeddings, keyed as the CLI keys them
    image: np.ndarray
    labels: np.ndarray
    embeddings: VolumeEmbeddings


@pytest.fixture(scope="session")
def encoded_crop(shared_data: Path, litemedsam: LiteMedSAM, tmp_path_factory) -> EncodedCrop:
    """A crop of one hippocampus case written as NIfTI, encoded once for the whole session."""
    source = shared_data / "hippocampus"
    image_nii = nib.load(source / "imagesTr" / f"{CASE}.nii.gz")
    label_nii = nib.load(source / "labelsTr" / f"{CASE}.nii.gz")
    image = np.asarray(image_nii.dataobj)[CROP].astype(np.float32)
    labels = np.asarray(label_nii.dataobj)[CROP].astype(np.uint8)
    folder = tmp_path_factory.mktemp("crop")
    for sub, array in (("images", image), ("labels", labels)):
        (folder / sub).mkdir()
        nib.save(nib.Nifti1Image(array, image_nii.affine), folder / sub / f"{CASE}.nii")
    cache_dir = folder / "cache"
    cache = EmbeddingCache(directory=cache_dir)
    key = cache_key(file_sha256(folder / "images" / f"{CASE}.nii"), MODEL_ID, f"axis{AXIS}")
    stored = cache.put(key, encode_volume(litemedsam, image, axis=AXIS))
    return EncodedCrop(folder, cache_dir, image, labels, VolumeEmbeddings(stored, image.shape, AXIS))
