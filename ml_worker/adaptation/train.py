"""Training and adaptation of the native 3D net: one loop for every PEFT method, resumable, seeded.

:class:`Trainer` warm-starts from a base network (a checkpoint file, whose sha256 the adapter records),
applies a :class:`~ml_worker.adaptation.peft.PeftMethod` (it never branches on which), and trains with
:class:`~ml_worker.adaptation.losses.PartialLabelLoss` on cases given as NIfTI image/label pairs with
the label values each case has labelled (the others are unknown there, not background).

Data, per sample (everything random comes from one seeded ``numpy`` generator)::

    cached: preprocessing(modality, spacing, pad to roi, multiple of 8) + foreground indices, per case
    random: crop to roi (half the crops centred on foreground) -> flips -> small rotation/scale
            -> intensity scale and shift -> simulated prompts -> guidance channels

The preprocessing is :func:`ml_worker.transforms.preprocessing`, the one inference runs, so training
and inference see the same grid and intensities. When the network has guidance channels, a random
``prompt_fraction`` of the samples is trained the way annotators use the network
(:mod:`ml_worker.adaptation.interaction`): it starts from nothing, a 3D box, a 2D box or a degraded
mask; the network predicts and a click goes on its largest error, for ``0..max_iterations`` rounds
without gradient (the prediction becomes the mask channel); the loss is on the prediction after the
last click. Guidance is rendered by :class:`~ml_worker.inference.guidance.RenderGuidance` exactly as at
inference. The other samples get none, so the same network learns to pre-segment unprompted.

Loop: ``epochs`` x ``steps_per_epoch`` AdamW steps (cosine learning-rate decay by step), a progress
callback after each step (for a web Job), validation Dice per case and class through
:class:`~ml_worker.inference.native.Native3DTask` (the inference path itself), and a checkpoint after
each epoch: the trained tensors, the optimizer and AMP scaler states, the epoch, the torch and numpy
RNG states and the history. ``fit(resume=True)`` continues from it; on CPU a run interrupted after an
epoch and resumed ends with exactly the weights of an uninterrupted run. On CUDA the forward runs under
``torch.autocast`` (bf16 where supported, else fp16 with a ``GradScaler``), and so does it on a CPU with
native bf16 (:func:`~ml_worker.models.checkpoints.amp_dtype`; master weights stay float32); CUDA kernels
are not all deterministic, so there the result is reproducible only up to their rounding.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch import Tensor, nn

from ml_worker.adaptation.adapter import AdapterMetadata, save_adapter
from ml_worker.adaptation.interaction import InteractionState, start_state
from ml_worker.adaptation.losses import PartialLabelLoss
from ml_worker.adaptation.peft import (
    PeftMethod,
    adapter_state,
    load_adapter_state,
    set_train_mode,
    trainable_parameters,
)
from ml_worker.inference.eval import dice
from ml_worker.inference.guidance import RenderGuidance
from ml_worker.inference.native import Native3DTask
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import amp_dtype, autocast, file_sha256, save_atomic, select_device
from ml_worker.models.native3d import DIVISOR, Native3DConfig, load_native3d
from ml_worker.transforms import preprocessing

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "ProgressCallback",
    "TrainCase",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "case_means",
    "evaluate_task",
    "read_training_checkpoint",
]

CHECKPOINT_FORMAT = "ml_worker.train-checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"

ProgressCallback = Callable[[int, int, int, dict[str, float]], None]
"""``progress(epoch, step, total, metrics)``: epoch is 1-based; step and total count optimizer steps over
the whole run (``step / total`` is the fraction done); metrics hold ``loss`` (mean of the epoch so far)
and ``lr``, and after an epoch's validation also ``validation_dice``."""


class CheckpointMismatchError(ValueError):
    """A training checkpoint that belongs to another run (method, configuration, cases or base)."""


def read_training_checkpoint(path: Path, fmt: str) -> dict[str, Any]:
    """The state a trainer saved at `path` (tensors only: ``weights_only``).

    Raises:
        CheckpointMismatchError: the file is unreadable or not a training checkpoint of format `fmt`.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(
            f"{path} is not a readable training checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointMismatchError(f"{path} is not a training checkpoint of format {fmt}")
    return state


@dataclass(frozen=True)
class TrainCase:
    """One training or validation case.

    image, label: NIfTI files on the same voxel grid (the label holds integer label values).
    labelled: the label values annotated in this case; a value of the label set not in it is unknown
        here (its channel is left out of the loss), not background.
    case_id: a stable id (default: the image file name without its NIfTI suffix).
    """

    image: Path
    label: Path
    labelled: tuple[int, ...]
    case_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "label", Path(self.label))
        object.__setattr__(self, "labelled", tuple(int(v) for v in self.labelled))
        if not self.case_id:
            name = self.image.name
            for suffix in (".nii.gz", ".nii"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            object.__setattr__(self, "case_id", name)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (recorded in checkpoints and adapter files).

    epochs: passes; steps_per_epoch: optimizer steps per epoch (0: one pass over the cases).
    batch_size: samples per step. lr, weight_decay: AdamW. schedule: ``"cosine"`` (decay to 1% of
        ``lr`` over the run, by step) or ``"constant"``. clip_norm: gradient-norm clipping (0: off).
    seed: seeds every random draw (initialisation of added parameters, sampling, augmentation, prompts,
        dropout).
    modality: DICOM modality of the cases (picks the intensity normalisation).
    prompt_fraction: share of samples trained with simulated interaction (guidance networks only).
    max_iterations: most simulated click rounds before the prediction the loss is on (uniform from 0).
    flip_axes: network-grid axes (RAS) flipped with probability 0.5 each; default left-right only,
        since flips along other axes break anatomical priors (anterior/posterior parts, ...).
    affine_probability: chance of a small random rotation (up to 15 degrees) and scaling (10%).
    intensity: range of the random intensity scale and shift (``x * (1 + s) + o``, ``|s|, |o| <= it``).
    bce_weight, dice_weight: weights of the loss terms.
    validate_every: validate every this many epochs (and after the last).
    """

    epochs: int = 20
    steps_per_epoch: int = 0
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    clip_norm: float = 1.0
    seed: int = 0
    modality: str = "MR"
    prompt_fraction: float = 0.7
    max_iterations: int = 4
    flip_axes: tuple[int, ...] = (0,)
    affine_probability: float = 0.2
    intensity: float = 0.1
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    validate_every: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in self.flip_axes))
        problems = []
        if self.epochs < 1 or self.batch_size < 1 or self.steps_per_epoch < 0 or self.validate_every < 1:
            problems.append("epochs, batch_size and validate_every must be >= 1, steps_per_epoch >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or self.clip_norm < 0:
            problems.append("lr must be > 0, weight_decay and clip_norm >= 0")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("prompt_fraction", "affine_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_iterations < 0 or not 0 <= self.intensity < 1:
            problems.append("max_iterations must be >= 0 and intensity in [0, 1)")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            problems.append(f"flip_axes must be among 0, 1, 2, got {list(self.flip_axes)}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    """What a run produced.

    history: one dict per epoch (epoch, loss, lr, seconds, and validation_dice when validated).
    validation: Dice per validation case and class name, from the last validation.
    seconds: training wall time of this call (validation included).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def case_means(per_case: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean Dice over the classes of each case (the per-case score the validation gate pairs)."""
    return {case: float(np.mean(list(scores.values()))) for case, scores in per_case.items() if scores}


def evaluate_task(
    task: Native3DTask, cases: Sequence[TrainCase], *, modality: str
) -> dict[str, dict[str, float]]:
    """Pre-segmentation Dice (no prompts) per case and per labelled class name, on the source grid.

    Runs the inference path itself (sigmoid, threshold 0.5, the most probable class per voxel), so a
    model is scored exactly as it will pre-segment.
    """
    names = {v: n for n, v in task.config.labels.items()}
    out: dict[str, dict[str, float]] = {}
    for case in cases:
        image, affine = load_volume(case.image)
        truth, _ = load_volume(case.label)
        truth = np.rint(truth).astype(np.int64)
        prediction = task(image=image, affine=affine, modality=modality)
        out[case.case_id] = {
            names[v]: dice(prediction.labels == v, truth == v)
            for v in task.config.label_values
            if v in case.labelled
        }
    return out


@dataclass
class Sample:
    """One augmented training sample on its network grid."""

    image: Tensor  # (1, X, Y, Z)
    label: np.ndarray  # (X, Y, Z) integer label map
    target: Tensor  # (C, X, Y, Z) one channel per class
    labelled: Tensor  # (C,) bool
    spacing: np.ndarray  # (3,) mm
    state: InteractionState | None  # None: trained unprompted (pre-segmentation)


class Trainer:
    """Adapts (or trains) a native 3D network with a PEFT method.

    Args:
        network: the base network (e.g. from :func:`~ml_worker.models.native3d.load_native3d`); the
            method is applied to it in place.
        config: its configuration (label set, guidance, roi_size, spacing, click_sigma).
        method: the PEFT method (``full`` trains a base from scratch or fine-tunes fully).
        train: hyper-parameters.
        base_sha256: sha256 of the base checkpoint file, recorded in adapters and checkpoints.
        device: default CUDA when available, else CPU.
        checkpoint_dir: where the per-epoch checkpoint goes (none without it: no resume).
        progress: called after every step (see :data:`ProgressCallback`).
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        config: Native3DConfig,
        method: PeftMethod,
        train: TrainConfig,
        base_sha256: str | None = None,
        device: torch.device | str | None = None,
        checkpoint_dir: Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.method = method
        self.train = train
        self.base_sha256 = base_sha256
        self.device = select_device(None if device is None else str(device))
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        torch.manual_seed(train.seed)  # parameters a method adds (LoRA's A) start the same in every run
        self.network = method.apply(network).to(self.device)
        self.criterion = PartialLabelLoss(bce_weight=train.bce_weight, dice_weight=train.dice_weight)
        self.optimizer = torch.optim.AdamW(
            list(trainable_parameters(self.network).values()), lr=train.lr, weight_decay=train.weight_decay
        )
        self.amp_dtype = amp_dtype(self.device)
        # loss scaling is needed for fp16 only (bf16 has float32's range)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.skipped_steps = 0  # steps with non-finite gradients, not applied
        # where an epoch's time goes: loading/augmenting samples, simulating clicks, forward+backward
        self._phases = {"data": 0.0, "simulate": 0.0, "step": 0.0}
        self.renderer = RenderGuidance(labels=config.labels, sigma=config.click_sigma)
        self.rng = np.random.default_rng(train.seed)
        self._cache: dict[str, dict[str, Any]] = {}
        self._augment = self._augmentation()

    @classmethod
    def from_base(
        cls,
        path: Path,
        *,
        method: PeftMethod,
        train: TrainConfig,
        config: Native3DConfig | None = None,
        **kwargs: Any,
    ) -> Trainer:
        """A trainer warm-started from the base checkpoint at `path` (its sha256 is recorded)."""
        network, config = load_native3d(path, config=config)
        return cls(
            network=network,
            config=config,
            method=method,
            train=train,
            base_sha256=file_sha256(path),
            **kwargs,
        )

    # ---- data ------------------------------------------------------------------------------------

    def _preprocess(self) -> Compose:
        return Compose(
            [
                preprocessing(
                    modality=self.train.modality,
                    target_spacing=self.config.spacing,
                    roi_size=self.config.roi_size,
                    fit="pad",
                    k_divisible=DIVISOR,
                    label_key="label",
                ),
                FgBgToIndicesd("label"),
            ]
        )

    def _augmentation(self) -> Compose:
        keys = ["image", "label"]
        t = self.train
        transforms: list[Any] = [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=self.config.roi_size,
                pos=1,
                neg=1,
                num_samples=1,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            )
        ]
        transforms += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in t.flip_axes]
        if t.affine_probability > 0:
            transforms.append(
                RandAffined(
                    keys,
                    prob=t.affine_probability,
                    rotate_range=(0.26, 0.26, 0.26),
                    scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if t.intensity > 0:
            transforms += [
                RandScaleIntensityd("image", factors=t.intensity, prob=0.5),
                RandShiftIntensityd("image", offsets=t.intensity, prob=0.5),
            ]
        return Compose(transforms)

    def _check_cases(self, cases: Sequence[TrainCase], what: str) -> None:
        values = set(self.config.label_values)
        ids = [c.case_id for c in cases]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{what} case ids must be distinct")
        for case in cases:
            if not case.labelled:
                raise ValueError(
                    f"{what} case {case.case_id} has no labelled value: nothing to learn from it"
                )
            unknown = sorted(set(case.labelled) - values)
            if unknown:
                raise ValueError(
                    f"{what} case {case.case_id} labels values {unknown} that are not in the model's label "
                    f"set {self.config.labels}"
                )

    def _cached(self, case: TrainCase) -> dict[str, Any]:
        if case.case_id not in self._cache:
            image, affine = load_volume(case.image)
            label, label_affine = load_volume(case.label)
            if image.shape != label.shape or not np.allclose(affine, label_affine, atol=1e-3):
                raise ValueError(
                    f"case {case.case_id}: image {image.shape} and label {label.shape} are not on one grid"
                )
            data = self._preprocess()(
                {
                    "image": image.astype(np.float32),
                    "label": np.rint(label).astype(np.float32),
                    "affine": affine,
                }
            )
            data["spacing"] = np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0)
            data["image"] = data["image"].as_tensor()
            data["label"] = data["label"].as_tensor()
            data.pop("affine", None)
            self._cache[case.case_id] = data
        return self._cache[case.case_id]

    def _sample(self, case: TrainCase) -> Sample:
        """One augmented sample on its grid (image, label map, target, labelled, grid spacing)."""
        self._augment.set_random_state(seed=int(self.rng.integers(2**31)))
        cached = self._cached(case)
        out = self._augment({k: v for k, v in cached.items() if k != "spacing"})
        out = out[0] if isinstance(out, list) else out
        image = torch.as_tensor(out["image"]).float()
        label = torch.as_tensor(out["label"])[0].round().to(torch.int64)
        values = self.config.label_values
        target = torch.stack([label == v for v in values]).float()
        labelled = torch.tensor([v in case.labelled for v in values])
        state = None
        if self.config.guidance and self.rng.random() < self.train.prompt_fraction:
            state = start_state(label.numpy(), case.labelled, self.rng)
        return Sample(image, label.numpy(), target, labelled, np.asarray(cached["spacing"]), state)

    def _inputs(self, batch: Sequence[Sample]) -> Tensor:
        """``(B, in_channels, *roi)``: the images and, with guidance, each sample's prompts and mask."""
        rows = []
        for sample in batch:
            channels = [sample.image]
            if self.config.guidance:
                state = sample.state or InteractionState()
                grid = np.diag([*sample.spacing, 1.0])  # the sample's own grid: prompts are grid voxels
                channels.append(
                    self.renderer(
                        state.prompts(),
                        source_affine=grid,
                        grid_affine=grid,
                        grid_shape=sample.label.shape,
                        mask=state.mask,
                    )
                )
            rows.append(torch.cat(channels))
        return torch.stack(rows).to(self.device)

    def _simulate(self, batch: Sequence[Sample]) -> None:
        """``0..max_iterations`` rounds of predict-then-click on the prompted samples, without gradient."""
        prompted = [s for s in batch if s.state is not None and s.state.classes]
        rounds = int(self.rng.integers(0, self.train.max_iterations + 1))
        if not prompted or rounds == 0:
            return
        self.network.eval()
        for _ in range(rounds):
            with torch.no_grad(), autocast(self.device):
                probabilities = torch.sigmoid(self.network(self._inputs(prompted)).float()).cpu().numpy()
            for sample, p in zip(prompted, probabilities, strict=True):
                sample.state.step(p, sample.label, self.config.label_values)

    # ---- loop ------------------------------------------------------------------------------------

    def _steps_per_epoch(self, n_cases: int) -> int:
        return self.train.steps_per_epoch or max(1, math.ceil(n_cases / self.train.batch_size))

    def _lr(self, step: int, total: int) -> float:
        if self.train.schedule == "constant":
            return self.train.lr
        floor = 0.01
        return self.train.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))

    def _order(self, n_cases: int, n_samples: int) -> list[int]:
        order: list[int] = []
        while len(order) < n_samples:
            order += self.rng.permutation(n_cases).tolist()
        return order[:n_samples]

    def _step(self, batch: list[Sample], lr: float) -> float:
        began = time.perf_counter()
        if self.config.guidance:
            self._simulate(batch)
        simulated = time.perf_counter()
        self._phases["simulate"] += simulated - began
        inputs = self._inputs(batch)
        target = torch.stack([s.target for s in batch]).to(self.device)
        labelled = torch.stack([s.labelled for s in batch]).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        set_train_mode(self.network)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            logits = self.network(inputs)
        loss = self.criterion(logits.float(), target, labelled)
        self.scaler.scale(loss).backward()
        params = self.optimizer.param_groups[0]["params"]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.train.clip_norm or float("inf"))
        if not torch.isfinite(norm) and not self.scaler.is_enabled():
            # one bad step must not turn every weight into NaN (the fp16 scaler skips such steps itself)
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss = float(loss.detach())
        self._phases["step"] += time.perf_counter() - simulated
        return loss

    def fit(
        self,
        cases: Sequence[TrainCase],
        *,
        validation: Sequence[TrainCase] = (),
        resume: bool = False,
    ) -> TrainResult:
        """Train on `cases` for ``train.epochs`` epochs (or what is left of them with `resume`).

        Args:
            cases: training cases.
            validation: cases to evaluate after epochs (every ``validate_every`` and the last).
            resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (else start).

        Raises:
            ValueError: no cases, or cases whose labelled values are not in the label set.
            CheckpointMismatchError: the checkpoint belongs to another run.
        """
        if not cases:
            raise ValueError("no training cases")
        self._check_cases(cases, "training")
        self._check_cases(validation, "validation")
        start_time = time.perf_counter()
        steps = self._steps_per_epoch(len(cases))
        total = steps * self.train.epochs
        result = TrainResult()
        first_epoch = 1
        if resume and self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT_NAME).is_file():
            done, result.history = self._load_checkpoint(cases)
            first_epoch = done + 1
        else:
            torch.manual_seed(self.train.seed)

        for epoch in range(first_epoch, self.train.epochs + 1):
            epoch_start = time.perf_counter()
            self._phases = dict.fromkeys(self._phases, 0.0)
            order = self._order(len(cases), steps * self.train.batch_size)
            losses: list[float] = []
            lr = self.train.lr
            for s in range(steps):
                global_step = (epoch - 1) * steps + s
                lr = self._lr(global_step, total)
                picks = order[s * self.train.batch_size : (s + 1) * self.train.batch_size]
                began = time.perf_counter()
                batch = [self._sample(cases[i]) for i in picks]
                self._phases["data"] += time.perf_counter() - began
                losses.append(self._step(batch, lr))
                if self.progress is not None:
                    self.progress(epoch, global_step + 1, total, {"loss": float(np.mean(losses)), "lr": lr})
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": float(np.nanmean(losses)),
                "lr": lr,
                "seconds": time.perf_counter() - epoch_start,
                "skipped_steps": self.skipped_steps,
                "phase_seconds": {k: round(v, 2) for k, v in self._phases.items()},
            }
            if validation and (epoch % self.train.validate_every == 0 or epoch == self.train.epochs):
                result.validation = self.evaluate(validation)
                record["validation_dice"] = float(np.mean(list(case_means(result.validation).values())))
                if self.progress is not None:
                    self.progress(
                        epoch, epoch * steps, total, {k: v for k, v in record.items() if k != "epoch"}
                    )
            result.history.append(record)
            if self.checkpoint_dir is not None:
                self._save_checkpoint(epoch, cases, result.history)
        result.seconds = time.perf_counter() - start_time
        return result

    # ---- evaluation ------------------------------------------------------------------------------

    def evaluate(self, cases: Sequence[TrainCase]) -> dict[str, dict[str, float]]:
        """Pre-segmentation Dice (no prompts) per case and per labelled class name (see
        :func:`evaluate_task`)."""
        self._check_cases(cases, "evaluation")
        task = Native3DTask(network=self.network, config=self.config, device=self.device)
        return evaluate_task(task, cases, modality=self.train.modality)

    # ---- files -----------------------------------------------------------------------------------

    def save_adapter(
        self,
        path: Path,
        *,
        data_snapshot_ids: Sequence[str] = (),
        metrics: Mapping[str, Any] | None = None,
    ) -> AdapterMetadata:
        """Write the trained tensors and their metadata as an adapter file (see :mod:`..adapter`).

        Raises:
            ValueError: the trainer was built without ``base_sha256`` (use :meth:`from_base`).
        """
        if self.base_sha256 is None:
            raise ValueError("this trainer has no base checkpoint sha256: build it with from_base(path, ...)")
        return save_adapter(
            path,
            self.network,
            self.method,
            base_sha256=self.base_sha256,
            data_snapshot_ids=data_snapshot_ids,
            training=self.train.to_dict(),
            metrics=metrics,
            model_config=self.config.to_dict(),
        )

    def _run_identity(self, cases: Sequence[TrainCase]) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "method_params": self.method.params,
            "train": self.train.to_dict(),
            "config": self.config.to_dict(),
            "base_sha256": self.base_sha256,
            "cases": [c.case_id for c in cases],
        }

    def _save_checkpoint(self, epoch: int, cases: Sequence[TrainCase], history: list[dict[str, Any]]) -> None:
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "run": json.dumps(self._run_identity(cases), sort_keys=True),
                "history": json.dumps(history),
                "adapter": adapter_state(self.network),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy_rng": json.dumps(self.rng.bit_generator.state),
            },
            self.checkpoint_dir / CHECKPOINT_NAME,
        )

    def _load_checkpoint(self, cases: Sequence[TrainCase]) -> tuple[int, list[dict[str, Any]]]:
        path = self.checkpoint_dir / CHECKPOINT_NAME
        state = read_training_checkpoint(path, CHECKPOINT_FORMAT)
        stored, current = (
            json.loads(state["run"]),
            json.loads(json.dumps(self._run_identity(cases), sort_keys=True)),
        )
        differ = sorted(k for k in current if stored.get(k) != current[k])
        if differ:
            raise CheckpointMismatchError(
                f"{path} belongs to another run: its {', '.join(differ)} differ from this one's; "
                "resume with the same method, configuration, base and cases, or start a new checkpoint_dir"
            )
        load_adapter_state(self.network, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        return int(state["epoch"]), json.loads(state["history"])
