"""An approval whose DICOM SEG export was queued while the broker was down does not stay "pending" for
ever: the tick queues it again once it has shown no sign of life, and the case history tells the
reviewer where the export stands. Real PostgreSQL and Orthanc; the outages are faked."""

from __future__ import annotations

from datetime import timedelta

import nibabel as nib
import numpy as np
import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from accounts.roles import Role
from accounts.services import user_create
from annotation import selectors, tasks
from annotation.models import AuditEvent, Case, Review
from annotation.services import (
    Effort,
    LabelSpec,
    case_review,
    case_submit,
    case_take,
    mask_version_create,
    project_create,
    project_volumes_add,
    review_exports_requeue,
    review_seg_export,
)
from common.exceptions import TransientError
from pacs.models import PacsSource
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series, Volume

pytestmark = [pytest.mark.django_db, pytest.mark.orthanc]


def broker_down(review_id: int) -> None:
    raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def history_of(case: Case) -> str:
    return "\n".join(entry.text for entry in selectors.case_history(selectors.case_detail(case_id=case.id)))


def test_an_export_lost_to_a_broker_outage_is_queued_again_by_the_tick(
    pacs_source, shared_data, monkeypatch, django_capture_on_commit_callbacks, seg_removed_after
):
    pacs_source_sync(source_id=pacs_source.id)
    series = Series.objects.get(study__patient_id="HIPPO-001", modality="MR")
    series_ingest(series_id=series.id)
    project = project_create(name="Hippocampus", labels=[LabelSpec(1, "Anterior", "#ff0000")], user=None)
    project_volumes_add(project=project, volumes=[Volume.objects.get(series=series)], user=None)
    case = Case.objects.get(project=project)
    annotator = user_create(username="annotator", role=Role.ANNOTATOR)[0]
    reviewer = user_create(username="reviewer", role=Role.REVIEWER)[0]
    label = np.asarray(nib.load(shared_data / "hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj)
    case_take(case=case, user=annotator)
    version = mask_version_create(
        case=case, user=annotator, parent=None, mask=(label == 1).astype(np.uint8), effort=Effort()
    )
    case_submit(case=case, user=annotator, version=version)

    monkeypatch.setattr(tasks.review_seg_export, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        review = case_review(case=case, user=reviewer, version=version, decision="approve")
    approved_at = timezone.now()
    review.refresh_from_db()
    assert review.export_status == Review.Export.PENDING  # the approval stands
    assert not AuditEvent.objects.filter(action="review.export_queued").exists()
    assert "DICOM SEG export pending" in history_of(case)
    assert review_exports_requeue(now=approved_at) == []  # too early to call it lost

    # The broker is back, the PACS is down: the tick's message runs and fails, and will be retried.
    delivered = []
    monkeypatch.setattr(tasks.review_seg_export, "delay", delivered.append)
    assert review_exports_requeue(now=approved_at + timedelta(minutes=21)) == [review.id]
    url = pacs_source.base_url
    PacsSource.objects.filter(pk=pacs_source.pk).update(base_url="http://127.0.0.1:9/dicom-web")
    with pytest.raises(TransientError):
        review_seg_export(review_id=delivered.pop())
    assert "Cannot reach PACS" in history_of(case) and "(will retry)" in history_of(case)
    # Alive (a retry is on its way): not queued again until it has been quiet for 20 minutes.
    assert review_exports_requeue(now=timezone.now() + timedelta(minutes=10)) == []

    PacsSource.objects.filter(pk=pacs_source.pk).update(base_url=url)
    monkeypatch.setattr(
        tasks.review_seg_export, "delay", lambda review_id: tasks.review_seg_export.apply(args=[review_id])
    )
    assert review_exports_requeue(now=timezone.now() + timedelta(minutes=21)) == [review.id]
    review.refresh_from_db()
    seg_removed_after.append(review.seg_series_instance_uid)
    assert (review.export_status, review.export_error) == (Review.Export.DONE, "")
    assert "Approved version 1 · DICOM SEG in the PACS" in history_of(case)
    assert review_exports_requeue(now=timezone.now() + timedelta(hours=3)) == []
    assert Review.objects.filter(case=case).count() == 1  # nothing duplicated
