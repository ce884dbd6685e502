from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ml_worker.transforms.intensity import CT_WINDOWS, ModalityIntensity, ModalityIntensityd

HU = np.array([-1024.0, -160.0, 40.0, 140.0, 240.0, 3000.0], dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # soft tissue 40/400 -> [-160, 240]
        ({}, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]),
        ({"window": "soft_tissue"}, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]),
        # brain 40/80 -> [0, 80]
        ({"window": "brain"}, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]),
        # lung -600/1500 -> [-1350, 150]
        ({"window": "lung"}, [326 / 1500, 1190 / 1500, 1390 / 1500, 1490 / 1500, 1.0, 1.0]),
        # an explicit (level, width)
        ({"window": (140.0, 200.0)}, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]),
    ],
)
def test_ct_window(kwargs, expected):
    out = ModalityIntensity("CT", **kwargs)(HU[None])
    assert out.dtype == np.float32 and out.shape == (1, HU.size)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


@pytest.mark.parametrize("modality", ["ct", " CT "])
def test_modality_name_is_case_insensitive(modality):
    np.testing.assert_allclose(ModalityIntensity(modality)(HU[None]), ModalityIntensity("CT")(HU[None]))


@pytest.mark.parametrize("modality", ["MR", "PT", "US"])
def test_percentile_clipping(modality):
    # 1000 values 0..999 plus two outliers: the 0.5/99.5 percentiles clip the outliers away.
    values = np.concatenate([np.arange(1000.0), [-1e6, 1.7e6]]).astype(np.float32)
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    out = ModalityIntensity(modality)(values[None])[0]
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[-2] == 0.0 and out[-1] == 1.0  # the outliers sit at the ends
    np.testing.assert_allclose(out[500], (500 - lo) / (hi - lo), rtol=1e-6)


@pytest.mark.parametrize("maximum", [121.0, 2776.9, 1.7e6])  # the hippocampus range of maxima
def test_percentiles_normalise_each_volume(maximum):
    image = np.random.default_rng(0).random((1, 8, 8, 8)).astype(np.float32) * maximum
    out = ModalityIntensity("MR")(image)
    reference = ModalityIntensity("MR")(image / maximum)
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_percentiles_are_per_channel():
    image = np.stack([np.arange(100.0), 1000.0 * np.arange(100.0)]).astype(np.float32)
    out = ModalityIntensity("MR")(image)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    pooled = ModalityIntensity("MR", channel_wise=False)(image)
    assert pooled[0].max() < 0.2


@pytest.mark.parametrize(
    ("modality", "value"),
    [("MR", 0.0), ("MR", 7.5), ("MR", -3e5), ("PT", 1.7e6), ("CT", 40.0), ("CT", -1024.0)],
)
def test_constant_image_has_no_division_by_zero(modality, value):
    image = np.full((1, 4, 5, 6), value, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ModalityIntensity(modality)(image)
    assert np.all(np.isfinite(out))
    assert np.all((out >= 0) & (out <= 1))
    if modality != "CT":
        assert np.all(out == 0.0)


def test_keeps_container_and_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.arange(27.0).reshape(1, 3, 3, 3), affine=affine)
    out = ModalityIntensity("MR")(image)
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.affine, affine)
    assert isinstance(ModalityIntensity("CT")(torch.zeros(1, 2, 2, 2)), torch.Tensor)
    assert isinstance(ModalityIntensity("CT")(np.zeros((1, 2, 2, 2), np.int16)), np.ndarray)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"modality": "CT", "window": "liverish"}, KeyError),
        ({"modality": "CT", "window": (40.0, 0.0)}, ValueError),
        ({"modality": "CT", "window": (40.0, -10.0)}, ValueError),
        ({"modality": "MR", "percentiles": (99.5, 0.5)}, ValueError),
        ({"modality": "MR", "percentiles": (-1.0, 50.0)}, ValueError),
    ],
)
def test_invalid_settings(kwargs, error):
    with pytest.raises(error):
        ModalityIntensity(**kwargs)


def test_unknown_window_lists_known_ones():
    with pytest.raises(KeyError, match=", ".join(sorted(CT_WINDOWS))):
        ModalityIntensity("CT", window="liverish")


def test_dictionary_version_scales_only_its_keys():
    data = {"image": HU[None].copy(), "label": np.array([[0, 1, 2, 1, 0, 2]], np.uint8)}
    out = ModalityIntensityd("image", "CT")(data)
    np.testing.assert_allclose(out["image"], ModalityIntensity("CT")(HU[None]))
    assert out["label"] is data["label"]


def test_missing_key_names_the_transform():
    with pytest.raises(KeyError, match="ModalityIntensityd"):
        ModalityIntensityd(["image", "other"], "MR")({"image": np.zeros((1, 2, 2, 2))})
    out = ModalityIntensityd(["image", "other"], "MR", allow_missing_keys=True)(
        {"image": np.zeros((1, 2, 2, 2))}
    )
    assert set(out) == {"image"}
