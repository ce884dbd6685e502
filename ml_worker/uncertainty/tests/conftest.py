"""Tiny networks and volumes shared by the ml_worker.uncertainty tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """``(N, 1, I, J, K)`` -> ``(N, 2, I, J, K)`` logits: two 3x3x3 convs with optional dropout between."""

    def __init__(self, *, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv3d(1, 4, 3, padding=1), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        layers.append(nn.Conv3d(4, 2, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def image() -> torch.Tensor:
    """``(1, 16, 16, 16)`` random volume in ``[0, 1]``."""
    return torch.rand((1, 16, 16, 16), generator=torch.Generator().manual_seed(7))


@pytest.fixture
def tiny_net() -> TinyNet:
    return TinyNet(dropout=0.3).eval()
