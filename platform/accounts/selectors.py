"""Where each role lands after logging in (reads only)."""

from __future__ import annotations

from django.urls import reverse

from accounts.models import User
from annotation.models import Case, Project


def landing_url(*, user: User) -> str:
    """The page a signed-in user starts on: admins on the overview; annotators and reviewers on their
    work (the worklist when there is one project, a reviewer's filtered to what waits for review; the
    project list when there are several). Decided by permissions, never by group names."""
    if user.has_perm("accounts.view_overview"):
        return reverse("overview")
    if not user.has_perm("annotation.view_project"):
        return reverse("annotation-projects")  # says 403: no role yet
    ids = list(Project.objects.values_list("id", flat=True)[:2])
    if len(ids) != 1:
        return reverse("annotation-projects")
    url = reverse("annotation-worklist", args=[ids[0]])
    if user.has_perm("annotation.review_case") and not user.has_perm("annotation.annotate_case"):
        url += f"?status={Case.Status.SUBMITTED}"
    return url
