"""Pages and roles over HTTP (Django test client, real PostgreSQL)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.roles import Role
from accounts.services import demo_users_ensure, user_create
from pacs.models import PacsSource
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series

pytestmark = pytest.mark.django_db


@pytest.fixture
def users(db):
    return {role: user_create(username=f"{role.value}-1", role=role)[0] for role in Role}


@pytest.mark.parametrize("url", ["/worklist/", "/pacs/sources/"])
def test_anonymous_is_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(
    ("role", "method", "url", "status"),
    [
        (Role.ANNOTATOR, "get", "/worklist/", 200),
        (Role.REVIEWER, "get", "/worklist/", 200),
        (Role.ANNOTATOR, "get", "/pacs/sources/", 403),
        (Role.REVIEWER, "get", "/pacs/sources/", 403),
        (Role.ANNOTATOR, "post", "/pacs/sources/{id}/sync", 403),
        (Role.ADMIN, "get", "/pacs/sources/", 200),
        (Role.ADMIN, "post", "/pacs/sources/{id}/sync", 302),
        (Role.ADMIN, "get", "/admin/pacs/pacssource/", 200),
    ],
)
def test_roles_are_enforced_server_side(client, users, role, method, url, status):
    source = PacsSource.objects.create(name="PACS", base_url="http://127.0.0.1:9/dicom-web")
    client.force_login(users[role])
    response = getattr(client, method)(url.format(id=source.id))
    assert response.status_code == status


def test_annotator_cannot_use_the_admin_site(client, users):
    client.force_login(users[Role.ANNOTATOR])
    response = client.get("/admin/pacs/pacssource/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_sync_now_queues_one_task_after_commit(
    client, users, django_capture_on_commit_callbacks, monkeypatch
):
    from pacs import tasks

    queued = []
    monkeypatch.setattr(tasks.pacs_source_sync, "delay", lambda source_id: queued.append(source_id))
    source = PacsSource.objects.create(name="PACS", base_url="http://127.0.0.1:9/dicom-web")
    client.force_login(users[Role.ADMIN])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/pacs/sources/{source.id}/sync")
    assert queued == [source.id]


def test_login_with_password(client, users):
    from accounts.models import User

    user = User.objects.get(username="annotator-1")
    user.set_password("a-long-passphrase-1")
    user.save()
    response = client.post(reverse("login"), {"username": "annotator-1", "password": "a-long-passphrase-1"})
    assert response.status_code == 302 and response["Location"] == reverse("home")  # then per role
    assert client.post(reverse("login"), {"username": "annotator-1", "password": "wrong"}).status_code == 200


def test_demo_users_are_created_once():
    created = demo_users_ensure()
    assert sorted(u for u, _, _ in created) == ["admin", "annotator", "reviewer"]
    assert all(len(p) >= 12 for _, _, p in created)
    assert demo_users_ensure() == []


def test_worklist_shows_volumes_skipped_series_and_errors(client, users, pacs_source):
    result = pacs_source_sync(source_id=pacs_source.id)
    for series_id in result.series_to_ingest:
        series_ingest(series_id=series_id)
    Series.objects.filter(description="T2_reg").update(
        status=Series.Status.ERROR,
        error_kind="missing_slice",
        error_message="Slice missing between 13.0 and 26.0 mm.",
    )
    client.force_login(users[Role.ANNOTATOR])  # annotators see the series, not ingest errors (issue 17)
    page = client.get("/worklist/", {"q": "PGBM"}).content.decode()
    assert "T1post" in page and "Slice missing" not in page

    client.force_login(users[Role.ADMIN])
    page = client.get("/worklist/", {"q": "PGBM"}).content.decode()
    assert "T1post" in page and "280×320×22" in page
    assert "Slice missing between 13.0 and 26.0 mm." in page

    errors = client.get("/worklist/", {"status": "error"}).content.decode()
    assert "T2_reg" in errors and "MSD Hippocampus" not in errors
    skipped = client.get("/worklist/", {"status": "skipped"}).content.decode()
    assert "SEG series hold no image" in skipped


def test_healthz_tells_anyone_ok_or_not_and_admins_each_dependency(client, users, pacs_source):
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})

    PacsSource.objects.create(name="Down PACS", base_url="http://127.0.0.1:9/dicom-web")
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (503, {"status": "degraded"})
    client.force_login(users[Role.ANNOTATOR])
    assert client.get("/healthz").json() == {"status": "degraded"}

    client.force_login(users[Role.ADMIN])
    response = client.get("/healthz")
    assert response.status_code == 503
    details = response.json()
    assert (details["database"], details["broker"], details["pacs"]["Test PACS"]) == ("ok", "ok", "ok")
    assert details["pacs"]["Down PACS"].startswith("error")


def test_absent_or_null_dicom_json_values_fall_back_to_the_default():
    from pacs import dicomweb as dw

    assert dw.value({"00081030": {"vr": "LO", "Value": [None]}}, "00081030", "") == ""
    assert dw.value({"00081030": {"vr": "LO"}}, "00081030", "") == ""
    assert dw.value({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^J"}]}}, "00100010") == "Doe^J"


def test_sources_page_shows_what_landed_per_source(client, users, pacs_source):
    for series_id in pacs_source_sync(source_id=pacs_source.id).series_to_ingest:
        series_ingest(series_id=series_id)
    Series.objects.filter(description="T2_reg").update(status=Series.Status.ERROR)
    client.force_login(users[Role.ADMIN])
    page = client.get("/pacs/sources/").content.decode()
    n_studies = pacs_source.studies.count()
    n_ready = Series.objects.filter(status=Series.Status.READY).count()
    assert f"<td>{n_studies}</td>" in page and f"{n_ready} ready" in page and "1 failed" in page


def test_admin_never_shows_a_pacs_password_and_blank_keeps_it(client, users):
    source = PacsSource.objects.create(
        name="PACS", base_url="http://127.0.0.1:9/dicom-web", username="u", password="s3cret-pacs-pw"
    )
    client.force_login(users[Role.ADMIN])
    url = f"/admin/pacs/pacssource/{source.id}/change/"
    assert "s3cret-pacs-pw" not in client.get(url).content.decode()
    form = {
        "name": "PACS",
        "base_url": source.base_url,
        "username": "u",
        "password": "",
        "poll_interval_s": 60,
    }
    assert client.post(url, form).status_code == 302
    source.refresh_from_db()
    assert source.password == "s3cret-pacs-pw" and source.poll_interval_s == 60
