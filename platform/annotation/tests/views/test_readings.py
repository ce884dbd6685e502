"""The pages of double reading: the admin's share of cases read twice (worklist form), a reader's view of
the other reading (no mask), and the reviewer's comparison page (agreement table, picture, decision)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from annotation.models import Adjudication, Case
from annotation.readings.services import project_double_reading_set
from annotation.services import case_submit, next_case_take, project_volumes_add
from annotation.tests.helpers import SHAPE, save
from annotation.tests.views.test_pages import client_for, page_data

pytestmark = pytest.mark.django_db


def drawing(rows: int) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[:rows, :2, :2] = 1
    mask[6:, 4:, 2:] = 2
    return mask


@pytest.fixture
def pair(project, make_volume, users):
    project_double_reading_set(project=project, percent=100, user=users["admin"])
    project_volumes_add(project=project, volumes=[make_volume()], user=None)
    cases = []
    for name, rows in (("annotator", 3), ("annotator2", 2)):
        case = next_case_take(project=project, user=users[name])
        case_submit(case=case, user=users[name], version=save(case, users[name], None, drawing(rows)))
        cases.append(case)
    return cases


def test_an_admin_sets_the_share_read_twice_on_the_worklist(users, project, make_volume):
    project_volumes_add(project=project, volumes=[make_volume(), make_volume()], user=None)
    admin = client_for(users["admin"])
    assert 'id="double-reading"' in admin.get(f"/projects/{project.id}/").content.decode()
    response = admin.post(f"/projects/{project.id}/double-reading/", {"percent": "100"}, follow=True)
    assert "2 second readings added" in response.content.decode()
    assert Case.objects.filter(project=project, reading=2).count() == 2
    html = response.content.decode()
    assert html.count("reading 1/2") == 2 and html.count("reading 2/2") == 2
    bad = admin.post(f"/projects/{project.id}/double-reading/", {"percent": "lots"}, follow=True)
    assert "whole percentage" in bad.content.decode() and Case.objects.filter(reading=2).count() == 2
    annotator = client_for(users["annotator"])
    assert 'id="double-reading"' not in annotator.get(f"/projects/{project.id}/").content.decode()
    assert annotator.post(f"/projects/{project.id}/double-reading/", {"percent": "0"}).status_code == 403


def test_a_reader_does_not_see_the_other_readers_mask(users, pair):
    first, second = pair
    reader = client_for(users["annotator"])
    html = reader.get(f"/cases/{second.id}/").content.decode()
    data = page_data(html)
    assert data["maskUrl"] is None and data["head"] is None and data["canAnnotate"] is False
    assert 'id="hidden-reading"' in html and "annotator2's reading" in html
    head = second.versions.get()
    refused = reader.get(f"/api/versions/{head.id}/mask/")
    assert refused.status_code == 403 and "another reader's mask" in refused.json()["message"]
    assert reader.get(f"/api/versions/{first.versions.get().id}/mask/").status_code == 200  # their own
    reviewer = client_for(users["reviewer"])
    assert reviewer.get(f"/api/versions/{head.id}/mask/").status_code == 200
    assert page_data(reviewer.get(f"/cases/{second.id}/").content.decode())["maskUrl"]


def test_the_reviewer_compares_the_readings_and_keeps_one(users, pair):
    first, second = pair
    reviewer = client_for(users["reviewer"])
    case_page = reviewer.get(f"/cases/{second.id}/").content.decode()
    assert 'id="review-pair"' in case_page and f'href="/cases/{second.id}/compare/"' in case_page
    worklist = reviewer.get(f"/projects/{first.project_id}/").content.decode()
    assert f'href="/cases/{first.id}/compare/"' in worklist
    html = reviewer.get(f"/cases/{second.id}/compare/").content.decode()
    dice = dict(re.findall(r'<tr data-class="(\d)">.*?<td class="dice">([\d.]+)</td>', html, re.S))
    assert dice == {"1": "0.800", "2": "1.000"}
    assert 'id="adjudicate"' in html and f'src="/cases/{first.id}/compare.png"' in html
    picture = reviewer.get(f"/cases/{second.id}/compare.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    heads = {"first_head": first.versions.get().id, "second_head": second.versions.get().id}
    stale = reviewer.post(f"/cases/{first.id}/compare/", {"decision": "first", **heads, "second_head": 0})
    assert stale.status_code == 409 and "Nothing was changed" in stale.content.decode()
    assert not Adjudication.objects.exists()
    decided = reviewer.post(f"/cases/{first.id}/compare/", {"decision": "first", **heads}, follow=True)
    html = decided.content.decode()
    assert "Decided: kept reading 1" in html and 'id="mean-dice">0.900<' in html
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("approved", "adjudicated")
    history = reviewer.get(f"/cases/{second.id}/").content.decode()  # both readings' history says so
    assert "Both readings compared: kept reading 1 (mean Dice between the readers 0.90)" in history
    assert client_for(users["annotator"]).get(f"/cases/{first.id}/compare/").status_code == 403


def test_the_dashboard_reports_agreement_per_reader(users, pair):
    from annotation.readings.services import readings_adjudicate

    first, second = pair
    admin = client_for(users["admin"])
    dashboard = f"/projects/{first.project_id}/learning/"
    assert "No double reading decided yet" in admin.get(dashboard).content.decode()
    readings_adjudicate(
        case=first,
        user=users["reviewer"],
        decision="second",
        first_head_id=first.versions.get().id,
        second_head_id=second.versions.get().id,
    )
    html = admin.get(dashboard).content.decode()
    rows = re.findall(r'<tr data-reader="([^"]+)">.*?<td class="num final">([\d.]+)</td>', html, re.S)
    assert rows == [("annotator", "0.900"), ("annotator2", "1.000")]  # the least agreeing first
