"""LiteMedSAM adaptation on box-prompted slices: what trains, seeding, frozen statistics, adapter round
trip, box-prompted evaluation, and a clear error when there is nothing to train on. Cases are a few
slices thick: every slice costs one encoder pass on the CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ml_worker.adaptation.adapter import load_adapter
from ml_worker.adaptation.peft import adapter_state, get_method
from ml_worker.adaptation.tests.synthetic import make_thin_case
from ml_worker.adaptation.train import CheckpointMismatchError, TrainCase
from ml_worker.adaptation.train_sam import SamTrainConfig, SamTrainer
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, load_litemedsam


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return load_litemedsam()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_thin_case(tmp_path_factory.mktemp("sam_case"), "disc", seed=0)


def _trainer(base, method, checkpoint_dir=None, **config):
    options = {"steps": 2, "batch_size": 1, "lr": 1e-3} | config
    return SamTrainer(
        copy.deepcopy(base),
        get_method("litemedsam", method),
        SamTrainConfig(**options),
        device="cpu",
        base_sha256=LITEMEDSAM_SHA256,
        checkpoint_dir=checkpoint_dir,
    )


def _params(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def test_decoder_adaptation_trains_only_the_decoder_and_is_seeded(base, case):
    first = _trainer(base, "decoder")
    result = first.fit([case])
    assert len(result["losses"]) == 2 and np.isfinite(result["losses"]).all()
    assert result["samples"] == 3  # (slice 1, label 1), (slice 2, label 1), (slice 2, label 2)
    before, after = dict(base.named_parameters()), dict(first.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items() if not n.startswith("mask_decoder."))
    assert any(not torch.equal(after[n], p) for n, p in before.items() if n.startswith("mask_decoder."))

    again = _trainer(base, "decoder")
    again.fit([case])
    a, b = adapter_state(first.model), adapter_state(again.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_frozen_encoder_runs_once_per_slice(base, case):
    trainer = _trainer(base, "decoder", steps=6)
    calls = []
    forward = trainer.model.image_encoder.forward
    trainer.model.image_encoder.forward = lambda x: calls.append(len(x)) or forward(x)
    losses = trainer.fit([case])["losses"]
    assert len(losses) == 6 and calls == [3]  # the volume's 3 slices, once, for every step
    trainer.fit([case])
    trainer.evaluate([case])
    trainer.interactive([case], n_clicks=1)
    assert calls == [3]  # later epochs, the evaluation and the curve read the cached embeddings


def test_propagation_steps_prompt_with_a_neighbours_box_and_the_models_own_logits_there(base, case):
    trainer = _trainer(base, "decoder", steps=3, propagate=1.0)
    calls = []
    decode = trainer.model.decode
    trainer.model.decode = lambda e, **k: calls.append((len(e), k["masks"] is not None)) or decode(e, **k)
    trainer.fit([case])
    # every step: the neighbours' logits first (no dense prompt), then the slices with them as one
    assert calls == [(1, False), (1, True)] * 3
    with pytest.raises(ValueError, match="propagate is a share"):
        SamTrainConfig(propagate=1.5)


def test_encoder_lora_learns_while_base_weights_and_batchnorm_statistics_stay(base, case):
    trainer = _trainer(base, "encoder_lora", steps=1)
    stats = {n: b.clone() for n, b in trainer.model.named_buffers() if "running" in n}
    trainer.fit([case])
    lora_b = {n: p for n, p in trainer.model.named_parameters() if n.endswith("lora_B")}
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b.values())  # B starts at zero
    frozen = {n: p for n, p in trainer.model.named_parameters() if not p.requires_grad}
    base_params = dict(base.named_parameters())
    assert all(torch.equal(p, base_params[n.replace(".base.", ".")]) for n, p in frozen.items())
    assert stats and all(torch.equal(b, stats[n]) for n, b in trainer.model.named_buffers() if n in stats)


def test_the_adapter_file_puts_the_trained_model_back_on_the_base(base, case, tmp_path):
    trainer = _trainer(base, "bitfit", steps=1)
    trainer.fit([case])
    meta = trainer.save_adapter(tmp_path / "sam.adapter", data_snapshot_ids=["disc"], metrics={"x": 1})
    assert meta.method == "bitfit" and meta.training["steps"] == 1 and meta.data_snapshot_ids == ("disc",)
    restored, _ = load_adapter(tmp_path / "sam.adapter", copy.deepcopy(base), LITEMEDSAM_SHA256)
    restored.eval()
    embeddings = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[40.0, 40.0, 180.0, 200.0]])
    with torch.no_grad():
        want, _ = trainer.model.decode(embeddings, boxes=box)
        got, _ = restored.decode(embeddings, boxes=box)
    torch.testing.assert_close(got, want)


def test_evaluate_gives_box_prompted_dice_per_class(base, case):
    trainer = _trainer(base, "decoder")
    scores = trainer.evaluate([case])
    assert set(scores) == {"disc"} and set(scores["disc"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in scores["disc"].values())
    assert scores["disc"]["1"] > 0.5  # a bright disc inside an exact box: the base model finds it


def test_a_case_without_the_labelled_structures_is_refused(base, case):
    missing = TrainCase(image=case.image, label=case.label, labelled=(3,), case_id="disc")
    with pytest.raises(ValueError, match="nothing to train on"):
        _trainer(base, "decoder").fit([missing])
    with pytest.raises(ValueError, match="invalid SamTrainConfig"):
        SamTrainConfig(steps=0)


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(base, case, tmp_path):
    straight = _trainer(base, "encoder_lora", steps=4, checkpoint_every=2)
    want = straight.fit([case])["losses"]

    class Stop(Exception):
        pass

    def crash(step, steps, loss):
        if step == 3:  # after the checkpoint of step 2
            raise Stop

    first = _trainer(base, "encoder_lora", tmp_path / "ckpt", steps=4, checkpoint_every=2)
    first.progress = crash
    with pytest.raises(Stop):
        first.fit([case])
    resumed = _trainer(base, "encoder_lora", tmp_path / "ckpt", steps=4, checkpoint_every=2)
    assert resumed.fit([case], resume=True)["losses"] == want
    a, b = adapter_state(straight.model), adapter_state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)

    other = _trainer(base, "bitfit", tmp_path / "ckpt", steps=4, checkpoint_every=2)
    with pytest.raises(CheckpointMismatchError, match="belongs to another run"):
        other.fit([case], resume=True)
