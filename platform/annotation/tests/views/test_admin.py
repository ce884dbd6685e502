from __future__ import annotations

import pytest
from django.test import Client

from annotation.services import case_take
from annotation.tests.helpers import save

pytestmark = pytest.mark.django_db


def test_admins_can_look_up_annotation_work_but_not_write_it(users, case):
    case_take(case=case, user=users["annotator"])
    save(case, users["annotator"], None, seconds=12.5, clicks=3)
    client = Client()
    client.force_login(users["admin"])
    versions = client.get("/admin/annotation/maskversion/")
    assert versions.status_code == 200 and b"12.5" in versions.content
    for page in ("project", "case", "review", "adjudication", "auditevent"):
        assert client.get(f"/admin/annotation/{page}/").status_code == 200, page
    assert client.get("/admin/annotation/project/add/").status_code == 403
    assert client.post(f"/admin/annotation/case/{case.id}/delete/", {"post": "yes"}).status_code == 403
