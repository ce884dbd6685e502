"""Fixtures: users of each role, small synthetic volumes (rows and NIfTI files made by the studies
services, as an ingest would), a project with two classes and its cases. Real PostgreSQL."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from django.db import transaction

from accounts.roles import Role
from accounts.services import user_create
from annotation.models import Case
from annotation.services import LabelSpec, project_create, project_volumes_add
from annotation.tests.helpers import SHAPE
from common.media import media_relative, volumes_dir
from ml_worker.io.volume import save_volume
from pacs.models import PacsSource
from studies.services import VolumeRecord, series_upsert, series_volumes_replace, study_upsert

_uids = itertools.count(1)


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def users(db):
    """annotator, annotator2, reviewer, admin."""
    made = {role.value: user_create(username=role.value, role=role)[0] for role in Role}
    made["annotator2"] = user_create(username="annotator2", role=Role.ANNOTATOR)[0]
    return made


@pytest.fixture
def make_volume(db):
    """make_volume(modality="MR", shape=SHAPE, array=None, affine=None) -> a new studies.Volume in a study
    of its own (voxels: `array` on `affine`, or a ramp of `shape`)."""
    # A closed port: nothing in these tests talks to a PACS unless it means to see it fail.
    source = PacsSource.objects.create(name="Unreachable PACS", base_url="http://127.0.0.1:9/dicom-web")

    @transaction.atomic
    def make(modality: str = "MR", shape: tuple[int, int, int] = SHAPE, array=None, affine=None):
        n = next(_uids)
        if array is None:
            array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
        shape = tuple(array.shape)
        affine = np.diag([0.9, 0.9, 2.0, 1.0]) if affine is None else np.asarray(affine, dtype=np.float64)
        study = study_upsert(
            source=source,
            study_instance_uid=f"1.2.826.0.1.{n}",
            patient_id=f"P{n}",
            study_date=None,
            description=f"study {n}",
            modalities=modality,
            num_series=1,
        )
        series, _ = series_upsert(
            study=study,
            series_instance_uid=f"1.2.826.0.1.{n}.1",
            modality=modality,
            description=f"series {n}",
            series_number=1,
            num_instances=shape[2],
        )
        path, sha256 = save_volume(array, affine, volumes_dir())
        record = VolumeRecord(
            path=media_relative(path),
            sha256=sha256,
            shape=list(shape),
            spacing=[float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
            affine=affine.tolist(),
            dtype=str(array.dtype),
            nbytes=array.nbytes,
            sop_instance_uids=[f"1.2.826.0.1.{n}.1.{k}" for k in range(shape[2])],
            frame_numbers=[None] * shape[2],
            frame_of_reference_uid="",
            warnings=[],
        )
        return series_volumes_replace(
            series_id=series.id, volumes=[record], num_instances=shape[2]
        ).volumes.get()

    return make


@pytest.fixture
def project(users):
    return project_create(
        name="Hippocampus",
        modality="MR",
        labels=[LabelSpec(1, "anterior", "#ff0000"), LabelSpec(2, "posterior", "#00ff00")],
        user=users["admin"],
    )


@pytest.fixture
def case(project, make_volume) -> Case:
    project_volumes_add(project=project, volumes=[make_volume()], user=None)
    return Case.objects.get(project=project)
