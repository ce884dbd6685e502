"""Studies and series deleted from the PACS: a sync marks them gone (volumes, cases and masks kept, the
case flagged), nothing retries them, and one that the PACS lists again returns as it was. A real
Orthanc of the test's own; real PostgreSQL."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import requests
from django.test import Client
from pydicom.uid import generate_uid

from accounts.roles import Role
from accounts.services import user_create
from annotation.models import Case, MaskVersion
from annotation.services import (
    Effort,
    LabelSpec,
    case_take,
    mask_version_create,
    project_create,
    project_volumes_add,
)
from pacs.services.ingest import series_ingest
from pacs.services.store import pacs_store_datasets
from pacs.services.sync import pacs_source_sync
from studies.models import Series, Study, Volume
from studies.selectors import series_ids_unfinished
from tests.conftest import read_series_files

pytestmark = [pytest.mark.django_db, pytest.mark.orthanc]


def sync_all(source):
    result = pacs_source_sync(source_id=source.id)
    for series_id in result.series_to_ingest:
        series_ingest(series_id=series_id)
    return result


def orthanc_delete(orthanc, uid: str) -> None:
    """Delete a study or series from Orthanc by its DICOM UID (its REST API, as a PACS admin would)."""
    rest = f"http://127.0.0.1:{orthanc.port}"
    (found,) = requests.post(f"{rest}/tools/lookup", data=uid, auth=orthanc.auth, timeout=10).json()
    kind = {"Study": "studies", "Series": "series"}[found["Type"]]
    requests.delete(f"{rest}/{kind}/{found['ID']}", auth=orthanc.auth, timeout=10).raise_for_status()


def as_other_study(datasets, key: str):
    study, series = generate_uid(entropy_srcs=[key, "study"]), generate_uid(entropy_srcs=[key, "series"])
    out = []
    for n, ds in enumerate(datasets):
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[key, str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def test_deleted_studies_and_series_are_marked_gone_kept_and_return(scratch_orthanc, shared_data):
    source = scratch_orthanc.source("Scratch PACS")
    source.save()
    pgbm = shared_data / "dicom/PGBM-003"
    crop, t1 = read_series_files(pgbm / "11_HCropVolume"), read_series_files(pgbm / "11-T1post-18670")
    other = as_other_study(crop, "deletion-other-study")
    for datasets in (crop, t1, other):
        pacs_store_datasets(source=source, datasets=datasets)
    sync_all(source)
    assert Series.objects.filter(status=Series.Status.READY).count() == 3
    crop_series = Series.objects.get(series_instance_uid=crop[0].SeriesInstanceUID)
    volume = Volume.objects.get(series=crop_series)
    admin = user_create(username="admin", role=Role.ADMIN)[0]
    annotator = user_create(username="annotator", role=Role.ANNOTATOR)[0]
    project = project_create(name="Crops", labels=[LabelSpec(1, "lesion", "#ff0000")], user=admin)
    project_volumes_add(project=project, volumes=[volume], user=admin)
    case = Case.objects.get(project=project)
    case_take(case=case, user=annotator)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[10:20, 10:20, 5:8] = 1
    mask_version_create(case=case, user=annotator, parent=None, mask=mask, effort=Effort(seconds=5))

    # One series of a study deleted: that series is gone, its study and the other series stay.
    orthanc_delete(scratch_orthanc, t1[0].SeriesInstanceUID)
    assert sync_all(source).studies_gone == 0
    gone = Series.objects.filter(gone_at__isnull=False)
    assert list(gone.values_list("series_instance_uid", flat=True)) == [t1[0].SeriesInstanceUID]
    assert Study.objects.filter(gone_at__isnull=False).count() == 0

    # Whole studies deleted, one with the annotated case: gone, and kept with everything on them.
    orthanc_delete(scratch_orthanc, other[0].StudyInstanceUID)
    orthanc_delete(scratch_orthanc, crop[0].StudyInstanceUID)
    assert sync_all(source).studies_gone == 2
    assert Study.objects.filter(gone_at__isnull=True).count() == 0
    assert not Series.objects.filter(gone_at__isnull=True).exists()
    crop_series.refresh_from_db()
    assert crop_series.status == Series.Status.READY  # what it was; the flag says it is gone
    assert Volume.objects.count() == 3 and MaskVersion.objects.filter(case=case).count() == 1
    Series.objects.filter(pk=crop_series.pk).update(status=Series.Status.PENDING)
    assert series_ids_unfinished(source_id=source.id) == []  # nothing retries what the PACS deleted
    Series.objects.filter(pk=crop_series.pk).update(status=Series.Status.READY)
    page = Client()
    page.force_login(annotator)
    assert "deleted from the PACS" in page.get(f"/projects/{project.id}/").content.decode()
    assert "deleted from the PACS" in page.get(f"/cases/{case.id}/").content.decode()
    page.force_login(admin)
    detail = page.get(f"/pacs/sources/{source.id}/").content.decode()
    assert "Gone from the PACS (3)" in detail
    assert "3 gone from the PACS" in page.get("/pacs/sources/").content.decode()
    assert sync_all(source).studies_gone == 0  # marked once

    # The PACS gets the study back: it returns, on the same rows, with the same volume and case.
    pacs_store_datasets(source=source, datasets=crop)
    pacs_store_datasets(source=source, datasets=t1)
    sync_all(source)
    study = Study.objects.get(study_instance_uid=crop[0].StudyInstanceUID)
    assert study.gone_at is None
    assert not study.series.filter(gone_at__isnull=False).exists()
    assert study.series.filter(status=Series.Status.READY).count() == 2
    assert Volume.objects.get(series=crop_series).pk == volume.pk
    assert Volume.objects.count() == 3 and Series.objects.count() == 3
    assert "deleted from the PACS" not in page.get(f"/cases/{case.id}/").content.decode()
    assert Study.objects.get(study_instance_uid=other[0].StudyInstanceUID).gone_at is not None
