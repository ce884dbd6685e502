"""Submit and review: submit hands the head to review and frees the lock; approval freezes the case and
queues the DICOM SEG export after commit; rejection returns the case to its annotator with the comment."""

from __future__ import annotations

import pytest

from annotation import tasks
from annotation.errors import CaseStateError, StaleVersionError
from annotation.models import Case, CaseLock, Review
from annotation.services import case_review, case_submit, case_take, next_case_take, review_seg_export
from annotation.tests.helpers import save
from annotator.celery import app
from common.exceptions import ApplicationError
from pacs.dicomweb import PacsUnavailable

pytestmark = pytest.mark.django_db


@pytest.fixture
def submitted(case, users):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None)
    v1 = save(case, users["annotator"], v0)
    case_submit(case=case, user=users["annotator"], version=v1)
    return case, v1


def test_submit_needs_the_head_and_frees_the_lock(case, users):
    case_take(case=case, user=users["annotator"])
    with pytest.raises(CaseStateError, match="no mask to submit"):
        case_submit(case=case, user=users["annotator"], version=None)
    v0 = save(case, users["annotator"], None)
    v1 = save(case, users["annotator"], v0)
    with pytest.raises(StaleVersionError):
        case_submit(case=case, user=users["annotator"], version=v0)
    case_submit(case=case, user=users["annotator"], version=v1)
    assert Case.objects.get(pk=case.pk).status == Case.Status.SUBMITTED
    assert not CaseLock.objects.filter(case=case).exists()
    with pytest.raises(CaseStateError, match="waits for review"):
        case_take(case=case, user=users["annotator2"])


def test_approval_queues_the_seg_export_after_commit(
    submitted, users, monkeypatch, django_capture_on_commit_callbacks
):
    case, version = submitted
    queued = []
    monkeypatch.setattr(tasks.review_seg_export, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        review = case_review(case=case, user=users["reviewer"], version=version, decision="approve")
        assert queued == []  # nothing leaves before the commit
    assert len(callbacks) == 1 and queued == [review.id]
    assert review.export_status == Review.Export.PENDING
    assert Case.objects.get(pk=case.pk).status == Case.Status.APPROVED
    assert app.amqp.router.route({}, tasks.review_seg_export.name)["queue"].name == "cpu"


def test_rejection_returns_the_case_to_its_annotator_with_the_comment(submitted, users, project):
    case, version = submitted
    with pytest.raises(ApplicationError, match="Say why"):
        case_review(case=case, user=users["reviewer"], version=version, decision="reject", comment="  ")
    review = case_review(
        case=case,
        user=users["reviewer"],
        version=version,
        decision="reject",
        comment="Posterior tail missing",
    )
    case.refresh_from_db()
    assert (case.status, case.assignee) == (Case.Status.REJECTED, users["annotator"])
    assert review.comment == "Posterior tail missing" and review.export_status == ""
    assert next_case_take(project=project, user=users["annotator2"]) is None
    assert next_case_take(project=project, user=users["annotator"]) == case
    case.refresh_from_db()
    assert case.status == Case.Status.IN_PROGRESS
    # the annotator goes on from the rejected version
    save(case, users["annotator"], version)


def test_only_a_submitted_head_can_be_reviewed(case, users):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None)
    with pytest.raises(CaseStateError, match="Only a submitted case"):
        case_review(case=case, user=users["reviewer"], version=v0, decision="approve")
    assert not Review.objects.exists()


def test_an_unreachable_pacs_is_recorded_and_retried(submitted, users, monkeypatch):
    case, version = submitted
    monkeypatch.setattr(tasks.review_seg_export, "delay", lambda review_id: None)
    review = case_review(case=case, user=users["reviewer"], version=version, decision="approve")
    with pytest.raises(PacsUnavailable):  # a TransientError: the task retries it
        review_seg_export(review_id=review.id)
    review.refresh_from_db()
    assert review.export_status == Review.Export.PENDING and "will retry" in review.export_error


def test_the_rejection_comment_follows_the_case_until_it_is_submitted_again(submitted, users, project):
    from annotation import selectors

    case, version = submitted
    case_review(case=case, user=users["reviewer"], version=version, decision="reject", comment="Tail missing")
    row = selectors.worklist(project=project, user=users["annotator"]).cases[0]
    rejection = selectors.case_rejection(row)
    assert (rejection.comment, rejection.reviewer) == ("Tail missing", "reviewer")
    assert rejection.version_number == 2  # as people count
    # taken again to fix it: still open, in the worklist and on the case
    next_case_take(project=project, user=users["annotator"])
    detail = selectors.case_detail(case_id=case.id)
    assert selectors.case_rejection(detail).comment == "Tail missing"
    history = selectors.case_history(detail)
    assert [(e.kind, e.text) for e in history] == [
        ("reject", "Rejected version 2"),
        ("version", "Version 2 saved (human)"),
        ("version", "Version 1 saved (human)"),
    ]
    assert history[0].comment == "Tail missing" and history[0].who == "reviewer"
    # submitted again: resolved (the history keeps it)
    v3 = save(case, users["annotator"], version)
    case_submit(case=case, user=users["annotator"], version=v3)
    row = selectors.worklist(project=project, user=users["annotator"]).cases[0]
    assert selectors.case_rejection(row) is None
    assert selectors.case_rejection(selectors.case_detail(case_id=case.id)) is None
    history = selectors.case_history(selectors.case_detail(case_id=case.id))
    assert "Tail missing" in [e.comment for e in history]


def test_a_reviewer_may_not_approve_their_own_work(case, users):
    from annotation.errors import SelfReviewError
    from annotation.models import AuditEvent

    admin = users["admin"]  # an admin annotates and reviews
    case_take(case=case, user=admin)
    version = save(case, admin, None)
    case_submit(case=case, user=admin, version=version)
    with pytest.raises(SelfReviewError, match="You annotated versions 1: another reviewer") as refused:
        case_review(case=case, user=admin, version=version, decision="approve")
    assert refused.value.extra == {"can_override": True} and refused.value.http_status == 403
    case.refresh_from_db()
    assert case.status == Case.Status.SUBMITTED and not Review.objects.exists()
    # an admin overrides with a reason: stored on the review and audited
    review = case_review(
        case=case, user=admin, version=version, decision="approve", override_reason="  night shift, alone  "
    )
    assert review.override_reason == "night shift, alone"
    event = AuditEvent.objects.get(action="case.approve_own_work")
    assert (event.actor, event.details["reason"]) == (admin, "night shift, alone")


def test_a_reviewer_without_admin_rights_cannot_override(case, users):
    from accounts.models import User
    from annotation.errors import SelfReviewError

    both = users["reviewer"]
    both.groups.add(*users["annotator"].groups.all())  # annotator and reviewer
    both = User.objects.get(pk=both.pk)  # fresh permission cache
    case_take(case=case, user=both)
    version = save(case, both, None)
    case_submit(case=case, user=both, version=version)
    with pytest.raises(SelfReviewError, match="another reviewer approves it.$") as refused:
        case_review(case=case, user=both, version=version, decision="approve")
    assert refused.value.extra == {"can_override": False}
    with pytest.raises(SelfReviewError, match="only an admin"):
        case_review(case=case, user=both, version=version, decision="approve", override_reason="urgent")
    assert not Review.objects.exists()
    case_review(case=case, user=users["admin"], version=version, decision="approve")  # someone else may
