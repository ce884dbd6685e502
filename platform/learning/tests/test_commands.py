"""manage.py retrain / promote / rollback: the dashboard's actions for admins who script, with the same
rules and clear errors (exit status non-zero, nothing changed)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from learning.models import Job, ModelVersion
from learning.services import policy_get

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def states(project) -> dict[int, str]:
    return dict(ModelVersion.objects.filter(project=project).values_list("number", "state"))


def test_retrain_queues_a_round_and_joins_the_queued_one(project, users):
    first = run("retrain", "--project", project.name, "--method", "norm", "--as", "admin")
    assert (first["created"], first["state"]) == (True, "queued")
    assert first["plan"].startswith("Trains full (a first round") and "it cannot be judged" in first["plan"]
    job = Job.objects.get(pk=first["job"])
    assert (job.params["method"], job.params["trigger"], job.created_by) == (
        "norm",
        "command",
        users["admin"],
    )
    again = run("retrain", "--project", str(project.id))
    assert (again["job"], again["created"]) == (job.id, False)
    Job.objects.filter(pk=job.pk).update(state=Job.State.CANCELLED)
    anonymous = Job.objects.get(pk=run("retrain", "--project", project.name)["job"])
    assert anonymous.created_by is None
    page = Client()
    page.force_login(users["admin"])
    assert "manage.py retrain" in page.get(f"/projects/{project.id}/learning/").content.decode()


def test_retrain_litemedsam_queues_its_own_round_beside_the_native_one(project, users):
    native = run("retrain", "--project", project.name)
    sam = run("retrain", "--project", project.name, "--model", "litemedsam", "--as", "admin")
    assert sam["created"] and sam["job"] != native["job"] and "LiteMedSAM" in sam["plan"]
    job = Job.objects.get(pk=sam["job"])
    assert (job.kind, job.params["model"], job.params["method"]) == ("adapt_sam", "litemedsam", "decoder")
    again = run("retrain", "--project", project.name, "--model", "litemedsam")
    assert (again["job"], again["created"]) == (job.id, False)
    with pytest.raises(CommandError, match="are for the native net"):
        run("retrain", "--project", project.name, "--model", "litemedsam", "--method", "norm")


def test_retrain_refuses_unknown_projects_methods_and_accounts(project):
    with pytest.raises(CommandError, match="No project 'Nope'"):
        run("retrain", "--project", "Nope")
    with pytest.raises(CommandError, match="nonsense"):
        run("retrain", "--project", project.name, "--method", "nonsense")
    with pytest.raises(CommandError, match="not an account allowed"):
        run("retrain", "--project", project.name, "--as", "annotator")
    assert not Job.objects.exists()


def test_promote_and_rollback_follow_the_gate_and_the_registry(project, registry):
    with pytest.raises(CommandError, match="did not pass the validation gate"):
        run("promote", "--project", project.name, "--model", "4")
    assert states(project) == {1: "retired", 2: "active", 3: "candidate", 4: "candidate"}

    assert run("promote", "--project", project.name, "--model", "3")["active"] == 3
    assert states(project) == {1: "retired", 2: "retired", 3: "active", 4: "candidate"}
    assert run("rollback", "--project", project.name, "--model", "1", "--as", "admin")["active"] == 1
    assert states(project) == {1: "active", 2: "retired", 3: "retired", 4: "candidate"}
    with pytest.raises(CommandError, match="was never active"):
        run("rollback", "--project", project.name, "--model", "4")
    with pytest.raises(CommandError, match=r"has no model v9 \(it has \[4, 3, 2, 1\]\)"):
        run("rollback", "--project", project.name, "--model", "9")


def test_a_policy_with_an_unknown_method_or_strategy_is_refused(project):
    from django.core.exceptions import ValidationError

    policy = policy_get(project)
    policy.full_clean()
    policy.method, policy.strategy, policy.alpha = "nonsense", "guesswork", 2.0
    with pytest.raises(ValidationError) as refused:
        policy.full_clean()
    assert set(refused.value.message_dict) == {"method", "strategy", "alpha"}


def test_admins_set_the_pretrained_file_in_the_django_admin_and_a_bad_policy_is_refused(
    project, users, client
):
    policy = policy_get(project)
    client.force_login(users["admin"])
    url = f"/admin/learning/learningpolicy/{policy.id}/change/"
    page = client.get(url).content.decode()
    assert 'name="pretrained"' in page and "Volume Fusion pretraining file" in page
    form = {
        "project": project.id,
        "adapt_every": 5,
        "method": "lora_conv",
        "strategy": "hybrid",
        "margin": 0.01,
        "alpha": 0.05,
        "first_floor": 0.5,
        "base_checkpoint": "",
        "pretrained": "/srv/models/site_vf.pt",
        "network": json.dumps(policy.network),
        "lr": 0.002,
        "epochs": 4,
        "steps_per_epoch": 25,
    }
    assert client.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert policy.pretrained == "/srv/models/site_vf.pt"

    refused = client.post(url, form | {"method": "nonsense", "pretrained": ""})
    assert refused.status_code == 200 and "nonsense" in refused.content.decode()
    policy.refresh_from_db()
    assert (policy.method, policy.pretrained) == ("lora_conv", "/srv/models/site_vf.pt")
