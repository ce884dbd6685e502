"""Trainer: exact resume, progress, partial labels, simulated prompts, evaluation and adapter output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ml_worker.adaptation.adapter import load_adapter
from ml_worker.adaptation.peft import adapter_state, get_method
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.adaptation.train import (
    CHECKPOINT_FORMAT,
    CheckpointMismatchError,
    TrainConfig,
    Trainer,
    case_means,
    read_training_checkpoint,
)
from ml_worker.models.checkpoints import file_sha256
from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

CONFIG = Native3DConfig(
    num_classes=2,
    class_names=("outer", "core"),
    init_filters=8,
    dropout=0.1,
    roi_size=(16, 16, 16),
    spacing=None,
)
QUICK = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, seed=3, lr=3e-3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    cases = [make_case(folder, f"case{i}", seed=i) for i in range(3)]
    torch.manual_seed(0)
    base = save_native3d(CONFIG.build(), CONFIG, folder / "base.pt")
    return cases, base


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["lora_conv", "full"])
def test_interrupted_then_resumed_equals_straight(tmp_path, data, method):
    cases, base = data
    straight = Trainer.from_base(base, method=get_method("native3d", method), train=QUICK)
    straight.fit(cases)
    expected = adapter_state(straight.network)

    def stop_in_epoch_2(epoch, step, total, metrics):
        if epoch == 2:
            raise Interrupt  # the worker dies mid-epoch 2; the epoch-1 checkpoint is on disk

    first = Trainer.from_base(
        base,
        method=get_method("native3d", method),
        train=QUICK,
        checkpoint_dir=tmp_path,
        progress=stop_in_epoch_2,
    )
    with pytest.raises(Interrupt):
        first.fit(cases)
    resumed = Trainer.from_base(
        base, method=get_method("native3d", method), train=QUICK, checkpoint_dir=tmp_path
    )
    result = resumed.fit(cases, resume=True)
    got = adapter_state(resumed.network)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # and training moved the weights at all
    untrained = adapter_state(
        Trainer.from_base(base, method=get_method("native3d", method), train=QUICK).network
    )
    assert any(not torch.equal(untrained[k], expected[k]) for k in expected)


def test_same_seed_same_weights_other_seed_other_weights(data):
    cases, base = data
    one_epoch = dataclasses.replace(QUICK, epochs=1)
    runs = []
    for seed in (3, 3, 4):
        t = Trainer.from_base(
            base, method=get_method("native3d", "norm"), train=dataclasses.replace(one_epoch, seed=seed)
        )
        t.fit(cases)
        runs.append(adapter_state(t.network))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, data):
    cases, base = data
    one = dataclasses.replace(QUICK, epochs=1)
    Trainer.from_base(base, method=get_method("native3d", "norm"), train=one, checkpoint_dir=tmp_path).fit(
        cases
    )
    other = Trainer.from_base(
        base, method=get_method("native3d", "decoder"), train=one, checkpoint_dir=tmp_path
    )
    with pytest.raises(CheckpointMismatchError, match="method"):
        other.fit(cases, resume=True)
    fewer = Trainer.from_base(base, method=get_method("native3d", "norm"), train=one, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="cases"):
        fewer.fit(cases[:2], resume=True)


def test_progress_reports_every_step_and_validation(data):
    cases, base = data
    calls = []
    trainer = Trainer.from_base(
        base,
        method=get_method("native3d", "linear_probe"),
        train=QUICK,
        progress=lambda *args: calls.append(args),
    )
    result = trainer.fit(cases[:2], validation=cases[2:])
    steps = [c for c in calls if "validation_dice" not in c[3]]
    assert [(c[0], c[1], c[2]) for c in steps] == [(1, 1, 4), (1, 2, 4), (2, 3, 4), (2, 4, 4)]
    assert all(np.isfinite(c[3]["loss"]) and c[3]["lr"] > 0 for c in steps)
    validated = [c for c in calls if "validation_dice" in c[3]]
    assert [c[0] for c in validated] == [1, 2]
    assert set(result.validation) == {"case2"}
    assert set(result.validation["case2"]) == {"outer", "core"}
    assert result.history[-1]["validation_dice"] == pytest.approx(case_means(result.validation)["case2"])


def test_unlabelled_classes_do_not_train(data, tmp_path):
    cases, base = data
    only_outer = [dataclasses.replace(c, labelled=(1,)) for c in cases]
    train = dataclasses.replace(QUICK, weight_decay=0.0)  # decoupled decay would move every weight
    trainer = Trainer.from_base(base, method=get_method("native3d", "linear_probe"), train=train)
    before = {k: v.clone() for k, v in adapter_state(trainer.network).items()}
    trainer.fit(only_outer)
    after = adapter_state(trainer.network)
    weight, bias = "conv_final.2.conv.weight", "conv_final.2.conv.bias"
    assert torch.equal(after[weight][1], before[weight][1]) and torch.equal(after[bias][1], before[bias][1])
    assert not torch.equal(after[weight][0], before[weight][0])
    assert set(trainer.evaluate(only_outer[:1])["case0"]) == {"outer"}


def test_training_learns_the_synthetic_structures(data):
    cases, base = data
    train = TrainConfig(
        epochs=10,
        steps_per_epoch=6,
        batch_size=2,
        lr=1e-2,
        seed=0,
        prompt_fraction=0.0,
        affine_probability=0.0,
    )
    trainer = Trainer.from_base(base, method=get_method("native3d", "full"), train=train)
    before = trainer.evaluate(cases[:1])["case0"]["outer"]
    result = trainer.fit(cases)
    after = trainer.evaluate(cases[:1])["case0"]["outer"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after > max(before, 0.6)  # the small core needs longer than this test trains
    phases = result.history[0]["phase_seconds"]
    assert set(phases) == {"data", "simulate", "step"} and phases["step"] > 0
    # Each phase is rounded to 10 ms: together they may pass the epoch's time by that much.
    assert sum(phases.values()) <= result.history[0]["seconds"] + 0.005 * len(phases)


def test_adapter_from_a_trainer_loads_onto_the_base(tmp_path, data):
    cases, base = data
    trainer = Trainer.from_base(base, method=get_method("native3d", "lora_conv", rank=2), train=QUICK)
    trainer.fit(cases)
    meta = trainer.save_adapter(tmp_path / "a.adapter", data_snapshot_ids=["m1", "m2"], metrics={"dice": 0.5})
    assert meta.training["seed"] == 3 and meta.base_sha256 == file_sha256(base)
    model, _ = load_adapter(tmp_path / "a.adapter", load_native3d(base)[0], file_sha256(base))
    x = torch.rand(1, CONFIG.in_channels, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), trainer.network.eval()(x), atol=1e-6)


def test_cases_must_fit_the_label_set(data):
    cases, base = data
    trainer = Trainer.from_base(base, method=get_method("native3d", "norm"), train=QUICK)
    with pytest.raises(ValueError, match="not in the model's label set"):
        trainer.fit([dataclasses.replace(cases[0], labelled=(1, 7))])
    with pytest.raises(ValueError, match="no labelled value"):
        trainer.fit([dataclasses.replace(cases[0], labelled=())])
    with pytest.raises(ValueError, match="no training cases"):
        trainer.fit([])


def test_interactive_samples_carry_the_clicks_placed_on_the_networks_errors(data):
    """With guidance, every prompted sample's clicks come from rounds of predict-then-click: each lies
    on its structure (positive) or off it (negative), and the mask channel holds the last prediction."""
    cases, base = data
    train = TrainConfig(
        epochs=1, steps_per_epoch=1, batch_size=2, seed=1, prompt_fraction=1.0, max_iterations=3
    )
    trainer = Trainer.from_base(base, method=get_method("native3d", "full"), train=train)
    seen_clicks = 0
    for _ in range(6):
        batch = [trainer._sample(cases[0]), trainer._sample(cases[1])]
        trainer._simulate(batch)
        for sample in batch:
            state = sample.state
            assert state is not None and state.classes
            for click in state.clicks:
                assert (sample.label[click.ijk] == click.label) == click.positive
            seen_clicks += len(state.clicks)
            inputs = trainer._inputs([sample])[0]
            for value in state.classes:
                c = CONFIG.label_values.index(value)
                mask_channel = inputs[1 + 4 * c + 3].numpy() > 0.5
                expected = state.mask == value if state.mask is not None else np.zeros_like(mask_channel)
                assert np.array_equal(mask_channel, expected)
    assert seen_clicks > 0


def test_bf16_and_float32_training_both_run_and_learn(monkeypatch, data):
    from ml_worker.models import checkpoints

    cases, base = data
    train = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, seed=0, lr=1e-2)
    losses = {}
    for setting in ("off", "auto"):
        monkeypatch.setenv("ML_WORKER_AMP", setting)
        checkpoints.cpu_bf16_supported.cache_clear()
        trainer = Trainer.from_base(base, method=get_method("native3d", "full"), train=train)
        assert trainer.amp_dtype == checkpoints.amp_dtype("cpu")
        if setting == "off":
            assert trainer.amp_dtype is None
        result = trainer.fit(cases)
        losses[setting] = result.history[-1]["loss"]
        assert all(p.dtype == torch.float32 for p in trainer.network.parameters())  # master weights
    checkpoints.cpu_bf16_supported.cache_clear()
    assert all(np.isfinite(v) for v in losses.values())


def test_train_config_is_checked():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="flip_axes"):
        TrainConfig(flip_axes=(3,))


def test_a_file_that_is_not_a_training_checkpoint_is_refused_with_what_it_is(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="garbage.pt is not a readable training checkpoint"):
        read_training_checkpoint(garbage, CHECKPOINT_FORMAT)
    other = tmp_path / "other.pt"
    torch.save({"format": "ml_worker.sam-train-checkpoint/1", "epoch": 1}, other)
    with pytest.raises(
        CheckpointMismatchError, match=f"not a training checkpoint of format {CHECKPOINT_FORMAT}"
    ):
        read_training_checkpoint(other, CHECKPOINT_FORMAT)
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 3}, other)
    assert read_training_checkpoint(other, CHECKPOINT_FORMAT)["epoch"] == 3
