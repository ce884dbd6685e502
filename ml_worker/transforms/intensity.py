"""Modality-aware intensity normalisation to ``[0, 1]``, MONAI style (array + ``d`` dictionary wrapper).

- CT (Hounsfield units): clip to a window ``(level, width)`` -- soft tissue 40/400 by default, or a
  named preset of :data:`CT_WINDOWS` -- then scale ``[level - width/2, level + width/2]`` to ``[0, 1]``.
  Fixed, so the same tissue maps to the same value in every volume.
- MR and every other modality (arbitrary units; the hippocampus maxima range from 121 to 1.7e6): clip
  to the ``(0.5, 99.5)`` percentiles of each volume (and channel) and scale that range to ``[0, 1]``.
  A constant channel (no range) becomes all zeros instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["CT_WINDOWS", "ModalityIntensity", "ModalityIntensityd"]

# (level, width) in HU.
CT_WINDOWS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "soft_tissue": (40.0, 400.0),
        "brain": (40.0, 80.0),
        "lung": (-600.0, 1500.0),
        "bone": (400.0, 1800.0),
    }
)


def _ct_window(window: str | Sequence[float]) -> tuple[float, float]:
    if isinstance(window, str):
        try:
            level, width = CT_WINDOWS[window]
        except KeyError:
            raise KeyError(f"unknown CT window {window!r}; known: {', '.join(sorted(CT_WINDOWS))}") from None
    else:
        level, width = (float(v) for v in window)
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"a CT window needs a finite level and a width > 0, got ({level}, {width})")
    return level, width


class ModalityIntensity(Transform):
    """Scale intensities to ``[0, 1]`` by modality: a fixed window for CT, percentiles otherwise.

    Input: ``(C, I, J, K)`` channel-first (any spatial rank works), numpy or torch (a MetaTensor keeps
    its metadata). Output: the same shape and container type, float32, every value in ``[0, 1]``.
    Percentiles are taken per channel when ``channel_wise`` (the default), else over the whole array.

    Args:
        modality: DICOM modality ("CT", "MR", "PT", ...); case-insensitive. Only "CT" uses the window.
        window: CT only: a :data:`CT_WINDOWS` name or ``(level, width)`` in HU, ``width > 0``.
        percentiles: every other modality: ``(lower, upper)`` in ``[0, 100]`` with ``lower < upper``.
        channel_wise: compute the percentiles per channel (first axis).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        modality: str,
        *,
        window: str | Sequence[float] = "soft_tissue",
        percentiles: Sequence[float] = (0.5, 99.5),
        channel_wise: bool = True,
    ) -> None:
        self.modality = modality.strip().upper()
        self.window = _ct_window(window) if self.modality == "CT" else None
        lower, upper = (float(p) for p in percentiles)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
        self.percentiles = (lower, upper)
        self.channel_wise = channel_wise

    def _range(self, values: torch.Tensor) -> tuple[float, float]:
        if self.window is not None:
            level, width = self.window
            return level - width / 2.0, level + width / 2.0
        # numpy: torch.quantile refuses inputs above 16 M elements (a 512^2 x 64 CT already is).
        lo, hi = np.percentile(values.detach().cpu().numpy().astype(np.float64), self.percentiles)
        return float(lo), float(hi)

    @staticmethod
    def _scale(values: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        if not hi > lo:  # constant (or empty) channel: nothing to scale
            return torch.zeros_like(values)
        return ((values.clamp(lo, hi) - lo) / (hi - lo)).clamp(0.0, 1.0)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        if self.channel_wise and self.window is None and data.ndim > 1:
            out = torch.stack([self._scale(channel, *self._range(channel)) for channel in data])
        else:
            out = self._scale(data, *self._range(data))
        return convert_to_dst_type(out, dst=img, dtype=torch.float32)[0]


class ModalityIntensityd(MapTransform):
    """Dictionary wrapper of :class:`ModalityIntensity` over ``keys`` (usually only the image)."""

    backend = ModalityIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        modality: str,
        *,
        window: str | Sequence[float] = "soft_tissue",
        percentiles: Sequence[float] = (0.5, 99.5),
        channel_wise: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ModalityIntensity(
            modality, window=window, percentiles=percentiles, channel_wise=channel_wise
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
