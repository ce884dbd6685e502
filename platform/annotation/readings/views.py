"""The reviewer's comparison of a volume's two readings (/cases/<id>/compare/) and the admin's share of
volumes read twice. Thin: selectors read, services decide; a refused decision is shown and changes
nothing."""

from __future__ import annotations

import numpy as np
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation import selectors
from annotation.masks import mask_read
from annotation.models import Adjudication, Case
from annotation.plots import readings_png
from annotation.readings import selectors as reading_selectors
from annotation.readings.services import MERGE_SOURCES, project_double_reading_set, readings_adjudicate
from common.exceptions import ApplicationError
from common.media import media_path
from common.views import permission_required
from ml_worker.io.volume import load_volume


def _pair(case_id: int, user) -> tuple[Case, Case]:
    case = selectors.case_get(case_id=case_id)
    pair = None if case is None else reading_selectors.reading_pair(case=case)
    if pair is None:
        raise Http404("This case is not one of two readings.")
    if any(reading_selectors.masks_hidden(case=c, user=user) for c in pair):
        raise PermissionDenied("You read this volume: another reviewer compares its two readings.")
    return pair


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@permission_required("annotation.review_case")
def compare(request, case_id: int):
    first, second = _pair(case_id, request.user)
    error, status = "", 200
    if request.method == "POST":
        labels = first.project.labels.values_list("value", flat=True)
        try:
            readings_adjudicate(
                case=first,
                user=request.user,
                decision=request.POST.get("decision", ""),
                first_head_id=_int(request.POST.get("first_head")),
                second_head_id=_int(request.POST.get("second_head")),
                sources={v: request.POST.get(f"source_{v}", "") for v in labels},
                comment=request.POST.get("comment", ""),
                override_reason=request.POST.get("override_reason", ""),
            )
        except ApplicationError as exc:
            error, status = exc.message, getattr(exc, "http_status", 400)
            first, second = _pair(case_id, request.user)
        else:
            messages.success(request, "Decided: the kept mask is approved and goes to the PACS.")
            return redirect("annotation-compare", case_id=case_id)
    adjudication = reading_selectors.adjudication_of(case=first)
    comparison = None if adjudication else reading_selectors.readings_compare(first=first, second=second)
    if adjudication:
        heads = (adjudication.first_version, adjudication.second_version)
    else:
        heads = (comparison.first_head, comparison.second_head) if comparison else (None, None)
    context = {
        "readings": list(zip((first, second), heads, strict=True)),
        "first": first,
        "second": second,
        "adjudication": adjudication,
        "comparison": comparison,
        "ready": first.status == second.status == Case.Status.SUBMITTED,
        "decisions": Adjudication.Decision.choices,
        "sources": MERGE_SOURCES,
        "error": error,
        "posted": request.POST,
        "worklist_url": reverse("annotation-worklist", args=[first.project_id]),
    }
    return render(request, "annotation/compare.html", context, status=status)


@permission_required("annotation.review_case")
def compare_png(request, case_id: int):
    first, second = _pair(case_id, request.user)
    heads = [c.versions.order_by("-number").first() for c in (first, second)]
    if None in heads:
        raise Http404("A reading has no mask yet.")
    image, _ = load_volume(media_path(first.volume.path))
    labels = [(lb.value, lb.name) for lb in first.project.labels.order_by("value")]
    png = readings_png(np.asarray(image), mask_read(heads[0].path), mask_read(heads[1].path), labels=labels)
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, no-cache"
    return response


@require_POST
@permission_required("annotation.add_project")
def double_reading_set(request, project_id: int):
    project = selectors.project_get(project_id=project_id)
    if project is None:
        raise Http404
    try:
        percent = int(request.POST.get("percent", ""))
    except ValueError:
        messages.error(request, "The share of cases read twice is a whole percentage 0..100.")
    else:
        try:
            added, removed = project_double_reading_set(project=project, percent=percent, user=request.user)
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                f"{percent} % of the cases are read twice: {added} second readings added, {removed} removed "
                "(readings people started stay).",
            )
    return redirect("annotation-worklist", project_id=project_id)
