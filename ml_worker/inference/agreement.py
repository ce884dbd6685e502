"""Agreement between two label maps of one volume (two readers, or a reader and the final mask): per
class Dice and surface distances in millimetres (95th-percentile Hausdorff and average symmetric
surface distance), as annotation teams report inter-reader variability.

Surfaces are the boundary voxels of each class (6-connected contour); a boundary voxel's distance is
the Euclidean distance, with the voxel spacing, to the other mask's boundary (SimpleITK's signed
Maurer distance map). Arrays in, numbers out: no Django here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class ClassAgreement:
    """How two masks agree on one class. Distances are None when exactly one mask lacks the class
    (no surface to measure to); both empty count as perfect agreement (Dice 1, distances 0)."""

    label: int
    dice: float
    hd95_mm: float | None
    assd_mm: float | None
    voxels_a: int
    voxels_b: int


def _image(mask: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    # GetImageFromArray reads the array's axes as (z, y, x): the spacing goes reversed with them
    image.SetSpacing([float(s) for s in reversed(spacing)])
    return image


def _contour(image: sitk.Image) -> sitk.Image:
    return sitk.LabelContour(image, fullyConnected=False)


def _surface_to(contour_a: sitk.Image, contour_b: sitk.Image) -> np.ndarray:
    """Distances (mm) from each boundary voxel of `a` to the nearest boundary voxel of `b` (the
    distance map of b's boundary, read on a's boundary; 0 where the boundaries meet)."""
    on_a = sitk.GetArrayViewFromImage(contour_a) > 0
    distance = sitk.SignedMaurerDistanceMap(
        contour_b, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.abs(sitk.GetArrayFromImage(distance)[on_a])


def class_agreement(a: np.ndarray, b: np.ndarray, *, label: int, spacing: Sequence[float]) -> ClassAgreement:
    """Dice, HD95 and ASSD (mm) of class `label` between label maps `a` and `b` (same shape; `spacing`
    per array axis)."""
    if a.shape != b.shape:
        raise ValueError(f"The two masks differ in shape: {a.shape} and {b.shape}.")
    ma, mb = a == label, b == label
    na, nb = int(ma.sum()), int(mb.sum())
    if na == 0 and nb == 0:
        return ClassAgreement(label, 1.0, 0.0, 0.0, 0, 0)
    dice = 2.0 * int((ma & mb).sum()) / (na + nb)
    if na == 0 or nb == 0:
        return ClassAgreement(label, dice, None, None, na, nb)
    ca, cb = _contour(_image(ma, spacing)), _contour(_image(mb, spacing))
    both = np.concatenate([_surface_to(ca, cb), _surface_to(cb, ca)])
    return ClassAgreement(
        label=label,
        dice=dice,
        # to a tenth of a micrometre: the distance map is float32
        hd95_mm=round(float(np.percentile(both, 95)), 4),
        assd_mm=round(float(both.mean()), 4),
        voxels_a=na,
        voxels_b=nb,
    )


def agreement(
    a: np.ndarray, b: np.ndarray, *, labels: Iterable[int], spacing: Sequence[float]
) -> list[ClassAgreement]:
    """`class_agreement` for each of `labels`, in that order."""
    return [class_agreement(a, b, label=label, spacing=spacing) for label in labels]
