"""LiteMedSAM in the learning round: its decoder adapted on approved cases over cached slice embeddings,
judged against the LiteMedSAM that answers now by Dice after a 3D box and the interactive curve, the
project's native net scored on the same prompts; a bad checkpoint or a method that would train the
encoder fails before any training. Cases are 32x32x3: every slice costs one encoder pass on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from ml_worker.adaptation import train_sam
from ml_worker.adaptation.adapter import load_adapter
from ml_worker.adaptation.peft import AdapterError
from ml_worker.adaptation.round import GateOptions, sam_adaptation_round
from ml_worker.adaptation.tests.synthetic import make_thin_case
from ml_worker.adaptation.train_sam import SamTrainConfig
from ml_worker.inference.embeddings import EmbeddingCache
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, CheckpointError, load_litemedsam
from ml_worker.models.native3d import Native3DConfig, save_native3d

TRAIN = SamTrainConfig(steps=3, batch_size=2, lr=1e-3)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam_round")
    made = [make_thin_case(folder, f"disc{i}", seed=i) for i in range(4)]
    return made[:2], made[2:]


@pytest.fixture(scope="module")
def rival(tmp_path_factory):
    config = Native3DConfig(
        num_classes=2, class_names=("outer", "core"), init_filters=8, roi_size=(32, 32, 8), spacing=None
    )
    torch.manual_seed(0)
    return save_native3d(config.build(), config, tmp_path_factory.mktemp("rival") / "native.pt")


def test_a_round_adapts_the_decoder_over_cached_embeddings_and_judges_it_as_annotators_use_it(
    cases, rival, tmp_path, monkeypatch
):
    train, validation = cases
    cache = EmbeddingCache(directory=tmp_path / "embeddings")
    encoded = []
    encode = train_sam.encode_volume
    monkeypatch.setattr(train_sam, "encode_volume", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    result = sam_adaptation_round(
        method="decoder",
        cases=train,
        validation=validation,
        train=TRAIN,
        out_dir=tmp_path / "round",
        rival=rival,
        embeddings=cache,
        snapshot_ids=["11", "12"],
        options=GateOptions(alpha=0.5),
        device="cpu",
    )
    # every volume encoded once, for training, the candidate, the incumbent and the curves together
    assert len(encoded) == 4 and len(list((tmp_path / "embeddings").glob("*.npy"))) == 4
    assert set(result.validation) == {"disc2", "disc3"} and set(result.active_validation) == set(
        result.validation
    )
    assert all(set(v) == {"1", "2"} for v in result.validation.values())
    summary = result.interactive_summary
    assert len(summary["candidate"]) == 6 and len(summary["active"]) == 6  # the box, then 5 clicks
    assert len(result.extra["rival"]) == 6  # the native net on the same boxes and clicks
    assert result.gate is not None and result.gate.n == 2 and result.reason

    base = load_litemedsam()
    model, meta = load_adapter(result.adapter, copy.deepcopy(base), LITEMEDSAM_SHA256)
    assert meta.method == "decoder" and meta.data_snapshot_ids == ("11", "12")
    served = load_litemedsam(path=result.weights)  # the merged weights the interactive worker loads
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in served.named_parameters())
    assert any(
        not torch.equal(p, dict(base.named_parameters())[n])
        for n, p in served.named_parameters()
        if n.startswith("mask_decoder.")
    )

    encoded.clear()  # a second round (a retry) finds every embedding cached
    sam_adaptation_round(
        method="decoder",
        cases=train,
        validation=validation,
        train=TRAIN,
        out_dir=tmp_path / "again",
        active=result.weights,
        embeddings=cache,
        options=GateOptions(alpha=0.5),
        device="cpu",
    )
    assert encoded == []


@pytest.mark.parametrize(
    ("method", "active", "error", "match"),
    [
        ("decoder", "garbage", CheckpointError, "active LiteMedSAM version cannot be loaded"),
        ("decoder", "missing", CheckpointError, "active LiteMedSAM version cannot be loaded: no checkpoint"),
        ("decoder_lora", None, AdapterError, "trains the image encoder"),
        ("no_such", None, AdapterError, "unknown PEFT method"),
    ],
)
def test_a_bad_checkpoint_or_method_fails_before_training(cases, tmp_path, method, active, error, match):
    train, validation = cases
    path = None
    if active is not None:
        path = tmp_path / "weights.pt"
        if active == "garbage":
            path.write_bytes(b"not a checkpoint")
    with pytest.raises(error, match=match):
        sam_adaptation_round(
            method=method,
            cases=train,
            validation=validation,
            train=TRAIN,
            out_dir=tmp_path / "round",
            active=path,
            device="cpu",
        )
    assert not (tmp_path / "round").exists()  # nothing trained, nothing written
