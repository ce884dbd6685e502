from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scorers import SCORERS, ScoringConfig, ScoringInput, get_scorer, score_volume
from ml_worker.uncertainty.scores import NoDropoutError
from ml_worker.uncertainty.tests.conftest import TinyNet

CLASSES = ("anterior", "posterior")


def _inputs(image, net, **kwargs) -> ScoringInput:
    return ScoringInput(
        volume_id="vol-1",
        image=image,
        class_names=CLASSES,
        predict=lambda x: torch.sigmoid(net(x)),
        model=net,
        **kwargs,
    )


def test_scores_every_method_with_per_class_entries(image, tiny_net):
    other = TinyNet(dropout=0.0, seed=1).eval()
    item = score_volume(
        _inputs(image, tiny_net, predict_other=lambda x: torch.sigmoid(other(x))),
        methods=["entropy", "tta", "mc_dropout", "disagreement"],
        config=ScoringConfig(seed=5, tta_jitter=0.05, mc_samples=4, threshold=0.3),
    )
    assert isinstance(item, PoolItem) and item.volume_id == "vol-1"
    for name in ("entropy", "tta", "mc_dropout", "disagreement"):
        assert {name, f"{name}/anterior", f"{name}/posterior"} <= set(item.scores)
        assert 0.0 <= item.scores[name] <= 1.0
    assert item.embedding is not None and np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-6)


def test_scores_are_deterministic_for_a_seed(image, tiny_net):
    config = ScoringConfig(seed=5, tta_jitter=0.05, mc_samples=4, threshold=0.3)
    first = score_volume(_inputs(image, tiny_net), methods=["tta", "mc_dropout"], config=config)
    again = score_volume(_inputs(image, tiny_net), methods=["tta", "mc_dropout"], config=config)
    other = score_volume(
        _inputs(image, tiny_net),
        methods=["tta", "mc_dropout"],
        config=ScoringConfig(seed=6, tta_jitter=0.05, mc_samples=4, threshold=0.3),
    )
    assert dict(first.scores) == dict(again.scores)
    assert np.array_equal(first.embedding, again.embedding)
    assert first.scores["mc_dropout"] != other.scores["mc_dropout"]


def test_identical_models_do_not_disagree(image, tiny_net):
    item = score_volume(
        _inputs(image, tiny_net, predict_other=lambda x: torch.sigmoid(tiny_net(x))), methods=["disagreement"]
    )
    assert item.scores["disagreement"] == 0.0


def test_features_give_the_embedding(image, tiny_net):
    item = score_volume(_inputs(image, tiny_net, features=lambda x: tiny_net.body[0](x)), methods=["entropy"])
    assert item.embedding.shape == (8,)  # 4 feature channels, mean + max


def test_cold_start_without_any_model(image):
    item = score_volume(ScoringInput(volume_id="vol-2", image=image, class_names=CLASSES), methods=[])
    assert dict(item.scores) == {} and item.embedding.shape == (96,)


def test_exclusive_probabilities_skip_background(image):
    net = TinyNet(seed=3).eval()
    inputs = ScoringInput(
        volume_id="vol-3",
        image=image,
        class_names=("foreground",),
        predict=lambda x: torch.softmax(net(x), dim=1),
        exclusive=True,
    )
    item = score_volume(inputs, methods=["entropy"], config=ScoringConfig(threshold=0.3))
    assert set(item.scores) == {"entropy", "entropy/foreground"}


def test_unknown_scorer_lists_the_known_ones(image, tiny_net):
    with pytest.raises(KeyError, match="disagreement, entropy, mc_dropout, tta"):
        SCORERS["bald"]
    with pytest.raises(KeyError, match="known: "):
        get_scorer("bald")
    calls = []
    inputs = _inputs(image, lambda x: calls.append(x) or x)
    with pytest.raises(KeyError, match="bald"):
        score_volume(inputs, methods=["entropy", "bald"])
    assert calls == []  # names are checked before any model runs


@pytest.mark.parametrize(
    ("method", "missing"),
    [("entropy", "probs"), ("tta", "predict"), ("mc_dropout", "model"), ("disagreement", "predict_other")],
)
def test_missing_inputs_are_named(image, method, missing):
    inputs = ScoringInput(volume_id="vol-4", image=image, class_names=CLASSES)
    with pytest.raises(ValueError, match=missing):
        score_volume(inputs, methods=[method])


def test_mc_dropout_scorer_refuses_a_model_without_dropout(image):
    net = TinyNet(dropout=0.0).eval()
    with pytest.raises(NoDropoutError):
        score_volume(_inputs(image, net), methods=["mc_dropout"])


def test_class_names_must_match_the_channels(image, tiny_net):
    inputs = ScoringInput(
        volume_id="vol-5",
        image=image,
        class_names=("only-one",),
        predict=lambda x: torch.sigmoid(tiny_net(x)),
    )
    with pytest.raises(ValueError, match="class names"):
        score_volume(inputs, methods=["entropy"])
