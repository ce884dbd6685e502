"""Parameter-efficient fine-tuning (PEFT) methods for the platform's two networks, behind one interface.

Each method is a small class with a ``name``, the ``model_kind`` it applies to, and ``apply(model)``,
which freezes the whole base and opens (or adds) only the parameters the method trains; the training
loop takes a method and never branches on its name. Methods, as the few-shot fine-tuning literature on
segmentation foundation models compares them:

native 3D net (:mod:`ml_worker.models.native3d`, a SegResNet)
    ``full``          every parameter
    ``lora_conv``     LoRA on every Conv3d with a kernel larger than 1 (the 3x3x3 convs, strided ones
                      included); the 1x1x1 up-path reducers and the head stay frozen
    ``norm``          the GroupNorm affine parameters only
    ``decoder``       the up path (up-samplers, up blocks) and the head
    ``linear_probe``  the 1x1x1 head only, on frozen features

LiteMedSAM (:mod:`ml_worker.models.litemedsam`)
    ``encoder_lora``  LoRA on the ``qkv`` and ``proj`` Linear layers of the image encoder's attention
    ``decoder``       the mask decoder, fully
    ``decoder_lora``  the mask decoder fully + LoRA on the encoder attention (as SAMed does)
    ``bitfit``        every bias (BitFit, Ben Zaken et al. 2022)
    ``layernorm``     the LayerNorm (and LayerNorm2d) affine parameters only

LoRA (Hu et al. 2022) is implemented here in a few lines (:class:`LoRALinear`, :class:`LoRAConv`)
rather than with the ``peft`` package: that package depends on ``transformers``, ``accelerate`` and
``huggingface_hub``, and its Conv3d merge fails on 1x1x1 kernels in 0.21.2. Here ``W' = W + s B A``
with ``A`` initialised like the base layer and ``B`` zero, so an adapted model starts exactly at its
base; :func:`merge` folds ``s B A`` into ``W`` and puts the plain layer back, so a merged model has
the base's structure and state-dict keys (it saves and loads like any base checkpoint).

What an adapter holds is what was trained: :func:`adapter_state` returns the parameters with
``requires_grad`` (after ``apply``), :func:`load_adapter_state` puts them back onto a base to which the
same method was applied, checking names and shapes. Buffers are never part of an adapter: LiteMedSAM's
encoder has BatchNorm running statistics, so :func:`set_train_mode` keeps frozen BatchNorm layers in
eval mode while training (the statistics stay the base's, as an adapter cannot carry them).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import Tensor, nn

from ml_worker.models.litemedsam import LiteMedSAM
from ml_worker.models.tiny_vit import Attention as TinyViTAttention
from ml_worker.models.tiny_vit import LayerNorm2d

__all__ = [
    "METHODS",
    "AdapterError",
    "LoRAConv",
    "LoRALinear",
    "NotMergeableError",
    "PeftMethod",
    "adapter_state",
    "count_trainable",
    "get_method",
    "load_adapter_state",
    "merge",
    "model_kind",
    "set_train_mode",
    "trainable_parameters",
]

_LISTED = 10  # names listed per kind of problem in an AdapterError


class AdapterError(ValueError):
    """An adapter or PEFT method that does not fit the model it is applied or loaded to."""


class NotMergeableError(AdapterError):
    """The adapted model cannot be folded into a plain base model."""


# ---- LoRA layers ---------------------------------------------------------------------------------


class _LoRA(nn.Module):
    """Common part of the LoRA wrappers: the frozen ``base`` layer, rank, scaling, input dropout."""

    base: nn.Module
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def __init__(self, base: nn.Module, *, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        """``s * B @ A`` in the shape of ``base.weight``."""
        raise NotImplementedError

    def merged(self) -> nn.Module:
        """The base layer with the low-rank update folded into its weight (this wrapper is spent)."""
        with torch.no_grad():
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        return self.base


class LoRALinear(_LoRA):
    """``y = base(x) + s * B(A(dropout(x)))`` around a frozen ``nn.Linear``.

    Shapes: ``lora_A`` ``(rank, in_features)``, ``lora_B`` ``(out_features, rank)``, ``s = alpha / rank``.
    Input ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__(base, rank=rank, alpha=alpha, dropout=dropout)
        weight = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class LoRAConv(_LoRA):
    """``y = base(x) + s * B(A(dropout(x)))`` around a frozen ``nn.Conv1d/2d/3d``.

    ``A`` is a convolution like the base's (same kernel, stride, padding, dilation; ``in -> rank``, no
    bias) and ``B`` a pointwise ``rank -> out``, so the update is a convolution with kernel
    ``B @ A``, exactly foldable into the base kernel. Shapes: ``lora_A`` ``(rank, in, *kernel)``,
    ``lora_B`` ``(out, rank, 1, ...)``. Grouped convolutions and non-zero padding modes are refused.
    """

    def __init__(
        self,
        base: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        *,
        rank: int = 4,
        alpha: float = 8.0,
        dropout: float = 0.0,
    ) -> None:
        if base.groups != 1 or base.padding_mode != "zeros":
            raise AdapterError(
                f"LoRAConv needs a plain convolution (groups=1, zero padding), got groups={base.groups}, "
                f"padding_mode={base.padding_mode!r}"
            )
        super().__init__(base, rank=rank, alpha=alpha, dropout=dropout)
        weight = base.weight
        dims = weight.ndim - 2
        self.conv = _CONV[dims]
        a_shape = (rank, base.in_channels, *base.kernel_size)
        self.lora_A = nn.Parameter(torch.empty(a_shape, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(
            torch.zeros((base.out_channels, rank) + (1,) * dims, dtype=weight.dtype, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        base = self.base
        low = self.conv(self.dropout(x), self.lora_A, None, base.stride, base.padding, base.dilation)
        return base(x) + self.conv(low, self.lora_B) * self.scaling

    def delta_weight(self) -> Tensor:
        b = self.lora_B.flatten(1)  # (out, rank)
        return torch.einsum("or,ri...->oi...", b, self.lora_A) * self.scaling


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, _LoRA]]:
    for name, module in model.named_modules():
        if isinstance(module, _LoRA):
            yield name, module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _wrap_lora(model: nn.Module, names: list[str], *, rank: int, alpha: float, dropout: float) -> None:
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            wrapped: _LoRA = LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout)
        elif isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            wrapped = LoRAConv(layer, rank=rank, alpha=alpha, dropout=dropout)
        else:
            raise AdapterError(f"LoRA cannot wrap {name} ({type(layer).__name__})")
        _replace(model, name, wrapped)


# ---- methods -------------------------------------------------------------------------------------


def model_kind(model: nn.Module) -> str:
    """``"native3d"`` or ``"litemedsam"``: the kind of network `model` is.

    Raises:
        AdapterError: any other network.
    """
    if isinstance(model, LiteMedSAM):
        return "litemedsam"
    if isinstance(model, SegResNet):
        return "native3d"
    raise AdapterError(f"no PEFT methods for a {type(model).__name__}: expected a native3d net or LiteMedSAM")


class PeftMethod(ABC):
    """A PEFT method: which parameters of a base network train, and how (see the module docstring).

    Subclasses set ``name``, ``model_kind`` and ``summary`` and implement :meth:`open`; LoRA methods take
    ``rank``, ``alpha`` and ``dropout``. ``params`` (JSON-able) is what an adapter file records so the
    same method can be re-applied before its weights are loaded.
    """

    name: ClassVar[str]
    model_kind: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze `model`, then open (or add) this method's trainable parameters; in place.

        Returns:
            `model` itself (LoRA layers, if any, replace the layers they wrap).

        Raises:
            AdapterError: a network of another kind, or one that already carries LoRA layers (merge it
                first), or a method that opens nothing on this network.
        """
        kind = model_kind(model)
        if kind != self.model_kind:
            raise AdapterError(f"method {self.name!r} is for {self.model_kind} networks, not {kind}")
        if any(True for _ in _lora_layers(model)):
            raise AdapterError("this model already carries LoRA layers: merge() it before applying a method")
        for p in model.parameters():
            p.requires_grad_(False)
        self.open(model)
        if count_trainable(model) == 0:
            raise AdapterError(f"method {self.name!r} found nothing to train in this {kind} network")
        return model

    @abstractmethod
    def open(self, model: nn.Module) -> None:
        """Mark or add the trainable parameters of a fully frozen `model`."""


def _open(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


class _LoRAMixin:
    """Hyper-parameters shared by the LoRA methods."""

    def __init__(self, *, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> None:
        if int(rank) < 1 or not 0.0 <= float(dropout) < 1.0 or not float(alpha) > 0:
            raise ValueError(
                f"LoRA needs rank >= 1, alpha > 0, dropout in [0, 1); got {rank}, {alpha}, {dropout}"
            )
        self.params = {"rank": int(rank), "alpha": float(alpha), "dropout": float(dropout)}

    def wrap(self, model: nn.Module, names: list[str]) -> None:
        _wrap_lora(model, names, **self.params)


class Native3DFull(PeftMethod):
    name, model_kind, summary = "full", "native3d", "every parameter (full fine-tuning)"

    def open(self, model: nn.Module) -> None:
        _open(model)


class Native3DLoRAConv(_LoRAMixin, PeftMethod):
    name, model_kind, summary = "lora_conv", "native3d", "LoRA on the Conv3d layers with kernels > 1"

    def open(self, model: nn.Module) -> None:
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv3d) and math.prod(m.kernel_size) > 1 and m.groups == 1
        ]
        self.wrap(model, names)


class Native3DNorm(PeftMethod):
    name, model_kind, summary = "norm", "native3d", "GroupNorm affine parameters only"

    def open(self, model: nn.Module) -> None:
        _open(*(m for m in model.modules() if isinstance(m, nn.GroupNorm)))


class Native3DDecoder(PeftMethod):
    name, model_kind, summary = "decoder", "native3d", "up path (up-samplers, up blocks) and head"

    def open(self, model: nn.Module) -> None:
        _open(model.up_samples, model.up_layers, model.conv_final)


class Native3DLinearProbe(PeftMethod):
    name, model_kind, summary = "linear_probe", "native3d", "1x1x1 head only, on frozen features"

    def open(self, model: nn.Module) -> None:
        _open(model.conv_final[-1])  # (norm, act, conv): the head conv


def _encoder_attention_layers(model: LiteMedSAM) -> list[str]:
    names = []
    for n, m in model.image_encoder.named_modules():
        if isinstance(m, TinyViTAttention):
            names += [f"image_encoder.{n}.qkv", f"image_encoder.{n}.proj"]
    return names


class SamEncoderLoRA(_LoRAMixin, PeftMethod):
    name, model_kind, summary = "encoder_lora", "litemedsam", "LoRA on the image encoder's attention qkv/proj"

    def open(self, model: nn.Module) -> None:
        self.wrap(model, _encoder_attention_layers(model))


class SamDecoder(PeftMethod):
    name, model_kind, summary = "decoder", "litemedsam", "the mask decoder, fully"

    def open(self, model: nn.Module) -> None:
        _open(model.mask_decoder)


class SamDecoderLoRA(_LoRAMixin, PeftMethod):
    name, model_kind, summary = "decoder_lora", "litemedsam", "mask decoder fully + LoRA on encoder attention"

    def open(self, model: nn.Module) -> None:
        _open(model.mask_decoder)
        self.wrap(model, _encoder_attention_layers(model))


class SamBitFit(PeftMethod):
    name, model_kind, summary = "bitfit", "litemedsam", "every bias term (BitFit)"

    def open(self, model: nn.Module) -> None:
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)


class SamLayerNorm(PeftMethod):
    name, model_kind, summary = "layernorm", "litemedsam", "LayerNorm affine parameters only"

    def open(self, model: nn.Module) -> None:
        _open(*(m for m in model.modules() if isinstance(m, nn.LayerNorm | LayerNorm2d)))


METHODS: dict[str, dict[str, type[PeftMethod]]] = {}
for _cls in (
    Native3DFull,
    Native3DLoRAConv,
    Native3DNorm,
    Native3DDecoder,
    Native3DLinearProbe,
    SamEncoderLoRA,
    SamDecoder,
    SamDecoderLoRA,
    SamBitFit,
    SamLayerNorm,
):
    METHODS.setdefault(_cls.model_kind, {})[_cls.name] = _cls


def get_method(model_kind: str, name: str, **params: Any) -> PeftMethod:
    """The method `name` for networks of `model_kind`, configured with `params` (e.g. ``rank=8``).

    Raises:
        AdapterError: an unknown kind or method (the known ones are listed), or parameters the method
            does not take.
    """
    if model_kind not in METHODS:
        raise AdapterError(f"unknown model kind {model_kind!r}; known: {sorted(METHODS)}")
    methods = METHODS[model_kind]
    if name not in methods:
        raise AdapterError(f"unknown PEFT method {name!r} for {model_kind}; known: {sorted(methods)}")
    try:
        return methods[name](**params)
    except TypeError as exc:
        raise AdapterError(f"bad parameters {params} for PEFT method {name!r}: {exc}") from None


# ---- helpers -------------------------------------------------------------------------------------


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train (``requires_grad``), by name, in module order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in trainable_parameters(model).values())


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """What an adapter stores: the trainable parameters, detached CPU copies, by name."""
    return {n: p.detach().cpu().clone() for n, p in trainable_parameters(model).items()}


def load_adapter_state(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Copy an :func:`adapter_state` onto `model` (a base to which the same method was applied); in place.

    Raises:
        AdapterError: the names or shapes differ from the model's trainable parameters (missing,
            unexpected and mismatched names are listed), or a value is not a tensor.
    """
    own = trainable_parameters(model)
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    bad = [n for n in state if n in own and not isinstance(state[n], Tensor)]
    mismatched = [
        f"{n}: model {tuple(own[n].shape)} vs adapter {tuple(state[n].shape)}"
        for n in own
        if n in state and n not in bad and own[n].shape != state[n].shape
    ]
    if missing or unexpected or mismatched or bad:
        lines = [
            f"adapter does not fit the model's {len(own)} trainable tensors: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} shape mismatches, {len(bad)} not tensors "
            "(was the same PEFT method, with the same parameters, applied to the same base?)"
        ]
        for kind, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
            ("not a tensor", bad),
        ):
            lines += [f"  {kind}: {item}" for item in items[:_LISTED]]
            if len(items) > _LISTED:
                lines.append(f"  ... and {len(items) - _LISTED} more {kind}")
        raise AdapterError("\n".join(lines))
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(state[n].to(dtype=p.dtype, device=p.device))
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into the layer it wraps; in place. Methods without LoRA train base
    parameters directly, so their model is already merged and is returned as is.

    Returns:
        `model`, now with the base's structure and state-dict keys, giving the same outputs.
    """
    for name, layer in list(_lora_layers(model)):
        _replace(model, name, layer.merged())
    return model


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except BatchNorm layers with no trainable parameter stay in eval mode.

    A frozen BatchNorm in train mode would still move its running statistics, which an adapter does not
    carry: the adapted model would then differ from base + adapter.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()
    return model
