"""A source's real health on its page: last success; not "ok" while its series fail because the PACS is
unavailable; the last error cleared once it recovers; failing and skipped series with their reasons.
A real Orthanc of the test's own, stopped and started; real PostgreSQL."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.roles import Role
from accounts.services import user_create
from pacs.dicomweb import PacsUnavailable
from pacs.selectors import pacs_source_detail
from pacs.services.ingest import series_ingest
from pacs.services.store import pacs_store_datasets
from pacs.services.sync import pacs_source_sync
from studies.models import Series
from tests.conftest import read_series_files

pytestmark = [pytest.mark.django_db, pytest.mark.orthanc]


def health(source) -> str:
    return pacs_source_detail(source_id=source.id).health.state


def test_the_source_page_shows_real_health_through_an_outage(scratch_orthanc, shared_data):
    source = scratch_orthanc.source("Scratch PACS")
    source.save()
    admin = Client()
    admin.force_login(user_create(username="admin", role=Role.ADMIN)[0])
    assert health(source) == "never"
    pgbm = shared_data / "dicom/PGBM-003"
    pacs_store_datasets(source=source, datasets=read_series_files(pgbm / "11_HCropVolume"))
    pacs_store_datasets(source=source, datasets=read_series_files(shared_data / "dicom-seg/ct-3slice/image"))
    pacs_store_datasets(source=source, datasets=read_series_files(shared_data / "dicom-seg/ct-3slice/seg"))
    crop, *_ = pacs_source_sync(source_id=source.id).series_to_ingest

    # The PACS goes down between discovery and retrieval: the series fails with "PACS unavailable".
    scratch_orthanc.stop()
    with pytest.raises(PacsUnavailable):
        series_ingest(series_id=crop)
    with pytest.raises(PacsUnavailable):
        pacs_source_sync(source_id=source.id)
    source.refresh_from_db()
    assert health(source) == "error" and "Cannot reach PACS" in source.last_error
    page = admin.get(f"/pacs/sources/{source.id}/").content.decode()
    assert "sync failing" in page and "Cannot reach PACS" in page

    # Back up: the sync succeeds and clears the error, but a series still fails: not "ok".
    scratch_orthanc.start()
    pacs_source_sync(source_id=source.id)
    source.refresh_from_db()
    assert (source.last_error, source.last_error_at) == ("", None) and source.last_success_at is not None
    detail = pacs_source_detail(source_id=source.id)
    assert detail.health.state == "degraded" and "1 series could not be retrieved" in detail.health.reason
    assert [s.id for s in detail.failing] == [crop] and detail.failing[0].error_kind == "pacs_unavailable"
    page = admin.get(f"/pacs/sources/{source.id}/").content.decode()
    assert "series failing" in page and "Cannot reach PACS" in page and 'id="last-error">none' in page
    assert "SEG series hold no image to annotate" in page  # skipped, with the reason
    listing = admin.get("/pacs/sources/").content.decode()
    assert "series failing" in listing and ">ok<" not in listing

    for series_id in Series.objects.exclude(status=Series.Status.SKIPPED).values_list("id", flat=True):
        series_ingest(series_id=series_id)
    detail = pacs_source_detail(source_id=source.id)
    assert detail.health.state == "ok" and detail.failing == []
    n_seg = Series.objects.filter(modality="SEG").count()
    assert [(k.reason.split(";")[0], k.count) for k in detail.skipped] == [
        ("SEG series hold no image to annotate", n_seg)
    ]
    assert 'badge ok">ok<' in admin.get("/pacs/sources/").content.decode()
