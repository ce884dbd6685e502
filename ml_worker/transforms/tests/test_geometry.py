from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ml_worker.transforms.geometry import (
    Deshear,
    Desheard,
    ToMetaTensor,
    ToMetaTensord,
    deshear_grid,
    is_sheared,
)
from ml_worker.transforms.tests.synthetic import affine, ellipsoid_label, rotation, tilted

OBLIQUE = affine((0.7, 0.7, 5.0), directions=rotation(15, -18), origin=(-20, 10, 5))
TILTED = tilted(affine((0.8, 0.8, 2.5), origin=(5, -3, 2)), tilt_deg=20)


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        (np.eye(4), False),
        (np.diag([-0.7, -0.7, 5.0, 1.0]), False),  # LPS, anisotropic
        (OBLIQUE, False),  # rotated but orthogonal
        (TILTED, True),
        (tilted(OBLIQUE, tilt_deg=12), True),
        (tilted(np.eye(4), tilt_deg=0.01), False),  # below the noise level
    ],
)
def test_is_sheared(matrix, expected):
    assert is_sheared(matrix) is expected


@pytest.mark.parametrize("matrix", [np.zeros((4, 4)), np.eye(3), np.full((4, 4), np.nan)])
def test_bad_affine(matrix):
    with pytest.raises(ValueError, match="affine"):
        is_sheared(matrix)


@pytest.mark.parametrize("base", [affine((0.8, 0.8, 2.5)), OBLIQUE])
@pytest.mark.parametrize("tilt", [10.0, 25.0])
def test_deshear_grid_keeps_the_slice_plane(base, tilt):
    source = tilted(base, tilt_deg=tilt)
    shape = (40, 30, 12)
    grid, grid_shape = deshear_grid(source, shape)
    m, s = grid[:3, :3], source[:3, :3]
    assert not is_sheared(grid)
    # column direction, slice plane and pixel sizes kept; slice axis = the normal at the plane distance
    np.testing.assert_allclose(m[:, 0], s[:, 0], atol=1e-9)
    np.testing.assert_allclose(m[:, 1], s[:, 1], atol=1e-9)
    normal = np.cross(s[:, 0], s[:, 1])
    normal /= np.linalg.norm(normal)
    np.testing.assert_allclose(m[:, 2], normal * np.dot(s[:, 2], normal), atol=1e-9)
    # every source voxel centre lies inside the new grid
    corners = np.stack(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1)
    inside = np.linalg.solve(m, s @ corners + (source[:3, 3] - grid[:3, 3])[:, None])
    assert inside.min() > -1e-6
    assert np.all(inside.max(axis=1) <= np.asarray(grid_shape) - 1 + 1e-6)


def test_deshear_grid_takes_pixdim_in_ras_order():
    # sagittal stack: source axis 2 (slices) runs along R, so it gets the R spacing
    directions = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    source = tilted(affine((1.0, 1.0, 3.0), directions=directions), tilt_deg=15, in_plane_axis=0)
    grid, _ = deshear_grid(source, (20, 20, 8), pixdim=(2.0, 1.0, 1.5))
    np.testing.assert_allclose(np.linalg.norm(grid[:3, :3], axis=0), [1.0, 1.5, 2.0])


@pytest.mark.parametrize(
    ("array", "shape"),
    [(np.zeros((4, 5, 6), np.uint16), (1, 4, 5, 6)), (np.zeros((2, 4, 5, 6), np.int16), (2, 4, 5, 6))],
)
def test_to_meta_tensor(array, shape):
    matrix = affine((0.7, 0.7, 5.0), directions=rotation(10, 20))
    out = ToMetaTensor()(array, matrix)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.affine.numpy(), matrix)
    np.testing.assert_allclose(out.meta["original_affine"], matrix)


def test_to_meta_tensor_errors():
    with pytest.raises(ValueError, match="affine is needed"):
        ToMetaTensor()(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        ToMetaTensor()(np.zeros((2, 2)), np.eye(4))


@pytest.mark.parametrize(
    ("transform", "data", "name"),
    [
        (
            ToMetaTensord(["image", "label"]),
            {"image": np.zeros((2, 2, 2)), "affine": np.eye(4)},
            "ToMetaTensord",
        ),
        (ToMetaTensord("image"), {"image": np.zeros((2, 2, 2))}, "ToMetaTensord"),
        (Desheard(["image", "label"]), {"image": MetaTensor(torch.zeros(1, 2, 2, 2))}, "Desheard"),
    ],
)
def test_missing_key_names_the_transform(transform, data, name):
    with pytest.raises(KeyError, match=name):
        transform(data)


def test_deshear_is_a_traced_no_op_for_orthogonal_grids():
    label = ellipsoid_label((30, 30, 10), OBLIQUE, (8, 6, 12))
    image = ToMetaTensor()(label, OBLIQUE)
    transform = Deshear()
    out = transform(image)
    assert torch.equal(out.as_tensor(), image.as_tensor())
    np.testing.assert_allclose(out.affine.numpy(), OBLIQUE, atol=1e-12)
    assert len(out.applied_operations) == 1
    back = transform.inverse(out)
    assert torch.equal(back.as_tensor(), image.as_tensor()) and not back.applied_operations


def test_deshear_and_inverse_on_a_tilted_grid():
    shape = (48, 48, 16)
    label = ellipsoid_label(shape, TILTED, (14, 10, 16), core=None)
    data = {"label": ToMetaTensor()(label, TILTED)}
    transform = Desheard("label", mode="nearest", padding_mode="zeros")
    out = transform(data)
    assert not is_sheared(out["label"].affine)
    assert out["label"].sum() > 0.9 * label.sum()
    back = transform.inverse(out)["label"]
    assert tuple(back.shape[1:]) == shape
    np.testing.assert_allclose(back.affine.numpy(), TILTED, atol=1e-4)
    # nearest there and back on the same voxel size only shifts rows: exact
    assert np.array_equal(back[0].numpy().astype(np.uint8), label)
