"""Adaptation of LiteMedSAM, the interactive 2D model, on labelled volumes: box-prompted slices.

What an annotator does with the model (draws a box on a slice, the model draws the structure) is what
it trains on. A sample is one slice of a case along ``axis`` and one labelled class with foreground on
it; the prompt is that class's bounding box on the slice, each side moved by up to ``jitter`` pixels (a
hand-drawn box is never exact), the target is the class's mask. The slice goes through the inference
preprocessing (the volume's percentile normalisation :func:`~ml_worker.inference.embeddings.normalise_mr`,
then :func:`~ml_worker.models.litemedsam.preprocess_slice`), and the loss is BCE + soft Dice on the
single-mask logits in the 256x256 model frame, padding excluded.

The PEFT method (the ``litemedsam`` ones of :mod:`ml_worker.adaptation.peft`) decides what trains. A
method that leaves the image encoder frozen (``decoder``) never runs it during training: each volume is
encoded once, whole, by the inference runtime (``encoder``: ONNX Runtime where it runs) into an
:class:`~ml_worker.inference.embeddings.EmbeddingCache` under the key the interactive worker uses, so
the slices annotators already prompted are not encoded again, and every epoch, the evaluation and the
interactive curve read the same embeddings. Frozen BatchNorm
layers stay in eval mode (:func:`~ml_worker.adaptation.peft.set_train_mode`), so base + adapter is
exactly the trained model. Sampling, jitter and the initialisation of added (LoRA) parameters follow
from ``seed``. With a ``checkpoint_dir`` the run's state (trained tensors, optimizer, schedule, RNGs) is
saved every ``checkpoint_every`` steps and ``fit(resume=True)`` continues from it. On CUDA the model runs
under autocast (bf16, or fp16 with a ``GradScaler``).

:meth:`SamTrainer.evaluate` scores what the annotator would get from one exact box per slice: every
slice with the class in the truth is decoded from the truth's box, the slices are stacked, and Dice is
taken over the volume, per case and class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ml_worker.adaptation.adapter import AdapterMetadata, save_adapter
from ml_worker.adaptation.peft import (
    PeftMethod,
    adapter_state,
    load_adapter_state,
    set_train_mode,
    trainable_parameters,
)
from ml_worker.adaptation.train import CheckpointMismatchError, TrainCase, read_training_checkpoint
from ml_worker.inference.embeddings import (
    EmbeddingCache,
    VolumeEmbeddings,
    cache_key,
    encode_volume,
    in_plane_axes,
    normalise_mr,
    set_volume_slice,
    slice_transform,
    volume_slice,
)
from ml_worker.inference.eval import EvalConfig, _rng, dice, evaluate_structure
from ml_worker.inference.sam3d import LiteMedSAM3D, PropagationConfig, mask_box
from ml_worker.io.volume import load_volume, voxel_spacing
from ml_worker.models.checkpoints import autocast, file_sha256, save_atomic, select_device
from ml_worker.models.encoders import SliceEncoder
from ml_worker.models.litemedsam import (
    IMAGE_SIZE,
    LiteMedSAM,
    SliceTransform,
    postprocess_mask,
    preprocess_slice,
)

__all__ = ["SamTrainConfig", "SamTrainer", "embeddings_key"]

CHECKPOINT_FORMAT = "ml_worker.sam-train-checkpoint/1"
CHECKPOINT_NAME = "sam_checkpoint.pt"


@dataclass(frozen=True)
class SamTrainConfig:
    """Hyper-parameters of a LiteMedSAM adaptation (recorded in its adapter file).

    steps: optimizer steps; batch_size: box-prompted slices per step.
    lr, weight_decay: AdamW; cosine decay to 1% of ``lr`` over the steps. clip_norm: 0 switches it off.
    axis: the slice axis (the one the interactive model works along).
    jitter: each side of a training box moves by up to this many pixels (outwards or inwards).
    propagate: the share of steps whose slices are prompted as 3D propagation prompts every slice but
        the first (:class:`~ml_worker.inference.sam3d.LiteMedSAM3D`): a neighbouring slice's mask box
        grown by the propagation's margin, and the model's own logits on that neighbour as a dense
        prompt. Trained on boxes alone, the decoder drifts on the prompts it is given in 3D.
    seed: seeds sampling, jitter and added parameters.
    checkpoint_every: with a ``checkpoint_dir``, the run's state is saved every this many steps.
    """

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    axis: int = 2
    jitter: int = 3
    propagate: float = 0.5
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            problems.append("steps, batch_size and checkpoint_every must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.clip_norm < 0:
            problems.append("lr must be > 0, weight_decay and clip_norm >= 0")
        if self.axis not in (0, 1, 2) or self.jitter < 0:
            problems.append(f"axis must be 0, 1 or 2 and jitter >= 0, got {self.axis}, {self.jitter}")
        if not 0 <= self.propagate <= 1:
            problems.append(f"propagate is a share in [0, 1], got {self.propagate}")
        if problems:
            raise ValueError("invalid SamTrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Case:
    case_id: str
    volume: np.ndarray  # normalised to [0, 1], float32
    label: np.ndarray  # integer label values
    labelled: tuple[int, ...]
    embeddings: np.ndarray | None = None  # (K, 256, 64, 64) float16 along the axis; None: encoder trains
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size in mm


def embeddings_key(volume_sha256: str, weights_sha256: str, axis: int) -> str:
    """The cache key of a volume's slice embeddings by the encoder of the weights `weights_sha256`; for
    the bundled weights, the key of the interactive worker (``inference.interactive.embeddings_key``)."""
    return cache_key(volume_sha256, f"litemedsam/{weights_sha256[:16]}", f"axis{axis}")


def _frame(mask2d: np.ndarray, transform: SliceTransform) -> Tensor:
    """A ``[row, col]`` mask in the 256x256 model frame (resized nearest, padded with 0)."""
    h, w = transform.resized_size
    x = torch.from_numpy(np.ascontiguousarray(mask2d, dtype=np.float32))[None, None]
    x = F.interpolate(x, size=(h, w), mode="nearest-exact")
    return F.pad(x, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))[0]


def _loss(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """BCE + soft Dice per sample over the valid (unpadded) pixels, averaged over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3))
    p = torch.sigmoid(logits) * valid
    soft_dice = (2 * (p * target).sum(dim=(1, 2, 3)) + 1) / (
        p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1
    )
    return (bce + 1 - soft_dice).mean()


class SamTrainer:
    """Adapts a LiteMedSAM model in place with a PEFT method on box-prompted slices of labelled cases.

    Args:
        model: LiteMedSAM (e.g. :func:`~ml_worker.models.checkpoints.load_litemedsam`); `method` is
            applied to it here.
        method: a ``litemedsam`` PEFT method.
        config: the hyper-parameters.
        device: "cpu", "cuda", ... (default: CUDA when available).
        progress: called after each step with ``(step, steps, loss)``.
        base_sha256: sha256 of the base weights file (what :meth:`save_adapter` records).
        checkpoint_dir: where the run's state goes every ``checkpoint_every`` steps (none without it:
            no resume).
        embeddings: where a frozen encoder's volume embeddings are kept (2 MiB a slice; with a folder,
            shared with the interactive worker and later rounds); default an in-memory cache of 2 GiB.
        encoder: the runtime a frozen encoder runs on (default torch, float32 on the CPU).
    """

    def __init__(
        self,
        model: LiteMedSAM,
        method: PeftMethod,
        config: SamTrainConfig,
        *,
        device: str | torch.device | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        base_sha256: str | None = None,
        checkpoint_dir: Path | None = None,
        embeddings: EmbeddingCache | None = None,
        encoder: SliceEncoder | None = None,
    ) -> None:
        self.device = select_device(device) if not isinstance(device, torch.device) else device
        self.config, self.method, self.progress, self.base_sha256 = config, method, progress, base_sha256
        torch.manual_seed(config.seed)  # LoRA's A matrices
        self.model = method.apply(model).to(self.device)
        self.encoder_trains = any(p.requires_grad for p in self.model.image_encoder.parameters())
        self.embeddings = embeddings if embeddings is not None else EmbeddingCache(max_bytes=2 << 30)
        self.encoder = encoder
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        fp16 = self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)  # bf16 and the CPU need none

    # ---- data ----------------------------------------------------------------------------------------

    def _load(self, cases: Sequence[TrainCase]) -> list[_Case]:
        loaded = []
        for case in cases:
            image, affine = load_volume(case.image)
            label, _ = load_volume(case.label)
            if image.shape != label.shape:
                raise ValueError(f"{case.case_id}: image {image.shape} and label {label.shape} differ")
            embeddings = None if self.encoder_trains else self._embeddings(Path(case.image), image)
            loaded.append(
                _Case(
                    case.case_id,
                    normalise_mr(image),
                    np.rint(label).astype(np.int32),
                    case.labelled,
                    embeddings,
                    voxel_spacing(affine),
                )
            )
        return loaded

    def _embeddings(self, path: Path, image: np.ndarray) -> np.ndarray:
        """The volume's slice embeddings by the frozen encoder: from the cache, else encoded whole."""
        if self.base_sha256 is None:
            raise ValueError("a frozen encoder's embeddings are cached by base: give base_sha256")
        key = embeddings_key(file_sha256(path), self.base_sha256, self.config.axis)
        return self.embeddings.get_or_compute(
            key, lambda: encode_volume(self.model, image, axis=self.config.axis, encoder=self.encoder)
        )

    def _slices(self, case: _Case, value: int) -> list[int]:
        """The slices along the axis on which `value` has foreground."""
        present = (case.label == value).any(axis=in_plane_axes(self.config.axis))
        return [int(k) for k in np.flatnonzero(present)]

    def _samples(self, cases: list[_Case]) -> list[tuple[int, int, int]]:
        """(case, slice, label value) for every slice with foreground of a labelled class."""
        return [
            (i, k, v) for i, case in enumerate(cases) for v in case.labelled for k in self._slices(case, v)
        ]

    def _batch(
        self, cases: list[_Case], picks: Sequence[tuple[int, int, int]], rng: np.random.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images, model-frame boxes (jittered when given `rng`), targets and valid-pixel masks."""
        images, boxes, targets, valid = [], [], [], []
        for i, k, value in picks:
            case = cases[i]
            x, transform = preprocess_slice(volume_slice(case.volume, self.config.axis, k))
            mask = volume_slice(case.label, self.config.axis, k) == value
            box = mask_box(mask)
            j = self.config.jitter
            if rng is not None and j:
                box = box + rng.integers(-j, j + 1, size=4)
            h, w = mask.shape
            x0, x1 = sorted((int(np.clip(box[0], 0, w - 1)), int(np.clip(box[2], 0, w - 1))))
            y0, y1 = sorted((int(np.clip(box[1], 0, h - 1)), int(np.clip(box[3], 0, h - 1))))
            images.append(x)
            boxes.append(transform.boxes_to_model(np.array([x0, y0, x1, y1]))[None])
            targets.append(_frame(mask, transform))
            valid.append(_frame(np.ones_like(mask), transform))
        dev = self.device
        return (
            torch.stack(images).to(dev),
            torch.cat(boxes).to(dev),
            torch.stack(targets).to(dev),
            torch.stack(valid).to(dev),
        )

    def _logits(
        self,
        cases: list[_Case],
        picks: Sequence[tuple[int, int, int]],
        images: Tensor,
        boxes: Tensor,
        dense: Tensor | None = None,
    ) -> Tensor:
        """Mask logits of the picked slices; a frozen encoder's are read from the volume's embeddings."""
        with autocast(self.device):
            if self.encoder_trains:
                embeddings = self.model.encode(images)
            else:
                rows = [np.asarray(cases[i].embeddings[k], dtype=np.float32) for i, k, _ in picks]
                embeddings = torch.from_numpy(np.stack(rows)).to(self.device)
            logits, _ = self.model.decode(embeddings, boxes=boxes, masks=dense)
        return logits.float()

    def _propagated(
        self, cases: list[_Case], picks: Sequence[tuple[int, int, int]], rng: np.random.Generator
    ) -> tuple[Tensor, Tensor]:
        """Model-frame boxes and dense prompts of the picked slices as propagation gives them: from a
        neighbouring slice holding the structure (the slice itself where none does), its truth's box
        grown by the propagation's margin (``PropagationConfig.box_margin``) and the current model's
        logits there from its own box (no gradient)."""
        axis = self.config.axis
        sources = []
        for i, k, value in picks:
            case = cases[i]
            near = [
                n
                for n in (k - 1, k + 1)
                if 0 <= n < case.label.shape[axis] and (volume_slice(case.label, axis, n) == value).any()
            ]
            sources.append((i, int(rng.choice(near)) if near else k, value))
        images, source_boxes, _, _ = self._batch(cases, sources, None)
        with torch.no_grad():
            dense = self._logits(cases, sources, images, source_boxes).detach()
        boxes = []
        for i, n, value in sources:
            mask = volume_slice(cases[i].label, axis, n) == value
            h, w = mask.shape
            x0, y0, x1, y1 = (int(v) for v in mask_box(mask))
            m = PropagationConfig().box_margin
            grown = np.array([max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w - 1), min(y1 + m, h - 1)])
            boxes.append(slice_transform(cases[i].label.shape, axis).boxes_to_model(grown)[None])
        return torch.cat(boxes).to(self.device), dense

    # ---- training and evaluation ---------------------------------------------------------------------

    def fit(self, cases: Sequence[TrainCase], *, resume: bool = False) -> dict[str, Any]:
        """Train on `cases`; returns ``{"losses": per step, "seconds": ..., "samples": ...}``.

        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (else start). On the
            CPU a run interrupted after a checkpoint and resumed ends with exactly the weights of an
            uninterrupted run.

        Raises:
            ValueError: no labelled foreground on any slice of `cases`.
            CheckpointMismatchError: the checkpoint belongs to another run.
        """
        config = self.config
        loaded = self._load(cases)
        samples = self._samples(loaded)
        if not samples:
            raise ValueError("no slice of these cases holds a labelled structure: nothing to train on")
        rng = np.random.default_rng(config.seed)
        params = list(trainable_parameters(self.model).values())
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)),
        )
        run = {"optimizer": optimizer, "schedule": schedule, "rng": rng, "cases": [c.case_id for c in cases]}
        losses: list[float] = []
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME
        if resume and path is not None and path.is_file():
            losses = self._load_checkpoint(path, run)
        set_train_mode(self.model)
        began = time.perf_counter()
        for step in range(len(losses) + 1, config.steps + 1):
            picks = [samples[i] for i in rng.integers(0, len(samples), size=config.batch_size)]
            images, boxes, targets, valid = self._batch(loaded, picks, rng)
            dense = None
            if rng.random() < config.propagate:
                boxes, dense = self._propagated(loaded, picks, rng)
            loss = _loss(self._logits(loaded, picks, images, boxes, dense), targets, valid)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if config.clip_norm:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            schedule.step()
            losses.append(float(loss.detach()))
            if path is not None and (step % config.checkpoint_every == 0 or step == config.steps):
                self._save_checkpoint(path, run, losses)
            if self.progress is not None:
                self.progress(step, config.steps, losses[-1])
        self.model.eval()
        return {"losses": losses, "seconds": time.perf_counter() - began, "samples": len(samples)}

    def _identity(self, run: dict[str, Any]) -> str:
        return json.dumps(
            {
                "method": self.method.name,
                "method_params": self.method.params,
                "config": self.config.to_dict(),
                "base_sha256": self.base_sha256,
                "cases": run["cases"],
            },
            sort_keys=True,
        )

    def _save_checkpoint(self, path: Path, run: dict[str, Any], losses: list[float]) -> None:
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "run": self._identity(run),
                "losses": losses,
                "adapter": adapter_state(self.model),
                "optimizer": run["optimizer"].state_dict(),
                "schedule": run["schedule"].state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": json.dumps(run["rng"].bit_generator.state),
            },
            path,
        )

    def _load_checkpoint(self, path: Path, run: dict[str, Any]) -> list[float]:
        state = read_training_checkpoint(path, CHECKPOINT_FORMAT)
        if state["run"] != self._identity(run):
            raise CheckpointMismatchError(
                f"{path} belongs to another run (method, configuration, base or cases differ); resume with "
                "the same ones, or start a new checkpoint_dir"
            )
        load_adapter_state(self.model, state["adapter"])
        run["optimizer"].load_state_dict(state["optimizer"])
        run["schedule"].load_state_dict(state["schedule"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        run["rng"].bit_generator.state = json.loads(state["numpy_rng"])
        return [float(v) for v in state["losses"]]

    @torch.no_grad()
    def evaluate(self, cases: Sequence[TrainCase], *, batch_size: int = 8) -> dict[str, dict[str, float]]:
        """Dice per case and label value (as text) from one exact box per slice of the truth."""
        self.model.eval()
        axis = self.config.axis
        loaded = self._load(cases)
        by_case: dict[str, dict[str, float]] = {}
        for i, case in enumerate(loaded):
            transform = slice_transform(case.volume.shape, axis)
            predicted = {v: np.zeros(case.label.shape, dtype=bool) for v in case.labelled}
            picks = self._samples([case])  # (0, slice, value), by value then slice
            by_slice: dict[int, list[int]] = {}
            for _, k, value in picks:
                by_slice.setdefault(k, []).append(value)
            slices = sorted(by_slice)
            for start in range(0, len(slices), batch_size):  # each slice is encoded once
                chunk = slices[start : start + batch_size]
                if case.embeddings is not None:
                    embeddings = torch.from_numpy(np.asarray(case.embeddings[chunk], dtype=np.float32))
                    embeddings = embeddings.to(self.device)
                else:
                    images = torch.stack(
                        [preprocess_slice(volume_slice(case.volume, axis, k))[0] for k in chunk]
                    ).to(self.device)
                    with autocast(self.device):
                        embeddings = self.model.encode(images)
                for row, k in enumerate(chunk):
                    values = by_slice[k]
                    _, boxes, _, _ = self._batch(loaded, [(i, k, v) for v in values], None)
                    with autocast(self.device):
                        logits, _ = self.model.decode(embeddings[row : row + 1], boxes=boxes)
                    for value, mask_logits in zip(values, logits.float(), strict=True):
                        set_volume_slice(predicted[value], axis, k, postprocess_mask(mask_logits, transform))
            for value, mask in predicted.items():
                truth = case.label == value
                if truth.any():
                    by_case.setdefault(case.case_id, {})[str(value)] = dice(mask, truth)
        return by_case

    @torch.no_grad()
    def interactive(
        self,
        cases: Sequence[TrainCase],
        *,
        n_clicks: int = 5,
        jitter: int = 2,
        seed: int = 0,
        propagation: PropagationConfig | None = None,
    ) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
        """What an annotator gets from the model in 3D: per case and label value (as text), Dice after a
        jittered 3D box (slice-by-slice propagation, :class:`~ml_worker.inference.sam3d.LiteMedSAM3D`);
        and per case the interactive curve, Dice after the box and after each of `n_clicks` corrective
        clicks, averaged over its classes. Boxes and clicks are those of
        :func:`~ml_worker.inference.eval.interactive_curve` (seeded per case and class), so the curves
        of LiteMedSAM and of the native net on the same cases compare."""
        self.model.eval()
        axis = self.config.axis
        config = EvalConfig(
            n_clicks=n_clicks,
            jitter=jitter,
            axis=axis,
            seed=seed,
            propagation=propagation or PropagationConfig(),
        )
        boxed: dict[str, dict[str, float]] = {}
        curves: dict[str, list[float]] = {}
        for case in self._load(cases):
            stored = case.embeddings
            if stored is None:  # the encoder trained: encode with it (the volume is normalised already)
                stored = encode_volume(self.model, case.volume, axis=axis, normalise=np.asarray)
            embeddings = VolumeEmbeddings(stored, tuple(case.volume.shape), axis)
            per_class = []
            for value in case.labelled:
                truth = case.label == value
                if not truth.any():
                    continue
                session = LiteMedSAM3D(
                    self.model,
                    embeddings,
                    label=value,
                    config=config.propagation,
                    device=self.device,
                    spacing=case.spacing,
                )
                result = evaluate_structure(
                    session, truth, label=value, rng=_rng(seed, case.case_id, value), config=config
                )
                boxed.setdefault(case.case_id, {})[str(value)] = float(result["dice"][0])
                per_class.append(result["dice"])
            if per_class:
                curves[case.case_id] = [round(float(v), 4) for v in np.mean(per_class, axis=0)]
        return boxed, curves

    def save_adapter(
        self,
        path: Path,
        *,
        data_snapshot_ids: Sequence[str] = (),
        metrics: Mapping[str, Any] | None = None,
    ) -> AdapterMetadata:
        """Write the trained tensors and their metadata as an adapter file (see :mod:`..adapter`).

        Raises:
            ValueError: the trainer was built without ``base_sha256``.
        """
        if self.base_sha256 is None:
            raise ValueError("this trainer has no base_sha256: give the sha256 of the base weights file")
        return save_adapter(
            path,
            self.model,
            self.method,
            base_sha256=self.base_sha256,
            data_snapshot_ids=data_snapshot_ids,
            training=self.config.to_dict(),
            metrics=metrics,
        )
