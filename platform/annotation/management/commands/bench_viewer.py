"""Time the case viewer in headless Chromium against this Django with a Celery worker in this process;
prints JSON: first paint of a synthetic MR volume, and the model clicks of a volume whose embeddings are
cached (time from the click to the mask in the viewer, p50/p95; bytes each click sends and receives).

`--checkpoint FILE`: the bench project gets an active model version with those native 3D weights (made
as a learning round's candidate is recorded, then promoted), so its boxes and clicks go to the native
net as the platform routes them. `--train-beside`: the clicks are timed twice, alone and while a
training runs beside them in a separate process (`python -m ml_worker train ... --threads 1` on the
shared hippocampus cases, the training a learning round runs), stopped when the clicks end.

It runs in a database of its own (created here and dropped at the end) and a temporary media folder,
so it leaves nothing behind. Needs PostgreSQL, the configured Redis broker (no other worker should
consume its queues meanwhile), the browser bundle (`cd frontend && npm run build`), /usr/bin/chromium
and the playwright package. The model runs on CUDA where there is one, else on the CPU. Beside other
people's work on one machine, run it with DJANGO_SETTINGS_MODULE=annotator.settings.test: its own Redis
key prefix (no other worker takes its tasks, its purges touch nobody else's queues) and static files
served from the source folders (no collectstatic).

    python manage.py bench_viewer --clicks 10 --paint-runs 3 --shape 256 256 128
    python manage.py bench_viewer --checkpoint var/train/native_clicks.pt --train-beside --clicks 10
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, transaction
from django.test.utils import setup_databases, teardown_databases

LABELS = ((1, "anterior", "#ff0000"), (2, "posterior", "#00ff00"))
PASSWORD = "bench-viewer-password"

# Native voxel -> page point on the 2D view drawn in `tile` (the viewer moves its crosshair there).
JS_POINT = "([ijk, tile]) => window.annotator.page.viewer.pagePoint(ijk, tile)"
JS_VIEW = """(view) => {
  const v = window.annotator.page.viewer;
  return [v.nv.screenSlices.findIndex((s) => s.axCorSag === view), v.orientation.rasAxis.indexOf(2 - view)];
}"""

JS_ANSWERED = """(n) => {
  const m = window.annotator.metrics;
  return m.modelCalls.length >= n || m.errors.length > 0;
}"""


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument("--clicks", type=int, default=10, help="timed positive clicks")
        parser.add_argument("--paint-runs", type=int, default=3, help="page loads of the synthetic volume")
        parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 128], help="synthetic MR volume")
        parser.add_argument(
            "--hippocampus",
            type=Path,
            default=None,
            help="image of the clicked volume (default: hippocampus_001 of the shared data)",
        )
        parser.add_argument("--chromium", default="/usr/bin/chromium")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="native 3D weights: the bench project's active model version, which answers the clicks",
        )
        parser.add_argument(
            "--train-beside",
            action="store_true",
            help="time the clicks also while a training runs beside them (a separate process, one thread)",
        )

    def handle(
        self,
        *args,
        clicks: int,
        paint_runs: int,
        shape,
        hippocampus,
        chromium,
        seed,
        checkpoint,
        train_beside,
        **options,
    ):
        shared = Path(os.environ.get("ANNOTATOR_SHARED_DATA", settings.REPO_DIR.parent / "shared" / "data"))
        image = hippocampus or shared / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
        labels = image.parent.parent / "labelsTr" / image.name
        bundle = Path(settings.STATICFILES_DIRS[0]) / "annotation" / "case.js"
        for path, how in (
            (Path(chromium), "apt-get install chromium"),
            (bundle, "cd frontend && npm run build"),
            (image, "point --hippocampus at an MSD hippocampus image"),
            (labels, "its labelsTr file places the clicks"),
        ):
            if not path.exists():
                raise CommandError(f"{path} is missing ({how}).")
        if clicks < 1 or paint_runs < 1:
            raise CommandError("--clicks and --paint-runs must be at least 1.")
        if checkpoint is not None:
            _checkpoint_check(checkpoint)

        database = connections.settings["default"]  # normalised: TEST holds every key
        database["TEST"]["NAME"] = f"bench_viewer_{os.getpid()}"
        # Threads (web server, worker) each open a connection: closed after each request/task, so the
        # database can be dropped at the end.
        database["CONN_MAX_AGE"] = 0
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1", "localhost"]
        # The test's ORM reads run beside Playwright's sync API, which keeps an asyncio loop running on
        # this thread; nothing here is async.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        with tempfile.TemporaryDirectory(prefix="bench-viewer-") as media:
            settings.MEDIA_ROOT = Path(media)
            old = setup_databases(verbosity=0, interactive=False, aliases={"default"})
            try:
                result = _bench(
                    image=image,
                    labels=labels,
                    shape=tuple(shape),
                    clicks=clicks,
                    paint_runs=paint_runs,
                    chromium=chromium,
                    seed=seed,
                    checkpoint=checkpoint,
                    train_beside=train_beside,
                )
            finally:
                _disconnect_others()
                connections.close_all()
                teardown_databases(old, verbosity=0)
        self.stdout.write(json.dumps(result, indent=2))


def _disconnect_others() -> None:
    """End the sessions the server's and worker's threads left open on this database, so it can be
    dropped (a thread's connection closes only in that thread)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _checkpoint_check(checkpoint: Path) -> None:
    """Refuse a file the native segmenter could not load, before anything starts."""
    from ml_worker.inference.native import Native3DTask
    from ml_worker.models.checkpoints import CheckpointError

    if not checkpoint.is_file():
        raise CommandError(f"{checkpoint} is missing (--checkpoint: a native 3D weights file).")
    try:
        Native3DTask.from_checkpoint(checkpoint, device="cpu")
    except CheckpointError as exc:
        raise CommandError(f"{checkpoint} cannot answer clicks: {exc}") from None


def bench_model_activate(*, project, checkpoint: Path):
    """The project's active native model version with `checkpoint`'s weights, through the learning
    services as a round records and promotes its candidate: an adaptation job for it, its files in the
    media store, the version recorded (gate: taken as given, not judged here) and promoted. The job's
    message (queue train) and the re-scoring the promotion queues are purged before the bench's worker
    starts: nothing trains or scores. Returns the version."""
    from common.media import media_path
    from learning.models import Job
    from learning.services import job_create, model_promote, model_version_record
    from ml_worker.adaptation.round import RoundResult
    from ml_worker.models.checkpoints import file_sha256

    job, _ = job_create(
        project=project,
        kind=Job.Kind.ADAPT,
        params={"method": "full", "base_checkpoint": str(checkpoint), "trigger": "bench_viewer"},
        user=None,
    )
    weights = media_path(f"models/project-{project.id}/job-{job.id}/{checkpoint.name}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, weights)
    result = RoundResult(
        adapter=weights,
        weights=weights,
        base_sha256=file_sha256(checkpoint),
        method="full",
        history=[],
        validation={},
        active_validation=None,
        promotable=True,
        reason=f"bench_viewer --checkpoint {checkpoint.name}: taken as given, not judged here",
    )
    version = model_version_record(job=job, result=result, parent=None, base=checkpoint, snapshot=[])
    return model_promote(version=version, user=None)


class _TrainingBeside:
    """A training in a process of its own, one thread, on the shared hippocampus cases (what a learning
    round's training does to this machine), from when its first step is done until `stop`."""

    def __init__(self, *, images: Path, labels: Path, folder: Path) -> None:
        self.command = [
            sys.executable,
            "-m",
            "ml_worker",
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--test-fraction",
            "0.2",
            "--init-filters",
            "8",
            "--prompt-fraction",
            "0.5",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "100000",
            "--threads",
            "1",
            "--out",
            str(folder / "beside.pt"),
        ]
        self.log = folder / "train-beside.log"
        self.process: subprocess.Popen | None = None
        self.began = 0.0
        self.first_steps = 0

    def steps(self) -> int:
        """Steps done so far, from the trainer's progress bar."""
        found = re.findall(r"(\d+)/\d+ \[", self.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def start(self, timeout: float = 600.0) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=settings.REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + timeout
        while self.steps() < 1:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise CommandError(f"The training beside the clicks ended early:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise CommandError(f"The training beside the clicks made no step in {timeout:.0f} s.")
            time.sleep(0.5)
        self.began, self.first_steps = time.perf_counter(), self.steps()

    def stop(self) -> dict:
        """End the process; what it did while the clicks ran."""
        if self.process is None:
            return {}
        steps, seconds = self.steps() - self.first_steps, time.perf_counter() - self.began
        running = self.process.poll() is None
        if running:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        return {
            "how": "a separate process running `python -m ml_worker train` (one thread) on the shared "
            "hippocampus cases for the whole timed click phase",
            "command": " ".join(["python", *self.command[1:]]),
            "steps_during_clicks": steps,
            "seconds_per_step": round(seconds / steps, 2) if steps else None,
            "was_running_at_the_end": running,
        }


def _bench(
    *,
    image: Path,
    labels: Path,
    shape,
    clicks: int,
    paint_runs: int,
    chromium: str,
    seed: int,
    checkpoint: Path | None = None,
    train_beside: bool = False,
) -> dict:
    from celery.contrib.testing.worker import start_worker
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.test.testcases import LiveServerThread
    from playwright.sync_api import sync_playwright

    from accounts.roles import Role
    from accounts.services import user_create
    from annotation.models import Case
    from annotation.services import LabelSpec, project_create, project_volumes_add, volume_embeddings_compute
    from annotator.celery import app
    from ml_worker.models.checkpoints import select_device

    rng = np.random.default_rng(seed)
    user = user_create(username="bench-annotator", role=Role.ANNOTATOR, password=PASSWORD)[0]
    project = project_create(
        name="bench viewer",
        labels=[LabelSpec(*label) for label in LABELS],
        user=None,
        modality="MR",
        interactive_model="litemedsam",
    )
    img = nib.load(image)
    clicked = _volume(np.asarray(img.dataobj).astype(np.int16), img.affine, uid="2.25.1", name="clicked")
    synthetic = _volume(
        _synthetic_mr(shape, rng), np.diag([1.0, 1.0, 1.5, 1.0]), uid="2.25.2", name="synthetic"
    )
    project_volumes_add(project=project, volumes=[clicked, synthetic], user=None)
    cases = {c.volume_id: c for c in Case.objects.filter(project=project)}
    truth = np.asarray(nib.load(labels).dataobj) == 1

    server = LiveServerThread("127.0.0.1", static_handler=StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    base = f"http://127.0.0.1:{server.port}"
    out: dict = {"device": str(select_device(None))}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            out["chromium"] = browser.version
            # Page loads first, before any worker runs: taking the synthetic case queues its embeddings
            # (minutes on a CPU), which are purged below rather than computed beside the clicks.
            out["first_paint"] = _first_paint(browser, base, user.username, cases[synthetic.id], paint_runs)
            if checkpoint is not None:
                version = bench_model_activate(project=project, checkpoint=checkpoint)
                out["model"] = {
                    "checkpoint": str(checkpoint),
                    "sha256": version.weights_sha256,
                    "version": version.number,
                    "state": version.state,
                }
            app.control.purge()  # also what the activation queued (its round, the re-scoring)
            queues = ["interactive", "cpu"]
            if checkpoint is None:  # LiteMedSAM answers: its embeddings ahead, as for a case at the top
                began = time.perf_counter()
                volume_embeddings_compute(volume_id=clicked.id)
                out["embeddings_seconds"] = round(time.perf_counter() - began, 1)
                queues.append("gpu")
            # else the native net answers: the LiteMedSAM embeddings that taking the case queues (queue
            # gpu, minutes of a CPU core) are not served here, so only the clicks (and any training
            # beside them) use the machine; they are purged at the end.
            with start_worker(
                app,
                queues=queues,
                pool="threads",
                concurrency=2,
                perform_ping_check=False,
                shutdown_timeout=120,
            ):
                beside = None
                if train_beside:
                    beside = _TrainingBeside(
                        images=image.parent, labels=labels.parent, folder=Path(settings.MEDIA_ROOT)
                    )
                out.update(
                    _clicks(browser, base, user.username, cases[clicked.id], truth, clicks, rng, beside)
                )
            browser.close()
    finally:
        server.terminate()
        app.control.purge()
    return out


@transaction.atomic  # as the ingest does: the series row is locked while its volumes are replaced
def _volume(array: np.ndarray, affine: np.ndarray, *, uid: str, name: str):
    """A studies.Volume for `array`, as an ingest would record it (a study and series of its own)."""
    from common.media import media_relative, volumes_dir
    from ml_worker.io.volume import save_volume
    from pacs.services.sources import pacs_source_ensure_local
    from studies.services import VolumeRecord, series_upsert, series_volumes_replace, study_upsert

    study = study_upsert(
        source=pacs_source_ensure_local(),
        study_instance_uid=uid,
        patient_id=f"BENCH-{name}",
        study_date=None,
        description=f"bench {name}",
        modalities="MR",
        num_series=1,
    )
    series, _ = series_upsert(
        study=study,
        series_instance_uid=f"{uid}.1",
        modality="MR",
        description=f"bench {name}",
        series_number=1,
        num_instances=array.shape[2],
    )
    path, sha256 = save_volume(array, affine, volumes_dir())
    record = VolumeRecord(
        path=media_relative(path),
        sha256=sha256,
        shape=list(array.shape),
        spacing=[float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        affine=np.asarray(affine, float).tolist(),
        dtype=str(array.dtype),
        nbytes=int(array.nbytes),
        sop_instance_uids=[f"{uid}.1.{k}" for k in range(array.shape[2])],
        frame_numbers=[None] * array.shape[2],
        frame_of_reference_uid="",
        warnings=[],
    )
    return series_volumes_replace(
        series_id=series.id, volumes=[record], num_instances=array.shape[2]
    ).volumes.get()


def _synthetic_mr(shape, rng: np.random.Generator) -> np.ndarray:
    """A head-like MR: an ellipsoid of tissue with a darker core and smooth texture, plus noise (int16)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    texture = sum(np.sin(5 * g + p) for g, p in zip(grids, rng.uniform(0, 6, 3), strict=True))
    image = np.where(r < 0.9, 800 + 60 * texture, 0) - np.where(r < 0.4, 300, 0)
    return (image + rng.normal(0, 20, shape)).clip(0, 4000).astype(np.int16)


def _log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


def _first_paint(browser, base: str, username: str, case, runs: int) -> dict:
    """Each run in a fresh browser context (nothing cached): the page's own first-paint metric (from the
    script's start to the volume and mask drawn) and the wall time from navigation to that point."""
    page_ms, wall_ms, image_bytes = [], [], 0
    for _ in range(runs):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        _log_in(page, base, username)
        images: list = []
        page.on("request", lambda r, images=images: images.append(r) if r.url.endswith("/image/") else None)
        began = time.perf_counter()
        page.goto(f"{base}/cases/{case.id}/")
        page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=300_000)
        wall_ms.append((time.perf_counter() - began) * 1000)
        page_ms.append(page.evaluate("() => window.annotator.metrics.firstPaintMs"))
        errors = page.evaluate("() => window.annotator.metrics.errors")
        if errors:
            raise CommandError(f"The viewer reported: {errors}")
        image_bytes = images[-1].sizes()["responseBodySize"] if images else 0
        context.close()
    return {
        "shape": list(case.volume.shape),
        "runs": runs,
        "first_paint_ms": _stats(page_ms),
        "navigation_to_ready_ms": _stats(wall_ms),
        "image_bytes": image_bytes,
        "raw_bytes": int(case.volume.nbytes),
    }


def _clicks(
    browser, base: str, username: str, case, truth: np.ndarray, n: int, rng, beside: _TrainingBeside | None
) -> dict:
    """A 3D box (axial then coronal, untimed), then `n` positive clicks on voxels of the structure; with
    a training `beside`, `n` more while it runs. Returns {"clicks": ..., "clicks_train_beside": ...}."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    _log_in(page, base, username)
    calls = []
    page.on("request", lambda r: calls.append(r) if r.url.endswith("/interactive/") else None)
    page.goto(f"{base}/cases/{case.id}/")
    page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=300_000)

    def point(ijk, tile: int):
        return page.evaluate(JS_POINT, [[int(v) for v in ijk], tile])

    def answered(count: int) -> float:
        began = time.perf_counter()
        page.wait_for_function(
            JS_ANSWERED,
            arg=count,
            timeout=300_000,
        )
        errors = page.evaluate("() => window.annotator.metrics.errors")
        if errors:
            raise CommandError(f"The viewer reported: {errors}")
        return (time.perf_counter() - began) * 1000

    def box(view: int) -> None:
        tile, normal = page.evaluate(JS_VIEW, view)
        found = np.argwhere(truth)
        lo, hi = found.min(axis=0), found.max(axis=0)
        middle = int(np.argmax(truth.sum(axis=tuple(a for a in range(3) if a != normal))))
        lo[normal] = hi[normal] = middle
        page.mouse.move(*point(lo, tile))
        page.mouse.down()
        page.mouse.move(*point(hi, tile), steps=6)
        page.mouse.up()

    page.keyboard.press("1")
    page.keyboard.press("x")
    box(0)
    answered(1)
    box(1)
    answered(2)
    sent = calls[-1].post_data_json["box"]
    axial_tile, _ = page.evaluate(JS_VIEW, 0)
    page.keyboard.press("c")
    inside = np.argwhere(truth)
    inside = inside[(inside[:, 2] >= sent["lo"][2]) & (inside[:, 2] <= sent["hi"][2])]

    def timed(first: int) -> dict:
        wall_ms = []
        for k in range(n):
            ijk = inside[rng.integers(len(inside))]
            x, y = point(ijk, axial_tile)
            began = time.perf_counter()
            page.mouse.click(x, y)
            answered(first + k + 1)
            wall_ms.append((time.perf_counter() - began) * 1000)
        metrics = page.evaluate("() => window.annotator.metrics.modelCalls")[first : first + n]
        clicked = calls[first : first + n]
        mask = np.asarray(
            page.evaluate("() => Array.from(window.annotator.page.viewer.nativeMask())"), np.uint8
        )
        mask = mask.reshape(truth.shape, order="F") == 1
        return {
            "shape": list(case.volume.shape),
            "n": n,
            "answered_by": sorted({r.response().json().get("model", "?") for r in clicked}),
            # from the click's request to the mask in the viewer's drawing, as the page measures it
            "click_to_mask_ms": _stats([m["ms"] for m in metrics]),
            # from the mouse click here to the page reporting the mask (adds the browser's event round trip)
            "click_to_mask_wall_ms": _stats(wall_ms),
            "bytes_sent": _stats([m["bytesSent"] for m in metrics]),
            "bytes_received": _stats([r.sizes()["responseBodySize"] for r in clicked]),
            "dice_after_clicks": round(
                2 * float((mask & truth).sum()) / max(int(mask.sum() + truth.sum()), 1), 3
            ),
        }

    result = {"clicks": timed(2)}
    if beside is not None:
        beside.start()
        try:
            result["clicks_train_beside"] = timed(2 + n)
        finally:
            result["train_beside"] = beside.stop()
    context.close()
    return result


def _stats(values) -> dict:
    ordered = sorted(float(v) for v in values)
    rank = max(0, int(np.ceil(0.95 * len(ordered))) - 1)  # nearest rank
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[rank], 1),
        "mean": round(statistics.fmean(ordered), 1),
        "n": len(ordered),
    }
