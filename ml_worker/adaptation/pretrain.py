"""Self-supervised pretraining of the native 3D net on unlabelled volumes with Volume Fusion.

Volume Fusion (MIS-FM, Wang et al. 2023, arXiv:2306.16925): two sub-volumes ``a`` and ``b`` of
normalised images are fused voxel by voxel with a coefficient map ``alpha`` that is piecewise constant
over random boxes and discretised to ``K`` levels ``{0, 1/(K-1), ..., 1}`` (0 outside every box)::

    fused = alpha * a + (1 - alpha) * b            label = alpha * (K - 1)  in {0, ..., K-1}

and the network learns to predict the level of every voxel (K-way softmax, cross-entropy + Dice). To
tell how much of each volume is in a voxel it has to know what anatomy looks like, which is what a
segmentation network needs; and a site can do it on its own PACS before any label exists.

Here:

- :class:`VolumeFusion` / :class:`VolumeFusiond`: the MONAI-style transform (array and dict).
- :func:`pretrain`: trains :func:`~ml_worker.models.native3d.build_native3d` with ``num_classes=K`` and
  no guidance channels on a list of unlabelled NIfTI files; seeded, resumable from the checkpoint it
  writes after every epoch, progress callback, CUDA AMP on CUDA only. The result is a native3d weights
  file (:func:`~ml_worker.models.native3d.load_native3d` reads it) with the pretraining record beside.
- :func:`transfer_pretrained`: copies those weights into a segmentation net of the same width (with
  guidance channels and ``C`` classes): every tensor whose name and shape match, the input stem's image
  channel (guidance channels' kernels zeroed, so guidance starts with no effect), never the head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.losses import DiceCELoss
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from torch import nn

from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import (
    CheckpointError,
    autocast,
    load_state_dict,
    save_atomic,
    select_device,
)
from ml_worker.models.native3d import DIVISOR, Native3DConfig, Native3DNet, build_native3d, load_native3d
from ml_worker.transforms.pipeline import preprocessing

__all__ = [
    "PretrainConfig",
    "PretrainError",
    "PretrainProgress",
    "PretrainResult",
    "TransferError",
    "TransferReport",
    "VolumeFusion",
    "VolumeFusiond",
    "fusion_loss",
    "load_pretrained",
    "load_unlabelled",
    "pretrain",
    "pretrain_network",
    "pretrain_step",
    "transfer_pretrained",
]

PRETRAIN_FORMAT = "volume-fusion/1"
CHECKPOINT_NAME = "last.pt"


class PretrainError(ValueError):
    """Pretraining cannot run as asked: bad settings, unusable volumes, or a checkpoint of other settings."""


class TransferError(ValueError):
    """Pretrained weights that do not fit the target network at all."""


# ---- the transform ---------------------------------------------------------------------------------


def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in values)
    if not lo <= hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got ({lo}, {hi})")
    return lo, hi


class VolumeFusion(Randomizable, Transform):
    """Fuse two sub-volumes with a random boxwise, ``K``-level coefficient map; label every voxel's level.

    Call: ``fused, label = VolumeFusion(...)(a, b)`` with ``a``, ``b`` ``(C, X, Y, Z)`` of the same shape
    (numpy or torch; intensities normalised, e.g. to ``[0, 1]``). Returns ``fused`` ``(C, X, Y, Z)``
    float32 ``alpha * a + (1 - alpha) * b`` and ``label`` ``(1, X, Y, Z)`` int64 in ``{0, ..., K-1}`` with
    ``alpha = label / (K - 1)``, both in the container type of ``a``. Any spatial rank works.

    The map starts at level 0 (all ``b``); then ``n`` boxes (``n`` uniform in ``num_boxes``), each side a
    uniform fraction in ``box_fraction`` of the volume's side, at a uniform position, are each filled with
    a level drawn uniformly from all ``K`` (a later box overwrites an earlier one).

    Args:
        levels: ``K >= 2``, the number of discrete fusion coefficients (MIS-FM uses 5).
        num_boxes: ``(min, max)`` boxes per call, inclusive, ``min >= 1``.
        box_fraction: ``(min, max)`` side of a box as a fraction of the volume's side, in ``(0, 1]``.

    Randomness comes from ``self.R`` (MONAI's ``set_random_state(seed)`` makes it reproducible); call
    with ``randomize=False`` to reuse the last map (e.g. for a second image of the same pair).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        *,
        levels: int = 5,
        num_boxes: Sequence[int] = (8, 32),
        box_fraction: Sequence[float] = (0.1, 0.5),
    ) -> None:
        if int(levels) != levels or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels}")
        low, high = (int(v) for v in _pair(num_boxes, "num_boxes"))
        if low < 1:
            raise ValueError(f"num_boxes must be at least 1, got ({low}, {high})")
        fmin, fmax = _pair(box_fraction, "box_fraction")
        if not 0.0 < fmin <= fmax <= 1.0:
            raise ValueError(f"box_fraction must satisfy 0 < min <= max <= 1, got ({fmin}, {fmax})")
        self.levels = int(levels)
        self.num_boxes = (low, high)
        self.box_fraction = (fmin, fmax)
        self._level_map: np.ndarray | None = None

    @property
    def coefficients(self) -> np.ndarray:
        """The ``K`` fusion coefficients ``alpha``, level ``l`` -> ``l / (K - 1)``."""
        return np.arange(self.levels, dtype=np.float32) / (self.levels - 1)

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw a new level map ``(X, Y, Z)`` int64 for volumes of `spatial_shape`."""
        shape = tuple(int(s) for s in spatial_shape)
        level_map = np.zeros(shape, dtype=np.int64)
        for _ in range(self.R.randint(self.num_boxes[0], self.num_boxes[1] + 1)):
            box = []
            for size in shape:
                lo = max(1, round(self.box_fraction[0] * size))
                hi = max(lo, round(self.box_fraction[1] * size))
                side = self.R.randint(lo, hi + 1)
                start = self.R.randint(0, size - side + 1)
                box.append(slice(start, start + side))
            level_map[tuple(box)] = self.R.randint(0, self.levels)
        self._level_map = level_map

    def __call__(
        self, a: NdarrayOrTensor, b: NdarrayOrTensor, *, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if tuple(a.shape) != tuple(b.shape) or len(a.shape) < 2:
            raise ValueError(
                f"VolumeFusion needs two channel-first sub-volumes of the same shape, "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        spatial = tuple(int(s) for s in a.shape[1:])
        if randomize or self._level_map is None:
            self.randomize(spatial)
        elif self._level_map.shape != spatial:
            raise ValueError(f"the last level map is {self._level_map.shape}, the volumes {spatial}")
        level_map = self._level_map
        alpha = self.coefficients[level_map][None]
        fa = convert_to_numpy(a, dtype=np.float32)
        fb = convert_to_numpy(b, dtype=np.float32)
        fused = alpha * fa + (1.0 - alpha) * fb
        label = level_map[None].copy()
        if isinstance(a, torch.Tensor):
            return (
                convert_to_dst_type(fused, dst=a, dtype=torch.float32)[0],
                convert_to_dst_type(label, dst=a, dtype=torch.int64)[0],
            )
        return fused.astype(np.float32), label


class VolumeFusiond(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`VolumeFusion`.

    Reads the two sub-volumes at ``keys`` (exactly two: ``a`` then ``b``), writes the fused image to
    ``output_key`` (default: the first key) and the level map to ``label_key``. Other arguments as for
    :class:`VolumeFusion`; ``set_random_state`` seeds the inner transform.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "image_b"),
        *,
        label_key: str = "label",
        output_key: str | None = None,
        levels: int = 5,
        num_boxes: Sequence[int] = (8, 32),
        box_fraction: Sequence[float] = (0.1, 0.5),
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"VolumeFusiond needs exactly two keys (a, b), got {list(self.keys)}")
        self.label_key = label_key
        self.output_key = self.keys[0] if output_key is None else output_key
        self.fusion = VolumeFusion(levels=levels, num_boxes=num_boxes, box_fraction=box_fraction)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.fusion.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.fusion.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        missing = [key for key in self.keys if key not in d]
        if missing:
            raise KeyError(
                f"VolumeFusiond: key {missing[0]!r} is not in the data (keys: {sorted(map(str, d))})"
            )
        key_a, key_b = self.keys
        d[self.output_key], d[self.label_key] = self.fusion(d[key_a], d[key_b])
        return d


# ---- pretraining -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a pretraining run (all of them are checked against a checkpoint before resuming).

    levels, num_boxes, box_fraction: the Volume Fusion task (see :class:`VolumeFusion`).
    roi_size: sub-volume (crop) size ``(X, Y, Z)`` on the network grid; multiples of 8.
    spacing: voxel size (mm, R/A/S) volumes are resampled to; ``None`` keeps each volume's own.
    modality: for intensity normalisation ("CT": a fixed window; anything else: percentiles to [0, 1]).
    epochs, batch_size: an epoch has ``steps_per_epoch`` steps of ``batch_size`` fused pairs (default
        ``ceil(volumes / batch_size)``: every volume is the ``a`` side about once per epoch).
    lr, weight_decay: AdamW.
    init_filters, dropout: the network (a later segmentation net must have the same ``init_filters``).
    dice_weight, ce_weight: the loss, ``ce_weight * CE + dice_weight * Dice`` over the ``K`` levels.
    seed: weights, sampling and fusion maps all follow from it (each epoch from ``(seed, epoch)``).
    """

    levels: int = 5
    num_boxes: tuple[int, int] = (8, 32)
    box_fraction: tuple[float, float] = (0.1, 0.5)
    roi_size: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] | None = None
    modality: str = "MR"
    epochs: int = 10
    batch_size: int = 2
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    init_filters: int = 16
    dropout: float = 0.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "num_boxes", tuple(int(v) for v in self.num_boxes))
        set_(self, "box_fraction", tuple(float(v) for v in self.box_fraction))
        set_(self, "roi_size", tuple(int(v) for v in self.roi_size))
        if self.spacing is not None:
            set_(self, "spacing", tuple(float(v) for v in self.spacing))
        problems = []
        if len(self.roi_size) != 3 or any(s < DIVISOR or s % DIVISOR for s in self.roi_size):
            problems.append(f"roi_size must be three multiples of {DIVISOR}, got {list(self.roi_size)}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            problems.append(f"spacing must be three positive sizes in mm, got {list(self.spacing)}")
        if (
            self.epochs < 1
            or self.batch_size < 1
            or (self.steps_per_epoch is not None and self.steps_per_epoch < 1)
        ):
            problems.append("epochs, batch_size and steps_per_epoch must be at least 1")
        if not (self.lr > 0 and self.weight_decay >= 0):
            problems.append(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            problems.append("dice_weight and ce_weight must be >= 0 and not both 0")
        if self.init_filters < 8 or self.init_filters % 8:
            problems.append(
                f"init_filters must be a positive multiple of 8 (GroupNorm), got {self.init_filters}"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        try:  # the transform checks its own arguments
            self.fusion()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise PretrainError("invalid PretrainConfig: " + "; ".join(problems))

    def fusion(self) -> VolumeFusion:
        """The Volume Fusion transform of these settings (unseeded)."""
        return VolumeFusion(levels=self.levels, num_boxes=self.num_boxes, box_fraction=self.box_fraction)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def network_config(self) -> Native3DConfig:
        """The native3d config of the pretrained network: ``K`` level channels, no guidance."""
        return Native3DConfig(
            num_classes=self.levels,
            class_names=tuple(f"level_{i}" for i in range(self.levels)),
            guidance=False,
            init_filters=self.init_filters,
            dropout=self.dropout,
            roi_size=self.roi_size,
            spacing=self.spacing,
        )


def pretrain_network(config: PretrainConfig) -> Native3DNet:
    """The untrained pretraining network: ``(B, 1, X, Y, Z)`` -> ``(B, K, X, Y, Z)`` level logits."""
    return build_native3d(
        num_classes=config.levels, guidance=False, init_filters=config.init_filters, dropout=config.dropout
    )


def fusion_loss(config: PretrainConfig) -> nn.Module:
    """``ce_weight * CE + dice_weight * Dice`` over the ``K`` levels: logits ``(B, K, ...)``, label
    ``(B, 1, ...)`` integer levels."""
    return DiceCELoss(
        to_onehot_y=True, softmax=True, lambda_dice=config.dice_weight, lambda_ce=config.ce_weight
    )


@dataclass(frozen=True)
class PretrainProgress:
    """Reported after every optimizer step (1-based ``epoch`` and ``step``); ``loss`` is the mean over the
    epoch so far."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float

    @property
    def fraction(self) -> float:
        """Share of the whole run done, in ``[0, 1]``."""
        return ((self.epoch - 1) * self.steps + self.step) / (self.epochs * self.steps)


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` produced: the weights file, the trained network (eval mode), the mean loss
    of every epoch (resumed ones included), the epoch it resumed after (0: fresh) and its wall time."""

    path: Path
    model: Native3DNet
    losses: tuple[float, ...]
    resumed_after: int
    seconds: float
    config: PretrainConfig = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "epochs": len(self.losses),
            "losses": [round(v, 5) for v in self.losses],
            "resumed_after": self.resumed_after,
            "seconds": round(self.seconds, 2),
            "config": self.config.to_dict(),
        }


def load_unlabelled(paths: Sequence[Path], config: PretrainConfig) -> list[np.ndarray]:
    """Read and normalise every volume: ``(1, X, Y, Z)`` float32 in ``[0, 1]``, at least ``roi_size``.

    The same preprocessing as inference (intensity by modality, RAS, ``spacing``, zero padding).
    All volumes are held in memory.

    Raises:
        PretrainError: no paths, a file that is missing or not one 3D image.
    """
    if not paths:
        raise PretrainError("pretraining needs at least one unlabelled volume, got none")
    transform = preprocessing(
        modality=config.modality, target_spacing=config.spacing, roi_size=config.roi_size, fit="pad"
    )
    volumes = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise PretrainError(f"no image file at {path}")
        array, affine = load_volume(path)
        if array.ndim != 3:
            raise PretrainError(f"{path} is not a single 3D image (shape {array.shape})")
        image = transform({"image": array.astype(np.float32), "affine": affine})["image"]
        volumes.append(np.ascontiguousarray(convert_to_numpy(image, dtype=np.float32)))
    return volumes


def _crop(volume: np.ndarray, roi: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    start = [int(rng.integers(0, s - r + 1)) for s, r in zip(volume.shape[1:], roi, strict=True)]
    return volume[(slice(None), *(slice(s, s + r) for s, r in zip(start, roi, strict=True)))]


def _fusion_batch(
    volumes: Sequence[np.ndarray],
    firsts: Sequence[int],
    fusion: VolumeFusion,
    roi: Sequence[int],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1, X, Y, Z)`` fused crops and ``(B, 1, X, Y, Z)`` levels; ``b`` is another volume when there
    is one (fusing a volume with itself teaches less), else another crop of the same."""
    images, labels = [], []
    for first in firsts:
        second = first
        if len(volumes) > 1:
            second = int(rng.integers(0, len(volumes) - 1))
            second += second >= first
        fused, label = fusion(_crop(volumes[first], roi, rng), _crop(volumes[second], roi, rng))
        images.append(fused)
        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def pretrain_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step on ``images`` ``(B, 1, X, Y, Z)`` and level ``labels`` ``(B, 1, X, Y, Z)``
    (already on the model's device); mixed precision on CUDA. Returns the loss before the step."""
    device = next(model.parameters()).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device):
        logits = model(images)
    loss = loss_fn(logits.float(), labels)
    if not torch.isfinite(loss):
        raise PretrainError(f"the pretraining loss is not finite ({float(loss)}); lower the learning rate")
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _epoch_seeds(seed: int, epoch: int) -> tuple[np.random.Generator, int, int]:
    """Sampling generator, torch seed (dropout) and fusion seed of one epoch, from ``(seed, epoch)`` only,
    so a run resumed at an epoch boundary draws exactly what an uninterrupted one would."""
    sequence = np.random.SeedSequence([int(seed), int(epoch)])
    sampling, other = sequence.spawn(2)
    torch_seed, fusion_seed = (int(v) for v in other.generate_state(2))
    return np.random.default_rng(sampling), torch_seed, fusion_seed


def _fingerprint(paths: Sequence[Path]) -> str:
    """Which volumes, by name and size (not content: hashing a PACS would take longer than training)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}\0{Path(path).stat().st_size}\n".encode())
    return digest.hexdigest()


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _load_checkpoint(path: Path, config: PretrainConfig, fingerprint: str) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or pickled objects
        raise PretrainError(
            f"cannot resume from {path}: not a readable checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != PRETRAIN_FORMAT:
        raise PretrainError(f"cannot resume from {path}: not a {PRETRAIN_FORMAT} checkpoint")
    saved = checkpoint["config"]
    mine = config.to_dict()
    # more epochs may be asked of a resumed run; every other setting must be the same
    changed = sorted(k for k in mine if k != "epochs" and saved.get(k) != mine[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)} -> {mine[k]}" for k in changed)
        raise PretrainError(
            f"cannot resume from {path}: it was made with other settings ({details}); "
            "delete it or start afresh with resume=False"
        )
    if checkpoint["volumes"] != fingerprint:
        raise PretrainError(
            f"cannot resume from {path}: it was made on another list of volumes; "
            "delete it or start afresh with resume=False"
        )
    return checkpoint


def pretrain(
    paths: Sequence[Path],
    *,
    out: Path,
    config: PretrainConfig | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    progress: Callable[[PretrainProgress], None] | None = None,
) -> PretrainResult:
    """Pretrain the native 3D net with Volume Fusion on unlabelled NIfTI volumes.

    Args:
        paths: the unlabelled images (NIfTI, one 3D image each); order matters for reproducibility.
        out: the weights file to write at the end: a native3d file (``load_native3d`` reads it; its
            config has ``K`` "level" classes and no guidance) that also holds ``"pretrain"``: method,
            settings, losses, number of volumes.
        config: settings (default :class:`PretrainConfig`).
        checkpoint_dir: where ``last.pt`` (weights, optimizer, scaler, epoch, losses, settings) is
            written atomically after every epoch; default ``<out without suffix>.ckpt/`` beside `out`.
        resume: continue from ``last.pt`` when it exists (its settings and volumes must be these;
            ``epochs`` may be larger); ``False`` starts afresh and overwrites it.
        device: default CUDA when available; CUDA runs in mixed precision (bf16 where supported).
        progress: called after every step with a :class:`PretrainProgress`.

    Returns:
        :class:`PretrainResult`. The same seed, volumes and device give the same weights, resumed or not.

    Raises:
        PretrainError: bad settings or volumes, a checkpoint of other settings or volumes, a
            non-finite loss.
    """
    started = time.perf_counter()
    config = config or PretrainConfig()
    paths = [Path(p) for p in paths]
    out = Path(out)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out.with_suffix(".ckpt")
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    device = select_device(None if device is None else str(device))

    volumes = load_unlabelled(paths, config)
    fingerprint = _fingerprint(paths)
    steps = config.steps_per_epoch or math.ceil(len(volumes) / config.batch_size)

    torch.manual_seed(config.seed)
    model = pretrain_network(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    loss_fn = fusion_loss(config)
    fusion = config.fusion()

    losses: list[float] = []
    if resume and checkpoint_path.is_file():
        checkpoint = _load_checkpoint(checkpoint_path, config, fingerprint)
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        losses = [float(v) for v in checkpoint["losses"]]
    resumed_after = len(losses)

    for epoch in range(resumed_after + 1, config.epochs + 1):
        rng, torch_seed, fusion_seed = _epoch_seeds(config.seed, epoch)
        torch.manual_seed(torch_seed)
        fusion.set_random_state(seed=fusion_seed % (2**32))
        order = rng.permutation(np.resize(np.arange(len(volumes)), steps * config.batch_size))
        total = 0.0
        for step in range(1, steps + 1):
            firsts = order[(step - 1) * config.batch_size : step * config.batch_size]
            images, labels = _fusion_batch(volumes, firsts, fusion, config.roi_size, rng)
            total += pretrain_step(
                model, optimizer, loss_fn, images.to(device), labels.to(device), scaler=scaler
            )
            if progress is not None:
                progress(PretrainProgress(epoch, config.epochs, step, steps, total / step))
        losses.append(total / steps)
        save_atomic(
            {
                "format": PRETRAIN_FORMAT,
                "epoch": epoch,
                "state_dict": _cpu(model.state_dict()),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "losses": list(losses),
                "config": config.to_dict(),
                "volumes": fingerprint,
            },
            checkpoint_path,
        )

    save_atomic(
        {
            "state_dict": _cpu(model.state_dict()),
            "config": config.network_config().to_dict(),
            "pretrain": {
                "method": PRETRAIN_FORMAT,
                "settings": json.loads(json.dumps(config.to_dict())),
                "losses": list(losses),
                "volumes": len(volumes),
            },
        },
        out,
    )
    return PretrainResult(
        path=out,
        model=model.eval(),
        losses=tuple(losses),
        resumed_after=resumed_after,
        seconds=time.perf_counter() - started,
        config=config,
    )


# ---- transfer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_pretrained` did, tensor by tensor.

    copied: target tensors now equal to the pretrained ones (name and shape matched).
    adapted: the input stem: its image channel(s) copied, the extra (guidance) channels zeroed.
    skipped: target tensors left as they were, with why (the head; no such name; another shape).
    unused: pretrained tensors with no counterpart in the target.
    """

    copied: tuple[str, ...]
    adapted: tuple[str, ...]
    skipped: Mapping[str, str]
    unused: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "copied": len(self.copied),
            "adapted": list(self.adapted),
            "skipped": dict(self.skipped),
            "unused": list(self.unused),
        }


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise TransferError(f"{type(module).__name__} is not part of {type(model).__name__}")


def transfer_pretrained(
    pretrained_state: Mapping[str, torch.Tensor] | Path | str, target_model: nn.Module
) -> TransferReport:
    """Copy Volume-Fusion-pretrained weights into a native 3D segmentation net, in place.

    Args:
        pretrained_state: the pretraining network's state dict, or the file :func:`pretrain` wrote.
        target_model: a :class:`~ml_worker.models.native3d.Native3DNet` (any classes and guidance) of
            the same ``init_filters`` as the pretraining network.

    Every target tensor whose name and shape match is copied. The input stem (the first conv, whose
    input channels are the image then the guidance channels) takes the pretrained image kernel in its
    first channel(s) and zeros in the others, so at first the net computes what it computed on the
    image alone and guidance learns its way in. The head (the ``K`` fusion levels, not the classes) is
    never copied, even where shapes happen to match.

    Raises:
        TransferError: the target is no native 3D net, or not one tensor matched (another width?).
        CheckpointError: `pretrained_state` names an unreadable file.
    """
    if isinstance(pretrained_state, str | Path):
        pretrained_state = load_state_dict(Path(pretrained_state))
    head = getattr(target_model, "head", None)
    convs = [m for m in target_model.modules() if isinstance(m, nn.Conv3d)]
    if not isinstance(head, nn.Conv3d) or not convs:
        raise TransferError(f"{type(target_model).__name__} is not a native 3D net (no 3D conv head)")
    head_prefix = _module_name(target_model, head) + "."
    stem_weight = _module_name(target_model, convs[0]) + ".weight"

    target = target_model.state_dict()
    new_state = dict(target)
    copied, adapted, skipped = [], [], {}
    for name, tensor in target.items():
        source = pretrained_state.get(name)
        if name.startswith(head_prefix):
            skipped[name] = "the head: pretrained to predict fusion levels, not these classes"
        elif source is None:
            skipped[name] = "not in the pretrained weights"
        elif source.shape == tensor.shape:
            new_state[name] = source.detach().to(tensor.device, tensor.dtype).clone()
            copied.append(name)
        elif (
            name == stem_weight
            and source.ndim == tensor.ndim
            and source.shape[0] == tensor.shape[0]
            and source.shape[2:] == tensor.shape[2:]
            and source.shape[1] < tensor.shape[1]
        ):
            stem = torch.zeros_like(tensor)
            stem[:, : source.shape[1]] = source.detach().to(tensor.device, tensor.dtype)
            new_state[name] = stem
            adapted.append(name)
        else:
            skipped[name] = f"shape {tuple(tensor.shape)} here, {tuple(source.shape)} pretrained"
    if not copied:
        raise TransferError(
            "no pretrained tensor matched the target network by name and shape: was it pretrained with "
            "another init_filters, or for another architecture?"
        )
    target_model.load_state_dict(new_state, strict=True)
    unused = tuple(name for name in pretrained_state if name not in target)
    return TransferReport(tuple(copied), tuple(adapted), skipped, unused)


def load_pretrained(path: Path) -> tuple[Native3DNet, Native3DConfig]:
    """The pretraining network stored by :func:`pretrain` (checked), on the CPU in eval mode."""
    try:
        return load_native3d(Path(path))
    except CheckpointError as exc:
        raise PretrainError(f"not a pretrained native3d file: {exc}") from None
