"""Tiny synthetic NIfTI cases (two structures) for the training tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ml_worker.adaptation.train import TrainCase


def make_case(folder: Path, name: str, *, seed: int, shape=(20, 20, 20), labelled=(1, 2)) -> TrainCase:
    """A blob of label 1 with a brighter core of label 2 at a random place, and a noisy image.

    Returns the case (its files in `folder`/images and `folder`/labels).
    """
    rng = np.random.default_rng(seed)
    centre = rng.uniform(7, np.asarray(shape) - 7)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    distance = np.linalg.norm(grid - centre, axis=-1)
    label = np.zeros(shape, np.uint8)
    label[distance <= 5] = 1
    label[distance <= 2.5] = 2
    image = (label * 60.0 + rng.normal(0, 8, shape)).astype(np.float32)
    paths = []
    for sub, data in (("images", image), ("labels", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        paths.append(path)
    return TrainCase(image=paths[0], label=paths[1], labelled=labelled)


def make_thin_case(folder: Path, name: str, *, seed: int) -> TrainCase:
    """32x32x3 (cheap for the 2D model: one encoder pass per slice): a bright disc of label 1 on slices
    1 and 2, with a core of label 2 on slice 2 only; the disc's place follows `seed`."""
    rng = np.random.default_rng(seed)
    row, col = rng.integers(12, 20, size=2)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    disc = (rows - row) ** 2 + (cols - col) ** 2
    label = np.zeros((32, 32, 3), np.uint8)
    label[..., 1][disc <= 64] = 1
    label[..., 2][disc <= 64] = 1
    label[..., 2][disc <= 16] = 2
    image = (label * 70.0 + rng.normal(0, 5, label.shape)).astype(np.float32)
    paths = []
    for sub, data in (("images", image), ("labels", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        paths.append(folder / sub / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(paths[-1]))
    return TrainCase(image=paths[0], label=paths[1], labelled=(1, 2), case_id=name)
