from __future__ import annotations

import argparse
import json
import subprocess
import sys

from ml_worker import cli
from ml_worker.inference.tests.conftest import AXIS, REPO


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml_worker", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    result = run_module("--help")
    assert result.returncode == 0
    assert "interactive-eval" in result.stdout


def test_interactive_eval_help_names_its_options():
    result = run_module("interactive-eval", "--help")
    assert result.returncode == 0
    for option in ("--images", "--labels", "--model", "--out", "--limit", "--seed", "--axis", "--device"):
        assert option in result.stdout


def test_a_command_is_one_function_and_one_registration(monkeypatch, capsys):
    # every module registers its commands first: those it imported while the registry was this test's
    # copy would be gone from the real one afterwards, for every later test in the process
    cli.build_parser()
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    @cli.command("echo-n", help="prints n", arguments=[cli.arg("--n", type=int, default=3)])
    def echo(args: argparse.Namespace) -> int:
        print(args.n)
        return 0

    assert cli.main(["echo-n", "--n", "5"]) == 0
    assert capsys.readouterr().out == "5\n"


def test_missing_folders_give_a_clear_error(tmp_path, capsys):
    code = cli.main(
        [
            "interactive-eval",
            "--images",
            str(tmp_path / "no"),
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert f"no folder at {tmp_path / 'no'}" in capsys.readouterr().err


def test_interactive_eval_writes_the_report(encoded_crop, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(
        [
            "interactive-eval",
            "--images", str(encoded_crop.folder / "images"),
            "--labels", str(encoded_crop.folder / "labels"),
            "--model", "litemedsam",
            "--out", str(out),
            "--limit", "1",
            "--axis", str(AXIS),
            "--classes", "1",
            "--clicks", "2",
            "--cache-dir", str(encoded_crop.cache_dir),  # encoded by the fixture: no encoder run here
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == {"protocol", "model", "device", "torch_threads", "summary", "cases", "encoder"}
    assert json.loads(capsys.readouterr().out) == report["summary"]
    (case,) = report["cases"]
    assert case["case"] == "hippocampus_001" and case["encode_s"] is None  # a cache hit
    (structure,) = case["classes"]
    assert structure["label"] == 1 and structure["name"] == "label_1"
    assert len(structure["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in structure["dice"])
    assert len(structure["latency_s"]["clicks"]) == len(structure["clicks"]) <= 2
    summary = report["summary"]
    assert summary["n_cases"] == 1
    label_1 = summary["classes"]["label_1"]
    assert set(label_1) == {
        "label", "n", "dice_per_step", "dice_per_step_min", "auc", "noc85", "noc90", "clicks",
        "clicks_lowering_dice", "clicked_voxels_on_clicked_side",
        "clicked_voxels_on_clicked_side_model_alone",
    }  # fmt: skip
    assert 0 <= label_1["noc90"]["median"] <= 2 and label_1["noc90"]["reached"] <= 1
    assert label_1["clicks"] == len(case["classes"][0]["clicks"])
    assert set(summary["latency_s"]) == {
        "click_cached",
        "box_cached",
        "first_interaction_uncached",
        "encode_per_volume",
        "encode_per_slice",
    }
    assert summary["latency_s"]["click_cached"]["n"] == len(structure["clicks"])


def test_native3d_needs_its_checkpoint(tmp_path, capsys):
    folder = str(tmp_path)
    args = ["interactive-eval", "--images", folder, "--labels", folder, "--out", str(tmp_path / "r.json")]
    assert cli.main([*args, "--model", "native3d"]) == 2
    assert "--checkpoint is needed with --model native3d" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "a.nii").write_bytes(b"")
    assert cli.main([*args, "--model", "native3d", "--checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "error:" in capsys.readouterr().err
