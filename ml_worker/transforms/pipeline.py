"""The preprocessing pipeline of every model, and its exact inverse back onto the source voxel grid.

Forward (:func:`preprocessing`), on a dict ``{"image": (I, J, K) array, "affine": (4, 4)}`` (plus
``"label"`` for training) in the :mod:`ml_worker.io.volume` convention::

    ToMetaTensord -> ModalityIntensityd -> Desheard -> Orientationd("RAS") -> Spacingd -> pad / crop

Intensity comes first, so CT windows and MR percentiles are computed on the source voxels only (not on
voxels invented by resampling or padding). Every spatial step is a traced MONAI transform, so
:func:`to_source_grid` inverts a prediction with MONAI's own ``Invertd`` (nearest for label maps,
linear for probabilities) and then checks that it landed on the source grid (shape and affine).

Exactness: flips, permutations, pads and crops are inverted exactly; resampling (a ``target_spacing``
different from the source's, or a sheared source, see :mod:`ml_worker.transforms.geometry`) is
interpolated once forward and once back. An orthogonal volume whose spacing already equals
``target_spacing`` (or ``target_spacing=None``) is never resampled, oblique or not: its round trip is
bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    DivisiblePadd,
    Invertd,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
    SpatialPadd,
)

from ml_worker.transforms.geometry import Desheard, ToMetaTensord, _as_affine
from ml_worker.transforms.intensity import ModalityIntensityd

__all__ = ["preprocessing", "to_source_grid"]

# The affine after the inverse may differ from the source's by float32 round-off of the resampling.
_AFFINE_ATOL = 1e-3
_PRED_KEY = "__prediction__"


def preprocessing(
    *,
    modality: str,
    target_spacing: Sequence[float] | None,
    roi_size: Sequence[int] | None,
    window: str | Sequence[float] = "soft_tissue",
    percentiles: Sequence[float] = (0.5, 99.5),
    fit: Literal["pad", "pad_or_crop"] = "pad",
    k_divisible: int | None = None,
    image_key: str = "image",
    label_key: str | None = None,
    affine_key: str = "affine",
) -> Compose:
    """The pre-transforms of a model: source arrays + affine -> a network-ready ``(1, X, Y, Z)`` image.

    Input dict: ``image_key`` ``(I, J, K)`` or ``(C, I, J, K)``, ``affine_key`` ``(4, 4)`` voxel -> RAS mm,
    and ``label_key`` (same grid) when given. Output: ``image_key`` float32 MetaTensor ``(C, X, Y, Z)`` in
    ``[0, 1]`` on an orthogonal RAS grid (its ``affine`` says where); the label, float32 with the same
    integer values, on the same grid (nearest-neighbour, zero-padded).

    Args:
        modality: DICOM modality; "CT" uses ``window``, anything else ``percentiles`` (see
            :class:`~ml_worker.transforms.intensity.ModalityIntensity`).
        target_spacing: output voxel size in mm along R, A, S; ``None`` keeps the source spacing (a
            sheared source is still made orthogonal, at its own in-plane and between-plane spacing).
        roi_size: ``fit="pad"``: pad (centred, zeros) to at least this size, larger volumes stay as they
            are (a sliding-window inferer covers them); ``fit="pad_or_crop"``: pad or centre-crop to
            exactly this size (what is cropped away comes back as zeros on the source grid).
        k_divisible: then pad each spatial size up to a multiple of this (e.g. ``2 ** levels`` of a U-Net).
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["bilinear", "nearest"][: len(keys)]
    padding_modes = ["border", "zeros"][: len(keys)]
    transforms: list[Any] = [
        ToMetaTensord(keys, affine_key=affine_key),
        ModalityIntensityd(image_key, modality, window=window, percentiles=percentiles),
        Desheard(keys, target_spacing, mode=modes, padding_mode=padding_modes),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if target_spacing is not None:
        pixdim = tuple(float(s) for s in target_spacing)
        if len(pixdim) != 3 or min(pixdim) <= 0:
            raise ValueError(f"target_spacing must be three positive spacings in mm, got {target_spacing}")
        transforms.append(Spacingd(keys, pixdim=pixdim, mode=modes, padding_mode=padding_modes))
    if roi_size is not None:
        size = tuple(int(s) for s in roi_size)
        if len(size) != 3 or min(size) <= 0:
            raise ValueError(f"roi_size must be three positive sizes, got {roi_size}")
        if fit == "pad":
            transforms.append(SpatialPadd(keys, spatial_size=size))
        elif fit == "pad_or_crop":
            transforms.append(ResizeWithPadOrCropd(keys, spatial_size=size))
        else:
            raise ValueError(f"fit must be 'pad' or 'pad_or_crop', got {fit!r}")
    if k_divisible is not None:
        transforms.append(DivisiblePadd(keys, k=int(k_divisible)))
    return Compose(transforms)


def to_source_grid(
    prediction: torch.Tensor | np.ndarray,
    *,
    transform: Compose,
    data: Mapping[str, Any],
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    kind: Literal["labels", "probabilities"],
    image_key: str = "image",
) -> np.ndarray:
    """Map a network output on the preprocessed grid back onto the source voxel grid.

    Args:
        prediction: on the grid of ``data[image_key]``: ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)``
            (no batch axis). ``kind="labels"``: integer label values (a label map or binary channels),
            inverted with nearest neighbour; ``"probabilities"``: values in ``[0, 1]``, inverted linearly.
        transform: the :func:`preprocessing` Compose that produced ``data``.
        data: its output dict; ``data[image_key]`` carries the trace of what was applied.
        source_shape, source_affine: the source volume's ``(I, J, K)`` and ``(4, 4)`` affine; the result is
            checked against them, so a prediction can never land on the wrong grid silently.

    Returns:
        ``(I, J, K)`` (or ``(C, I, J, K)``, following ``prediction``) on the source grid: uint8 for labels,
        float32 in ``[0, 1]`` for probabilities. Voxels of the source the network never saw (cropped
        away by ``fit="pad_or_crop"``) are 0.
    """
    if kind not in ("labels", "probabilities"):
        raise ValueError(f"kind must be 'labels' or 'probabilities', got {kind!r}")
    reference = data.get(image_key)
    if not isinstance(reference, MetaTensor):
        raise ValueError(f"data[{image_key!r}] must be the MetaTensor that preprocessing produced")
    if isinstance(prediction, np.ndarray):
        # torch lacks most ops on uint16/32/64: widen those first
        wide = prediction.dtype.kind == "u" and prediction.dtype.itemsize > 1
        pred = torch.as_tensor(prediction.astype(np.int64) if wide else prediction)
    else:
        pred = prediction
    pred = (pred.as_tensor() if isinstance(pred, MetaTensor) else pred).detach().cpu()
    channel_first = pred.ndim == 4
    if pred.ndim == 3:
        pred = pred[None]
    grid = tuple(reference.shape[1:])
    if pred.ndim != 4 or tuple(pred.shape[1:]) != grid:
        raise ValueError(
            f"prediction of shape {tuple(prediction.shape)} is not on the preprocessed grid {grid}"
        )
    if kind == "labels" and pred.numel():
        integral = not pred.is_floating_point() or torch.equal(pred, pred.round())
        if not integral or pred.min() < 0 or pred.max() > 255:
            raise ValueError("label predictions must be integer values in [0, 255]")

    inverter = Invertd(_PRED_KEY, transform=transform, orig_keys=image_key, nearest_interp=kind == "labels")
    # a MetaTensor, or Invertd looks for a separate trace key and, not finding it, skips with a warning
    inverted = inverter({_PRED_KEY: MetaTensor(pred.to(torch.float32)), image_key: reference})[_PRED_KEY]

    shape = tuple(int(s) for s in source_shape)
    affine = _as_affine(source_affine)
    if tuple(inverted.shape[1:]) != shape or not np.allclose(
        np.asarray(inverted.affine, dtype=np.float64), affine, atol=_AFFINE_ATOL
    ):
        raise ValueError(
            f"the inverse landed on shape {tuple(inverted.shape[1:])} and affine "
            f"{np.round(np.asarray(inverted.affine), 4).tolist()}, not on the source grid {shape} "
            f"{np.round(affine, 4).tolist()}: was `data` produced by `transform` from this source?"
        )
    out = inverted.as_tensor().numpy()
    out = np.rint(out).astype(np.uint8) if kind == "labels" else np.clip(out, 0.0, 1.0).astype(np.float32)
    return out if channel_first else out[0]
