"""Pages of annotation work, server-rendered; the viewer's script (frontend/src/case_page.ts) does the rest
through the JSON API (annotation.api). Thin: each reads through selectors and renders."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse

from annotation import selectors
from annotation.models import Case
from annotation.readings.selectors import masks_hidden, reading_pair
from common.exceptions import ApplicationError
from common.views import permission_required

WORKLIST_PAGE_SIZE = 50


def _url_template(name: str) -> str:
    """A page address with ``{id}`` where the id goes, for the scripts (e.g. "/cases/{id}/")."""
    return reverse(name, args=[0]).replace("/0/", "/{id}/")


@permission_required("annotation.view_project")
def project_list(request):
    return render(request, "annotation/project_list.html", {"projects": selectors.project_list()})


@permission_required("annotation.view_case")
def worklist(request, project_id: int):
    project = selectors.project_get(project_id=project_id)
    if project is None:
        raise Http404
    status = request.GET.get("status", "")
    status = status if status in Case.Status.values else ""
    modality = request.GET.get("modality", "").strip()
    assignee = request.GET.get("assignee", "").strip()
    cursor = request.GET.get("cursor", "")
    error = ""
    filters = {"status": status, "modality": modality, "assignee": assignee}
    try:
        page = selectors.worklist(
            project=project, user=request.user, cursor=cursor, limit=WORKLIST_PAGE_SIZE, **filters
        )
    except ApplicationError as exc:  # a stale or edited cursor: show the first page and say so
        error = exc.message
        page = selectors.worklist(project=project, user=request.user, limit=WORKLIST_PAGE_SIZE, **filters)
    rows = [(case, selectors.active_lock_holder(case), selectors.case_rejection(case)) for case in page.cases]
    return render(
        request,
        "annotation/worklist.html",
        {
            "project": project,
            "rows": rows,
            "next_cursor": page.next_cursor,
            "first_page": not cursor,
            "filters": filters,
            "statuses": Case.Status.choices,
            "error": error,
            "worklist_data": {
                "apiBase": reverse("api-projects").removesuffix("projects/"),
                "csrfToken": get_token(request),
                "project": project.id,
                "caseUrl": _url_template("annotation-case"),
            },
        },
    )


@permission_required("annotation.view_case")
def case_page(request, case_id: int):
    case = selectors.case_detail(case_id=case_id)
    if case is None:
        raise Http404
    hidden = masks_hidden(case=case, user=request.user)  # another reader's reading of a volume read twice
    versions = [] if hidden else list(case.versions.all())
    head = versions[-1] if versions else None
    labels = [{"value": lb.value, "name": lb.name, "colour": lb.colour} for lb in case.project.labels.all()]
    lock = selectors.active_lock_holder(case)
    pair = reading_pair(case=case)
    page_data = {
        "apiBase": reverse("api-projects").removesuffix("projects/"),
        "csrfToken": get_token(request),
        "user": request.user.get_username(),
        "case": {
            "id": case.id,
            "status": case.status,
            "project": case.project_id,
            "modality": case.volume.series.modality,
            "shape": list(case.volume.shape),
        },
        "imageUrl": reverse("api-case-image", args=[case.id]),
        "maskUrl": reverse("api-version-mask", args=[head.id]) if head else None,
        "head": {"id": head.id, "number": head.display_number} if head else None,
        "labels": labels,
        "lock": {"holder": lock[0], "expires_at": lock[1]} if lock else None,
        "canAnnotate": request.user.has_perm("annotation.annotate_case") and not hidden,
        "canReview": request.user.has_perm("annotation.review_case"),
        "interactiveModel": case.project.interactive_model,
        "caseUrl": _url_template("annotation-case"),
        "worklistUrl": reverse("annotation-worklist", args=[case.project_id]),
        # renew well inside the lease; save what is dirty twice a minute
        "heartbeatSeconds": max(5, min(60, settings.ANNOTATION_LOCK_LEASE_SECONDS // 4)),
        "autosaveSeconds": 30,
    }
    return render(
        request,
        "annotation/case.html",
        {
            "case": case,
            "labels": labels,
            "versions": versions,
            "worklist_url": page_data["worklistUrl"],
            "page_data": page_data,
            "rejection": selectors.case_rejection(case),
            "history": [] if hidden else selectors.case_history(case),
            "hidden_reading": hidden,
            "pair": pair,
        },
    )
