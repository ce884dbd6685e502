from django.core.paginator import Paginator
from django.shortcuts import render

from common.views import permission_required
from pacs.selectors import pacs_source_list
from studies.models import Series
from studies.selectors import series_status_counts, study_list


@permission_required("studies.view_study")
def worklist(request):
    status = request.GET.get("status", "")
    if status not in Series.Status.values:
        status = ""
    query = request.GET.get("q", "").strip()
    source = request.GET.get("source", "")
    studies = study_list(status=status, query=query, source_id=int(source) if source.isdigit() else None)
    counts = series_status_counts()
    page = Paginator(studies, 25).get_page(request.GET.get("page"))
    return render(
        request,
        "studies/worklist.html",
        {
            "page": page,
            "status": status,
            "query": query,
            "source": source,
            "statuses": Series.Status.choices,
            "status_counts": [(v, label, counts.get(v, 0)) for v, label in Series.Status.choices],
            "sources": pacs_source_list(),
        },
    )
