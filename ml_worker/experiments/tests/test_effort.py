"""effort-simulate: the simulated annotator's strokes and clicks on constructed masks, stopping at the
target, cost accounting, resume after an interruption, and settings that share seeds and splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml_worker.adaptation.tests.synthetic import make_case, make_thin_case
from ml_worker.cli import main
from ml_worker.effort import ActionCosts, estimated_seconds
from ml_worker.experiments.effort import (
    AnnotatorConfig,
    EffortConfig,
    annotate_structure,
    next_stroke,
    run_setting,
    split_cases,
    write_results,
)
from ml_worker.inference.eval import dice, find_cases
from ml_worker.inference.simulate import next_click

NAMES = {1: "outer", 2: "core"}


def _ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


# ---- strokes -------------------------------------------------------------------------------------


def test_a_stroke_paints_a_disc_on_the_slice_where_the_largest_error_is_largest():
    truth = np.zeros((30, 30, 12), bool)
    truth[5:25, 5:25, 2:10] = True
    truth[:, :, 6] = False
    truth[8:22, 8:22, 6] = True  # slice 6 is smaller: the stroke goes elsewhere
    truth[5:25, 5:25, 4] = True
    mask = np.zeros_like(truth)
    stroke = next_stroke(mask, truth, axis=2, radius=3)
    assert stroke.positive and stroke.slice_index != 6
    assert stroke.voxels.sum() == stroke.voxels[:, :, stroke.slice_index].sum()  # one slice only
    painted = np.argwhere(stroke.voxels)
    assert np.all(np.linalg.norm(painted - np.asarray(stroke.centre), axis=1) <= 3)  # a disc of radius 3
    assert stroke.voxels.sum() == 29  # the whole disc (r=3: 29 voxels) lies inside the structure
    assert stroke.centre[:2] in [(14, 14), (14, 15), (15, 14), (15, 15)]  # the middle of the square


def test_a_stroke_erases_the_larger_false_positive_and_stops_at_the_edge():
    truth = np.zeros((20, 20, 5), bool)
    truth[2:6, 2:6, 2] = True  # 16 voxels missed
    mask = truth.copy()
    mask[10:18, 10:18, 1:4] = True  # 192 voxels too many
    mask[2:6, 2:6, 2] = False
    stroke = next_stroke(mask, truth, axis=2, radius=6)
    assert not stroke.positive
    assert stroke.voxels.sum() == 64  # the disc would reach further; only the false positives go
    assert not (stroke.voxels & truth).any()
    assert next_stroke(truth, truth, axis=2, radius=3) is None


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_strokes_follow_the_slice_axis(axis):
    truth = _ball((16, 16, 16), (8, 8, 8), 5)
    stroke = next_stroke(np.zeros_like(truth), truth, axis=axis, radius=2)
    assert stroke.slice_index == 8 and stroke.centre == (8, 8, 8)
    others = tuple(a for a in range(3) if a != axis)
    assert stroke.voxels.any(axis=others).sum() == 1


# ---- the annotator -------------------------------------------------------------------------------


class GrowingSession:
    """A model that answers a positive click with a ball around it (and boxes with nothing)."""

    def __init__(self, radius: float, truth: np.ndarray) -> None:
        self.radius, self.truth = radius, truth
        self.mask = np.zeros(truth.shape, bool)
        self.clicks = []

    def start(self, box):
        self.mask = np.zeros(self.truth.shape, bool)
        return self.mask.copy()

    def click(self, click):
        self.clicks.append(click)
        self.mask = self.mask | (_ball(self.truth.shape, click.ijk, self.radius) & self.truth)
        return self.mask.copy()


class StubbornSession(GrowingSession):
    """A model that never changes its answer."""

    def click(self, click):
        self.clicks.append(click)
        return self.mask.copy()


def test_clicks_go_on_the_largest_error_while_they_help_then_strokes_finish():
    truth = _ball((24, 24, 24), (12, 12, 12), 7)
    session = GrowingSession(4, truth)
    config = AnnotatorConfig(target=0.9, max_clicks=3, stroke_radius=2)
    mask, record = annotate_structure(
        truth, label=1, start=None, session=session, box=False, config=config, rng=np.random.default_rng(0)
    )
    assert session.clicks[0] == next_click(np.zeros_like(truth), truth, label=1)
    assert record["clicks"] == record["clicks_kept"] == 3  # each helped, up to the cap
    assert record["dice_model"] == round(dice(session.mask, truth), 4)
    assert record["strokes"] > 0 and record["reached"] and dice(mask, truth) >= 0.9


def test_a_click_that_does_not_help_is_undone_and_ends_the_clicking():
    truth = _ball((20, 20, 20), (10, 10, 10), 5)
    start = _ball((20, 20, 20), (10, 10, 10), 3)
    session = StubbornSession(3, truth)
    mask, record = annotate_structure(
        truth,
        label=1,
        start=start,
        session=session,
        box=False,
        config=AnnotatorConfig(target=0.9, max_clicks=5),
        rng=np.random.default_rng(0),
    )
    assert record["clicks"] == 1 and record["clicks_kept"] == 0
    assert record["dice_model"] == record["dice_start"]
    assert record["strokes"] > 0 and dice(mask, truth) >= 0.9


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_the_annotator_stops_at_the_target(target):
    truth = _ball((20, 20, 20), (10, 10, 10), 6)
    config = AnnotatorConfig(target=target, stroke_radius=2)
    mask, record = annotate_structure(
        truth, label=1, start=None, session=None, box=False, config=config, rng=np.random.default_rng(0)
    )
    assert dice(mask, truth) >= target
    # one stroke fewer would not have reached it
    replay = np.zeros_like(truth)
    for _ in range(record["strokes"] - 1):
        stroke = next_stroke(replay, truth, axis=2, radius=2)
        replay[stroke.voxels] = stroke.positive
    assert dice(replay, truth) < target
    assert record["voxels_painted"] == int((mask ^ np.zeros_like(truth)).sum())
    # a start that already reaches the target costs no action
    _, done = annotate_structure(
        truth, label=1, start=truth, session=GrowingSession(2, truth), box=True, config=config,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert (done["boxes"], done["clicks"], done["strokes"], done["voxels_painted"]) == (0, 0, 0, 0)


def test_the_stroke_cap_holds():
    truth = _ball((20, 20, 20), (10, 10, 10), 6)
    _, record = annotate_structure(
        truth,
        label=1,
        start=None,
        session=None,
        box=False,
        config=AnnotatorConfig(target=0.99, max_strokes=4),
        rng=np.random.default_rng(0),
    )
    assert record["strokes"] == 4 and not record["reached"]


# ---- costs ---------------------------------------------------------------------------------------


def test_estimated_seconds_prices_each_action():
    costs = ActionCosts(click=1.5, stroke=4.0, box=10.0, review=30.0)
    assert estimated_seconds(clicks=4, strokes=3, boxes=2, costs=costs) == 4 * 1.5 + 3 * 4 + 2 * 10 + 30
    assert estimated_seconds(clicks=0, strokes=0, reviews=0) == 0
    with pytest.raises(ValueError, match="click"):
        ActionCosts(click=-1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    for i in range(8):
        make_case(root, f"case_{i:02d}", seed=i)
    return root


def _cases(folder):
    return find_cases(folder / "images", folder / "labels")


TINY = dict(
    validation=2,
    round_every=2,
    first_epochs=1,
    first_steps=2,
    epochs=1,
    steps=2,
    batch_size=1,
    init_filters=8,
    roi_size=(16, 16, 16),
    cold_start="none",
    floor=0.0,  # the first model becomes active, so later cases start from its pre-segmentation
    annotator=AnnotatorConfig(target=0.9, max_clicks=2, stroke_radius=2),
)


def test_each_case_costs_its_actions_at_the_given_prices(folder, tmp_path):
    costs = ActionCosts(click=1.0, stroke=5.0, box=9.0, review=11.0)
    config = EffortConfig(**TINY, costs=costs)
    state = run_setting("manual", 0, cases=_cases(folder), out=tmp_path, config=config, names=NAMES)
    assert len(state["records"]) == 6  # 8 cases, 2 for validation
    for record in state["records"]:
        assert record["boxes"] == record["clicks"] == 0 and record["model_seconds"] == 0
        assert record["strokes"] == sum(s["strokes"] for s in record["structures"]) > 0
        assert record["voxels_painted"] == sum(s["voxels_painted"] for s in record["structures"])
        assert record["annotator_seconds"] == record["strokes"] * 5.0 + 11.0
        assert all(s["dice"] >= 0.9 for s in record["structures"])
    results = write_results(tmp_path, config=config)
    manual = results["settings"]["manual"]
    expected = np.mean([r["annotator_seconds"] for r in state["records"]])
    assert manual["annotator_seconds_per_case"] == pytest.approx(expected, abs=0.01)
    assert results["protocol"]["costs"] == costs.as_dict()
    assert (tmp_path / "effort.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- resume, shared seeds and splits -------------------------------------------------------------


def _stable(state):
    """The records and rounds without the wall-clock fields."""
    records = [
        {
            **{k: v for k, v in r.items() if k not in ("model_seconds", "encode_seconds", "structures")},
            "structures": [{k: v for k, v in s.items() if k != "model_seconds"} for s in r["structures"]],
        }
        for r in state["records"]
    ]
    rounds = [{k: v for k, v in r.items() if k not in ("seconds", "weights")} for r in state["rounds"]]
    return records, rounds, state["order"], state["active"] is None


@pytest.mark.parametrize("setting", ["loop-random", "loop-best"])
def test_a_run_interrupted_and_continued_gives_the_same_results(folder, tmp_path, setting):
    config = EffortConfig(**TINY)
    cases = _cases(folder)
    whole = run_setting(setting, 0, cases=cases, out=tmp_path / "whole", config=config, names=NAMES)
    assert whole["rounds"] and len(whole["records"]) == 6
    assert whole["rounds"][0]["promoted"] and whole["records"][-1]["model"] == "round01"
    assert any(s["clicks"] for r in whole["records"] for s in r["structures"])  # the native net's clicks
    broken = tmp_path / "broken"
    first = run_setting(setting, 0, cases=cases, out=broken, config=config, names=NAMES, stop_after=3)
    assert len(first["records"]) == 3 and first["pending_round"] is False and len(first["rounds"]) == 1
    again = run_setting(setting, 0, cases=cases, out=broken, config=config, names=NAMES)
    assert _stable(again) == _stable(whole)
    # the approved masks a later round trains on are the annotator's, written beside the run
    approved = sorted(p.name for p in (broken / "runs" / f"{setting}-seed0" / "approved").iterdir())
    assert len(approved) == 6


def test_a_state_of_another_configuration_is_refused(folder, tmp_path):
    run_setting(
        "manual",
        0,
        cases=_cases(folder),
        out=tmp_path,
        config=EffortConfig(**TINY),
        names=NAMES,
        stop_after=1,
    )
    other = EffortConfig(**{**TINY, "round_every": 3})
    with pytest.raises(ValueError, match="another split or configuration"):
        run_setting("manual", 0, cases=_cases(folder), out=tmp_path, config=other, names=NAMES)


def test_settings_run_apart_share_the_split_and_each_seeds_order(folder, tmp_path):
    config = EffortConfig(**{**TINY, "seeds": (0, 1), "round_every": 100})  # no rounds: orders only
    cases = _cases(folder)
    validation, pool = split_cases(cases, config)
    assert not {c.name for c in validation} & {c.name for c in pool}
    states = {
        (setting, seed): run_setting(setting, seed, cases=cases, out=tmp_path, config=config, names=NAMES)
        for setting in ("manual", "loop-random")
        for seed in (0, 1)
    }
    for (_setting, seed), state in states.items():
        assert state["validation"] == [c.name for c in validation]
        assert state["pool"] == sorted(c.name for c in pool)
        assert state["done"] == states[("manual", seed)]["done"]  # the same cases in the same order
    assert states[("manual", 0)]["done"] != states[("manual", 1)]["done"]
    results = write_results(tmp_path, config=config)
    assert results["settings"]["manual"]["seeds"] == [0, 1]
    assert len(results["settings"]["loop-random"]["curve"]["mean"]) == len(pool)


def test_the_frozen_model_draws_a_box_and_clicks_then_strokes(tmp_path):
    root = tmp_path / "thin"
    for i in range(4):
        make_thin_case(root, f"thin_{i}", seed=i)
    config = EffortConfig(validation=1, pool_size=1, annotator=AnnotatorConfig(target=0.9, max_clicks=2))
    state = run_setting(
        "frozen", 0, cases=find_cases(root / "images", root / "labels"), out=tmp_path / "out", config=config,
        names={1: "disc", 2: "core"},
    )  # fmt: skip
    (record,) = state["records"]
    present = [s for s in record["structures"] if s["dice_start"] < 0.9]
    assert record["boxes"] == len(present) == 2
    assert record["model_seconds"] > 0 and record["encode_seconds"] > 0
    assert all(s["reached"] for s in record["structures"])


def test_the_command_writes_results_and_refuses_unknown_settings(folder, tmp_path, capsys):
    argv = ["effort-simulate", "--images", str(folder / "images"), "--labels", str(folder / "labels")]
    argv += ["--out", str(tmp_path), "--validation", "2", "--pool", "3", "--threads", "1"]
    assert main([*argv, "--settings", "manual,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main([*argv, "--settings", "manual", "--seeds", "0,1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"]["manual"]["cases"] == 3 and summary["settings"]["manual"]["seeds"] == [0, 1]
    assert json.loads((tmp_path / "results.json").read_text())["protocol"]["cost_sources"]["click"]
