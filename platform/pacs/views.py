from django.contrib import messages
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from common.views import permission_required
from pacs.models import PacsSource
from pacs.selectors import pacs_source_detail, pacs_source_list


@permission_required("pacs.view_pacssource")
def source_list(request):
    return render(request, "pacs/source_list.html", {"sources": pacs_source_list()})


@permission_required("pacs.view_pacssource")
def source_detail(request, source_id: int):
    detail = pacs_source_detail(source_id=source_id)
    if detail is None:
        raise Http404("No such PACS source.")
    return render(request, "pacs/source_detail.html", {"d": detail})


@require_POST
@permission_required("pacs.sync_pacssource")
def source_sync(request, source_id: int):
    from pacs.tasks import pacs_source_sync

    source = get_object_or_404(PacsSource, pk=source_id)
    transaction.on_commit(lambda: pacs_source_sync.delay(source.id))
    messages.success(request, f"Sync of '{source.name}' queued.")
    return redirect("pacs-sources")
