"""Effort in the simulation's units on the Learning dashboard (learning.effort): real effort priced with
ml_worker.effort's costs, and the curves of an effort-simulate results file beside it when the setting
EFFORT_SIMULATION_RESULTS names one. Real PostgreSQL; the results file is written by effort-simulate's
own code (a manual-only run on tiny synthetic cases)."""

from __future__ import annotations

import json

import pytest
from django.test import Client, override_settings

from annotation.models import Case
from annotation.services import case_review, case_submit, case_take, project_volumes_add
from annotation.tests.helpers import save
from learning import effort, selectors
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.effort import DEFAULT_COSTS, estimated_seconds
from ml_worker.experiments.effort import AnnotatorConfig, EffortConfig, run_setting, write_results
from ml_worker.inference.eval import find_cases

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def approved(users, project, make_volume):
    """Two approved cases: 10 clicks and 6 strokes, and none (plus a case still open, not counted)."""
    project_volumes_add(project=project, volumes=[make_volume(), make_volume(), make_volume()], user=None)
    first, second, open_case = Case.objects.filter(project=project).order_by("id")
    annotator, reviewer = users["annotator"], users["reviewer"]
    for case, work in ((first, {"clicks": 10, "strokes": 6}), (second, {})):
        case_take(case=case, user=annotator)
        version = save(case, annotator, None, seconds=100.0, **work)
        case_submit(case=case, user=annotator, version=version)
        case_review(case=case, user=reviewer, version=version, decision="approve")
    case_take(case=open_case, user=annotator)
    save(open_case, annotator, None, seconds=50.0, clicks=99)
    return project


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    """A results.json of effort-simulate: manual, two seeds, four pool cases of tiny synthetic volumes."""
    root = tmp_path_factory.mktemp("simulation")
    for i in range(6):
        make_case(root / "cases", f"case_{i}", seed=i)
    cases = find_cases(root / "cases" / "images", root / "cases" / "labels")
    config = EffortConfig(seeds=(0, 1), validation=2, annotator=AnnotatorConfig(stroke_radius=2))
    for seed in config.seeds:
        run_setting("manual", seed, cases=cases, out=root / "out", config=config, names={1: "a", 2: "b"})
    write_results(root / "out", config=config)
    return root / "out" / "results.json"


def test_real_effort_is_priced_with_the_simulations_costs(users, approved):
    cases = selectors.approved_case_effort(project=approved)
    assert [effort.case_estimated_seconds(c) for c in cases] == [
        10 * DEFAULT_COSTS.click + 6 * DEFAULT_COSTS.stroke + DEFAULT_COSTS.review,
        DEFAULT_COSTS.review,
    ]
    (week,) = selectors.effort_by_week(cases, [])
    assert effort.group_estimated_minutes(week) == pytest.approx(estimated_seconds(clicks=5, strokes=3) / 60)
    response = client_for(users["admin"]).get(f"/projects/{approved.id}/learning/")
    assert response.status_code == 200
    assert response.context["estimated_minutes"] == pytest.approx((58 + 20) / 2 / 60)
    assert (response.context["real_clicks"], response.context["real_strokes"]) == (5.0, 3.0)
    html = response.content.decode()
    assert "Est. min" in html and "click 2 s" in html and "review 20 s" in html
    assert response.context["simulated"] is None and "Beside the simulated" not in html


def test_the_dashboard_shows_the_simulated_curve_when_a_results_file_is_set(users, approved, results_file):
    results = json.loads(results_file.read_text())
    manual = results["settings"]["manual"]
    admin = client_for(users["admin"])
    with override_settings(EFFORT_SIMULATION_RESULTS=str(results_file)):
        response = admin.get(f"/projects/{approved.id}/learning/")
        chart = admin.get(f"/projects/{approved.id}/learning/effort-simulated.png")
    html = response.content.decode()
    assert "simulated: manual (brush only)" in html and "2 of 4" in html
    simulated = response.context["simulated"]
    assert simulated.same_costs and not simulated.error
    (curve,) = simulated.curves
    # the same unit: the simulation's estimated annotator seconds per case, in minutes
    assert curve.mean == pytest.approx([v / 60 for v in manual["curve"]["mean"]])
    assert curve.seeds == 2 and curve.strokes == manual["strokes_per_case"] > 0
    ((row_curve, first_two, n),) = response.context["simulated_rows"]
    assert row_curve is curve and n == 2 and first_two == pytest.approx(sum(curve.mean[:2]) / 2)
    assert chart.status_code == 200 and chart.content.startswith(PNG)


def test_other_costs_in_the_results_are_flagged(users, approved, results_file, tmp_path):
    results = json.loads(results_file.read_text())
    results["protocol"]["costs"]["click"] = 5.0
    other = tmp_path / "results.json"
    other.write_text(json.dumps(results))
    with override_settings(EFFORT_SIMULATION_RESULTS=str(other)):
        html = client_for(users["admin"]).get(f"/projects/{approved.id}/learning/").content.decode()
    assert "not comparable" in html and "click 5 s" in html


@pytest.mark.parametrize(
    "content, message",
    [(None, "cannot be read"), ("{not json", "is not a results.json"), ('{"settings": {}}', "is not a")],
)
def test_an_unreadable_results_file_is_a_message_not_an_error(users, approved, tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    admin = client_for(users["admin"])
    with override_settings(EFFORT_SIMULATION_RESULTS=str(path)):
        response = admin.get(f"/projects/{approved.id}/learning/")
        chart = admin.get(f"/projects/{approved.id}/learning/effort-simulated.png")
    assert response.status_code == 200 and message in response.content.decode()
    assert chart.status_code == 200 and chart.content.startswith(PNG)


def test_the_simulated_chart_needs_the_permission_and_a_results_file(users, approved, results_file):
    url = f"/projects/{approved.id}/learning/effort-simulated.png"
    with override_settings(EFFORT_SIMULATION_RESULTS=str(results_file)):
        assert client_for(users["annotator"]).get(url).status_code == 403
    assert client_for(users["admin"]).get(url).status_code == 404  # no results file set
