"""The learning dashboard (learning.views), its jobs API (learning.api) and charts (learning.plots):
who may see it, model versions with lineage and gate, promotion, rollback, retraining, cancelling,
live job progress, the operations panel with the broker down, and effort per approved case.
Real PostgreSQL and Redis; model versions and jobs are rows made here (the page needs no files)."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from annotation.models import Case
from annotation.services import (
    LabelSpec,
    case_review,
    case_submit,
    case_take,
    presegmentation_create,
    project_create,
    project_volumes_add,
)
from annotation.tests.helpers import labelmap, save
from annotator.celery import app
from learning import selectors
from learning.models import Job, ModelVersion
from learning.tests.conftest import model_version
from studies.models import Series

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n"


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def states(project) -> dict[int, str]:
    return dict(ModelVersion.objects.filter(project=project).values_list("number", "state"))


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_admin_sees_versions_with_lineage_gate_and_actions(users, project, registry):
    response = client_for(users["admin"]).get(f"/projects/{project.id}/learning/")
    assert response.status_code == 200
    html = response.content.decode()
    rows = {row.version.number: row for row in response.context["versions"]}
    assert [n for n in rows] == [4, 3, 2, 1]
    assert rows[3].lineage == "v3 ← v2 ← v1" and rows[4].lineage == "v4 ← v2 ← v1"
    assert rows[3].approved == 15 and rows[1].lineage == "v1"
    assert "v3 ← v2 ← v1" in html
    assert "better than v2 by 0.040 (p=0.020)" in html
    assert "not better than the active model (p=0.410)" in html
    # promote: only the candidate that passed; roll back: only a version that was active before
    assert (
        f"/versions/{registry[3].id}/promote/" in html and f"/versions/{registry[4].id}/promote/" not in html
    )
    assert f"/versions/{registry[1].id}/rollback/" in html
    assert (
        f"/versions/{registry[2].id}/rollback/" not in html
        and f"/versions/{registry[3].id}/rollback/" not in html
    )
    assert html.count('name="csrfmiddlewaretoken"') >= 3
    assert 'src="/static/learning/dashboard.js"' in html
    assert f'src="/projects/{project.id}/learning/curve.png"' in html
    # the retrain form offers the native 3D PEFT methods, the project's own selected
    assert re.search(r'<option value="lora_conv" selected>', html)
    assert '<option value="norm"' in html and '<option value="full"' in html


def test_the_dashboard_needs_the_permission(users, project, registry):
    job = Job.objects.create(project=project, kind=Job.Kind.ADAPT)
    base = f"/projects/{project.id}/learning/"
    gets = [base, base + "curve.png", base + "effort.png"]
    posts = [
        base + "retrain/",
        base + "intake/",
        base + f"versions/{registry[3].id}/promote/",
        base + f"versions/{registry[1].id}/rollback/",
        base + f"jobs/{job.id}/cancel/",
    ]
    for url in gets + posts:
        anonymous = client_for(None).post(url) if url in posts else client_for(None).get(url)
        assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"], url
        annotator = client_for(users["annotator"])
        answer = annotator.post(url) if url in posts else annotator.get(url)
        assert answer.status_code == 403, url
    assert states(project) == {1: "retired", 2: "active", 3: "candidate", 4: "candidate"}
    assert Job.objects.get(pk=job.pk).state == Job.State.QUEUED
    admin = client_for(users["admin"])
    assert admin.get("/projects/999999/learning/").status_code == 404
    assert admin.get(base + "versions/999999/promote/").status_code == 405  # a GET on a form's target
    assert admin.post(base + "versions/999999/promote/").status_code == 404


def test_the_worklist_links_the_dashboard_for_admins_only(users, project):
    link = f'href="/projects/{project.id}/learning/"'
    assert link in client_for(users["admin"]).get(f"/projects/{project.id}/").content.decode()
    assert link not in client_for(users["annotator"]).get(f"/projects/{project.id}/").content.decode()


def test_promote_a_candidate_that_passed_the_gate(users, project, registry):
    response = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/versions/{registry[3].id}/promote/", follow=True
    )
    assert response.redirect_chain == [(f"/projects/{project.id}/learning/", 302)]
    assert messages_of(response) == ["Model v3 is the active model now; the pool is re-scored with it."]
    assert states(project) == {1: "retired", 2: "retired", 3: "active", 4: "candidate"}
    assert ModelVersion.objects.get(pk=registry[3].pk).activated_at is not None


def test_promotion_of_a_candidate_that_failed_the_gate_is_refused(users, project, registry):
    response = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/versions/{registry[4].id}/promote/", follow=True
    )
    assert response.status_code == 200
    assert messages_of(response) == [
        "Model v4 did not pass the validation gate: not better than the active model (p=0.410)"
    ]
    assert 'class="flash error"' in response.content.decode()
    assert states(project) == {1: "retired", 2: "active", 3: "candidate", 4: "candidate"}
    assert ModelVersion.objects.get(pk=registry[4].pk).activated_at is None


def test_rollback_makes_an_earlier_version_active_and_retires_the_current(users, project, registry):
    response = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/versions/{registry[1].id}/rollback/", follow=True
    )
    assert messages_of(response) == [
        "Rolled back: model v1 is the active model again; the pool is re-scored."
    ]
    assert states(project) == {1: "active", 2: "retired", 3: "candidate", 4: "candidate"}
    # a candidate never active cannot be rolled back to
    refused = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/versions/{registry[3].id}/rollback/", follow=True
    )
    assert "was never active" in messages_of(refused)[0]
    assert states(project)[1] == "active"
    # the effort chart marks the activation
    assert [(a.number, a.action) for a in selectors.model_activations(project=project)][-1] == (
        1,
        "rolled back to",
    )


def test_cancel_a_queued_job(users, project):
    job = Job.objects.create(project=project, kind=Job.Kind.SCORE)
    page = client_for(users["admin"]).get(f"/projects/{project.id}/learning/").content.decode()
    assert f"/learning/jobs/{job.id}/cancel/" in page
    response = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/jobs/{job.id}/cancel/", follow=True
    )
    assert messages_of(response) == [f"Job {job.id} is cancelled."]
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED and job.finished_at is not None
    assert "cancelled by admin" in job.log
    again = client_for(users["admin"]).post(
        f"/projects/{project.id}/learning/jobs/{job.id}/cancel/", follow=True
    )
    assert messages_of(again) == [f"Job {job.id} has cancelled already; there is nothing to cancel."]
    other = project_create(name="Other", labels=[LabelSpec(1, "a", "#ff0000")], user=users["admin"])
    assert (
        client_for(users["admin"]).post(f"/projects/{other.id}/learning/jobs/{job.id}/cancel/").status_code
        == 404
    )


def test_an_admin_sets_the_intake_rule_on_the_dashboard(users, project, make_volume):
    volume = make_volume(modality=project.modality or "MR")
    Series.objects.filter(pk=volume.series_id).update(description="Hippo T1 3D")
    admin = client_for(users["admin"])
    url = f"/projects/{project.id}/learning/intake/"
    response = admin.post(url, {"series_description": "hippo t1"}, follow=True)
    assert messages_of(response) == [
        "New volumes whose series description contains 'hippo t1' join the project; "
        "1 ready volume joined now."
    ]
    assert 'value="hippo t1"' in response.content.decode()
    assert project.cases.filter(volume=volume).exists()
    refused = admin.post(url, {"series_description": "x" * 200}, follow=True)
    assert messages_of(refused) == ["The intake rule is at most 128 characters long, got 200."]
    cleared = admin.post(url, {"series_description": " "}, follow=True)
    assert messages_of(cleared) == ["No intake rule: new volumes join the project only when added by hand."]
    project.refresh_from_db()
    assert project.intake_series_description == "" and project.cases.filter(volume=volume).exists()


def test_retrain_now_queues_a_round_or_joins_the_one_queued(
    users, project, approved_case, django_capture_on_commit_callbacks
):
    approved_case(project, "train")
    approved_case(project, "validation")
    admin = client_for(users["admin"])
    url = f"/projects/{project.id}/learning/retrain/"
    with django_capture_on_commit_callbacks(execute=False) as sent:
        first = admin.post(url, {"method": "norm"}, follow=True)
    job = Job.objects.get(project=project, kind=Job.Kind.ADAPT)
    assert len(sent) == 1  # the message leaves after the commit
    assert messages_of(first) == [
        f"Adaptation round queued as job {job.id}. Trains full (a first round, from a fresh initialisation; "
        "norm applies from the next round) on 1 approved train case; judged on 1 approved validation case "
        "against the first-model floor (mean Dice 0.5)."
    ]
    assert (
        job.params == {"method": "norm", "approved": 2, "trigger": "admin", "trains": "full", "judged": True}
        and job.created_by == users["admin"]
    )
    second = admin.post(url, {"method": "lora_conv"}, follow=True)
    assert messages_of(second) == [
        f"An adaptation round is queued already (job {job.id}, trains full): your request joined it."
    ]
    assert Job.objects.filter(project=project, kind=Job.Kind.ADAPT).count() == 1
    assert "joins it instead of starting another" in second.content.decode()
    Job.objects.filter(pk=job.pk).update(state=Job.State.CANCELLED)
    unknown = admin.post(url, {"method": "no_such_method"}, follow=True)
    assert "unknown PEFT method 'no_such_method'" in messages_of(unknown)[0]
    assert Job.objects.filter(project=project, kind=Job.Kind.ADAPT).count() == 1


def test_the_jobs_api_reports_progress(users, project):
    done = Job.objects.create(
        project=project,
        kind=Job.Kind.SCORE,
        state=Job.State.SUCCEEDED,
        progress=100,
        finished_at=timezone.now(),
    )
    running = Job.objects.create(
        project=project,
        kind=Job.Kind.ADAPT,
        state=Job.State.RUNNING,
        progress=42.5,
        log="10:00:00 started\n10:00:05 epoch 1: loss 0.5000",
        started_at=timezone.now(),
        attempts=1,
    )
    admin = client_for(users["admin"])
    listed = admin.get(f"/api/projects/{project.id}/jobs/")
    assert listed.status_code == 200
    results = listed.json()["results"]
    assert [j["id"] for j in results] == [running.id, done.id]
    assert (
        results[0]["progress"] == 42.5
        and results[0]["state"] == "running"
        and results[0]["finished"] is False
    )
    assert results[0]["log"].endswith("epoch 1: loss 0.5000") and results[0]["started_at"]
    assert results[1]["finished"] is True and results[1]["finished_at"]
    one = admin.get(f"/api/jobs/{running.id}/").json()
    assert one["progress"] == 42.5 and one["kind"] == "adapt" and one["error"] == ""
    assert admin.get("/api/jobs/999999/").status_code == 404
    assert admin.get("/api/projects/999999/jobs/").status_code == 404
    assert client_for(users["annotator"]).get(f"/api/jobs/{running.id}/").status_code == 403
    assert client_for(None).get(f"/api/projects/{project.id}/jobs/").status_code == 403
    # the page hands its script the API and the unfinished jobs to follow
    html = admin.get(f"/projects/{project.id}/learning/").content.decode()
    data = json.loads(
        re.search(r'<script id="learning-data" type="application/json">(.*?)</script>', html).group(1)
    )
    assert data == {
        "jobsUrl": f"/api/projects/{project.id}/jobs/",
        "pollSeconds": 2,
        "unfinished": [running.id],
    }
    assert 'value="43"' in html and "43%" in html  # rounded half up, as the script does
    assert f'data-job="{running.id}" data-finished="0"' in html


def test_the_learning_curve_is_a_png_with_or_without_versions(users, project):
    admin = client_for(users["admin"])
    empty = admin.get(f"/projects/{project.id}/learning/curve.png")
    assert empty.status_code == 200 and empty["Content-Type"] == "image/png"
    assert empty.content.startswith(PNG)
    assert "No model version yet" in admin.get(f"/projects/{project.id}/learning/").content.decode()
    v1 = model_version(project, 1, state="active", dice=0.6, approved=4, active_at=timezone.now())
    model_version(project, 2, state="candidate", parent=v1, dice=None, approved=8)  # not validated: no point
    model_version(project, 3, state="candidate", parent=v1, dice=0.7, approved=8)
    assert [(p.number, p.approved) for p in selectors.learning_curve(project=project)] == [(1, 4), (3, 8)]
    drawn = admin.get(f"/projects/{project.id}/learning/curve.png")
    assert drawn.content.startswith(PNG) and len(drawn.content) > len(empty.content)


def test_the_operations_panel_renders_with_the_broker_down(users, project, monkeypatch):
    admin = client_for(users["admin"])
    up = admin.get(f"/projects/{project.id}/learning/")
    assert set(up.context["broker"].queues) == {"interactive", "gpu", "train", "cpu"}
    assert up.context["broker"].error == ""
    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:9/0")  # a closed port
    down = admin.get(f"/projects/{project.id}/learning/")
    assert down.status_code == 200
    assert "Broker unreachable" in down.content.decode()
    assert down.context["broker"].queues == {} and "broker unreachable" in down.context["broker"].error


def test_effort_per_approved_case_by_week_and_by_pre_segmenting_model(users, project, make_volume):
    v1 = model_version(project, 1, state="active", dice=0.6, approved=4, active_at=timezone.now())
    project_volumes_add(project=project, volumes=[make_volume(), make_volume(), make_volume()], user=None)
    scratch, assisted, open_case = Case.objects.filter(project=project).order_by("id")
    presegmentation_create(case=assisted, mask=labelmap(2), model_version=v1.label)
    annotator, reviewer = users["annotator"], users["reviewer"]
    for case, effort in (
        (scratch, {"seconds": 300.0, "clicks": 10, "strokes": 6}),
        (assisted, {"seconds": 60.0}),
    ):
        case_take(case=case, user=annotator)
        head = case.versions.order_by("-number").first()
        first = save(case, annotator, head, **effort)
        last = save(case, annotator, first, seconds=30.0, model_calls=2)
        case_submit(case=case, user=annotator, version=last)
        case_review(case=case, user=reviewer, version=last, decision="approve")
    case_take(case=open_case, user=annotator)
    save(open_case, annotator, None, seconds=999.0)  # not approved: not counted

    cases = selectors.approved_case_effort(project=project)
    assert [(c.case_id, c.seconds, c.clicks, c.strokes, c.model_calls, c.presegmented_by) for c in cases] == [
        (scratch.id, 330.0, 10, 6, 2, ""),
        (assisted.id, 90.0, 0, 0, 2, v1.label),
    ]
    by_model = selectors.effort_by_model(cases, project=project)
    assert [(g.label, g.cases, g.seconds) for g in by_model] == [
        ("none (drawn from scratch)", 1, 330.0),
        ("v1", 1, 90.0),
    ]
    (week,) = selectors.effort_by_week(cases, selectors.model_activations(project=project))
    assert (
        week.cases == 2 and week.seconds == 210.0 and week.clicks == 5.0 and week.notes == ("v1 activated",)
    )

    admin = client_for(users["admin"])
    html = admin.get(f"/projects/{project.id}/learning/").content.decode()
    assert "none (drawn from scratch)" in html and "3.5" in html  # 210 s: 3.5 minutes per case that week
    chart = admin.get(f"/projects/{project.id}/learning/effort.png")
    assert chart.status_code == 200 and chart.content.startswith(PNG)


def test_the_effort_chart_is_a_png_without_approvals(users, project):
    response = client_for(users["admin"]).get(f"/projects/{project.id}/learning/effort.png")
    assert response.status_code == 200 and response.content.startswith(PNG)


def test_the_jobs_api_is_in_the_openapi_schema(client):
    doc = client.get("/api/schema/").json()
    assert doc["paths"]["/api/projects/{project_id}/jobs/"]["get"]["operationId"] == "projectJobList"
    assert doc["paths"]["/api/jobs/{job_id}/"]["get"]["operationId"] == "jobDetail"


def test_effort_by_model_names_litemedsam_on_a_versions_boxes_apart_from_the_version(project):
    v1 = model_version(project, 1, state="active", dice=0.6, approved=4, active_at=timezone.now())
    now = timezone.now()

    def approved(case_id: int, seconds: float, by: str) -> selectors.ApprovedCase:
        return selectors.ApprovedCase(case_id, now, seconds, 0, 0, 0, by)

    cases = [approved(1, 100.0, v1.second_opinion_label), approved(2, 50.0, v1.label), approved(3, 300.0, "")]
    assert [(g.label, g.seconds) for g in selectors.effort_by_model(cases, project=project)] == [
        ("none (drawn from scratch)", 300.0),
        ("v1", 50.0),
        ("v1 + LiteMedSAM on its boxes", 100.0),
    ]
