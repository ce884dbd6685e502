from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ml_worker.transforms.geometry import is_sheared
from ml_worker.transforms.intensity import ModalityIntensity
from ml_worker.transforms.pipeline import preprocessing, to_source_grid
from ml_worker.transforms.tests.synthetic import affine, dice, ellipsoid_label, image_for, rotation, tilted

OBLIQUE_ANISO = affine((0.7, 0.7, 5.0), directions=rotation(15, -18), origin=(-20, 10, 5))
OBLIQUE_ISO = affine((1.0, 1.0, 1.0), directions=rotation(12, 16), origin=(3, -7, 11))
TILTED = tilted(affine((0.8, 0.8, 2.5), origin=(5, -3, 2)), tilt_deg=20)
TILTED_OBLIQUE = tilted(affine((0.9, 0.9, 3.0), directions=rotation(0, 14, 10)), tilt_deg=15)
# a sagittal LPS-like stack tilted along its rows: the slice axis becomes R after Orientation
SAGITTAL_TILTED = tilted(
    affine((1.0, 1.0, 3.0), directions=np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])),
    tilt_deg=15,
    in_plane_axis=0,
)
LPS_ANISO = affine((0.7, 0.7, 5.0), directions=np.diag([-1.0, -1.0, 1.0]), origin=(40, 30, -20))


def _round_trip(matrix, shape, *, target_spacing, roi_size, radii=(18, 14, 20), fit="pad", core=0.5):
    label = ellipsoid_label(shape, matrix, radii, core=core)
    transform = preprocessing(
        modality="MR", target_spacing=target_spacing, roi_size=roi_size, fit=fit, label_key="label"
    )
    data = transform({"image": image_for(label), "label": label, "affine": matrix})
    # the identity "model": hand the transformed label back as the prediction
    back = to_source_grid(
        data["label"][0],
        transform=transform,
        data=data,
        source_shape=shape,
        source_affine=matrix,
        kind="labels",
    )
    return label, data, transform, back


@pytest.mark.parametrize(
    ("matrix", "shape", "target_spacing", "roi_size"),
    [
        (OBLIQUE_ANISO, (96, 96, 14), (1.0, 1.0, 1.0), (32, 32, 32)),
        (OBLIQUE_ANISO, (96, 96, 14), (1.2, 1.2, 2.0), None),
        (OBLIQUE_ISO, (48, 48, 48), (0.8, 0.8, 1.5), (64, 64, 64)),
        (LPS_ANISO, (96, 96, 14), (1.0, 1.0, 1.0), (32, 32, 32)),
        (TILTED, (64, 64, 20), (1.0, 1.0, 1.0), (32, 32, 32)),
        (TILTED, (64, 64, 20), None, None),
        (TILTED_OBLIQUE, (56, 56, 16), (1.0, 1.0, 1.5), None),
        (SAGITTAL_TILTED, (48, 48, 16), (1.0, 1.0, 1.0), None),
    ],
)
def test_round_trip_lands_on_the_source_grid(matrix, shape, target_spacing, roi_size):
    label, data, _, back = _round_trip(matrix, shape, target_spacing=target_spacing, roi_size=roi_size)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert set(np.unique(back)) <= {0, 1, 2}
    assert dice(back > 0, label > 0) > 0.97
    assert dice(back == 2, label == 2) > 0.9
    # what the network saw: an orthogonal RAS grid at the target spacing, at least roi_size big
    image = data["image"]
    grid = image.affine.numpy()
    assert "".join(nib.aff2axcodes(grid)) == "RAS"
    assert not is_sheared(grid)
    if target_spacing is not None:
        np.testing.assert_allclose(np.linalg.norm(grid[:3, :3], axis=0), target_spacing, atol=1e-4)
    if roi_size is not None:
        assert all(n >= r for n, r in zip(image.shape[1:], roi_size, strict=True))
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@pytest.mark.parametrize(
    ("matrix", "shape", "target_spacing", "roi_size", "fit"),
    [
        (np.eye(4), (40, 30, 20), (1.0, 1.0, 1.0), (32, 32, 32), "pad"),  # RAS, same spacing
        (affine((1.0, 1.0, 1.0), origin=(3, -4, 5)), (40, 30, 20), None, None, "pad"),
        (affine((0.7, 0.7, 5.0)), (64, 64, 10), (0.7, 0.7, 5.0), (80, 48, 16), "pad"),
        (LPS_ANISO, (64, 64, 10), (0.7, 0.7, 5.0), (32, 32, 32), "pad"),  # flips only
        (OBLIQUE_ISO, (48, 48, 48), (1.0, 1.0, 1.0), None, "pad"),  # oblique, never resampled
        (affine((1.0, 1.0, 1.0)), (40, 30, 20), (1.0, 1.0, 1.0), (64, 48, 48), "pad_or_crop"),
    ],
)
def test_round_trip_is_exact_without_resampling(matrix, shape, target_spacing, roi_size, fit):
    label, _, _, back = _round_trip(
        matrix, shape, target_spacing=target_spacing, roi_size=roi_size, fit=fit, radii=(9, 7, 15)
    )
    assert np.array_equal(back, label)


def test_crop_loses_only_what_was_cropped():
    shape = (40, 30, 20)
    label, data, _, back = _round_trip(
        np.eye(4), shape, target_spacing=None, roi_size=(24, 24, 24), fit="pad_or_crop", radii=(25, 25, 25)
    )
    assert tuple(data["image"].shape[1:]) == (24, 24, 24)
    kept = np.zeros(shape, bool)
    kept[8:32, 3:27, :] = True  # centre crop of 40 -> 24 and 30 -> 24; 20 is padded
    assert np.array_equal(back[kept], label[kept])
    assert not back[~kept].any()


@pytest.mark.parametrize(
    ("matrix", "shape", "target_spacing", "radii"),
    [
        (OBLIQUE_ANISO, (96, 96, 14), (1.0, 1.0, 1.0), (18, 14, 20)),
        (TILTED, (64, 64, 20), (1.0, 1.0, 1.0), (18, 14, 20)),
        (np.eye(4), (40, 36, 30), (1.0, 1.0, 1.0), (12, 10, 9)),
    ],
)
def test_probabilities_go_back_linearly(matrix, shape, target_spacing, radii):
    label = ellipsoid_label(shape, matrix, radii, core=None)
    transform = preprocessing(modality="MR", target_spacing=target_spacing, roi_size=(32, 32, 32))
    data = transform({"image": image_for(label), "affine": matrix})
    # a soft "model": the scaled image is already a foreground probability
    probs = torch.cat([1.0 - data["image"], data["image"]]).as_tensor()
    back = to_source_grid(
        probs, transform=transform, data=data, source_shape=shape, source_affine=matrix, kind="probabilities"
    )
    assert back.shape == (2, *shape) and back.dtype == np.float32
    assert back.min() >= 0.0 and back.max() <= 1.0
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-4)
    assert dice(back[1] > 0.5, label > 0) > 0.97
    if np.array_equal(matrix, np.eye(4)):
        # no resampling: the probabilities come back unchanged
        np.testing.assert_allclose(back[1], ModalityIntensity("MR")(image_for(label)[None])[0], atol=1e-6)


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_003"])
def test_hippocampus_round_trip(shared_data, case):
    image_nii = nib.load(shared_data / "hippocampus" / "imagesTr" / f"{case}.nii.gz")
    label_nii = nib.load(shared_data / "hippocampus" / "labelsTr" / f"{case}.nii.gz")
    image, matrix = np.asarray(image_nii.dataobj), image_nii.affine
    label = np.asarray(label_nii.dataobj).astype(np.uint8)
    for target_spacing, exact in (
        ((1.0, 1.0, 1.0), True),
        ((0.75, 0.75, 0.75), True),
        ((1.25, 1.0, 1.0), False),
    ):
        transform = preprocessing(
            modality="MR",
            target_spacing=target_spacing,
            roi_size=(48, 64, 48),
            label_key="label",
            k_divisible=16,
        )
        data = transform({"image": image, "label": label, "affine": matrix})
        assert all(n % 16 == 0 for n in data["image"].shape[1:])
        assert float(data["image"].max()) == 1.0
        back = to_source_grid(
            data["label"],
            transform=transform,
            data=data,
            source_shape=label.shape,
            source_affine=matrix,
            kind="labels",
        )[0]
        assert back.shape == label.shape
        if exact:
            assert np.array_equal(back, label)
        else:
            assert min(dice(back == c, label == c) for c in (1, 2)) > 0.9


def test_gantry_tilted_ct_round_trip(shared_data):
    from ml_worker.io.dicom_series import dataset_from_bytes, volumes_from_datasets

    files = sorted((shared_data / "dicom-edge" / "philips-tilt").iterdir())
    (volume,) = volumes_from_datasets([dataset_from_bytes(f.read_bytes()) for f in files])
    assert is_sheared(volume.affine)
    mask = (volume.array > 300).astype(np.uint8)
    transform = preprocessing(modality="CT", target_spacing=None, roi_size=None, label_key="label")
    data = transform({"image": volume.array, "label": mask, "affine": volume.affine})
    assert not is_sheared(data["image"].affine)
    # slices keep their plane; the slice axis is the normal, at the true distance between the planes
    np.testing.assert_allclose(
        sorted(np.linalg.norm(data["image"].affine[:3, :3].numpy(), axis=0)),
        sorted([*volume.spacing[:2], 2.5 * np.cos(np.radians(18.5))]),
        atol=2e-3,
    )
    back = to_source_grid(
        data["label"][0],
        transform=transform,
        data=data,
        source_shape=volume.shape,
        source_affine=volume.affine,
        kind="labels",
    )
    assert np.array_equal(back, mask)


def test_prediction_on_the_wrong_grid_is_refused():
    transform = preprocessing(modality="MR", target_spacing=None, roi_size=(16, 16, 16))
    data = transform({"image": np.zeros((10, 10, 10)), "affine": np.eye(4)})
    with pytest.raises(ValueError, match="preprocessed grid"):
        to_source_grid(
            np.zeros((10, 10, 10)),
            transform=transform,
            data=data,
            source_shape=(10, 10, 10),
            source_affine=np.eye(4),
            kind="labels",
        )
    with pytest.raises(ValueError, match="source grid"):
        to_source_grid(
            np.zeros((16, 16, 16)),
            transform=transform,
            data=data,
            source_shape=(10, 10, 10),
            source_affine=np.diag([2.0, 1.0, 1.0, 1.0]),
            kind="labels",
        )
    with pytest.raises(ValueError, match="integer"):
        to_source_grid(
            np.full((16, 16, 16), 0.5),
            transform=transform,
            data=data,
            source_shape=(10, 10, 10),
            source_affine=np.eye(4),
            kind="labels",
        )
    uint16 = np.zeros((16, 16, 16), np.uint16)
    uint16[4:8, 4:8, 4:8] = 2  # the source is padded by 3 on each side
    back = to_source_grid(
        uint16,
        transform=transform,
        data=data,
        source_shape=(10, 10, 10),
        source_affine=np.eye(4),
        kind="labels",
    )
    assert back.dtype == np.uint8 and back.sum() == 2 * 4**3
    with pytest.raises(ValueError, match="kind"):
        to_source_grid(
            np.zeros((16, 16, 16)),
            transform=transform,
            data=data,
            source_shape=(10, 10, 10),
            source_affine=np.eye(4),
            kind="logits",
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_spacing": (1.0, 1.0), "roi_size": None}, "target_spacing"),
        ({"target_spacing": (1.0, 0.0, 1.0), "roi_size": None}, "target_spacing"),
        ({"target_spacing": None, "roi_size": (16, 16)}, "roi_size"),
        ({"target_spacing": None, "roi_size": (16, 16, 16), "fit": "stretch"}, "fit"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        preprocessing(modality="MR", **kwargs)


def test_missing_label_names_the_transform():
    transform = preprocessing(modality="MR", target_spacing=None, roi_size=None, label_key="label")
    # Compose wraps what a transform raises in a RuntimeError naming it; the cause is the KeyError
    with pytest.raises(RuntimeError, match="ToMetaTensord") as raised:
        transform({"image": np.zeros((4, 4, 4)), "affine": np.eye(4)})
    assert isinstance(raised.value.__cause__, KeyError)
    assert "ToMetaTensord" in str(raised.value.__cause__) and "label" in str(raised.value.__cause__)
