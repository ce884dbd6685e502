"""``python -m ml_worker train``: weights that load, the fixed hash split, held-out Dice, resume."""

from __future__ import annotations

import json

import pytest
import torch

from ml_worker.adaptation.splits import partition
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.adaptation.train_cli import held_out_split
from ml_worker.cli import main
from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1", "--roi", "16,16,16"]
TINY += ["--init-filters", "8", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_cli")
    for i in range(3):
        make_case(folder, f"case{i}", seed=i)
    return folder


def run(folder, out, *extra, capsys):
    rc = main(["train", "--images", str(folder / "images"), "--labels", str(folder / "labels")]
              + ["--out", str(out), *TINY, *extra])  # fmt: skip
    captured = capsys.readouterr()
    return rc, json.loads(captured.out) if rc == 0 else captured.err


def test_trains_holds_out_the_hash_split_and_resumes(folder, tmp_path, capsys):
    out = tmp_path / "net.pt"
    rc, summary = run(folder, out, "--test-fraction", "0.34", capsys=capsys)
    assert rc == 0
    held = partition(["case0", "case1", "case2"], test_fraction=0.34, source_fraction=0.0)["test"]
    assert (tmp_path / "net.pt.test.txt").read_text().split() == [f"{c}.nii.gz" for c in held]
    assert (summary["train_cases"], summary["held_out_cases"]) == (2, 1)
    assert summary["validation"]["cases"] == 1
    assert set(summary["validation"]["dice"]) == {"label1", "label2"}
    assert all(0.0 <= d <= 1.0 for d in summary["validation"]["dice"].values())
    assert (summary["steps"], summary["steps_this_call"], summary["device"]) == (2, 2, "cpu")
    assert summary["seconds"] > 0 and summary["resumed_from_epoch"] == 0

    network, config = load_native3d(out)
    assert config.guidance and config.labels == {"label1": 1, "label2": 2}
    assert config.roi_size == (16, 16, 16) and config.init_filters == 8
    assert network(torch.zeros(1, config.in_channels, 16, 16, 16)).shape == (1, 2, 16, 16, 16)

    # the same command again finds the run finished in its checkpoint: no step, the same weights
    rc, again = run(folder, out, "--test-fraction", "0.34", capsys=capsys)
    assert rc == 0
    assert (again["resumed_from_epoch"], again["steps_this_call"]) == (1, 0)
    assert again["sha256"] == summary["sha256"]


def test_exclude_and_pretrained(folder, tmp_path, capsys):
    names = tmp_path / "exclude.txt"
    names.write_text("case1.nii.gz\n")
    fusion = Native3DConfig(
        num_classes=5, class_names=tuple(f"level_{i}" for i in range(5)), guidance=False, init_filters=8
    )
    pretrained = save_native3d(fusion.build(), fusion, tmp_path / "vf.pt")
    rc, summary = run(
        folder, tmp_path / "net.pt", "--exclude", str(names), "--pretrained", str(pretrained), capsys=capsys
    )
    assert rc == 0
    assert (summary["train_cases"], summary["held_out_cases"]) == (2, 1)
    assert summary["pretrained"]["copied"] > 0 and len(summary["pretrained"]["adapted"]) == 1

    rc, err = run(folder, tmp_path / "x.pt", "--exclude", str(names), "--test-fraction", "0.3", capsys=capsys)
    assert rc == 2 and "alternatives" in err


def test_held_out_split_is_fixed_and_disjoint():
    ids = [f"hippocampus_{i:03d}" for i in range(50)]
    train, held = held_out_split(ids, test_fraction=0.2)
    assert len(held) == 10 and not set(train) & set(held) and set(train) | set(held) == set(ids)
    assert held_out_split(list(reversed(ids)), test_fraction=0.2)[1] == list(reversed(held))
    with pytest.raises(ValueError, match="no training cases"):
        held_out_split(["a"], exclude={"a"})


def test_init_continues_from_a_native_weights_file(folder, tmp_path, capsys):
    first = tmp_path / "first.pt"
    assert run(folder, first, capsys=capsys)[0] == 0
    second = tmp_path / "second.pt"
    rc, summary = run(folder, second, "--init", str(first), "--max-iterations", "2", capsys=capsys)
    assert rc == 0
    before, _ = load_native3d(first)
    after, config = load_native3d(second)
    assert config == load_native3d(first)[1]  # the file's network and label set
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True)
    )
    rc, err = run(folder, tmp_path / "x.pt", "--init", str(first), "--pretrained", str(first), capsys=capsys)
    assert rc == 2 and "--init and --pretrained are alternatives" in err
