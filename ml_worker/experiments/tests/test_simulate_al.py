"""al-simulate: budgets per round, no repeats, test cases untouched, diversity cold start, warm starts,
the curve PNG, scoring per strategy, and clear errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ml_worker.adaptation.pretrain import PretrainConfig, pretrain_network
from ml_worker.adaptation.splits import partition
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.adaptation.train import Trainer
from ml_worker.cli import main
from ml_worker.experiments.simulate_al import PoolViews, score_pool
from ml_worker.inference.native import Native3DTask
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import autocast, load_state_dict
from ml_worker.models.native3d import Native3DConfig, save_native3d
from ml_worker.uncertainty.embedding import intensity_embedding
from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scorers import ScoringConfig
from ml_worker.uncertainty.strategies import get_strategy

K, B, ROUNDS = 2, 2, 2
SHAPE = (16, 16, 16)  # one network window: the roi
TINY = ["--initial", str(K), "--per-round", str(B), "--rounds", str(ROUNDS), "--initial-steps", "2"]
TINY += ["--round-steps", "1", "--batch-size", "1", "--roi", "16,16,16", "--init-filters", "8"]
TINY += ["--device", "cpu", "--threads", "1"]
MODEL = Native3DConfig.for_labels({1: "label1", 2: "label2"}, roi_size=(16, 16, 16), init_filters=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("al_data")
    cases = [make_case(folder, f"case{i}", seed=i, shape=SHAPE) for i in range(10)]
    return SimpleNamespace(folder=folder, cases=cases, ids=[c.case_id for c in cases])


def cli(data, out, *extra):
    """Run the command; (exit status, stdout, stderr)."""
    argv = ["al-simulate", "--images", str(data.folder / "images"), "--labels", str(data.folder / "labels")]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main([*argv, "--out", str(out), *TINY, *extra])
    return rc, stdout.getvalue(), stderr.getvalue()


def _state(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fresh(seed):
    torch.manual_seed(seed)
    return _state(MODEL.build())


@pytest.fixture(scope="module")
def simulation(data, tmp_path_factory):
    """One run, 2 strategies x 2 seeds x (cold start + 2 rounds), with every Trainer.fit recorded."""
    fits = []
    fit = Trainer.fit

    def recording_fit(self, cases, **kwargs):
        before = _state(self.network)
        result = fit(self, cases, **kwargs)
        steps = self.train.epochs * self.train.steps_per_epoch
        fits.append({"cases": [c.case_id for c in cases], "before": before, "after": _state(self.network)})
        fits[-1]["steps"] = steps
        return result

    out = tmp_path_factory.mktemp("al_out")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", recording_fit)
        rc, stdout, stderr = cli(data, out, "--strategies", "random,hybrid", "--seeds", "2")
    assert rc == 0, stderr
    report = json.loads((out / "results.json").read_text())
    return SimpleNamespace(out=out, report=report, summary=json.loads(stdout), fits=fits)


def test_budgets_grow_by_the_batch_no_repeats_and_the_test_part_is_never_used(data, simulation):
    report = simulation.report
    test = partition(data.ids, test_fraction=0.2, source_fraction=0.0)["test"]
    assert report["parts"]["test"] == test and len(test) == 2
    pool = report["parts"]["pool"]
    assert sorted(pool + test) == sorted(data.ids) and not set(pool) & set(test)
    assert set(report["runs"]) == {"random", "hybrid"}
    for strategy, seeds in report["runs"].items():
        assert set(seeds) == {"0", "1"}
        for run in seeds.values():
            rows = run["rounds"]
            assert [r["n_labelled"] for r in rows] == [K, K + B, K + 2 * B]
            assert [len(r["selected"]) for r in rows] == [K, B, B]
            chosen = [c for r in rows for c in r["selected"]]
            assert len(chosen) == len(set(chosen)), f"{strategy} selected a case twice"
            assert set(chosen) <= set(pool) and not set(chosen) & set(test)
            for r in rows:
                assert set(r["dice"]) == {"label1", "label2"} and 0.0 <= r["dice_mean"] <= 1.0
                assert r["train_seconds"] > 0 and len(r["reasons"]) == len(r["selected"])
    # every training run saw pool cases only, and each AL round all cases labelled so far
    assert len(simulation.fits) == 2 * 2 * (ROUNDS + 1) + 2
    for fit in simulation.fits:
        assert set(fit["cases"]) <= set(pool)
    for g, run in enumerate(run for seeds in report["runs"].values() for run in seeds.values()):
        for r in range(len(run["rounds"])):
            labelled = [c for earlier in run["rounds"][: r + 1] for c in earlier["selected"]]
            assert simulation.fits[g * (ROUNDS + 1) + r]["cases"] == labelled
    # the fully supervised reference: the whole pool, as many steps as an AL run's final model
    for fit in simulation.fits[-2:]:
        assert fit["cases"] == pool and fit["steps"] == 2 + ROUNDS * 1
    assert set(report["reference"]) == {"0", "1"}
    assert all(r["n_labelled"] == len(pool) for r in report["reference"].values())


def test_summary_is_printed_per_budget_with_the_difference_to_random(simulation):
    summary = simulation.summary
    assert summary["budgets"] == [K, K + B, K + 2 * B] and summary["seeds"] == 2
    runs = simulation.report["runs"]
    for name in ("random", "hybrid"):
        entry = summary["strategies"][name]
        expected = [np.mean([runs[name][s]["rounds"][i]["dice_mean"] for s in ("0", "1")]) for i in range(3)]
        assert entry["dice_mean"] == pytest.approx(expected, abs=1e-4)
        assert all(
            lo <= m <= hi
            for lo, m, hi in zip(entry["dice_min"], entry["dice_mean"], entry["dice_max"], strict=True)
        )
        random = summary["strategies"]["random"]["dice_mean"]
        assert entry["minus_random"] == pytest.approx(
            [a - b for a, b in zip(entry["dice_mean"], random, strict=True)], abs=2e-4
        )
        assert entry["seconds"] > 0
    assert summary["strategies"]["random"]["minus_random"] == [0.0, 0.0, 0.0]
    assert summary["supervised"]["n_labelled"] == 8 and summary["wall_seconds"] > 0
    assert summary["results"].endswith("results.json") and summary["curve"].endswith("al_curve.png")


def test_cold_start_picks_by_diversity_and_random_stays_random(data, simulation):
    # recomputed here from the inference pre-transforms and the model-free intensity embedding
    transform = Native3DTask(network=MODEL.build(), config=MODEL, device="cpu").pre_transforms(modality="MR")
    by_id = {c.case_id: c for c in data.cases}
    items = []
    for case_id in simulation.report["parts"]["pool"]:
        image, affine = load_volume(by_id[case_id].image)
        grid = transform({"image": image, "affine": affine, "prompts": None})["image"].as_tensor()
        items.append(PoolItem(case_id, embedding=intensity_embedding(grid)))
    expected = get_strategy("diversity").select(items, K, rng=np.random.default_rng(12345))
    for run in simulation.report["runs"]["hybrid"].values():
        first = run["rounds"][0]
        assert sorted(first["selected"]) == sorted(expected)  # (equal-sized groups: order by the rng)
        assert all(
            r.startswith("cold start (no labelled volume yet), chosen for diversity")
            for r in first["reasons"]
        )
        # later rounds rank by the model's entropy within clusters, not by the cold-start rule
        assert all("cluster" in r and "entropy" in r for r in run["rounds"][1]["reasons"])
    random_firsts = [run["rounds"][0] for run in simulation.report["runs"]["random"].values()]
    assert all(r == "random baseline" for row in random_firsts for r in row["reasons"])


def test_each_round_warm_starts_from_the_previous_rounds_weights(simulation):
    fits = simulation.fits
    n = ROUNDS + 1
    for g, seed in enumerate([0, 1, 0, 1]):  # random seeds 0, 1, then hybrid seeds 0, 1
        run = fits[g * n : (g + 1) * n]
        # round 0 trains from the seed's initialisation (the same for every strategy: paired runs)
        assert _same(run[0]["before"], _fresh(seed))
        for previous, current in zip(run, run[1:], strict=False):
            assert not _same(previous["before"], previous["after"])  # training changed the weights
            assert _same(current["before"], previous["after"])  # and the next round continues from them
            assert not _same(current["before"], _fresh(seed))
    for seed, fit in zip([0, 1], fits[-2:], strict=True):  # the reference trains from scratch
        assert _same(fit["before"], _fresh(seed))


def test_the_curve_is_a_png(simulation):
    path = simulation.out / "al_curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300


def test_given_test_folders_are_the_test_part(data, tmp_path):
    test_folder = tmp_path / "test"
    held = [make_case(test_folder, f"other{i}", seed=100 + i, shape=SHAPE) for i in range(2)]
    argv = ["--test-images", str(test_folder / "images"), "--test-labels", str(test_folder / "labels")]
    argv += ["--strategies", "diversity", "--seeds", "1", "--rounds", "0"]
    rc, _, err = cli(data, tmp_path / "out", *argv)
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["parts"] == {"pool": data.ids, "test": [c.case_id for c in held]}
    assert [r["n_labelled"] for r in report["runs"]["diversity"]["0"]["rounds"]] == [K]

    # the pool's own folders as test folders: every test case would be in the pool
    same = ["--test-images", str(data.folder / "images"), "--test-labels", str(data.folder / "labels")]
    rc, _, err = cli(data, tmp_path / "out2", *same)
    assert rc == 2 and "also in the pool" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--initial", "20"], "initial=20 labelled cases do not fit the pool of 8"),
        (["--rounds", "4"], "exceed the pool of 8 cases"),
        (
            ["--strategies", "random,bald"],
            "unknown selection strategy 'bald'; known: disagreement, diversity",
        ),
        (["--test-images", "x"], "--test-images and --test-labels go together"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(data, tmp_path, extra, message):
    rc, out, err = cli(data, tmp_path / "out", *extra)
    assert rc == 2 and message in err and not out
    assert not (tmp_path / "out" / "results.json").exists()


def test_an_image_without_a_label_is_refused(tmp_path):
    folder = tmp_path / "data"
    for i in range(3):
        make_case(folder, f"case{i}", seed=i)
    (folder / "labels" / "case1.nii.gz").unlink()
    data = SimpleNamespace(folder=folder)
    rc, _, err = cli(data, tmp_path / "out", "--initial", "1")
    assert rc == 2 and "1 image(s) have no label file of the same name" in err and "case1" in err


def test_score_pool_gives_each_strategy_what_it_reads(data):
    views = PoolViews(MODEL, modality="MR")
    pool, labelled = data.cases[:3], data.cases[3:5]
    network, previous = MODEL.build(), MODEL.build()

    def scored(name, previous=None):
        return score_pool(
            get_strategy(name),
            network=network,
            pool=pool,
            labelled=labelled,
            views=views,
            scoring=ScoringConfig(mc_samples=2),
            previous=previous,
            device="cpu",
        )

    items, known = scored("random")
    assert [i.volume_id for i in items] == ["case0", "case1", "case2"]
    assert all(i.embedding is None and not i.scores for i in items + known)
    model_embedding = (2 * 8 * 8,)  # mean and max of the 64 bottleneck channels of 8 filters
    for name, key in [
        ("entropy", "entropy"),
        ("tta", "tta"),
        ("mc_dropout", "mc_dropout"),
        ("hybrid", "entropy"),
    ]:
        items, known = scored(name)
        assert all(key in i.scores and f"{key}/label1" in i.scores for i in items), name
        assert all(not i.scores and i.embedding is None for i in known)  # nothing is read of labelled cases
    assert all(i.embedding.shape == model_embedding for i in items)  # hybrid clusters model embeddings
    items, known = scored("diversity")
    assert all(not i.scores and i.embedding.shape == model_embedding for i in items + known)
    with torch.no_grad(), autocast("cpu"):  # as the scorer runs it (bf16 where the CPU has it)
        features = network.encode(views.inputs(pool[0])[None])[0][0].flatten(1).float()
    expected = torch.cat([features.mean(1), features.amax(1)])
    assert np.allclose(items[0].embedding, (expected / expected.norm()).numpy(), atol=1e-3)
    # no previous model yet: no score, so the strategy's cold-start rule (diversity, labelled as centres)
    items, known = scored("disagreement")
    assert all("disagreement" not in i.scores and i.embedding.shape == model_embedding for i in items + known)
    items, _ = scored("disagreement", previous)
    assert all(0.0 <= i.scores["disagreement"] <= 1.0 for i in items)


def _pretrained_file(path, *, init_filters=8, seed=7):
    """A file as ``pretrain`` writes it: a Volume Fusion network (5 levels, no guidance), random weights."""
    config = PretrainConfig(init_filters=init_filters, roi_size=(16, 16, 16))
    torch.manual_seed(seed)
    save_native3d(pretrain_network(config), config.network_config(), path)
    return load_state_dict(path)


def test_pretrained_weights_are_where_every_run_and_the_reference_start(data, tmp_path):
    pretrained = _pretrained_file(tmp_path / "vf.pt")
    starts = []
    fit = Trainer.fit

    def recording_fit(self, cases, **kwargs):
        starts.append(_state(self.network))
        return fit(self, cases, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", recording_fit)
        rc, _, err = cli(
            data,
            tmp_path / "out",
            "--strategies",
            "random",
            "--rounds",
            "0",
            "--seeds",
            "1",
            "--pretrained",
            str(tmp_path / "vf.pt"),
        )
    assert rc == 0, err
    assert len(starts) == 2  # the cold-start model and the fully supervised reference, seed 0 each
    fresh = _fresh(0)
    head = {"conv_final.2.conv.weight", "conv_final.2.conv.bias"}
    for start in starts:
        body = set(start) - head - {"convInit.conv.weight"}
        assert body and all(torch.equal(start[k], pretrained[k]) for k in body)
        assert all(torch.equal(start[k], fresh[k]) for k in head)  # the head: the seeded initialisation
        assert torch.equal(start["convInit.conv.weight"][:, :1], pretrained["convInit.conv.weight"])
        assert not start["convInit.conv.weight"][:, 1:].any()  # guidance starts with no effect
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["pretrained"] == str(tmp_path / "vf.pt")
    assert settings["transfer"]["copied"] == len(body) and settings["transfer"]["sha256"]


def test_a_pretrained_file_that_does_not_fit_is_refused_before_training(data, tmp_path):
    _pretrained_file(tmp_path / "wide.pt", init_filters=16)
    rc, out, err = cli(data, tmp_path / "out", "--pretrained", str(tmp_path / "wide.pt"))
    assert rc == 2 and "another init_filters" in err and not out
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    rc, out, err = cli(data, tmp_path / "out", "--pretrained", str(tmp_path / "bad.pt"))
    assert rc == 2 and "--pretrained:" in err and "bad.pt" in err and not out
    assert not (tmp_path / "out" / "results.json").exists()
