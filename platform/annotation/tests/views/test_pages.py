"""The server-rendered pages (annotation.views): roles, what the case page hands the viewer's script in
its #case-data block, and the worklist in score order. Real PostgreSQL, Django test client."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from accounts.models import User
from annotation.services import CaseScore, case_scores_set, case_take, project_volumes_add
from annotation.tests.helpers import save

pytestmark = pytest.mark.django_db


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def page_data(html: str, block: str = "case-data") -> dict:
    found = re.search(rf'<script id="{block}" type="application/json">(.*?)</script>', html, re.S)
    assert found, f"no #{block} block in the page"
    return json.loads(found.group(1))


def test_case_page_hands_the_viewer_its_case(users, case):
    response = client_for(users["annotator"]).get(f"/cases/{case.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    data = page_data(html)
    assert data["imageUrl"] == f"/api/cases/{case.id}/image/"
    assert data["maskUrl"] is None and data["head"] is None
    assert data["apiBase"] == "/api/"
    assert data["case"] == {
        "id": case.id,
        "status": "new",
        "project": case.project_id,
        "modality": "MR",
        "shape": list(case.volume.shape),
    }
    assert data["labels"] == [
        {"value": 1, "name": "anterior", "colour": "#ff0000"},
        {"value": 2, "name": "posterior", "colour": "#00ff00"},
    ]
    assert data["canAnnotate"] is True and data["canReview"] is False
    assert data["caseUrl"] == "/cases/{id}/"
    assert data["csrfToken"]
    assert 'src="/static/annotation/case.js"' in html
    # the class list is rendered with each class's colour and its shortcut number
    assert 'style="background: #00ff00"' in html and '<span class="key">2</span>' in html


def test_case_page_points_at_the_head_version_and_the_lock(users, case):
    case_take(case=case, user=users["annotator"])
    first = save(case, users["annotator"], None)
    head = save(case, users["annotator"], first)
    data = page_data(client_for(users["reviewer"]).get(f"/cases/{case.id}/").content.decode())
    assert data["head"] == {"id": head.id, "number": 2}  # the second version, as people count
    assert data["maskUrl"] == f"/api/versions/{head.id}/mask/"
    assert data["lock"]["holder"] == "annotator"
    assert data["canAnnotate"] is False and data["canReview"] is True


def test_pages_need_a_login_and_a_permission(users, case):
    anonymous = client_for(None).get(f"/cases/{case.id}/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    nobody = User.objects.create_user(username="nobody", password="x")
    for url in (f"/cases/{case.id}/", f"/projects/{case.project_id}/", "/projects/"):
        assert client_for(nobody).get(url).status_code == 403, url
    assert client_for(users["annotator"]).get("/cases/999999/").status_code == 404


def test_worklist_page_lists_cases_by_score_with_lock_holders(users, project, make_volume):
    project_volumes_add(project=project, volumes=[make_volume() for _ in range(3)], user=None)
    cases = list(project.cases.order_by("id"))
    case_scores_set(
        project=project,
        scores=[CaseScore(c.id, s, f"reason {s}") for c, s in zip(cases, (0.2, 0.9, 0.5), strict=True)],
        model="entropy",
        version="v1",
    )
    case_take(case=cases[2], user=users["annotator2"])
    response = client_for(users["annotator"]).get(f"/projects/{project.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    order = [int(x) for x in re.findall(r'<tr data-case="(\d+)">', html)]
    assert order == [cases[1].id, cases[2].id, cases[0].id]
    assert "reason 0.9" in html and "annotator2" in html
    data = page_data(html, "worklist-data")
    assert data["project"] == project.id and data["caseUrl"] == "/cases/{id}/"
    filtered = client_for(users["annotator"]).get(f"/projects/{project.id}/?status=in_progress")
    assert [int(x) for x in re.findall(r'<tr data-case="(\d+)">', filtered.content.decode())] == [cases[2].id]
    bad_cursor = client_for(users["annotator"]).get(f"/projects/{project.id}/?cursor=garbage")
    assert bad_cursor.status_code == 200 and "Showing the first page" in bad_cursor.content.decode()


def test_project_list_links_each_worklist(users, project, case):
    html = client_for(users["reviewer"]).get("/projects/").content.decode()
    assert f'href="/projects/{project.id}/"' in html and "anterior" in html
    assert "0 to review" in html and " new</a>" not in html  # a reviewer's work, not an annotator's
    html = client_for(users["annotator"]).get("/projects/").content.decode()
    assert f'href="/projects/{project.id}/?status=new">1 new</a>' in html and "to review" not in html


def test_the_annotator_sees_the_rejection_comment_on_the_worklist_and_the_case(users, case):
    from annotation.services import case_review, case_submit

    case_take(case=case, user=users["annotator"])
    version = save(case, users["annotator"], None)
    case_submit(case=case, user=users["annotator"], version=version)
    case_review(
        case=case, user=users["reviewer"], version=version, decision="reject", comment="Redo the <tail>"
    )
    annotator = client_for(users["annotator"])
    worklist = annotator.get(f"/projects/{case.project_id}/").content.decode()
    row = re.search(rf'<tr data-case="{case.id}">(.*?)</tr>', worklist, re.S).group(1)
    assert "Redo the &lt;tail&gt;" in row and "reviewer" in row
    html = annotator.get(f"/cases/{case.id}/").content.decode()
    banner = re.search(r'<div id="rejection-banner".*?</div>', html, re.S).group(0)
    assert "Returned by reviewer" in banner and "Redo the &lt;tail&gt;" in banner and "version 1" in banner
    history = re.search(r'<section class="panel" id="history">.*?</section>', html, re.S).group(0)
    assert "Rejected version 1" in history and "Redo the &lt;tail&gt;" in history
    api = annotator.get(f"/api/cases/{case.id}/").json()
    assert api["rejection"]["comment"] == "Redo the <tail>" and api["rejection"]["version_number"] == 1
