"""Inference with the native 3D network: prompted segmentation and pre-segmentation of whole volumes.

:class:`Native3DTask` follows MONAILabel's ``InferTask`` shape: a model supplies its pre-transforms,
its inferer and its post-processing, and :meth:`Native3DTask.__call__` runs them in a fixed order::

    validate prompts -> pre_transforms (preprocessing + guidance channels) -> inferer (network)
    -> sigmoid -> to_source_grid (probabilities) -> label map

- Pre-transforms: :func:`ml_worker.transforms.preprocessing` (intensity, deshear, RAS, resample to
  ``config.spacing``, pad to at least ``config.roi_size`` and to a multiple of 8), then
  :class:`~ml_worker.inference.guidance.RenderGuidanced` draws the prompts on the network grid.
- Inferer: a plain forward when the preprocessed volume is the ROI (it was padded up to it), else
  MONAI's ``SlidingWindowInferer`` (``roi_size``, overlap 0.25, Gaussian blending).
- Post: a sigmoid per class, then :func:`ml_worker.transforms.to_source_grid` (linear) back onto the
  source voxel grid, and a label map from the probabilities.

The network runs in eval mode under ``torch.no_grad``, with mixed precision on CUDA only (its output
is cast back to float32 before the sigmoid). Pre-segmentation is the same call without prompts
(every guidance channel zero): :func:`presegment`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.transforms import Compose
from torch import nn

from ml_worker.inference.corrections import honour_clicks
from ml_worker.inference.guidance import RenderGuidance, RenderGuidanced
from ml_worker.inference.prompts import Box3D, Click, PromptError, Prompts
from ml_worker.inference.sam3d import Interaction
from ml_worker.io.volume import Volume, voxel_spacing
from ml_worker.models.checkpoints import autocast, select_device
from ml_worker.models.native3d import DIVISOR, Native3DConfig, load_native3d
from ml_worker.transforms import preprocessing, to_source_grid

__all__ = ["Native3DSession", "Native3DTask", "Prediction", "labels_from_probabilities", "presegment"]

THRESHOLD = 0.5
CLICK_REACH_SIGMAS = 3.0  # a click may change regions that start within its drawn ball (3 sigma)
CONTEXT_MM = 16.0  # context the network sees around an interaction's box and clicks, per side


@dataclass(frozen=True, eq=False)
class Prediction:
    """What a model says about one volume, on the source voxel grid.

    probabilities: ``(C, I, J, K)`` float32 in ``[0, 1]``, one sigmoid per class, channels in the
        order of `label_set`.
    labels: ``(I, J, K)`` uint8 label map: the label value of the most probable class where that
        probability is above 0.5, else 0 (see :func:`labels_from_probabilities`).
    affine: ``(4, 4)`` voxel -> RAS of the source grid (the input's).
    label_set: name -> label value, in channel order.
    latency_s: wall time of the whole call; `latencies` splits it into ``preprocess``, ``network``
        and ``postprocess``.
    device: where the network ran ("cpu", "cuda:0").
    sliding_window: whether the sliding-window inferer ran (else one forward over the volume).
    """

    probabilities: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    label_set: Mapping[str, int]
    latency_s: float
    latencies: Mapping[str, float]
    device: str
    sliding_window: bool


def labels_from_probabilities(
    probabilities: np.ndarray, label_values: tuple[int, ...], *, threshold: float = THRESHOLD
) -> np.ndarray:
    """``(C, I, J, K)`` per-class probabilities -> ``(I, J, K)`` uint8 label map.

    A voxel gets ``label_values[c]`` of the class with the highest probability, if that is above
    `threshold`; otherwise 0 (background). Overlaps (two classes above the threshold, possible with
    sigmoids) go to the more probable class; an exact tie goes to the earlier channel. Computed one
    channel at a time, so a CT-sized volume needs no ``(C, I, J, K)`` temporary.
    """
    if probabilities.ndim != 4 or probabilities.shape[0] != len(label_values):
        raise ValueError(
            f"expected ({len(label_values)}, I, J, K) probabilities, got shape {probabilities.shape}"
        )
    best = np.full(probabilities.shape[1:], threshold, dtype=np.float32)
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for channel, value in zip(probabilities, label_values, strict=True):
        wins = channel > best
        best[wins] = channel[wins]
        labels[wins] = value
    return labels


class Native3DTask:
    """The native 3D network as an inference task (pre-transforms, inferer, post-processing).

    Args:
        network: the network (e.g. from :func:`~ml_worker.models.native3d.load_native3d`); moved to
            `device` and put in eval mode.
        config: its configuration (label set, guidance, ROI, spacing).
        device: where to run; default CUDA when available, else CPU.
        sw_batch_size: windows per forward of the sliding-window inferer.
        overlap: sliding-window overlap (fraction of the ROI).
        mode: ``"auto"``: one forward when the preprocessed volume is the ROI, sliding window when it is
            larger; ``"sliding"`` or ``"whole"`` force one (``"whole"`` holds the whole volume's
            activations at once: for GPUs with the memory, or for comparisons).
        window: CT intensity window (see :func:`~ml_worker.transforms.preprocessing`).
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        config: Native3DConfig,
        device: torch.device | str | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: Literal["auto", "sliding", "whole"] = "auto",
        window: str | tuple[float, float] = "soft_tissue",
    ) -> None:
        if mode not in ("auto", "sliding", "whole"):
            raise ValueError(f"mode must be 'auto', 'sliding' or 'whole', got {mode!r}")
        self.device = select_device(None if device is None else str(device))
        self.network = network.to(self.device).eval()
        self.config = config
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.window = window
        self.renderer = RenderGuidance(labels=config.labels, sigma=config.click_sigma)

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        *,
        device: torch.device | str | None = None,
        config: Native3DConfig | None = None,
        **kwargs: Any,
    ) -> Native3DTask:
        """A task over the weights at `path` (checked by :func:`~ml_worker.models.native3d.load_native3d`)."""
        device = select_device(None if device is None else str(device))
        network, config = load_native3d(path, device=device, config=config)
        return cls(network=network, config=config, device=device, **kwargs)

    def info(self) -> dict[str, Any]:
        """What this model segments and how, for the API and model cards."""
        return {
            "type": "native3d",
            "labels": self.config.labels,
            "prompts": ["box", "click"] if self.config.guidance else [],
            "roi_size": list(self.config.roi_size),
            "spacing": None if self.config.spacing is None else list(self.config.spacing),
            "device": str(self.device),
        }

    def pre_transforms(self, *, modality: str, with_mask: bool = False) -> Compose:
        """Source ``{"image", "affine", "prompts"[, "mask"]}`` -> network grid ``{"image": (1, X, Y, Z),
        "guidance": (4C, X, Y, Z)}`` (no guidance key for a model without guidance). With `with_mask`
        the current label map at ``"mask"`` is resampled beside the image (nearest neighbour) and
        becomes the mask channels."""
        transforms = self._preprocessing(modality=modality, with_mask=with_mask)
        if self.config.guidance:
            transforms.append(
                RenderGuidanced("prompts", labels=self.config.labels, sigma=self.config.click_sigma)
            )
        return Compose(transforms)

    def _preprocessing(self, *, modality: str, with_mask: bool) -> list:
        return list(
            preprocessing(
                modality=modality,
                target_spacing=self.config.spacing,
                roi_size=self.config.roi_size,
                window=self.window,
                fit="pad",
                k_divisible=DIVISOR,
                label_key="mask" if with_mask else None,
            ).transforms
        )

    def inferer(self, grid_shape: tuple[int, ...]) -> Inferer:
        """The inferer for a preprocessed volume of spatial size `grid_shape` ``(X, Y, Z)``."""
        fits = all(s <= r for s, r in zip(grid_shape, self.config.roi_size, strict=True))
        if self.mode == "whole" or (self.mode == "auto" and fits):
            return SimpleInferer()
        return SlidingWindowInferer(
            roi_size=self.config.roi_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode="gaussian",
            progress=False,
        )

    def __call__(
        self,
        *,
        image: np.ndarray,
        affine: np.ndarray,
        modality: str,
        prompts: Prompts | None = None,
    ) -> Prediction:
        """Segment the project's classes in one volume.

        Args:
            image: ``(I, J, K)`` source voxels (:mod:`ml_worker.io.volume` convention).
            affine: ``(4, 4)`` voxel -> RAS mm.
            modality: DICOM modality ("CT", "MR", ...), which picks the intensity normalisation.
            prompts: boxes and clicks in source voxel coordinates for labels of ``config.labels``,
                and the current label map (``prompts.mask``) the network edits; ``None`` (or empty) for
                pre-segmentation.

        Raises:
            PromptError: a prompt outside the volume, an empty box, a label not in the label set, or
                prompts for a model without guidance channels.
            ValueError: an image that is not 3D.
        """
        start = time.perf_counter()
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"image must be (I, J, K), got shape {image.shape}")
        affine = np.asarray(affine, dtype=np.float64)
        has_prompts = prompts is not None and bool(prompts.boxes or prompts.clicks)
        has_mask = prompts is not None and prompts.mask is not None and self.config.guidance
        if has_prompts and not self.config.guidance:
            raise PromptError("this model takes no prompts (it was built without guidance channels)")
        if prompts is not None:
            self.renderer.validate(prompts, image.shape)

        transform = self.pre_transforms(modality=modality, with_mask=has_mask)
        inputs = {"image": image, "affine": affine, "prompts": prompts if has_prompts else None}
        if has_mask:
            inputs["mask"] = np.asarray(prompts.mask, dtype=np.float32)
        data = transform(inputs)
        grid = data["image"]
        channels = [grid.as_tensor()]
        if self.config.guidance:
            channels.append(data["guidance"])
        inputs = torch.cat(channels)[None].to(self.device)
        inferer = self.inferer(tuple(grid.shape[1:]))
        preprocessed = time.perf_counter()

        self.network.eval()
        with torch.no_grad(), autocast(self.device):
            logits = inferer(inputs, self.network)
        probabilities = torch.sigmoid(logits[0].float()).cpu()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        ran = time.perf_counter()

        on_source = to_source_grid(
            probabilities,
            transform=transform,
            data=data,
            source_shape=image.shape,
            source_affine=affine,
            kind="probabilities",
        )
        labels = labels_from_probabilities(on_source, self.config.label_values)
        end = time.perf_counter()
        return Prediction(
            probabilities=on_source,
            labels=labels,
            affine=affine.copy(),
            label_set=self.config.labels,
            latency_s=end - start,
            latencies={
                "preprocess": preprocessed - start,
                "network": ran - preprocessed,
                "postprocess": end - ran,
            },
            device=str(self.device),
            sliding_window=isinstance(inferer, SlidingWindowInferer),
        )


def presegment(task: Native3DTask, volume: Volume, *, modality: str) -> Prediction:
    """Pre-segmentation: the project's classes in a whole volume, with no human prompt."""
    return task(image=volume.array, affine=volume.affine, modality=modality, prompts=None)


class Native3DSession:
    """An interactive session of the native 3D net on one structure: each prompt re-runs the network
    with every prompt given so far for that label and the structure's current mask, so the network
    edits what the annotator sees; the answer to a click then honours it
    (:func:`~ml_worker.inference.corrections.honour_clicks`). Same interface as `LiteMedSAM3D`.

    Args:
        task: the native 3D task (a model with guidance channels).
        image, affine: the volume, as for :meth:`Native3DTask.__call__`.
        modality: DICOM modality of the volume.
        label: the structure's label value (must be in the task's label set).
        mask: the structure's mask before the first prompt (e.g. the pre-segmentation); default empty.
    """

    def __init__(
        self,
        task: Native3DTask,
        *,
        image: np.ndarray,
        affine: np.ndarray,
        modality: str,
        label: int,
        mask: np.ndarray | None = None,
    ) -> None:
        if not task.config.guidance:
            raise PromptError("this model takes no prompts (it was built without guidance channels)")
        if label not in task.config.label_values:
            raise PromptError(f"label {label} is not in the model's label set {task.config.labels}")
        self.task, self.image, self.affine, self.modality, self.label = task, image, affine, modality, label
        self.box: Box3D | None = None
        self.clicks: list[Click] = []
        self.history: list[Interaction] = []
        self.initial = None if mask is None else np.asarray(mask, dtype=bool)
        self.mask = self.initial
        self.raw: np.ndarray | None = None  # the network's answer to the last prompt, before the guarantee
        self.spacing = np.asarray(voxel_spacing(affine))

    def start(self, box: Box3D) -> np.ndarray:
        """Segment from a 3D box (editing the initial mask, if any); forgets earlier clicks. Returns the
        bool ``(I, J, K)`` mask."""
        self.box, self.clicks, self.mask = box, [], self.initial
        return self._run("box")

    def click(self, click: Click) -> np.ndarray:
        """Refine with one more click. Returns the new bool ``(I, J, K)`` mask."""
        self.clicks.append(click)
        return self._run("click")

    def _window(self) -> tuple[slice, slice, slice]:
        """The part of the volume the network looks at: the box and every click, with a margin of
        ``CONTEXT_MM`` of context on each side (the whole volume when there is no box). A hippocampus
        crop fits whole; on a 256x256x128 MR or a CT it keeps a click to one or two network windows."""
        points = [np.asarray(c.ijk) for c in self.clicks]
        if self.box is not None:
            points += [np.asarray(self.box.lo), np.asarray(self.box.hi)]
        if self.box is None or not points:
            return tuple(slice(0, s) for s in self.image.shape)
        margin = np.ceil(CONTEXT_MM / self.spacing).astype(int)
        lo = np.maximum(np.min(points, axis=0) - margin, 0)
        hi = np.minimum(np.max(points, axis=0) + margin + 1, self.image.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    def _run(self, kind: str) -> np.ndarray:
        began = time.perf_counter()
        window = self._window()
        offset = np.array([w.start for w in window])
        shift = np.eye(4)
        shift[:3, 3] = offset  # window voxel -> volume voxel
        current = None
        if self.mask is not None:
            current = np.where(self.mask[window], np.uint8(self.label), np.uint8(0))
        boxes = ()
        if self.box is not None:
            lo, hi = np.asarray(self.box.lo) - offset, np.asarray(self.box.hi) - offset
            boxes = (Box3D(self.label, tuple(int(v) for v in lo), tuple(int(v) for v in hi)),)
        clicks = tuple(
            Click(c.label, tuple(int(v) for v in np.asarray(c.ijk) - offset), c.positive) for c in self.clicks
        )
        prediction = self.task(
            image=self.image[window],
            affine=np.asarray(self.affine, float) @ shift,
            modality=self.modality,
            prompts=Prompts(boxes=boxes, clicks=clicks, mask=current).for_label(self.label),
        )
        # This structure's own sigmoid, not the label map: another class must not take its voxels.
        channel = self.task.config.label_values.index(self.label)
        # outside the window the structure stays as the annotator has it
        self.raw = np.zeros(self.image.shape, dtype=bool) if self.mask is None else self.mask.copy()
        self.raw[window] = prediction.probabilities[channel] > THRESHOLD
        self.mask = honour_clicks(
            self.raw,
            clicks=self.clicks,
            previous=self.mask if kind == "click" else None,
            spacing=self.spacing,
            reach=CLICK_REACH_SIGMAS * self.task.config.click_sigma,
        )
        self.history.append(Interaction(kind, time.perf_counter() - began, 0, 1))
        return self.mask
