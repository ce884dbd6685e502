"""Time the worklist with N synthetic cases in PostgreSQL; prints JSON (p50/p95 in ms per scenario).

Everything it creates lives in one transaction that is rolled back at the end, so it can run against
any database (after `manage.py migrate`) and leaves nothing behind:

    python manage.py bench_worklist --n 10000
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import timedelta

import numpy as np
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from accounts.roles import Role
from accounts.services import user_create
from annotation.api import WorklistApi
from annotation.models import Case, CaseLock, Project
from annotation.selectors import cursor_encode, worklist, worklist_query
from annotation.services import LabelSpec, project_create
from pacs.models import PacsSource
from studies.models import Series, Study, Volume

STATUSES = (Case.Status.NEW, Case.Status.IN_PROGRESS, Case.Status.SUBMITTED, Case.Status.APPROVED)
STATUS_SHARE = (0.8, 0.1, 0.05, 0.05)


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument("--n", type=int, default=10_000, help="synthetic cases")
        parser.add_argument("--repeats", type=int, default=50, help="timed calls per scenario")
        parser.add_argument("--limit", type=int, default=50, help="page size")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, n: int, repeats: int, limit: int, seed: int, **options) -> None:
        with transaction.atomic():
            started = time.perf_counter()
            project, user = _populate(n=n, seed=seed)
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE annotation_case; ANALYZE annotation_caselock; ANALYZE studies_volume")
            setup_s = time.perf_counter() - started
            middle = Case.objects.filter(project=project).order_by("-score", "-id")[n // 2]
            scenarios = {
                "first_page": {},
                "middle_page": {"cursor": cursor_encode(middle)},
                "status_in_progress": {"status": Case.Status.IN_PROGRESS},
                "modality_ct": {"modality": "CT"},
                "assignee_me": {"assignee": "me"},
            }
            client = Client(HTTP_HOST="localhost")
            client.force_login(user)
            url = f"/api/projects/{project.id}/worklist/"
            result = {"n_cases": n, "page_size": limit, "repeats": repeats, "setup_s": round(setup_s, 2)}
            for name, filters in scenarios.items():

                def direct(filters=filters):
                    page = worklist(project=project, user=user, limit=limit, **filters)
                    return WorklistApi.OutputSerializer(
                        {"results": page.cases, "next_cursor": page.next_cursor}
                    ).data

                def http(filters=filters):
                    response = client.get(url, {"limit": limit, **filters})
                    assert response.status_code == 200, response.content[:200]
                    return response

                rows = len(direct()["results"])
                result[name] = {
                    "rows": rows,
                    "query_and_serialise_ms": _timed(direct, repeats),
                    "http_ms": _timed(http, repeats),
                    "uses_worklist_index": _uses_index(
                        project=project, user=user, limit=limit, filters=filters
                    ),
                }
            transaction.set_rollback(True)
        self.stdout.write(json.dumps(result, indent=2))


def _timed(fn, repeats: int) -> dict:
    fn()  # warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50": round(statistics.median(times), 2),
        "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
        "max": round(times[-1], 2),
    }


def _uses_index(*, project: Project, user, limit: int, filters: dict) -> bool:
    """Whether PostgreSQL's plan for the page query walks the case_worklist index."""
    return "case_worklist" in worklist_query(project=project, user=user, **filters)[: limit + 1].explain()


def _populate(*, n: int, seed: int) -> tuple[Project, object]:
    """A project with ``n`` cases: random scores, a realistic mix of states, modalities, assignees, locks."""
    rng = np.random.default_rng(seed)
    stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
    annotators = [user_create(username=f"bench-{stamp}-{k}", role=Role.ANNOTATOR)[0] for k in range(5)]
    project = project_create(
        name=f"bench-{stamp}",
        labels=[LabelSpec(1, "anterior", "#ff0000"), LabelSpec(2, "posterior", "#00ff00")],
        user=None,
    )
    source = PacsSource.objects.create(name=f"bench-{stamp}", base_url="http://127.0.0.1:9/dicom-web")
    batch = 2000
    studies = Study.objects.bulk_create(
        [
            Study(
                source=source, study_instance_uid=f"2.25.{stamp}.{i}", description=f"study {i}", num_series=1
            )
            for i in range(n)
        ],
        batch_size=batch,
    )
    modalities = rng.choice(["MR", "CT"], size=n, p=[0.7, 0.3])
    series = Series.objects.bulk_create(
        [
            Series(
                study=study,
                series_instance_uid=f"{study.study_instance_uid}.1",
                modality=str(modalities[i]),
                description=f"series {i}",
                status=Series.Status.READY,
            )
            for i, study in enumerate(studies)
        ],
        batch_size=batch,
    )
    uids = [f"2.25.{k}" for k in range(128)]
    volumes = Volume.objects.bulk_create(
        [
            Volume(
                series=s,
                path=f"volumes/{i:064d}.nii",
                sha256=f"{i:064d}",
                shape=[256, 256, 128],
                spacing=[1.0, 1.0, 1.5],
                affine=np.eye(4).tolist(),
                dtype="int16",
                nbytes=256 * 256 * 128 * 2,
                sop_instance_uids=uids,  # what makes a volume row heavy: the worklist must not load it
            )
            for i, s in enumerate(series)
        ],
        batch_size=batch,
    )
    statuses = rng.choice(len(STATUSES), size=n, p=STATUS_SHARE)
    scores = rng.random(n).round(3)  # rounded: many ties, as real scores have
    owners = rng.integers(0, len(annotators), size=n)
    cases = Case.objects.bulk_create(
        [
            Case(
                project=project,
                volume=v,
                split="train",
                status=STATUSES[statuses[i]],
                assignee=None if statuses[i] == 0 else annotators[owners[i]],
                score=float(scores[i]),
                score_reason=f"entropy {scores[i]:.3f}",
                score_model="native3d",
                score_version="1",
            )
            for i, v in enumerate(volumes)
        ],
        batch_size=batch,
    )
    now = timezone.now()
    CaseLock.objects.bulk_create(
        [
            CaseLock(case=c, user_id=c.assignee_id, taken_at=now, expires_at=now + timedelta(minutes=5))
            for c in cases
            if c.status == Case.Status.IN_PROGRESS
        ],
        batch_size=batch,
    )
    return project, annotators[0]
