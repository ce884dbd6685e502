from __future__ import annotations

import pytest

from annotation.models import AuditEvent, Project
from annotation.services import (
    DEMO_PROJECT,
    DEMO_SERIES,
    demo_project_ensure,
    project_intake,
    project_intake_rule_set,
)
from common.exceptions import ApplicationError
from studies.models import Series

pytestmark = pytest.mark.django_db


def describe(volume, text: str, status: str = Series.Status.READY) -> None:
    Series.objects.filter(pk=volume.series_id).update(description=text, status=status)


def test_demo_project_holds_the_hippocampus_volumes_once(make_volume):
    hippocampus = make_volume()
    describe(hippocampus, DEMO_SERIES)
    describe(make_volume(), "T2 axial")  # another series: not in the demo
    describe(make_volume(modality="CT"), DEMO_SERIES)  # not the project's modality

    project, added = demo_project_ensure()
    assert (project.name, added) == (DEMO_PROJECT, 1)
    assert list(project.cases.values_list("volume_id", flat=True)) == [hippocampus.id]
    assert list(project.labels.order_by("value").values_list("value", "name")) == [
        (1, "anterior"),
        (2, "posterior"),
    ]
    again, added = demo_project_ensure()
    assert (again.id, added, Project.objects.count(), again.cases.count()) == (project.id, 0, 1, 1)


def test_a_new_matching_volume_joins_the_project_once_it_is_ready(make_volume):
    project, _ = demo_project_ensure()
    arriving = make_volume()
    describe(arriving, f"{DEMO_SERIES.upper()} (new)", status=Series.Status.INGESTING)
    assert project_intake(project=project) == 0  # not ready yet
    Series.objects.filter(pk=arriving.series_id).update(status=Series.Status.READY)
    assert project_intake(project=project) == 1
    assert project_intake(project=project) == 0
    assert project.cases.get().volume == arriving


def test_an_admin_changes_the_intake_rule_and_the_matching_ready_volumes_join_at_once(make_volume, users):
    project, _ = demo_project_ensure()
    taken = make_volume()
    describe(taken, DEMO_SERIES)
    assert project_intake(project=project) == 1
    flair = make_volume()
    describe(flair, "Brain FLAIR 3D")
    describe(make_volume(), "brain flair", status=Series.Status.INGESTING)  # joins once it is ready

    assert project_intake_rule_set(project=project, series_description="  FLAIR ", user=users["admin"]) == 1
    project.refresh_from_db()
    assert project.intake_series_description == "FLAIR"
    assert set(project.cases.values_list("volume_id", flat=True)) == {taken.id, flair.id}  # nothing dropped
    event = AuditEvent.objects.get(action="project.intake")
    assert (event.actor, event.details) == (users["admin"], {"before": DEMO_SERIES, "after": "FLAIR"})

    with pytest.raises(ApplicationError, match="at most 128 characters"):
        project_intake_rule_set(project=project, series_description="x" * 129, user=users["admin"])
    project.refresh_from_db()
    assert project.intake_series_description == "FLAIR"  # the refused rule changed nothing

    assert project_intake_rule_set(project=project, series_description="", user=users["admin"]) == 0
    Series.objects.filter(description="brain flair").update(status=Series.Status.READY)
    assert project_intake(project=project) == 0  # no rule: volumes are added by hand


def test_embeddings_are_not_computed_for_a_volume_whose_cases_are_all_done(make_volume, monkeypatch):
    from annotation import interactive
    from annotation.models import Case
    from annotation.services import volume_embeddings_compute

    project, _ = demo_project_ensure()
    volume = make_volume()
    describe(volume, DEMO_SERIES)
    project_intake(project=project)
    calls = []

    class Segmenter:
        def embed(self, path, sha256, progress=None):
            calls.append(sha256)
            return True

    monkeypatch.setattr(interactive, "segmenter", lambda: Segmenter())
    Case.objects.filter(volume=volume).update(status=Case.Status.APPROVED)
    assert volume_embeddings_compute(volume_id=volume.id) is False and calls == []
    Case.objects.filter(volume=volume).update(status=Case.Status.IN_PROGRESS)
    assert volume_embeddings_compute(volume_id=volume.id) is True and calls == [volume.sha256]
