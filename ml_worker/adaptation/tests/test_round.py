"""The learning round's gate also scores the interactive curve: a candidate that needs more clicks than
the active model is refused, and says so. Pool scoring with a second opinion (LiteMedSAM on the model's
boxes, here a stand-in) scores their disagreement and pre-segments with it only where it is better."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ml_worker.adaptation import round as round_module
from ml_worker.adaptation.round import PoolScorer, _interactive_verdict, adaptation_round
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.adaptation.train import TrainConfig
from ml_worker.inference.eval import interactive_curve
from ml_worker.inference.native import Native3DTask
from ml_worker.models.native3d import Native3DConfig, save_native3d

CONFIG = Native3DConfig(
    num_classes=2, class_names=("outer", "core"), init_filters=8, roi_size=(24, 24, 24), spacing=None
)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("round")
    return [make_case(folder, f"case{i}", seed=i) for i in range(4)], folder


@pytest.mark.parametrize(
    ("candidate", "active", "refused"),
    [
        ({"a": [0.6, 0.7], "b": [0.6, 0.8]}, {"a": [0.7, 0.9], "b": [0.7, 0.9]}, True),
        ({"a": [0.7, 0.9], "b": [0.7, 0.9]}, {"a": [0.7, 0.9], "b": [0.702, 0.9]}, False),  # within rounding
        ({"a": [0.9, 0.95]}, {"a": [0.7, 0.9]}, False),
        ({"a": [0.5, 0.6]}, None, False),  # a first model: nothing to compare with
        ({"a": [0.5, 0.6]}, {"other": [0.9, 0.9]}, False),  # no case in common
    ],
)
def test_interactive_verdict(candidate, active, refused):
    reason = _interactive_verdict(candidate, active)
    assert (reason is not None) == refused
    if refused:
        assert (
            "worse than the active model on the interactive curve" in reason
            and "2 validation cases" in reason
        )


def test_the_interactive_curve_is_dice_after_the_box_and_each_click(cases):
    train_cases, _ = cases
    torch.manual_seed(0)
    task = Native3DTask(network=CONFIG.build(), config=CONFIG, device="cpu")
    curves = interactive_curve(task, train_cases[:2], modality="MR", n_clicks=3)
    assert set(curves) == {c.case_id for c in train_cases[:2]}
    for curve in curves.values():
        assert len(curve) == 4 and all(0.0 <= v <= 1.0 for v in curve)
    again = interactive_curve(task, train_cases[:2], modality="MR", n_clicks=3)
    assert again == curves  # seeded boxes: two models are compared on the same prompts


def test_a_round_refuses_a_candidate_worse_on_the_interactive_curve(cases, tmp_path, monkeypatch):
    train_cases, _ = cases
    torch.manual_seed(0)
    base = save_native3d(CONFIG.build(), CONFIG, tmp_path / "base.pt")
    active = save_native3d(CONFIG.build(), CONFIG, tmp_path / "active.pt")
    # The pre-segmentation gate passes (its own tests cover it); the curves say the candidate is worse.
    monkeypatch.setattr(round_module, "_verdict", lambda *a: (True, "better on validation Dice", None))
    calls = iter([{"case2": [0.5] * 6, "case3": [0.6] * 6}, {"case2": [0.7] * 6, "case3": [0.8] * 6}])
    monkeypatch.setattr(round_module, "_curve", lambda *a: next(calls))
    result = adaptation_round(
        base=base,
        method="norm",
        cases=train_cases[:2],
        validation=train_cases[2:],
        train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1),
        out_dir=tmp_path / "round",
        active=active,
    )
    assert not result.promotable
    assert "interactive curve" in result.reason and "0.550 vs 0.750" in result.reason
    assert result.interactive_summary == {"clicks": 5, "candidate": [0.55] * 6, "active": [0.75] * 6}


def _truth(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)


def test_a_second_opinion_adds_the_disagreement_score_and_can_win_the_presegmentation(cases, tmp_path):
    train_cases, folder = cases
    torch.manual_seed(0)
    weights = save_native3d(CONFIG.build(), CONFIG, tmp_path / "native.pt")
    truth_of = {str(c.image): _truth(c.label) for c in train_cases}
    seen = []

    def perfect(path, labels):  # a second model that is always right
        seen.append((str(path), labels.shape))
        return truth_of[str(path)]

    scored = PoolScorer(weights, modality="MR", second_opinion=perfect).item("v1", train_cases[0].image)
    assert seen == [(str(train_cases[0].image), scored.labels.shape)]  # asked about the model's map
    np.testing.assert_array_equal(scored.second, truth_of[str(train_cases[0].image)])
    assert {"entropy", "disagreement", "disagreement/outer", "disagreement/core"} <= set(scored.item.scores)
    assert 0.0 < scored.item.scores["disagreement"] <= 1.0  # an untrained net against the truth

    choice = PoolScorer(weights, modality="MR", second_opinion=perfect).presegmentation_choice(
        train_cases[:2]
    )
    assert choice["cases"] == 2 and choice["second"] == pytest.approx(1.0) and choice["use"] == "second"
    nothing = PoolScorer(weights, modality="MR", second_opinion=lambda path, labels: np.zeros_like(labels))
    choice = nothing.presegmentation_choice(train_cases[:2])
    assert choice["second"] == 0.0 and choice["use"] == "model"  # never worse than the model's own

    assert (
        "disagreement" not in PoolScorer(weights, modality="MR").item("v1", train_cases[0].image).item.scores
    )
    cold = PoolScorer(None, modality="MR", second_opinion=perfect).item("v1", train_cases[0].image)
    assert cold.labels is None and cold.second is None and len(seen) == 3  # no model: nothing to refine
