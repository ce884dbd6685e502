"""An approved case reaches the PACS: the API flow on a hippocampus case ingested from a real Orthanc, the
export task run on approval, and the SEG read back from Orthanc voxel for voxel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from django.test import Client

from accounts.roles import Role
from accounts.services import user_create
from annotation import tasks
from annotation.masks import labelmap_encode
from annotation.models import Case, Review
from annotation.services import LabelSpec, project_create, project_volumes_add
from ml_worker.io.seg import seg_to_mask
from pacs import dicomweb as dw
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series, Volume

pytestmark = pytest.mark.django_db


def test_approving_a_case_puts_its_seg_in_the_pacs(
    pacs_source, shared_data, monkeypatch, django_capture_on_commit_callbacks, seg_removed_after
):
    pacs_source_sync(source_id=pacs_source.id)
    series = Series.objects.get(study__patient_id="HIPPO-001", modality="MR")
    series_ingest(series_id=series.id)
    volume = Volume.objects.get(series=series)
    project = project_create(
        name="Hippocampus",
        labels=[LabelSpec(1, "Anterior", "#ff0000"), LabelSpec(2, "Posterior", "#00ff00")],
        user=None,
    )
    project_volumes_add(project=project, volumes=[volume], user=None)
    case = Case.objects.get(project=project)
    labels = np.asarray(nib.load(shared_data / "hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj).astype(
        np.uint8
    )

    clients = {}
    for role in (Role.ANNOTATOR, Role.REVIEWER):
        clients[role] = Client()
        clients[role].force_login(user_create(username=role.value, role=role)[0])

    def post(role, url, body):
        return clients[role].post(url, json.dumps(body), content_type="application/json")

    assert post(Role.ANNOTATOR, f"/api/cases/{case.id}/take/", {}).status_code == 200
    saved = post(
        Role.ANNOTATOR,
        f"/api/cases/{case.id}/versions/create/",
        {"parent": None, "labelmap": labelmap_encode(labels)},
    )
    assert saved.status_code == 201, saved.json()
    version = saved.json()["id"]
    assert post(Role.ANNOTATOR, f"/api/cases/{case.id}/submit/", {"version": version}).status_code == 200
    # The worker's part, run here: the task exactly as Celery would call it.
    monkeypatch.setattr(
        tasks.review_seg_export, "delay", lambda review_id: tasks.review_seg_export.apply(args=[review_id])
    )
    with django_capture_on_commit_callbacks(execute=True):
        approved = post(
            Role.REVIEWER, f"/api/cases/{case.id}/review/", {"version": version, "decision": "approve"}
        )
    assert approved.status_code == 201

    review = Review.objects.get(pk=approved.json()["id"])
    seg_removed_after.append(review.seg_series_instance_uid)
    assert review.export_status == Review.Export.DONE, review.export_error
    client = dw.client_for(pacs_source)
    study_uid = series.study.study_instance_uid
    segs = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    assert review.seg_series_instance_uid in [dw.value(s, "0020000E") for s in segs]
    seg = client.retrieve_instance(study_uid, review.seg_series_instance_uid, review.seg_sop_instance_uid)
    back, names = seg_to_mask(seg, sop_instance_uids=volume.sop_instance_uids, shape=tuple(volume.shape))
    np.testing.assert_array_equal(back, labels)
    assert names == {1: "Anterior", 2: "Posterior"}
