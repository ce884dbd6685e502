"""The worklist: score order, filters, keyset pages without duplicates or gaps; effort per case."""

from __future__ import annotations

import pytest

from annotation.models import Case
from annotation.selectors import effort_summary, worklist
from annotation.services import (
    CaseScore,
    case_review,
    case_scores_set,
    case_submit,
    case_take,
    presegmentation_create,
    project_volumes_add,
)
from annotation.tests.helpers import labelmap, save
from common.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


@pytest.fixture
def cases(project, make_volume):
    """23 cases, CT and MR, with many tied scores (ties are where a keyset goes wrong)."""
    volumes = [make_volume(modality="CT" if n % 3 == 0 else "MR") for n in range(23)]
    project_volumes_add(project=project, volumes=volumes, user=None)
    cases = list(Case.objects.filter(project=project).order_by("id"))
    scores = [CaseScore(c.id, float(n % 4) / 4, f"entropy bucket {n % 4}") for n, c in enumerate(cases)]
    case_scores_set(project=project, scores=scores, model="native3d", version="2")
    return cases


def all_pages(project, user, limit: int, **filters) -> list[list[int]]:
    pages, cursor = [], ""
    while True:
        page = worklist(project=project, user=user, cursor=cursor, limit=limit, **filters)
        pages.append([c.id for c in page.cases])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_pages_follow_the_score_without_duplicates_or_gaps(project, users, cases):
    expected = [c.id for c in sorted(cases, key=lambda c: (-Case.objects.get(pk=c.pk).score, -c.id))]
    for limit in (1, 5, 23, 50):
        pages = all_pages(project, users["annotator"], limit)
        assert [i for page in pages for i in page] == expected
        assert all(len(page) == limit for page in pages[:-1])
    first = worklist(project=project, user=users["annotator"], limit=3).cases
    assert first[0].score == 0.75 and first[0].score_reason == "entropy bucket 3"


def test_a_page_is_stable_while_cases_change_state_between_pages(project, users, cases):
    full = [i for page in all_pages(project, users["annotator"], 50) for i in page]
    page = worklist(project=project, user=users["annotator"], limit=10)
    # someone takes and works on cases already shown and not yet shown
    case_take(case=Case.objects.get(pk=full[2]), user=users["annotator2"])
    case_take(case=Case.objects.get(pk=full[15]), user=users["annotator2"])
    rest = worklist(project=project, user=users["annotator"], cursor=page.next_cursor, limit=50)
    assert [c.id for c in page.cases] + [c.id for c in rest.cases] == full


def test_filters(project, users, cases):
    case_take(case=cases[0], user=users["annotator2"])
    case_take(case=cases[1], user=users["annotator"])
    me = all_pages(project, users["annotator"], 5, assignee="me")
    assert [i for p in me for i in p] == [cases[1].id]
    mine_by_name = worklist(project=project, user=users["reviewer"], assignee="annotator2").cases
    assert [c.id for c in mine_by_name] == [cases[0].id]
    assert len(worklist(project=project, user=users["annotator"], assignee="none").cases) == 21
    in_progress = worklist(project=project, user=users["annotator"], status="in_progress").cases
    assert {c.id for c in in_progress} == {cases[0].id, cases[1].id}
    ct = [i for p in all_pages(project, users["annotator"], 4, modality="CT") for i in p]
    assert sorted(ct) == [c.id for n, c in enumerate(cases) if n % 3 == 0]
    with pytest.raises(ApplicationError, match="Unknown status"):
        worklist(project=project, user=users["annotator"], status="done")
    with pytest.raises(ApplicationError, match="cursor"):
        worklist(project=project, user=users["annotator"], cursor="not-a-cursor")


def test_effort_summary(project, users, cases):
    a, b = cases[0], cases[1]
    presegmentation_create(case=a, mask=labelmap(1), model_version="native3d@2")
    v0 = a.versions.get()
    case_take(case=a, user=users["annotator"])
    v1 = save(a, users["annotator"], v0, seconds=30, clicks=4, strokes=1, model_calls=2)
    v2 = save(a, users["annotator"], v1, seconds=10, strokes=3)
    case_submit(case=a, user=users["annotator"], version=v2)
    case_review(case=a, user=users["reviewer"], version=v2, decision="approve")
    presegmentation_create(case=b, mask=labelmap(2), model_version="native3d@2")
    case_take(case=b, user=users["annotator"])
    case_submit(case=b, user=users["annotator"], version=b.versions.get())
    case_review(case=b, user=users["reviewer"], version=b.versions.get(), decision="approve")

    summary = effort_summary(project=project)
    rows = {row["id"]: row for row in summary["cases"]}
    assert set(rows) == {a.id, b.id}
    assert (rows[a.id]["n_versions"], rows[a.id]["seconds"], rows[a.id]["clicks"]) == (3, 40.0, 4)
    assert (rows[a.id]["strokes"], rows[a.id]["model_calls"], rows[b.id]["seconds"]) == (4, 2, 0.0)
    totals = summary["totals"]
    assert totals["seconds"] == 40.0 and totals["versions_by_source"] == {"model": 2, "edited": 2}
    assert (totals["approved"], totals["approved_unedited"]) == (2, 1)
    assert effort_summary(project=project, after_id=a.id)["cases"][0]["id"] == b.id
