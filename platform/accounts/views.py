"""The landing after login: each role on its work, admins on an overview. Thin: selectors decide."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from accounts.selectors import landing_url
from annotation.selectors import project_list
from common.views import permission_required
from pacs.selectors import pacs_source_list
from studies.models import Series
from studies.selectors import series_status_counts


@login_required
def home(request):
    return redirect(landing_url(user=request.user))


@permission_required("accounts.view_overview")
def overview(request):
    counts = series_status_counts()
    return render(
        request,
        "accounts/overview.html",
        {
            "projects": project_list(),
            "series_counts": [(v, label, counts.get(v, 0)) for v, label in Series.Status.choices],
            "sources": pacs_source_list(),
        },
    )
