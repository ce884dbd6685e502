from __future__ import annotations

import pytest

from annotation.models import Project
from annotation.services import DEMO_PROJECT, demo_project_ensure

pytestmark = pytest.mark.django_db


def test_demo_project_holds_the_hippocampus_volumes_once(make_volume):
    hippocampus = make_volume()
    study = hippocampus.series.study
    study.patient_id = "HIPPO-001"
    study.save()
    make_volume()  # another patient: not in the demo

    project, added = demo_project_ensure()
    assert (project.name, added) == (DEMO_PROJECT, 1)
    assert list(project.cases.values_list("volume_id", flat=True)) == [hippocampus.id]
    assert list(project.labels.order_by("value").values_list("value", "name")) == [
        (1, "anterior"),
        (2, "posterior"),
    ]
    again, added = demo_project_ensure()
    assert (again.id, added, Project.objects.count(), again.cases.count()) == (project.id, 0, 1, 1)
