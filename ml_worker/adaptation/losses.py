"""Losses for training on partially labelled data.

A project may label only some of its structures in a given volume (an annotator approved the
hippocampus but not the amygdala yet). A softmax over classes cannot express "unknown", so the
networks here give one sigmoid per class, and :class:`PartialLabelLoss` computes BCE + soft Dice
on the channels that are labelled for each sample only. The other channels are left out of the
graph entirely (not multiplied by zero), so they get an exact zero gradient and a non-finite logit
there cannot leak NaNs into the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NoLabelledChannelError", "PartialLabelLoss"]


class NoLabelledChannelError(ValueError):
    """A batch in which no channel of any sample is labelled: there is nothing to learn from."""


class PartialLabelLoss(nn.Module):
    """BCE + soft Dice per class (sigmoid), on the labelled (sample, class) pairs only.

    For each labelled pair ``(b, c)``: ``bce = mean_voxels BCE(logits[b, c], target[b, c])`` and
    ``dice = 1 - (2 sum(p t) + smooth_nr) / (sum(p) + sum(t) + smooth_dr)`` with ``p = sigmoid(logits)``.
    Dice is per sample (not pooled over the batch), since each sample has its own labelled set; a
    labelled channel with an empty target is learnt as "nothing here" (its Dice loss falls as ``p``
    falls). The loss is ``bce_weight * mean(bce) + dice_weight * mean(dice)`` over the labelled pairs.

    Args:
        bce_weight: weight of the BCE term (>= 0).
        dice_weight: weight of the Dice term (>= 0); not both zero.
        smooth_nr, smooth_dr: Dice smoothing of numerator and denominator (MONAI's defaults).
    """

    def __init__(
        self,
        *,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(
                f"bce_weight and dice_weight must be >= 0 and not both 0, got {bce_weight}, {dice_weight}"
            )
        if smooth_dr <= 0 or smooth_nr < 0:
            raise ValueError(f"smooth_dr must be > 0 and smooth_nr >= 0, got {smooth_dr}, {smooth_nr}")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def forward(self, logits: Tensor, target: Tensor, labelled: Tensor) -> Tensor:
        """The loss.

        Args:
            logits: ``(B, C, *spatial)`` raw network outputs (e.g. ``(B, C, X, Y, Z)``).
            target: the same shape, 0/1 (bool, integer or float) per class.
            labelled: ``(B, C)`` bool: whether class ``c`` is labelled in sample ``b``.

        Returns:
            A scalar (float32, or the logits' dtype if wider).

        Raises:
            ValueError: shapes that do not fit, or a target with values other than 0 and 1.
            NoLabelledChannelError: no channel of any sample is labelled.
        """
        if logits.ndim < 3:
            raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}"
            )
        if labelled.shape != logits.shape[:2]:
            raise ValueError(
                f"labelled must be (B, C) = {tuple(logits.shape[:2])}, got {tuple(labelled.shape)}"
            )
        labelled = labelled.to(device=logits.device, dtype=torch.bool)
        if not bool(labelled.any()):
            raise NoLabelledChannelError(
                "no channel of any sample in this batch is labelled: PartialLabelLoss needs at least one "
                "labelled (sample, class) pair"
            )
        target = target.to(device=logits.device)
        if target.dtype != torch.bool and bool(((target != 0) & (target != 1)).any()):
            raise ValueError("target must hold only 0 and 1 (one binary channel per class)")

        # select the labelled pairs: (N, V) with N labelled (b, c) pairs and V voxels
        x = logits.flatten(2)[labelled].float()
        t = target.flatten(2)[labelled].float()
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(dim=1)
        p = torch.sigmoid(x)
        dice = 1.0 - (2.0 * (p * t).sum(dim=1) + self.smooth_nr) / (
            p.sum(dim=1) + t.sum(dim=1) + self.smooth_dr
        )
        return self.bce_weight * bce.mean() + self.dice_weight * dice.mean()
