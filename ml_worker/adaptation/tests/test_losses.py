"""PartialLabelLoss: masked BCE + Dice, zero gradient on unlabelled channels, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml_worker.adaptation.losses import NoLabelledChannelError, PartialLabelLoss


def _batch(seed: int = 0, shape=(2, 3, 8, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    target = (torch.rand(shape, generator=g) > 0.7).float()
    return logits, target


def test_unlabelled_channels_get_exactly_zero_gradient():
    logits, target = _batch()
    logits.requires_grad_(True)
    labelled = torch.tensor([[True, False, True], [False, False, True]])
    PartialLabelLoss()(logits, target, labelled).backward()
    grad = logits.grad
    for b in range(2):
        for c in range(3):
            if labelled[b, c]:
                assert grad[b, c].abs().sum() > 0
            else:
                assert torch.equal(grad[b, c], torch.zeros_like(grad[b, c]))


def test_unlabelled_channels_do_not_change_the_loss_even_if_non_finite():
    logits, target = _batch(1)
    labelled = torch.tensor([[True, False, True], [True, True, False]])
    loss = PartialLabelLoss()
    reference = loss(logits, target, labelled)
    logits2, target2 = logits.clone(), target.clone()
    logits2[0, 1] = float("nan")
    logits2[1, 2] = 1e6
    target2[0, 1] = 1 - target2[0, 1]
    assert torch.equal(loss(logits2, target2, labelled), reference)


def test_all_labelled_matches_the_plain_definition():
    logits, target = _batch(2, (1, 2, 4, 4, 4))
    labelled = torch.ones(1, 2, dtype=torch.bool)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    inter = (p * target).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1e-5) / (p.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1e-5)
    expected = bce + dice.mean()
    got = PartialLabelLoss()(logits, target, labelled)
    assert torch.allclose(got, expected, atol=1e-6)
    only_dice = PartialLabelLoss(bce_weight=0.0)(logits, target, labelled)
    assert torch.allclose(only_dice, dice.mean(), atol=1e-6)


def test_a_perfect_prediction_has_a_lower_loss_than_a_wrong_one():
    _, target = _batch(3)
    labelled = torch.ones(2, 3, dtype=torch.bool)
    good = (target * 2 - 1) * 20
    loss = PartialLabelLoss()
    assert loss(good, target, labelled) < 1e-3
    assert loss(-good, target, labelled) > 1.0


def test_works_on_2d_outputs_and_bool_targets():
    logits = torch.randn(2, 1, 16, 16)
    target = torch.rand(2, 1, 16, 16) > 0.5
    value = PartialLabelLoss()(logits, target, torch.tensor([[True], [False]]))
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize(
    "logits_shape, target_shape, labelled_shape, message",
    [
        ((2, 3, 4, 4, 4), (2, 3, 4, 4), (2, 3), "target shape"),
        ((2, 3, 4, 4, 4), (2, 3, 4, 4, 4), (2, 2), "labelled must be"),
        ((2, 3), (2, 3), (2, 3), "logits must be"),
    ],
)
def test_shape_errors(logits_shape, target_shape, labelled_shape, message):
    with pytest.raises(ValueError, match=message):
        PartialLabelLoss()(
            torch.zeros(logits_shape), torch.zeros(target_shape), torch.ones(labelled_shape, dtype=torch.bool)
        )


def test_no_labelled_channel_is_a_clear_error():
    logits, target = _batch()
    with pytest.raises(NoLabelledChannelError, match="no channel of any sample"):
        PartialLabelLoss()(logits, target, torch.zeros(2, 3, dtype=torch.bool))


def test_non_binary_target_is_refused():
    logits, _ = _batch()
    with pytest.raises(ValueError, match="only 0 and 1"):
        PartialLabelLoss()(logits, torch.full_like(logits, 2.0), torch.ones(2, 3, dtype=torch.bool))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="not both 0"):
        PartialLabelLoss(bce_weight=0.0, dice_weight=0.0)
