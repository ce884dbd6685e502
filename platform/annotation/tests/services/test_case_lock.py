"""Locks: a lease per case, refused while someone else's runs, free once expired, renewed by heartbeat,
released by its holder or an admin; next case hands out the best free case, one per caller."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation.errors import CaseLockedError
from annotation.models import AuditEvent, Case, CaseLock
from annotation.services import (
    CaseScore,
    case_heartbeat,
    case_release,
    case_scores_set,
    case_take,
    next_case_take,
    project_volumes_add,
)

pytestmark = pytest.mark.django_db


def expire(case: Case) -> None:
    """The clock moves on past the lease."""
    CaseLock.objects.filter(case=case).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_take_locks_the_case_for_one_lease(case, users, settings):
    settings.ANNOTATION_LOCK_LEASE_SECONDS = 120
    before = timezone.now()
    lock = case_take(case=case, user=users["annotator"])
    assert lock.user == users["annotator"]
    assert before + timedelta(seconds=119) < lock.expires_at <= timezone.now() + timedelta(seconds=120)
    case.refresh_from_db()
    assert case.status == Case.Status.IN_PROGRESS and case.assignee == users["annotator"]
    assert AuditEvent.objects.filter(
        action="case.take", object_id=str(case.id), actor=users["annotator"]
    ).exists()


def test_someone_else_is_refused_with_who_and_until_when(case, users):
    lock = case_take(case=case, user=users["annotator"])
    with pytest.raises(CaseLockedError, match="annotator holds this case until") as refused:
        case_take(case=case, user=users["annotator2"])
    assert refused.value.extra == {"holder": "annotator", "expires_at": lock.expires_at.isoformat()}
    assert CaseLock.objects.get(case=case).user == users["annotator"]


def test_an_expired_lease_is_free_to_take(case, users):
    case_take(case=case, user=users["annotator"])
    expire(case)
    lock = case_take(case=case, user=users["annotator2"])
    assert lock.user == users["annotator2"] and CaseLock.objects.filter(case=case).count() == 1
    case.refresh_from_db()
    assert case.assignee == users["annotator2"]
    # the first holder's heartbeat now fails, naming who holds it
    with pytest.raises(CaseLockedError, match="annotator2 holds this case"):
        case_heartbeat(case=case, user=users["annotator"])


def test_heartbeat_extends_the_lease(case, users):
    case_take(case=case, user=users["annotator"])
    CaseLock.objects.filter(case=case).update(expires_at=timezone.now() + timedelta(seconds=5))
    lock = case_heartbeat(case=case, user=users["annotator"])
    assert lock.expires_at > timezone.now() + timedelta(seconds=60)


def test_heartbeat_without_a_lock_is_refused(case, users):
    with pytest.raises(CaseLockedError, match="take it again"):
        case_heartbeat(case=case, user=users["annotator"])


def test_holder_and_admin_release_others_may_not(case, users):
    case_take(case=case, user=users["annotator"])
    with pytest.raises(CaseLockedError, match="only they or an admin"):
        case_release(case=case, user=users["annotator2"])
    assert CaseLock.objects.filter(case=case).exists()

    case_release(case=case, user=users["admin"])
    assert not CaseLock.objects.filter(case=case).exists()
    event = AuditEvent.objects.get(action="case.release")
    assert event.actor == users["admin"] and event.details == {"holder": "annotator"}

    case_take(case=case, user=users["annotator"])
    case_release(case=case, user=users["annotator"])
    assert not CaseLock.objects.filter(case=case).exists()
    case_release(case=case, user=users["annotator"])  # nothing held: nothing to do


@pytest.fixture
def scored_cases(project, make_volume):
    project_volumes_add(project=project, volumes=[make_volume() for _ in range(4)], user=None)
    cases = list(Case.objects.filter(project=project).order_by("id"))
    case_scores_set(
        project=project,
        scores=[CaseScore(c.id, s, f"entropy {s}") for c, s in zip(cases, [0.2, 0.9, 0.5, 0.7], strict=True)],
        model="native3d",
        version="1",
    )
    return cases  # by score: cases[1] (0.9), cases[3] (0.7), cases[2] (0.5), cases[0] (0.2)


def test_next_case_is_the_highest_scored_free_one(project, users, scored_cases):
    case_take(case=scored_cases[1], user=users["annotator2"])
    taken = next_case_take(project=project, user=users["annotator"])
    assert taken == scored_cases[3]
    assert CaseLock.objects.get(case=taken).user == users["annotator"]
    # others' work is skipped even once their lease ran out; the caller's own comes back first
    expire(scored_cases[1])
    assert next_case_take(project=project, user=users["annotator"]) == scored_cases[3]
    Case.objects.filter(pk=scored_cases[3].pk).update(status=Case.Status.SUBMITTED)
    assert next_case_take(project=project, user=users["annotator"]) == scored_cases[2]


def test_next_case_gives_the_annotator_their_own_work_back(project, users, scored_cases):
    case_take(case=scored_cases[0], user=users["annotator"])
    Case.objects.filter(pk=scored_cases[0].pk).update(status=Case.Status.REJECTED)
    case_release(case=scored_cases[0], user=users["annotator"])
    Case.objects.exclude(pk=scored_cases[0].pk).update(status=Case.Status.APPROVED)
    assert next_case_take(project=project, user=users["annotator2"]) is None
    assert next_case_take(project=project, user=users["annotator"]) == scored_cases[0]


@pytest.mark.django_db(transaction=True)
def test_concurrent_next_case_calls_get_different_cases(project, users, scored_cases):
    barrier = threading.Barrier(2)
    got, errors = {}, []

    def take(name: str) -> None:
        try:
            barrier.wait()
            got[name] = next_case_take(project=project, user=users[name])
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(name,)) for name in ("annotator", "annotator2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert got["annotator"] != got["annotator2"]
    assert {got["annotator"], got["annotator2"]} <= set(scored_cases)
    assert CaseLock.objects.count() == 2
