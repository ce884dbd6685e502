"""Retrain now says beforehand what the round will do (the method it trains, from what, on how many
cases) and whether its model can be judged on the locked validation split; a round that cannot be
judged starts only once the admin confirms, and one that cannot run does not start. Real PostgreSQL."""

from __future__ import annotations

import pytest
from django.test import Client

from annotation.models import Case
from learning.models import Job
from learning.selectors import adaptation_plan

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_round_without_validation_cases_is_announced_and_needs_a_confirmation(
    project, approved_case, users
):
    admin = client_for(users["admin"])
    dashboard = f"/projects/{project.id}/learning/"
    retrain = dashboard + "retrain/"

    # Nothing approved: the round could not run; it is not started.
    assert "No approved mask in the train split yet" in admin.get(dashboard).content.decode()
    refused = admin.post(retrain, {"method": "norm"}, follow=True).content.decode()
    assert "No approved mask in the train split yet" in refused and not Job.objects.exists()

    # One train case, no validation case: the first round trains full and cannot be judged.
    approved_case(project, Case.Split.TRAIN)
    plan = adaptation_plan(project=project, method="norm")
    assert (plan.requested, plan.trains, plan.n_train, plan.n_validation, plan.judged) == (
        "norm",
        "full",
        1,
        0,
        False,
    )
    page = admin.get(dashboard).content.decode()
    assert (
        "Trains full (a first round, from a fresh initialisation; lora_conv applies from the next round)"
        in page
    )
    assert "it cannot be judged" in page and "You will be asked to confirm" in page
    assert 'id="auto-round-waits"' in page  # the automatic round waits for a validation case
    asked = admin.post(retrain, {"method": "norm"})
    assert asked.status_code == 200 and "This round's model cannot be judged" in asked.content.decode()
    assert 'name="confirm" value="1"' in asked.content.decode() and not Job.objects.exists()

    confirmed = admin.post(retrain, {"method": "norm", "confirm": "1"}, follow=True).content.decode()
    job = Job.objects.get()
    assert (job.params["method"], job.params["trains"], job.params["judged"]) == ("norm", "full", False)
    assert f"Adaptation round queued as job {job.id}. Trains full" in confirmed
    assert "trains <code>full</code>, cannot be judged" in admin.get(dashboard).content.decode()
    # A second request joins the queued round without asking again, and says what it trains.
    joined = admin.post(retrain, {"method": "norm"}, follow=True).content.decode()
    assert f"(job {job.id}, trains full): your request joined it" in joined and Job.objects.count() == 1

    # With a validation case the first model can be judged against the floor: no confirmation.
    Job.objects.filter(pk=job.pk).update(state=Job.State.CANCELLED)
    approved_case(project, Case.Split.VALIDATION)
    started = admin.post(retrain, {"method": "norm"}, follow=True).content.decode()
    second = Job.objects.exclude(pk=job.pk).get()
    assert second.params["judged"] is True
    assert "judged on 1 approved validation case against the first-model floor" in started
    assert 'id="auto-round-waits"' not in started


def test_after_a_first_model_the_plan_counts_the_paired_cases_the_gate_needs(
    project, registry, approved_case, users
):
    approved_case(project, Case.Split.TRAIN)
    approved_case(project, Case.Split.VALIDATION)
    plan = adaptation_plan(project=project)
    assert (plan.trains, plan.start, plan.judged) == ("lora_conv", "the active model v2", False)
    assert (
        "needs at least 5 approved validation cases (paired test at alpha 0.05) and there is 1"
        in plan.summary
    )
    asked = client_for(users["admin"]).post(f"/projects/{project.id}/learning/retrain/", {"method": ""})
    assert asked.status_code == 200 and not Job.objects.exists()
