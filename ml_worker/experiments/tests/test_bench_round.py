from __future__ import annotations

import argparse
import json

import pytest

from ml_worker import cli
from ml_worker.adaptation import round as round_module
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.adaptation.train import Trainer
from ml_worker.experiments import bench_round as bench_module


def _run(argv: list[str]) -> int:
    """The bench-round command's parser and handler (without importing the other command modules)."""
    spec = cli.COMMANDS["bench-round"]
    parser = argparse.ArgumentParser()
    for option in spec.arguments:
        parser.add_argument(*option.flags, **option.options)
    return spec.handler(parser.parse_args(argv))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    for i in range(7):
        make_case(root, f"case_{i:02d}", seed=i)
    return root


def _argv(folder, *more: str) -> list[str]:
    return ["--images", str(folder / "images"), "--labels", str(folder / "labels"), "--train", "2",
            "--validation", "3", "--pool", "2", "--epochs", "1", "--steps-per-epoch", "2",
            "--roi", "16,16,16", "--threads", "1", "--device", "cpu", *more]  # fmt: skip


def test_bench_round_reports_each_part_of_a_first_round(folder, tmp_path, capsys):
    patched = (Trainer.__dict__["fit"], Trainer.__dict__["from_base"], round_module._verdict)
    assert _run(_argv(folder, "--out", str(tmp_path / "scratch"))) == 0
    report = json.loads(capsys.readouterr().out)

    done = report["round"]
    assert done["method"] == "full"  # a fresh initialisation trains fully, as the platform does
    assert done["steps"] == 2 and len(done["loss_per_epoch"]) == 1
    parts = ("setup", "train", "validation", "gate", "write")
    for part in parts:
        assert done[f"{part}_seconds"] >= 0
    assert done["train_seconds"] > 0 and done["validation_seconds"] > 0 and done["write_seconds"] > 0
    assert done["active_validation_seconds"] is None
    assert sum(done[f"{p}_seconds"] for p in parts) <= done["total_seconds"] + 0.01

    validation = report["validation"]
    assert validation["cases"] == 3
    assert set(validation["dice_per_class"]) == {"label1", "label2"}
    assert all(0 <= d <= 1 for d in [validation["dice_mean"], *validation["dice_per_class"].values()])
    assert isinstance(report["gate"]["promotable"], bool) and "first model" in report["gate"]["reason"]

    pool = report["pool"]
    assert pool["volumes"] == 2 and pool["labelled_centres"] == 5 and pool["strategy"] == "hybrid"
    assert 0 < pool["seconds_per_volume"]["p50"] <= pool["seconds_per_volume"]["p95"]
    assert sorted(pool["top5"]) == ["case_05", "case_06"]  # the pool: the last cases by name
    assert report["cases"] == {"train": ["case_00", "case_01"], "validation": ["case_02", "case_04"],
                               "pool": ["case_05", "case_06"]}  # fmt: skip
    assert report["device"] == "cpu" and report["threads"] == 1 and report["peak_rss_mb"] > 0
    assert report["arguments"]["train"] == 2 and report["arguments"]["roi"] == [16, 16, 16]
    assert (tmp_path / "scratch" / "round" / "weights.pt").is_file()
    # the timing wrappers are gone again
    assert (Trainer.__dict__["fit"], Trainer.__dict__["from_base"], round_module._verdict) == patched
    assert bench_module.PLATFORM_NETWORK["init_filters"] == 8

    # the same scratch folder again would resume the old round: refused
    assert _run(_argv(folder, "--out", str(tmp_path / "scratch"))) == 2
    assert "previous round" in capsys.readouterr().err


def test_bench_round_names_a_missing_label_file(folder, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    labels.mkdir()
    images.symlink_to(folder / "images")
    for path in sorted((folder / "labels").iterdir())[:-1]:
        (labels / path.name).symlink_to(path)
    assert _run(["--images", str(images), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no label file" in err and "case_06" in err


def test_bench_round_says_when_there_are_too_few_cases(folder, capsys):
    assert _run(_argv(folder, "--pool", "5")) == 2
    assert "fewer than" in capsys.readouterr().err
