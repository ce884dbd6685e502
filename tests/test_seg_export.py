"""DICOM SEG export to a real Orthanc and back: voxels, geometry, references, no duplicates."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from common.exceptions import ApplicationError
from common.media import media_path
from ml_worker.io.seg import SegmentSpec, seg_to_mask
from ml_worker.io.volume import LPS_TO_RAS, load_volume
from pacs import dicomweb as dw
from pacs.services.export import volume_seg_export
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Volume

pytestmark = pytest.mark.django_db


@pytest.fixture
def synced(pacs_source):
    for series_id in pacs_source_sync(source_id=pacs_source.id).series_to_ingest:
        series_ingest(series_id=series_id)
    return pacs_source


def read_back(source, volume: Volume, export) -> pydicom.Dataset:
    client = dw.client_for(source)
    return client.retrieve_instance(
        volume.series.study.study_instance_uid, export.series_instance_uid, export.sop_instance_uid
    )


def seg_instances(source, volume: Volume, series_uid: str) -> int:
    client = dw.client_for(source)
    found = client.search_for_instances(
        study_instance_uid=volume.series.study.study_instance_uid, series_instance_uid=series_uid
    )
    return len(found)


def test_dcmqi_liver_seg_round_trips_through_the_pacs(synced, shared_data):
    ct = pydicom.dcmread(next((shared_data / "dicom-seg/ct-3slice/image").iterdir()))
    volume = Volume.objects.get(series__series_instance_uid=ct.SeriesInstanceUID)
    original = pydicom.dcmread(shared_data / "dicom-seg/ct-3slice/seg/liver.dcm")
    mask, names = seg_to_mask(original, sop_instance_uids=volume.sop_instance_uids, shape=tuple(volume.shape))
    assert int((mask > 0).sum()) == 107_098

    export = volume_seg_export(volume=volume, mask=mask, segments=[SegmentSpec(label=1, name="Liver")])
    seg = read_back(synced, volume, export)

    assert seg.Modality == "SEG" and seg.StudyInstanceUID == ct.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    back, back_names = seg_to_mask(seg, sop_instance_uids=volume.sop_instance_uids, shape=tuple(volume.shape))
    np.testing.assert_array_equal(back, mask)
    assert back_names == {1: "Liver"}
    # geometry: each frame sits where its slice of the volume sits
    _, affine = load_volume(media_path(volume.path))
    slice_of = {uid: k for k, uid in enumerate(volume.sop_instance_uids)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        lps = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        k = slice_of[source_uid]
        np.testing.assert_allclose(LPS_TO_RAS[:3, :3] @ lps, (affine @ [0, 0, k, 1])[:3], atol=1e-3)

    again = volume_seg_export(volume=volume, mask=mask, segments=[SegmentSpec(label=1, name="Liver")])
    assert again == export
    assert seg_instances(synced, volume, export.series_instance_uid) == 1


def test_hippocampus_labels_survive_nifti_dicom_pacs_volume_seg(synced, shared_data):
    volume = Volume.objects.filter(series__study__patient_id="HIPPO-001").get()
    labels = np.asarray(nib.load(shared_data / "hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj).astype(
        np.uint8
    )
    image, affine = load_volume(media_path(volume.path))
    nifti = nib.load(shared_data / "hippocampus/imagesTr/hippocampus_001.nii.gz")
    assert image.shape == labels.shape
    np.testing.assert_allclose(affine, nifti.affine, atol=1e-4)  # the label map applies as it is

    segments = [SegmentSpec(label=1, name="Anterior"), SegmentSpec(label=2, name="Posterior")]
    export = volume_seg_export(volume=volume, mask=labels, segments=segments)
    seg = read_back(synced, volume, export)
    back, names = seg_to_mask(seg, sop_instance_uids=volume.sop_instance_uids, shape=tuple(volume.shape))
    np.testing.assert_array_equal(back, labels)
    assert names == {1: "Anterior", 2: "Posterior"}


@pytest.mark.parametrize(
    ("make_mask", "message"),
    [
        (lambda shape: np.zeros((shape[0] + 1, shape[1], shape[2]), np.uint8), "voxels but the volume is"),
        (lambda shape: np.full(shape, 7, np.uint8), "7"),
    ],
)
def test_bad_mask_is_refused_and_nothing_is_stored(synced, make_mask, message):
    volume = Volume.objects.filter(series__study__patient_id="HIPPO-001").get()
    client = dw.client_for(synced)
    before = len(client.search_for_series(study_instance_uid=volume.series.study.study_instance_uid))
    with pytest.raises(ApplicationError, match=message):
        volume_seg_export(
            volume=volume,
            mask=make_mask(tuple(volume.shape)),
            segments=[SegmentSpec(label=1, name="Anterior")],
        )
    assert len(client.search_for_series(study_instance_uid=volume.series.study.study_instance_uid)) == before
