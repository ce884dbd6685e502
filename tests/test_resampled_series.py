"""A series of uneven slice spacing from a real Orthanc (the GE head CT: 18.5 deg tilt, steps of 4.0,
1.08 and 7.0 mm): one volume resampled onto a regular grid along the slice normal, flagged with the
spacing range and offered to projects instead of the slabs; the exact slabs kept; a mask drawn on the
regular grid goes back to the PACS as DICOM SEG on the acquired instances."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from accounts.roles import Role
from accounts.services import user_create
from annotation.models import Case
from annotation.services import LabelSpec, project_create, project_intake
from ml_worker.io.seg import SegmentSpec, seg_to_mask
from pacs import dicomweb as dw
from pacs.services.export import volume_seg_export
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series
from tests.conftest import read_series_files

pytestmark = [pytest.mark.django_db, pytest.mark.orthanc]


@pytest.fixture
def ge_series(pacs_source, shared_data) -> Series:
    datasets = read_series_files(shared_data / "dicom-edge/ge-tilt-variable-spacing")
    pacs_source_sync(source_id=pacs_source.id)
    series = Series.objects.get(series_instance_uid=datasets[0].SeriesInstanceUID)
    series_ingest(series_id=series.id)
    series.refresh_from_db()
    return series


def test_uneven_spacing_gives_a_flagged_regular_volume_the_slabs_and_a_seg_on_the_acquired_slices(
    ge_series, pacs_source, seg_removed_after
):
    assert ge_series.status == Series.Status.READY, ge_series.error_message
    resampled, *slabs = ge_series.volumes.order_by("index")
    assert resampled.index == 0 and resampled.resampled and resampled.shape == [512, 512, 10]
    assert resampled.spacing_range == pytest.approx([1.081, 6.999], abs=1e-3)
    assert resampled.source_slices == [0, 1, 2, 2, 3, 3, 5, 6, 8, 9]
    assert [v.shape[2] for v in slabs] == [5, 5] and not any(v.resampled for v in slabs)
    assert resampled.sop_instance_uids == slabs[0].sop_instance_uids + slabs[1].sop_instance_uids

    # People see the flag; a project whose intake rule takes the series gets the regular volume only.
    admin = user_create(username="admin", role=Role.ADMIN)[0]
    page = Client()
    page.force_login(admin)
    worklist = page.get("/worklist/", {"source": pacs_source.id, "status": "ready"}).content.decode()
    assert "resampled · acquired spacing 1.081–6.999 mm" in worklist and "exact slab" in worklist
    project = project_create(
        name="Heads", labels=[LabelSpec(1, "brain", "#ff0000")], user=admin, modality="CT"
    )
    Series.objects.filter(pk=ge_series.pk).update(description="GE head tilt")  # it has none
    project.intake_series_description = "GE head"
    project.save()
    assert project_intake(project=project) == 1
    assert list(Case.objects.filter(project=project).values_list("volume_id", flat=True)) == [resampled.id]

    # A mask on the regular grid goes to the PACS on the acquired instances (nearest grid slice each).
    mask = np.zeros(resampled.shape, dtype=np.uint8)
    mask[200:300, 180:260, :] = 1
    mask[:, :, 4] = 0  # a grid slice no acquired slice is nearest to
    mask[240:250, 200:210, 2] = 0  # on the grid slice nearest to two acquired slices
    export = volume_seg_export(
        volume=resampled, mask=mask, segments=[SegmentSpec(label=1, name="brain", rgb=(255, 0, 0))]
    )
    seg_removed_after.append(export.series_instance_uid)
    client = dw.client_for(pacs_source)
    seg = client.retrieve_instance(
        ge_series.study.study_instance_uid, export.series_instance_uid, export.sop_instance_uid
    )
    back, names = seg_to_mask(
        seg, sop_instance_uids=resampled.sop_instance_uids, shape=tuple(resampled.shape)
    )
    np.testing.assert_array_equal(back, mask[:, :, resampled.source_slices])
    assert names == {1: "brain"}
