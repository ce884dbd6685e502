"""Projects and their cases: label sets are checked; a volume's split is drawn once from its identity."""

from __future__ import annotations

import pytest

from annotation.models import AuditEvent, Case
from annotation.services import LabelSpec, project_create, project_volumes_add, split_for
from common.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


def test_project_with_its_label_set(project, users):
    assert list(project.labels.values_list("value", "name", "colour")) == [
        (1, "anterior", "#ff0000"),
        (2, "posterior", "#00ff00"),
    ]
    assert AuditEvent.objects.filter(action="project.create", actor=users["admin"]).count() == 1


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("Hippocampus", [LabelSpec(1, "a", "#000000")], "exists already"),
        (" ", [LabelSpec(1, "a", "#000000")], "needs a name"),
        ("P", [], "at least one label"),
        ("P", [LabelSpec(0, "a", "#000000")], "between 1 and 255"),
        ("P", [LabelSpec(1, "a", "#000000"), LabelSpec(1, "b", "#000000")], "must be unique"),
        ("P", [LabelSpec(1, "a", "#000000"), LabelSpec(2, "a", "#000000")], "names must be unique"),
        ("P", [LabelSpec(1, "a", "red")], "#rrggbb"),
    ],
)
def test_a_bad_project_is_refused(project, users, name, labels, message):
    with pytest.raises(ApplicationError, match=message):
        project_create(name=name, labels=labels, user=users["admin"])
    assert not project.__class__.objects.exclude(pk=project.pk).exists()


def test_split_is_a_function_of_the_volume_and_never_redrawn(project, users, make_volume):
    volumes = [make_volume() for _ in range(3)]
    assert project_volumes_add(project=project, volumes=volumes, user=None) == 3
    assert project_volumes_add(project=project, volumes=volumes, user=None) == 0
    other = project_create(name="Other", labels=[LabelSpec(1, "a", "#000000")], user=users["admin"])
    project_volumes_add(project=other, volumes=volumes, user=None)
    for volume in volumes:
        a = Case.objects.get(project=project, volume=volume).split
        assert a == Case.objects.get(project=other, volume=volume).split
        assert a == split_for(series_instance_uid=volume.series.series_instance_uid, index=volume.index)
    drawn = [split_for(series_instance_uid=f"1.2.3.{n}", index=0) for n in range(1000)]
    shares = {s: drawn.count(s) / len(drawn) for s in Case.Split.values}
    assert (
        0.65 < shares["train"] < 0.75 and 0.11 < shares["validation"] < 0.19 and 0.11 < shares["test"] < 0.19
    )
