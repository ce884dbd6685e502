"""Where each role lands after logging in (accounts.views.home), the admin overview, and what annotators
do not see (ingest errors). Real PostgreSQL, Django test client through the login form."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.roles import Role
from accounts.services import user_create
from annotation.services import LabelSpec, project_create
from pacs.models import PacsSource
from studies.models import Series
from studies.services import series_upsert, study_upsert

pytestmark = pytest.mark.django_db
PASSWORD = "a-landing-test-password"
LABELS = [LabelSpec(1, "lesion", "#ff0000")]


@pytest.fixture
def people():
    return {role: user_create(username=role.value, role=role, password=PASSWORD)[0] for role in Role}


def log_in(role: Role) -> tuple[Client, str]:
    """Log in through the form as a person does (no ``next``); the client and where it ended up."""
    client = Client()
    response = client.post("/accounts/login/", {"username": role.value, "password": PASSWORD}, follow=True)
    assert response.status_code == 200
    return client, response.redirect_chain[-1][0]


def test_each_role_lands_on_its_work(people):
    project = project_create(name="Liver", labels=LABELS, user=None)
    assert log_in(Role.ADMIN)[1] == "/overview/"
    assert log_in(Role.ANNOTATOR)[1] == f"/projects/{project.id}/"
    assert log_in(Role.REVIEWER)[1] == f"/projects/{project.id}/?status=submitted"
    project_create(name="Brain", labels=LABELS, user=None)
    assert log_in(Role.ANNOTATOR)[1] == "/projects/"  # several projects: choose one
    assert log_in(Role.REVIEWER)[1] == "/projects/"


def test_the_overview_is_for_admins_and_counts_the_work(people):
    project_create(name="Liver", labels=LABELS, user=None)
    admin, _ = log_in(Role.ADMIN)
    html = admin.get("/overview/").content.decode()
    assert "Liver" in html and "PACS sources" in html and 'href="/overview/"' in html
    annotator, _ = log_in(Role.ANNOTATOR)
    assert annotator.get("/overview/").status_code == 403
    assert 'href="/overview/"' not in annotator.get("/projects/").content.decode()


def test_annotators_do_not_see_ingest_errors(people):
    source = PacsSource.objects.create(name="PACS", base_url="http://127.0.0.1:9/dicom-web")
    study = study_upsert(
        source=source,
        study_instance_uid="1.2.3",
        patient_id="P1",
        study_date=None,
        description="a study",
        modalities="MR",
        num_series=1,
    )
    series, _ = series_upsert(
        study=study,
        series_instance_uid="1.2.3.1",
        modality="MR",
        description="s",
        series_number=1,
        num_instances=3,
    )
    Series.objects.filter(pk=series.pk).update(
        status=Series.Status.ERROR, error_kind="geometry", error_message="uneven slice spacing"
    )
    admin, _ = log_in(Role.ADMIN)
    assert "uneven slice spacing" in admin.get("/worklist/").content.decode()
    assert 'href="/worklist/"' in admin.get("/overview/").content.decode()
    annotator, _ = log_in(Role.ANNOTATOR)
    assert "uneven slice spacing" not in annotator.get("/worklist/").content.decode()
    assert 'href="/worklist/"' not in annotator.get("/projects/").content.decode()
