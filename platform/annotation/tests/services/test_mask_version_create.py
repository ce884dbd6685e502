"""Mask versions: an immutable chain from version 0, saved only on the head by the lock holder, checked
(shape, classes) before anything is stored, the file written before the row."""

from __future__ import annotations

import numpy as np
import pytest

from annotation import masks
from annotation.errors import CaseLockedError, CaseStateError, StaleVersionError
from annotation.masks import delta_parse, mask_read
from annotation.models import AuditEvent, Case, MaskVersion
from annotation.services import (
    Effort,
    case_review,
    case_submit,
    case_take,
    mask_version_create,
    presegmentation_create,
)
from annotation.tests.helpers import SHAPE, labelmap, save
from common.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


def stored_files(settings) -> set[str]:
    folder = settings.MEDIA_ROOT / "masks"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_version_zero_is_the_presegmentation_and_the_chain_grows_from_it(case, users):
    v0 = presegmentation_create(case=case, mask=labelmap(2), model_version="native3d@3")
    assert (v0.number, v0.parent, v0.author, v0.source) == (0, None, None, MaskVersion.Source.MODEL)
    assert presegmentation_create(case=case, mask=labelmap(2), model_version="native3d@3") == v0

    case_take(case=case, user=users["annotator"])
    v1 = save(case, users["annotator"], v0, labelmap(1), seconds=12.5, clicks=3, strokes=2)
    v2 = save(case, users["annotator"], v1, labelmap(1) * 0)
    assert [(v.number, v.parent_id) for v in (v1, v2)] == [(1, v0.id), (2, v1.id)]
    assert v1.source == v2.source == MaskVersion.Source.EDITED  # the chain started from the model
    assert (v1.seconds, v1.clicks, v1.strokes, v1.model_calls) == (12.5, 3, 2, 0)
    np.testing.assert_array_equal(mask_read(v0.path), labelmap(2))
    np.testing.assert_array_equal(mask_read(v1.path), labelmap(1))
    assert v1.path == f"masks/{v1.sha256}.nii.gz"
    assert AuditEvent.objects.filter(action="version.create", actor=users["annotator"]).count() == 2

    with pytest.raises(CaseStateError, match="has human work"):
        presegmentation_create(case=case, mask=labelmap(1), model_version="native3d@4")


def test_a_newer_model_presegments_an_untouched_case_on_top_of_the_older_one(case, users):
    v0 = presegmentation_create(case=case, mask=labelmap(2), model_version="native3d@3")
    v1 = presegmentation_create(case=case, mask=labelmap(1), model_version="native3d@4")
    assert (v1.number, v1.parent, v1.source, v1.model_version) == (
        1,
        v0,
        MaskVersion.Source.MODEL,
        "native3d@4",
    )
    assert presegmentation_create(case=case, mask=labelmap(1), model_version="native3d@4") == v1

    case_take(case=case, user=users["annotator"])  # taken: the annotator's work starts from v1
    with pytest.raises(CaseStateError, match="has human work"):
        presegmentation_create(case=case, mask=labelmap(2), model_version="native3d@5")
    assert case.versions.count() == 2


def test_a_human_chain_is_human_until_a_model_helps(case, users):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None)
    v1 = save(case, users["annotator"], v0, model_calls=1)
    assert (v0.number, v0.source, v1.source) == (0, MaskVersion.Source.HUMAN, MaskVersion.Source.EDITED)


def test_a_stale_parent_is_refused_with_the_head_and_nothing_is_stored(case, users, settings):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None)
    v1 = save(case, users["annotator"], v0, labelmap(2))
    files = stored_files(settings)
    with pytest.raises(StaleVersionError) as stale:
        save(case, users["annotator"], v0, labelmap(1) + 1)
    # people count versions from 1: the head (stored number 1) is version 2 in the message and extra
    assert stale.value.head == v1 and stale.value.extra == {"head": {"id": v1.id, "number": 2}}
    assert "the head is version 2" in stale.value.message
    with pytest.raises(StaleVersionError):
        save(case, users["annotator"], None)  # "first save" on a case that has versions
    assert list(case.versions.values_list("number", flat=True)) == [0, 1]  # stored numbers unchanged
    assert stored_files(settings) == files


def test_a_delta_applies_to_the_parent(case, users):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None, labelmap(1))
    size = int(np.prod(SHAPE))
    # NIfTI order: flat = i + I * (j + J * k); paint voxel (7, 5, 3) (the last) and (0, 0, 0)->0
    runs = delta_parse([[0, 1, 0], [size - 2, 2, 2]], size=size)
    v1 = mask_version_create(
        case=case, user=users["annotator"], parent=v0, delta=runs, effort=Effort(strokes=1)
    )
    expected = labelmap(1)
    expected[0, 0, 0] = 0
    expected[6, 5, 3] = expected[7, 5, 3] = 2
    np.testing.assert_array_equal(mask_read(v1.path), expected)


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([[5, 2, 1], [6, 1, 2]], "must not overlap"),
        ([[0, 0, 1]], "length >= 1"),
        ([[190, 5, 1]], "within the 192 voxels"),
        ([[0, 1, 300]], "between 0 and 255"),
        ([[0, 1]], "runs of integers"),
        ("paint", "runs of integers"),
    ],
)
def test_a_malformed_delta_is_refused(runs, message):
    with pytest.raises(ApplicationError, match=message):
        delta_parse(runs, size=192)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((8, 6, 5), np.uint8), r"The mask is \(8, 6, 5\) voxels but the volume is \(8, 6, 4\)"),
        (labelmap(3), r"values \[3\] that are not classes of this project"),
        (np.full(SHAPE, -1, np.int16), "integer labels 0..255"),
        (np.zeros(SHAPE, np.float32), "integer labels 0..255"),
    ],
)
def test_a_bad_mask_is_refused_and_nothing_is_stored(case, users, settings, mask, message):
    case_take(case=case, user=users["annotator"])
    with pytest.raises(ApplicationError, match=message):
        save(case, users["annotator"], None, mask)
    assert not MaskVersion.objects.exists() and stored_files(settings) == set()


def test_only_the_lock_holder_saves(case, users):
    with pytest.raises(CaseLockedError, match="take it again"):
        save(case, users["annotator"], None)
    case_take(case=case, user=users["annotator"])
    with pytest.raises(CaseLockedError, match="annotator holds this case"):
        save(case, users["annotator2"], None)
    assert not MaskVersion.objects.exists()


def test_a_failed_file_write_stores_no_row(case, users, monkeypatch):
    case_take(case=case, user=users["annotator"])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(masks.os, "replace", disk_full)
    with pytest.raises(OSError):
        save(case, users["annotator"], None)
    assert not MaskVersion.objects.exists()
    assert list(masks.masks_dir().iterdir()) == []  # nor a partial file


def test_approval_freezes_the_case(case, users):
    case_take(case=case, user=users["annotator"])
    v0 = save(case, users["annotator"], None)
    case_submit(case=case, user=users["annotator"], version=v0)
    with pytest.raises(CaseStateError, match="waits for review"):
        save(case, users["annotator"], v0)
    case_review(case=case, user=users["reviewer"], version=v0, decision="approve")
    with pytest.raises(CaseStateError, match="approved"):
        case_take(case=case, user=users["annotator"])
    with pytest.raises(CaseStateError, match="frozen"):
        save(case, users["annotator"], v0)
    assert case.versions.count() == 1 and Case.objects.get(pk=case.pk).status == Case.Status.APPROVED
