"""The native 3D promptable network: a MONAI SegResNet with prompt-guidance input channels.

Why SegResNet: it is the measured baseline on these machines (init_filters=16, 64^3: forward ~0.5 s,
train step ~1.6 s on 2 CPU cores), fully convolutional (any size divisible by 8, so sliding windows
and whole volumes run through the same weights), GroupNorm (batch size 1 trains and adapts well, and
its affine parameters are what a norm-only PEFT opens) and residual, with few parameters (4.7 M at
16 filters, 2 classes). Its 1x1x1 convs (the up-path channel reducers and the head) must stay out of LoRA.

Input channels, ``1 + 4 * num_classes`` with guidance (see :mod:`ml_worker.inference.guidance`)::

    0            the image, preprocessed to [0, 1]
    1 + 4c + 0   positive clicks for class c: Gaussian balls (sigma in mm), peak 1
    1 + 4c + 1   negative clicks for class c: Gaussian balls, peak 1
    1 + 4c + 2   box for class c: 1 inside the box, 0 outside
    1 + 4c + 3   the current mask of class c (what the annotator sees): 1 inside, 0 outside

Classes are the project's label set in a fixed order (``Native3DConfig.label_values``); without
prompts (pre-segmentation) every guidance channel is zero. The mask channel makes the network an
editor: it is trained with clicks placed on its own errors (nnInteractive, SAM-Med3D, DeepEdit), so a
click corrects the mask the annotator sees instead of segmenting afresh.

Files of the first format (``native3d/1``: three guidance channels per class, clicks sized in grid
voxels) are converted on load: the mask channels get zero input weights (the network computes exactly
what it did before) and the click size is carried over in mm. Such a network has never seen a mask:
retrain it to get the editing behaviour. Output: ``num_classes`` logits, one sigmoid
per class (not a softmax), so a project that labels only some structures can mask the others out of
the loss, and overlapping structures are possible.

Dropout sits after the stem (MONAI's ``dropout_prob``) and before the 1x1x1 head, so MC-dropout
sampling in train mode gives spread where the model is unsure. Neither adds parameters: the state
dict is exactly that of ``monai.networks.nets.SegResNet`` of the same configuration, so a MONAI
checkpoint of that network loads as is.

Files (:func:`save_native3d` / :func:`load_native3d`): one ``torch.save`` of
``{"state_dict": {name: tensor}, "config": {plain JSON-able values}}``, read back with
``weights_only=True`` (never runs pickled code) and checked key by key and shape by shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import SegResNet
from torch import nn

from ml_worker.models.checkpoints import CheckpointError, check_state_dict, load_state_dict, save_atomic

__all__ = [
    "GUIDANCE_PER_CLASS",
    "NATIVE3D_FORMAT",
    "Native3DConfig",
    "Native3DNet",
    "build_native3d",
    "channel_of",
    "describe_channels",
    "in_channels",
    "load_native3d",
    "save_native3d",
]

GUIDANCE_PER_CLASS = 4  # positive clicks, negative clicks, box, current mask
NATIVE3D_FORMAT = "native3d/2"
LEGACY_FORMAT = "native3d/1"  # 3 guidance channels per class, click_sigma in grid voxels
STEM_WEIGHT = "convInit.conv.weight"  # the first conv: its input channels are the image and guidance
TINY_GRID = 64  # voxels at the deepest level below which the net runs in float32 (see Native3DNet)
DIVISOR = 8  # SegResNet halves the grid three times: every input size must be a multiple of this


class Native3DNet(SegResNet):
    """SegResNet with a second dropout before its 1x1x1 head (no extra parameters).

    An input so small that the deepest level is under 4x4x4 voxels runs in float32 even under
    autocast: oneDNN's bfloat16 weight gradient of Conv3d gives NaN on 2x2x2 grids (measured here: 6 of
    60 random trials; none of 60 at 4x4x4). Such inputs cost nothing in float32; real patches
    (48x64x48 and up) keep bf16's speed.

    Input ``(B, in_channels, X, Y, Z)`` with ``X, Y, Z`` multiples of 8; output ``(B, out_channels,
    X, Y, Z)`` logits.
    """

    def __init__(self, *, head_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_dropout = nn.Dropout(head_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) and x.shape[2:].numel() < TINY_GRID * DIVISOR**3:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)

    @property
    def head(self) -> nn.Conv3d:
        """The 1x1x1 conv that maps ``init_filters`` features to the class logits."""
        return self.conv_final[2].conv

    def decode(self, x: torch.Tensor, down_x: list[torch.Tensor]) -> torch.Tensor:
        for i, (up, upl) in enumerate(zip(self.up_samples, self.up_layers, strict=True)):
            x = upl(up(x) + down_x[i + 1])
        norm, act, conv = self.conv_final
        return conv(self.head_dropout(act(norm(x))))


def build_native3d(
    *,
    num_classes: int,
    guidance: bool = True,
    init_filters: int = 16,
    dropout: float = 0.1,
    head_prior: float = 0.05,
) -> Native3DNet:
    """The native 3D network, untrained.

    Args:
        num_classes: output channels, one sigmoid each (background is not a class).
        guidance: add ``4 * num_classes`` guidance input channels (see the module docstring).
        init_filters: width of the first level (doubles per level); a multiple of 8 (GroupNorm of 8).
        dropout: probability at the stem and before the head (0 switches both off).
        head_prior: initial foreground probability of every class (the head's bias is set to its
            logit, as in RetinaNet): structures are small, so an untrained net starts near "background
            everywhere" instead of 0.5, and training does not spend its first steps getting there.

    Returns:
        A module mapping ``(B, 1 + 4 * num_classes, X, Y, Z)`` (``(B, 1, X, Y, Z)`` without guidance),
        sizes multiples of 8, to ``(B, num_classes, X, Y, Z)`` logits.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if init_filters < 8 or init_filters % 8:
        raise ValueError(f"init_filters must be a positive multiple of 8 (GroupNorm), got {init_filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 < head_prior < 1.0:
        raise ValueError(f"head_prior must be in (0, 1), got {head_prior}")
    net = Native3DNet(
        spatial_dims=3,
        in_channels=in_channels(num_classes=num_classes, guidance=guidance),
        out_channels=num_classes,
        init_filters=init_filters,
        dropout_prob=dropout,
        head_dropout=dropout,
    )
    nn.init.constant_(net.head.bias, math.log(head_prior / (1.0 - head_prior)))
    return net


def in_channels(*, num_classes: int, guidance: bool) -> int:
    """Input channels of the network: the image plus the guidance channels."""
    return 1 + (GUIDANCE_PER_CLASS * num_classes if guidance else 0)


@dataclass(frozen=True)
class Native3DConfig:
    """Everything needed to rebuild a native 3D model and run it; saved inside its weights file.

    num_classes: output channels.
    class_names: name of each output channel (the project's label names), in channel order.
    label_values: the label-set value each channel writes into a label map (default 1..C).
    guidance: whether the network takes guidance channels (prompts).
    init_filters, dropout: network width and dropout (see :func:`build_native3d`).
    roi_size: sliding-window patch (X, Y, Z) on the network grid; multiples of 8.
    spacing: target voxel size in mm (R, A, S) the network works at; ``None`` keeps the source's.
    click_sigma: standard deviation of a click's Gaussian ball, in mm.
    """

    num_classes: int
    class_names: tuple[str, ...]
    label_values: tuple[int, ...] = ()
    guidance: bool = True
    init_filters: int = 16
    dropout: float = 0.1
    roi_size: tuple[int, int, int] = (96, 96, 64)
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    click_sigma: float = 2.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "class_names", tuple(str(n) for n in self.class_names))
        values = self.label_values or tuple(range(1, self.num_classes + 1))
        set_(self, "label_values", tuple(int(v) for v in values))
        set_(self, "roi_size", tuple(int(s) for s in self.roi_size))
        if self.spacing is not None:
            set_(self, "spacing", tuple(float(s) for s in self.spacing))
        problems = []
        if self.num_classes < 1:
            problems.append(f"num_classes must be at least 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class_names for {self.num_classes} classes")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append(f"class_names must be distinct, got {list(self.class_names)}")
        if len(self.label_values) != self.num_classes:
            problems.append(f"{len(self.label_values)} label_values for {self.num_classes} classes")
        if len(set(self.label_values)) != len(self.label_values) or not all(
            0 < v < 256 for v in self.label_values
        ):
            problems.append(f"label_values must be distinct values in 1..255, got {list(self.label_values)}")
        if len(self.roi_size) != 3 or any(s < DIVISOR or s % DIVISOR for s in self.roi_size):
            problems.append(f"roi_size must be three multiples of {DIVISOR}, got {list(self.roi_size)}")
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing)
        ):
            problems.append(f"spacing must be three positive sizes in mm, got {list(self.spacing)}")
        if not self.click_sigma > 0:
            problems.append(f"click_sigma must be positive, got {self.click_sigma}")
        if problems:
            raise ValueError("invalid Native3DConfig: " + "; ".join(problems))

    @property
    def labels(self) -> dict[str, int]:
        """The label set this model segments: name -> value, in channel order."""
        return dict(zip(self.class_names, self.label_values, strict=True))

    @property
    def in_channels(self) -> int:
        return in_channels(num_classes=self.num_classes, guidance=self.guidance)

    def build(self) -> Native3DNet:
        """An untrained network of this configuration."""
        return build_native3d(
            num_classes=self.num_classes,
            guidance=self.guidance,
            init_filters=self.init_filters,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples), as stored in a weights file."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()} | {
            "format": NATIVE3D_FORMAT
        }

    @classmethod
    def for_labels(
        cls, labels: Mapping[int, str], *, roi_size: Sequence[int], init_filters: int
    ) -> Native3DConfig:
        """A guided net for a label set (value -> name, channels in value order) on the source spacing."""
        values = sorted(labels)
        return cls(
            num_classes=len(values),
            class_names=tuple(labels[v] for v in values),
            label_values=tuple(values),
            init_filters=init_filters,
            roi_size=tuple(roi_size),
            spacing=None,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Native3DConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: another format, unknown or missing fields, invalid values.
        """
        data = dict(data)
        fmt = data.pop("format", NATIVE3D_FORMAT)
        if fmt == LEGACY_FORMAT:  # click size was in grid voxels: carry it over in mm
            spacing = data.get("spacing") or (1.0, 1.0, 1.0)
            data["click_sigma"] = float(data.get("click_sigma", 2.0)) * float(np.mean(spacing))
        elif fmt != NATIVE3D_FORMAT:
            raise ValueError(f"config format {fmt!r} is neither {NATIVE3D_FORMAT!r} nor {LEGACY_FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:  # a missing required field
            raise ValueError(str(exc)) from None


def save_native3d(model: nn.Module, config: Native3DConfig, path: Path) -> Path:
    """Write the weights and config of a native 3D model to `path`, atomically.

    The file holds only tensors and plain containers (``torch.load(weights_only=True)`` reads it).

    Raises:
        CheckpointError: the model does not fit `config` (names what differs).
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    check_state_dict(config.build(), state)
    save_atomic({"state_dict": state, "config": config.to_dict()}, path)
    return path


def _file_config(path: Path) -> Native3DConfig | None:
    """The config stored in a file that `load_state_dict` already found safe; None if there is none."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    raw = obj.get("config") if isinstance(obj, Mapping) else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: its 'config' is a {type(raw).__name__}, not a mapping")
    try:
        return Native3DConfig.from_dict(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_native3d(
    path: Path,
    *,
    device: torch.device | str = "cpu",
    config: Native3DConfig | None = None,
) -> tuple[Native3DNet, Native3DConfig]:
    """A native 3D model from `path`, weights checked and loaded strictly, in eval mode on `device`.

    Args:
        path: a file from :func:`save_native3d`, or a plain state dict (bare or under ``"model"`` /
            ``"state_dict"``) of a SegResNet of the same layout, e.g. trained with MONAI.
        device: where to put the model.
        config: the configuration the caller expects (e.g. the project's label set); the weights must
            fit it. Default: the config stored in the file (required then).

    Raises:
        CheckpointError: no file, unreadable or truncated, pickled objects other than tensors (refused
            without running them), no config anywhere, or weights that do not fit (missing or
            unexpected keys and shape mismatches named, e.g. the head of a 3-class file for 2 classes).
    """
    path = Path(path)
    state = load_state_dict(path)  # safe: weights_only, precise errors
    stored = _file_config(path)
    if config is None:
        if stored is None:
            raise CheckpointError(
                f"{path} holds weights but no native3d config: pass the expected Native3DConfig"
            )
        config = stored
    model = config.build()
    state = _with_mask_channels(state, config)
    try:
        check_state_dict(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def _with_mask_channels(state: Mapping[str, torch.Tensor], config: Native3DConfig) -> dict[str, torch.Tensor]:
    """Weights of a first-format network (3 guidance channels per class) with zero input weights for
    the mask channels inserted, so it computes what it did; other weights are returned as they are."""
    state = dict(state)
    weight = state.get(STEM_WEIGHT)
    legacy = 1 + (GUIDANCE_PER_CLASS - 1) * config.num_classes
    if not config.guidance or weight is None or weight.ndim != 5 or weight.shape[1] != legacy:
        return state
    parts = [weight[:, :1]]
    for c in range(config.num_classes):
        per_class = weight[:, 1 + 3 * c : 1 + 3 * (c + 1)]
        parts += [per_class, torch.zeros_like(per_class[:, :1])]
    state[STEM_WEIGHT] = torch.cat(parts, dim=1)
    return state


def describe_channels(config: Native3DConfig) -> list[str]:
    """Human-readable name of every input channel, in order (for logs and model cards)."""
    names = ["image"]
    if config.guidance:
        for name in config.class_names:
            names += [f"{name}:positive", f"{name}:negative", f"{name}:box", f"{name}:mask"]
    return names


def channel_of(config: Native3DConfig, label: int) -> int:
    """Output channel of label-set value `label`."""
    try:
        return config.label_values.index(int(label))
    except ValueError:
        raise ValueError(f"label {label} is not one of this model's labels {config.labels}") from None
