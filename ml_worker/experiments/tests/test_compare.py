"""peft-compare: fixed parts, nested shots, and a smallest end-to-end run of the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml_worker.adaptation.adapter import load_adapter
from ml_worker.adaptation.splits import partition
from ml_worker.adaptation.tests.synthetic import make_case, make_thin_case
from ml_worker.cli import main
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, file_sha256, load_litemedsam
from ml_worker.models.native3d import load_native3d


def test_partition_is_fixed_disjoint_and_complete():
    ids = [f"case{i:03d}" for i in range(50)]
    parts = partition(ids, test_fraction=0.2, source_fraction=0.4)
    assert parts == partition(list(reversed(ids)), test_fraction=0.2, source_fraction=0.4)
    assert (len(parts["test"]), len(parts["source"]), len(parts["pool"])) == (10, 20, 20)
    assert sorted(parts["test"] + parts["source"] + parts["pool"]) == ids
    # with a given base there is no source part; the test part stays the same
    no_source = partition(ids, test_fraction=0.2, source_fraction=0.0)
    assert no_source["test"] == parts["test"] and not no_source["source"]
    with pytest.raises(ValueError, match="test_fraction"):
        partition(ids, test_fraction=0.7, source_fraction=0.4)


def _quick_native_run(tmp_path, methods: str) -> tuple[list[str], Path]:
    """(the argv of a smallest native comparison on 8 synthetic cases, its --out folder)."""
    data = tmp_path / "data"
    for i in range(8):
        make_case(data, f"case{i}", seed=i)
    out = tmp_path / "out"
    argv = ["peft-compare", "--images", str(data / "images"), "--labels", str(data / "labels")]
    argv += ["--shots", "1,2", "--methods", methods, "--out", str(out)]
    argv += ["--quick", "--roi", "16,16,16", "--test-limit", "1"]
    return argv, out


def test_quick_cli_run_writes_the_table(tmp_path):
    argv, out = _quick_native_run(tmp_path, "norm,linear_probe")
    assert main(argv) == 0

    report = json.loads((out / "peft_compare.json").read_text())
    rows = report["rows"]
    assert [(r["method"], r["shots"]) for r in rows] == [
        ("base", 0),
        ("norm", 1),
        ("norm", 2),
        ("linear_probe", 1),
        ("linear_probe", 2),
    ]
    assert report["base"]["trained"] and report["settings"]["model"]["class_names"] == ["label1", "label2"]
    assert len(report["parts"]["test"]) == 1 and len(report["parts"]["source"]) == 3
    base = out / "base.pt"
    assert report["base"]["sha256"] == file_sha256(base)
    for row in rows[1:]:
        assert set(row["dice"]) == {"label1", "label2"} and 0.0 <= row["dice_mean"] <= 1.0
        path = out / "adapters" / f"{row['method']}_{row['shots']}.adapter"
        assert row["adapter_bytes"] == path.stat().st_size
        model, meta = load_adapter(path, load_native3d(base)[0], file_sha256(base))
        assert row["trainable_params"] == meta.trainable_parameters
        assert list(meta.data_snapshot_ids) == report["parts"]["pool"][: row["shots"]]
        assert row["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert rows[3]["trainable_params"] == 18  # linear probe: 8 features x 2 classes + 2 biases
    assert torch.get_num_threads() >= 1


def test_cli_refuses_more_shots_than_the_pool(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(5):
        make_case(data, f"case{i}", seed=i)
    argv = ["peft-compare", "--images", str(data / "images"), "--labels", str(data / "labels")]
    argv += ["--shots", "9", "--methods", "norm", "--out", str(tmp_path / "out"), "--quick"]
    assert main(argv) == 2
    assert "do not fit the pool" in capsys.readouterr().err
    argv[argv.index("9")] = "1"
    argv[argv.index("norm")] = "prompt_tuning"
    assert main(argv) == 2
    assert "unknown PEFT method 'prompt_tuning'" in capsys.readouterr().err


def test_litemedsam_cli_run_adapts_the_bundled_model_and_scores_box_prompts(tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        make_thin_case(data, f"case{i}", seed=i)
    out = tmp_path / "out"
    argv = ["peft-compare", "--model", "litemedsam", "--images", str(data / "images")]
    argv += ["--labels", str(data / "labels"), "--shots", "1", "--methods", "decoder,layernorm"]
    argv += ["--out", str(out), "--quick", "--test-limit", "1", "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "embeddings")]
    assert main(argv) == 0
    # the frozen encoder's embeddings: one file per volume scored or trained on, shared by the rows
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2

    report = json.loads((out / "peft_compare.json").read_text())
    rows = report["rows"]
    assert [(r["method"], r["shots"]) for r in rows] == [("base", 0), ("decoder", 1), ("layernorm", 1)]
    assert report["base"]["sha256"] == LITEMEDSAM_SHA256 and report["settings"]["adapt"]["steps"] == 2
    assert rows[0]["dice_mean"] > 0.5  # bright discs in exact boxes: the foundation model finds them
    for row in rows:  # as an annotator gets it: a 3D box, then 5 corrective clicks
        assert set(row["box3d"]) == {"1", "2"} and len(row["curve"]) == 6
        assert row["curve"][0] == pytest.approx(row["box3d_mean"], abs=1e-3)
    for row in rows[1:]:
        assert set(row["dice"]) == {"1", "2"} and 0.0 <= row["dice_mean"] <= 1.0
        path = out / "adapters" / f"litemedsam_{row['method']}_1.adapter"
        model, meta = load_adapter(path, load_litemedsam(), LITEMEDSAM_SHA256)
        assert row["trainable_params"] == meta.trainable_parameters > 0
        assert list(meta.data_snapshot_ids) == report["parts"]["pool"][:1]
    assert rows[2]["trainable_params"] < rows[1]["trainable_params"]  # LayerNorm affine << the decoder

    argv[argv.index("decoder,layernorm")] = "lora_conv"  # a native3d method
    assert main(argv) == 2


def test_a_stopped_comparison_goes_on_from_its_report_and_refuses_other_settings(
    tmp_path, monkeypatch, capsys
):
    import ml_worker.experiments.compare as compare

    argv, out = _quick_native_run(tmp_path, "norm")
    adapted = compare._adapted_row
    calls: list[tuple[str, int]] = []

    def stopped_at_the_second(trainer, method, shots, *rest):
        calls.append((method, shots))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine went away in the middle of a row
        return adapted(trainer, method, shots, *rest)

    monkeypatch.setattr(compare, "_adapted_row", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    partial = json.loads((out / "peft_compare.json").read_text())
    assert not partial["complete"]
    assert [(r["method"], r["shots"]) for r in partial["rows"]] == [("base", 0), ("norm", 1)]
    base_sha = file_sha256(out / "base.pt")

    # the rerun, with one more method: the base and the finished row are taken, the rest is run
    calls.clear()
    monkeypatch.setattr(compare, "_adapted_row", lambda *a: calls.append(a[1:3]) or adapted(*a))
    argv[argv.index("norm")] = "norm,linear_probe"
    assert main(argv) == 0
    report = json.loads((out / "peft_compare.json").read_text())
    assert report["complete"] and calls == [("norm", 2), ("linear_probe", 1), ("linear_probe", 2)]
    assert report["rows"][:2] == partial["rows"] and file_sha256(out / "base.pt") == base_sha
    assert [(r["method"], r["shots"]) for r in report["rows"]][2:] == [
        ("norm", 2),
        ("linear_probe", 1),
        ("linear_probe", 2),
    ]

    # other settings in the same folder: refused, the report left as it was
    argv += ["--lr", "0.5"]
    assert main(argv) == 2
    assert "made with other settings" in capsys.readouterr().err
    assert json.loads((out / "peft_compare.json").read_text()) == report
