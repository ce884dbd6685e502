"""Sync from a real Orthanc into PostgreSQL and the media store: what lands, that it is exact, and
that re-runs, kills and outages converge without duplicates."""

from __future__ import annotations

import copy
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from subprocess import DEVNULL

import numpy as np
import pydicom
import pytest
from django.db import connection
from pydicom.uid import generate_uid

from common.media import media_path
from ml_worker.io.volume import LPS_TO_RAS, load_volume
from pacs.dicomweb import PacsUnavailable
from pacs.models import PacsSource
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series, Study, Volume
from studies.services import REQUEUE_AFTER
from tests.conftest import HIPPOCAMPUS_CASES, REPO, read_series_files

pytestmark = pytest.mark.django_db

PGBM_T1POST = "1.3.6.1.4.1.14519.5.2.1.4429.7055.250698293053013179878447218670"
HIPPO_CROP = "1.2.826.0.1.3680043.8.498.26269410813686558956046182253949569533"


def sync_all(source: PacsSource):
    result = pacs_source_sync(source_id=source.id)
    for series_id in result.series_to_ingest:
        series_ingest(series_id=series_id)
    return result


def ras_positions(datasets) -> np.ndarray:
    """Slice origins in RAS, sorted along the slice normal (the volume's k order)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    pos = pos[np.argsort(pos @ normal)]
    return (LPS_TO_RAS[:3, :3] @ pos.T).T


def test_sync_builds_every_image_series_and_lists_the_rest(pacs_source, shared_data):
    result = sync_all(pacs_source)

    # PGBM-003, 3 dcmqi CT studies, 2 dicom-edge CT studies, hippocampus cases.
    assert Study.objects.filter(source=pacs_source).count() == 1 + 3 + 2 + HIPPOCAMPUS_CASES
    assert result.studies_seen == result.studies_examined == Study.objects.count()
    statuses = dict(Series.objects.values_list("series_instance_uid", "status"))
    assert statuses[PGBM_T1POST] == Series.Status.READY
    assert statuses[HIPPO_CROP] == Series.Status.READY
    seg = Series.objects.filter(modality="SEG")
    assert seg.count() == 5 and {s.status for s in seg} == {Series.Status.SKIPPED}
    assert all("SEG" in s.error_message for s in seg)
    assert not Series.objects.filter(status=Series.Status.ERROR).exists()
    hippo = Series.objects.filter(study__patient_id__startswith="HIPPO-", status=Series.Status.READY)
    assert hippo.count() == HIPPOCAMPUS_CASES


@pytest.mark.parametrize(
    "folder",
    [
        "dicom/PGBM-003/11-T1post-18670",  # oblique MR, 6.5 mm gaps
        "dicom/PGBM-003/11_HCropVolume",  # axis-aligned 1 mm
        "dicom-edge/philips-tilt",  # gantry tilt: sheared grid
        "dicom-seg/ct-3slice/image",  # positions 1.0 mm apart, thickness 1.25
    ],
)
def test_volume_matches_source_geometry_and_voxels(pacs_source, shared_data, folder):
    sync_all(pacs_source)
    datasets = read_series_files(shared_data / folder)
    series = Series.objects.get(series_instance_uid=datasets[0].SeriesInstanceUID)
    assert series.status == Series.Status.READY, series.error_message
    (volume,) = series.volumes.all()
    array, affine = load_volume(media_path(volume.path))

    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    assert array.shape == (cols, rows, len(datasets)) == tuple(volume.shape)
    positions = ras_positions(datasets)
    for k, expected in enumerate(positions):
        np.testing.assert_allclose(affine @ [0, 0, k, 1], [*expected, 1], atol=1e-3)
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), [col_spacing, row_spacing], atol=1e-5)
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    np.testing.assert_allclose(affine[:3, 0] / col_spacing, LPS_TO_RAS[:3, :3] @ iop[:3], atol=1e-5)
    # voxels: each slice equals its source instance after the modality LUT
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for k, uid in enumerate(volume.sop_instance_uids):
        expected = pydicom.pixels.apply_modality_lut(by_uid[uid].pixel_array, by_uid[uid])
        np.testing.assert_array_equal(array[:, :, k].T, expected)


def test_variable_spacing_ct_splits_into_exact_volumes(pacs_source, shared_data):
    sync_all(pacs_source)
    datasets = read_series_files(shared_data / "dicom-edge/ge-tilt-variable-spacing")
    series = Series.objects.get(series_instance_uid=datasets[0].SeriesInstanceUID)
    assert series.status == Series.Status.READY, series.error_message
    resampled, *volumes = series.volumes.all()  # the regular grid first (tests/test_resampled_series.py)
    assert resampled.resampled and not any(v.resampled for v in volumes)
    assert len(volumes) >= 2
    assert sum(v.shape[2] for v in volumes) == len(datasets)
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for volume in volumes:
        assert volume.warnings, "a split series must say so"
        _, affine = load_volume(media_path(volume.path))
        for k, uid in enumerate(volume.sop_instance_uids):
            lps = [float(v) for v in by_uid[uid].ImagePositionPatient]
            np.testing.assert_allclose((affine @ [0, 0, k, 1])[:3], LPS_TO_RAS[:3, :3] @ lps, atol=1e-3)


def test_resync_of_unchanged_pacs_examines_nothing_and_duplicates_nothing(pacs_source):
    sync_all(pacs_source)
    before = (Study.objects.count(), Series.objects.count(), Volume.objects.count())
    paths = set(Volume.objects.values_list("path", flat=True))

    again = sync_all(pacs_source)

    assert again.studies_examined == 0 and again.series_to_ingest == []
    assert (Study.objects.count(), Series.objects.count(), Volume.objects.count()) == before
    assert set(Volume.objects.values_list("path", flat=True)) == paths
    pacs_source.refresh_from_db()
    assert pacs_source.sync_status == PacsSource.SyncStatus.OK


def test_queued_work_is_not_queued_twice_but_lost_work_is_requeued(pacs_source):
    first, second, *rest = pacs_source_sync(source_id=pacs_source.id).series_to_ingest
    series_ingest(series_id=first)
    Series.objects.filter(pk=second).update(status=Series.Status.INGESTING, attempts=1)  # its worker dies

    rerun = pacs_source_sync(source_id=pacs_source.id)
    assert rerun.studies_examined == 0
    assert rerun.series_to_ingest == [], "queued or running ingests are not queued again on every poll"

    # The clock moves past REQUEUE_AFTER with no progress: the work counts as lost and is queued again.
    lost = [second, *rest]
    Series.objects.filter(pk__in=lost).update(updated_at=dt.datetime.now(dt.UTC) - 2 * REQUEUE_AFTER)
    assert pacs_source_sync(source_id=pacs_source.id).series_to_ingest == sorted(lost)
    for series_id in lost:
        series_ingest(series_id=series_id)
    assert not Series.objects.exclude(status__in=[Series.Status.READY, Series.Status.SKIPPED]).exists()
    assert Volume.objects.filter(series_id=second).count() == 1
    n_volumes = Volume.objects.count()
    series_ingest(series_id=first)  # the same task delivered twice
    assert Volume.objects.count() == n_volumes


@pytest.mark.django_db(transaction=True)
def test_pacs_sync_command_killed_mid_ingest_converges_when_run_again(pacs_source, settings):
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "annotator.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    }
    command = [sys.executable, "manage.py", "pacs_sync", "--source", pacs_source.name]
    run = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=DEVNULL, stderr=DEVNULL)
    deadline = time.monotonic() + 60
    while not Series.objects.filter(status=Series.Status.READY).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # the command and its ingest processes, mid-way
    run.wait()
    unfinished = Series.objects.exclude(status__in=[Series.Status.READY, Series.Status.SKIPPED]).count()
    assert unfinished > 0, "the kill must land mid-ingest for this test to mean anything"

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    assert not Series.objects.exclude(status__in=[Series.Status.READY, Series.Status.SKIPPED]).exists()
    ready = Series.objects.filter(status=Series.Status.READY)
    assert Volume.objects.filter(series__in=ready).values("series").distinct().count() == ready.count()
    assert Study.objects.count() == len(set(Study.objects.values_list("study_instance_uid", flat=True)))


def test_pacs_down_gives_clear_error_keeps_data_and_recovers(db, scratch_orthanc, orthanc, shared_data):
    from pacs.services.store import pacs_store_datasets

    source = scratch_orthanc.source("Scratch PACS")
    source.save()
    pacs_store_datasets(
        source=source, datasets=read_series_files(shared_data / "dicom/PGBM-003/11_HCropVolume")
    )
    sync_all(source)
    assert Volume.objects.count() == 1

    scratch_orthanc.stop()
    with pytest.raises(PacsUnavailable, match="Cannot reach PACS 'Scratch PACS'"):
        pacs_source_sync(source_id=source.id)
    source.refresh_from_db()
    assert source.sync_status == PacsSource.SyncStatus.ERROR
    assert "Cannot reach" in source.last_error and source.sync_lease_until is None
    assert Volume.objects.count() == 1  # nothing lost

    scratch_orthanc.start()
    assert sync_all(source).studies_examined == 0
    source.refresh_from_db()
    assert source.sync_status == PacsSource.SyncStatus.OK


def test_pacs_stopped_between_discovery_and_retrieve(db, scratch_orthanc, shared_data):
    from pacs.services.store import pacs_store_datasets

    source = scratch_orthanc.source("Scratch PACS")
    source.save()
    pacs_store_datasets(
        source=source, datasets=read_series_files(shared_data / "dicom/PGBM-003/11_HCropVolume")
    )
    (series_id,) = pacs_source_sync(source_id=source.id).series_to_ingest

    scratch_orthanc.stop()
    with pytest.raises(PacsUnavailable):
        series_ingest(series_id=series_id)
    series = Series.objects.get(pk=series_id)
    assert series.status == Series.Status.ERROR and series.error_kind == "pacs_unavailable"
    assert Volume.objects.count() == 0

    scratch_orthanc.start()
    # The task's own retry (with backoff) owns the next attempt; the sync leaves it alone until the
    # retries look lost, then queues it again.
    assert pacs_source_sync(source_id=source.id).series_to_ingest == []
    Series.objects.filter(pk=series_id).update(updated_at=dt.datetime.now(dt.UTC) - 2 * REQUEUE_AFTER)
    assert pacs_source_sync(source_id=source.id).series_to_ingest == [series_id]
    series_ingest(series_id=series_id)
    assert Series.objects.get(pk=series_id).status == Series.Status.READY
    assert Volume.objects.count() == 1


def _retagged(datasets, *, study_uid: str, series_uid: str, key: str):
    """Copies under new UIDs, so a variant of a real series can sit in the PACS beside the original."""
    out = []
    for n, ds in enumerate(datasets):
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[key, str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def test_bad_series_get_their_own_clear_error_and_the_rest_of_the_study_is_built(
    db, scratch_orthanc, shared_data
):
    from pacs.services.store import pacs_store_datasets

    crop = read_series_files(shared_data / "dicom/PGBM-003/11_HCropVolume")
    t1 = read_series_files(shared_data / "dicom/PGBM-003/11-T1post-18670")
    study = generate_uid(entropy_srcs=["bad-inputs-study"])
    good = _retagged(crop, study_uid=study, series_uid=generate_uid(entropy_srcs=["good"]), key="good")
    crop_sorted = sorted(crop, key=lambda ds: float(ds.ImagePositionPatient[2]))
    gap = crop_sorted[:20] + crop_sorted[21:]  # one slice missing in the middle
    missing = _retagged(gap, study_uid=study, series_uid=generate_uid(entropy_srcs=["gap"]), key="gap")
    mixed_uid = generate_uid(entropy_srcs=["mixed"])
    mixed = _retagged(crop[:5] + t1[:5], study_uid=study, series_uid=mixed_uid, key="mixed")
    source = scratch_orthanc.source("Scratch PACS")
    source.save()
    pacs_store_datasets(source=source, datasets=good + missing + mixed)

    sync_all(source)

    by_uid = {s.series_instance_uid: s for s in Series.objects.filter(study__study_instance_uid=study)}
    assert by_uid[good[0].SeriesInstanceUID].status == Series.Status.READY
    gap_series = by_uid[missing[0].SeriesInstanceUID]
    assert (gap_series.status, gap_series.error_kind) == (Series.Status.ERROR, "missing_slice")
    assert "missing" in gap_series.error_message.lower()
    mixed_series = by_uid[mixed_uid]
    assert (mixed_series.status, mixed_series.error_kind) == (Series.Status.ERROR, "mixed")
    assert Volume.objects.filter(series__in=[gap_series, mixed_series]).count() == 0
    # Errors are final for these series: re-syncing does not retry them until the series changes.
    assert pacs_source_sync(source_id=source.id).series_to_ingest == []


def test_qido_paging_lists_every_study(pacs_source, settings):
    settings.PACS_QIDO_PAGE_SIZE = 4  # fewer than the session PACS holds: several pages, the last short
    result = pacs_source_sync(source_id=pacs_source.id)
    assert result.studies_seen == 6 + HIPPOCAMPUS_CASES
    uids = list(Study.objects.values_list("study_instance_uid", flat=True))
    assert len(uids) == len(set(uids)) == result.studies_seen
