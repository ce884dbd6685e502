"""Double reading: a share of the volumes read twice by independent readers who never see each other's
masks; the reviewer compares the two (per-class Dice, HD95 in mm), keeps one or merges them; the
team's agreement per reader. Real PostgreSQL, real mask files."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.errors import CaseStateError, SelfReviewError, StaleVersionError
from annotation.masks import mask_read
from annotation.models import Adjudication, Case, MaskVersion, Review
from annotation.readings.selectors import masks_hidden, reader_agreement, reading_pair, readings_compare
from annotation.readings.services import project_double_reading_set, readings_adjudicate
from annotation.services import (
    case_review,
    case_submit,
    case_take,
    next_case_take,
    presegmentation_create,
    project_volumes_add,
)
from annotation.tests.helpers import SHAPE, save
from common.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


def drawing(first_rows: int, second_rows: int) -> np.ndarray:
    """Class 1 in the first `first_rows` rows of a corner, class 2 in `second_rows` rows of another."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[:first_rows, :2, :2] = 1
    mask[8 - second_rows :, 4:, 2:] = 2
    return mask


@pytest.fixture
def pair(project, make_volume, users):
    """One volume read twice: annotator's reading 1 (3 rows of class 1, 2 of class 2) and annotator2's
    reading 2 (2 rows, 2 rows), both submitted."""
    project_double_reading_set(project=project, percent=100, user=users["admin"])
    project_volumes_add(project=project, volumes=[make_volume()], user=None)
    first = next_case_take(project=project, user=users["annotator"])
    second = next_case_take(project=project, user=users["annotator2"])
    assert (first.reading, second.reading) == (1, 2) and first.volume_id == second.volume_id
    for case, user, mask in ((first, "annotator", drawing(3, 2)), (second, "annotator2", drawing(2, 2))):
        version = save(case, users[user], None, mask)
        case_submit(case=case, user=users[user], version=version)
    return first, second


def test_a_share_of_the_volumes_is_read_twice(project, make_volume, users):
    volumes = [make_volume() for _ in range(20)]
    assert project_double_reading_set(project=project, percent=40, user=users["admin"]) == (0, 0)
    project_volumes_add(project=project, volumes=volumes, user=None)
    twice = set(Case.objects.filter(project=project, reading=2).values_list("volume_id", flat=True))
    assert 2 <= len(twice) <= 14 and Case.objects.filter(project=project, reading=1).count() == 20
    # a larger share only adds volumes; the model's mask is the second reader's start too
    first = Case.objects.get(project=project, reading=1, volume=next(v for v in volumes if v.id not in twice))
    presegmentation_create(case=first, mask=drawing(1, 1), model_version="m1")
    added, removed = project_double_reading_set(project=project, percent=100, user=users["admin"])
    assert (added, removed) == (20 - len(twice), 0)
    copy = Case.objects.get(project=project, reading=2, volume=first.volume)
    assert copy.versions.get().sha256 == first.versions.get().sha256 and copy.split == first.split
    # back to none: untouched second readings go, started ones stay
    started = Case.objects.filter(project=project, reading=2).first()
    case_take(case=started, user=users["annotator"])
    assert project_double_reading_set(project=project, percent=0, user=users["admin"]) == (0, 19)
    assert list(Case.objects.filter(project=project, reading=2)) == [started]
    with pytest.raises(ApplicationError, match="0..100"):
        project_double_reading_set(project=project, percent=101, user=users["admin"])
    project.refresh_from_db()
    assert project.double_reading_percent == 0


def test_readers_are_independent_and_never_see_each_others_masks(project, make_volume, users):
    project_double_reading_set(project=project, percent=100, user=users["admin"])
    project_volumes_add(project=project, volumes=[make_volume()], user=None)
    first = next_case_take(project=project, user=users["annotator"])
    # the same annotator does not get the volume's other reading (only their own again), nor may take it
    assert next_case_take(project=project, user=users["annotator"]) == first
    second = Case.objects.get(project=project, reading=2)
    with pytest.raises(CaseStateError, match="You read this volume already"):
        case_take(case=second, user=users["annotator"])
    assert Case.objects.get(pk=second.pk).status == Case.Status.NEW
    assert not masks_hidden(case=second, user=users["annotator"])  # nobody's work yet: the model's mask
    assert next_case_take(project=project, user=users["annotator2"]) == second
    save(second, users["annotator2"], None, drawing(2, 2))
    second.refresh_from_db()
    first.refresh_from_db()
    assert masks_hidden(case=second, user=users["annotator"]) and masks_hidden(
        case=first, user=users["annotator2"]
    )
    assert not masks_hidden(case=second, user=users["annotator2"])
    assert not masks_hidden(case=second, user=users["reviewer"])


def test_an_admin_who_reads_does_not_see_the_other_reading_either(project, make_volume, users):
    project_double_reading_set(project=project, percent=100, user=users["admin"])
    project_volumes_add(project=project, volumes=[make_volume()], user=None)
    first = next_case_take(project=project, user=users["admin"])
    second = next_case_take(project=project, user=users["annotator"])
    save(second, users["annotator"], None, drawing(2, 2))
    second.refresh_from_db()
    assert masks_hidden(case=second, user=users["admin"])  # a reader, though a reviewer too
    assert not masks_hidden(case=second, user=users["reviewer"]) and first.reading == 1
    # nor through the comparison (page, picture, API) while the pair is open
    from django.test import Client

    admin = Client()
    admin.force_login(users["admin"])
    assert admin.get(f"/cases/{second.id}/compare/").status_code == 403
    assert admin.get(f"/cases/{second.id}/compare.png").status_code == 403
    refused = admin.get(f"/api/cases/{second.id}/readings/")
    assert refused.status_code == 403 and "You read this volume" in refused.json()["message"]


def test_the_reviewer_compares_and_keeps_one_reading(
    pair, users, project, django_capture_on_commit_callbacks
):
    first, second = pair
    with pytest.raises(CaseStateError, match="read twice: compare"):
        case_review(case=first, user=users["reviewer"], version=first.versions.get(), decision="approve")
    first_, second_ = reading_pair(case=second)
    comparison = readings_compare(first=first_, second=second_)
    anterior, posterior = comparison.rows
    # class 1: 12 and 8 voxels, 8 shared -> Dice 0.8; one row of 0.9 mm apart
    assert anterior.agreement.dice == pytest.approx(0.8) and anterior.agreement.hd95_mm == pytest.approx(0.9)
    assert posterior.agreement.dice == 1.0 and posterior.agreement.hd95_mm == 0.0
    assert comparison.mean_dice == pytest.approx(0.9)

    heads = (comparison.first_head.id, comparison.second_head.id)
    with django_capture_on_commit_callbacks() as callbacks:
        adjudication = readings_adjudicate(
            case=second,
            user=users["reviewer"],
            decision="second",
            first_head_id=heads[0],
            second_head_id=heads[1],
        )
    assert len(callbacks) == 1  # the SEG export of the kept mask, after commit
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Case.Status.ADJUDICATED, Case.Status.APPROVED)
    review = Review.objects.get()
    assert (review.case, review.version_id, review.decision) == (second, heads[1], "approve")
    assert adjudication.mean_dice == pytest.approx(0.9)
    assert adjudication.final_dice == {"first": pytest.approx(0.9), "second": 1.0}
    assert adjudication.agreement["1"]["hd95_mm"] == pytest.approx(0.9)
    with pytest.raises(CaseStateError, match="closed"):
        case_take(case=first, user=users["annotator"])
    agreement = {r.reader: r for r in reader_agreement(project=project)}
    assert agreement["annotator"].mean_final_dice == pytest.approx(0.9) and agreement["annotator"].kept == 0
    assert agreement["annotator2"].mean_final_dice == 1.0 and agreement["annotator2"].kept == 1
    assert agreement["annotator"].mean_dice == pytest.approx(0.9) and agreement["annotator"].readings == 1
    assert [r.reader for r in reader_agreement(project=project)] == ["annotator", "annotator2"]


def test_a_merge_takes_each_class_from_where_the_reviewer_says(pair, users):
    first, second = pair
    heads = {"first_head_id": first.versions.get().id, "second_head_id": second.versions.get().id}
    with pytest.raises(ApplicationError, match=r"missing \[2\]"):
        readings_adjudicate(
            case=first, user=users["reviewer"], decision="merge", sources={1: "first"}, **heads
        )
    assert not Adjudication.objects.exists() and MaskVersion.objects.count() == 2
    adjudication = readings_adjudicate(
        case=first,
        user=users["reviewer"],
        decision="merge",
        sources={1: "both", 2: "second"},
        comment="anterior: where both agree",
        **heads,
    )
    merged = mask_read(adjudication.result.path)
    np.testing.assert_array_equal(merged, drawing(2, 2))
    result = adjudication.result
    assert (result.case, result.author, result.parent_id) == (
        first,
        users["reviewer"],
        heads["first_head_id"],
    )
    first.refresh_from_db()
    assert first.status == Case.Status.APPROVED and Review.objects.get().version == result


def test_adjudication_needs_both_readings_the_heads_compared_and_another_reviewer(pair, users):
    first, second = pair
    heads = {"first_head_id": first.versions.get().id, "second_head_id": second.versions.get().id}
    with pytest.raises(SelfReviewError, match="You annotated"):
        readings_adjudicate(case=first, user=users["annotator"], decision="first", **heads)
    with pytest.raises(StaleVersionError):
        readings_adjudicate(
            case=first,
            user=users["reviewer"],
            decision="first",
            first_head_id=heads["second_head_id"],
            second_head_id=heads["second_head_id"],
        )
    case_review(
        case=second, user=users["reviewer"], version=second.versions.get(), decision="reject", comment="redo"
    )
    with pytest.raises(CaseStateError, match="reading 2 is rejected \\(annotator2\\)"):
        readings_adjudicate(case=first, user=users["reviewer"], decision="first", **heads)
    assert not Adjudication.objects.exists()
