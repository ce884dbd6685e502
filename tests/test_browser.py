"""The annotation pages in a real browser: Debian's Chromium (headless, WebGL in software) driven by
Playwright against the live Django server, with real PostgreSQL, Redis, Orthanc and Celery workers.

One case from log-in to the PACS: an annotator opens the worklist, takes the hippocampus case ingested
from Orthanc, sees it rendered, asks the model for a mask with a box and a click (LiteMedSAM on the
`interactive` queue), paints, saves, reloads and finds the same mask, submits; a reviewer approves and
the DICOM SEG lands in Orthanc with that mask. A fresh case at cold start (no embeddings): the first box
is answered at once, the page says how far the model's slices are while they are encoded, and the effort
it saves counts the annotator's boxes, clicks and model calls, not its own follow-ups.

Needs the browser bundle (`cd frontend && npm run build`, which deploy/test.sh does) and
/usr/bin/chromium (deploy/test.sh installs it). On failure, screenshots of the pages it drove are kept
under tests/artifacts/<test>/.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from accounts.roles import Role
from accounts.services import user_create
from annotation.masks import mask_read
from annotation.models import Case, MaskVersion, Review
from annotation.services import LabelSpec, project_create, project_volumes_add, volume_embeddings_compute
from annotation.tests.conftest import make_volume  # noqa: F401 (a fixture)
from annotator.celery import app
from ml_worker.io.seg import seg_to_mask
from pacs import dicomweb as dw
from pacs.services.ingest import series_ingest
from pacs.services.sync import pacs_source_sync
from studies.models import Series, Volume
from tests.conftest import ARTIFACTS, item_failed

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # ~1 min of embeddings on a CPU, then a browser with software WebGL: generous on a busy machine
    pytest.mark.timeout(900),
]

CHROMIUM = "/usr/bin/chromium"
BUNDLE = Path(settings.STATICFILES_DIRS[0]) / "annotation" / "case.js"
PASSWORD = "a-browser-test-password"
# Pure colours, so the overlay is told from the grey image by its pixels.
ANTERIOR, POSTERIOR = 1, 2
LABELS = [LabelSpec(ANTERIOR, "anterior", "#ff0000"), LabelSpec(POSTERIOR, "posterior", "#00ff00")]
VIEWPORT = {"width": 1400, "height": 900}
PAGE_READY_MS = 180_000  # the volume over HTTP, NiiVue's shaders compiled by SwiftShader
MODEL_MS = 180_000  # a click through the interactive queue, on a machine maybe busy
SAVE_MS = 60_000


# ---- the world: the case, its people, the workers ----------------------------------------------------


@pytest.fixture
def hippo_case(pacs_source, shared_data) -> Case:
    """HIPPO-001 ingested from the session Orthanc (35 slices), as the one case of a two-class project."""
    pacs_source_sync(source_id=pacs_source.id)
    series = Series.objects.get(study__patient_id="HIPPO-001", modality="MR")
    series_ingest(series_id=series.id)
    volume = Volume.objects.get(series=series)
    project = project_create(
        name="Hippocampus (browser)", labels=LABELS, user=None, modality="MR", interactive_model="litemedsam"
    )
    project_volumes_add(project=project, volumes=[volume], user=None)
    return Case.objects.select_related("volume__series__study", "project").get(project=project)


@pytest.fixture
def truth(shared_data, hippo_case) -> np.ndarray:
    """The reference labels of HIPPO-001 on the ingested volume's grid (only to aim the prompts)."""
    labels = np.asarray(nib.load(shared_data / "hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj)
    assert labels.shape == tuple(hippo_case.volume.shape)
    return labels.astype(np.uint8)


@pytest.fixture
def people(db) -> dict[Role, str]:
    """An annotator and a reviewer who log in with PASSWORD; their usernames by role."""
    return {
        role: user_create(username=f"{role.value}-br", role=role, password=PASSWORD)[0].username
        for role in (Role.ANNOTATOR, Role.REVIEWER)
    }


@pytest.fixture
def workers(settings) -> Iterator[None]:
    """A Celery worker in this process on the queues of the flow: interactive (clicks), gpu (embeddings)
    and cpu (the SEG export), two threads so a click never waits behind another task.

    One worker, not one per queue as deployed: embedded workers in one process share kombu's event
    loop, and a second one makes their shutdown hang on a Redis socket now and then."""
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120  # a busy 2-core machine; the page waits as long
    app.control.purge()  # tasks other tests left queued
    with start_worker(
        app,
        queues=["interactive", "gpu", "cpu"],
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=120,
    ):
        yield


# ---- the browser ----------------------------------------------------------------------------------


class Pages:
    """Browser contexts (one per person) and their pages; screenshots of the pages as the test goes,
    kept under tests/artifacts/<test>/ with the pages' console output when the test fails."""

    def __init__(self, browser: Browser, folder: Path) -> None:
        self.browser = browser
        self.folder = folder
        self.contexts: list[BrowserContext] = []
        self.log: list[str] = []
        self.page_errors: list[str] = []
        self.shots = 0

    def open(self, who: str) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("console", lambda m: self.log.append(f"[{who}] {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.page_errors.append(f"[{who}] {e}"))
        return page

    def shot(self, page: Page, name: str) -> None:
        self.shots += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(self.folder / f"{self.shots:02d}-{name}.png"), full_page=True)

    def keep(self, target: Path) -> None:
        """On failure: what was taken so far, the pages as they are now, and their console."""
        for n, context in enumerate(self.contexts):
            for m, page in enumerate(context.pages):
                try:
                    self.shot(page, f"at-failure-{n}-{m}")
                except Exception as exc:  # a crashed page: keep the rest
                    self.log.append(f"no screenshot of context {n} page {m}: {exc}")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "console.log").write_text("\n".join(self.log + self.page_errors) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.folder, target)


@pytest.fixture
def pages(request, tmp_path, monkeypatch) -> Iterator[Pages]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (deploy/test.sh does)"
    assert BUNDLE.exists(), f"{BUNDLE} is missing: build it with `cd frontend && npm run build`"
    # Playwright's sync API keeps an asyncio loop running on this thread between calls; Django would
    # then refuse the test's own (synchronous) ORM reads as if they came from async code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        recorder = Pages(browser, tmp_path / "screenshots")
        try:
            yield recorder
        finally:
            if item_failed(request.node):
                recorder.keep(ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name))
            browser.close()


def log_in(page: Page, base: str, username: str) -> None:
    """Open the projects page as a stranger, get the login form, and come back through it."""
    page.goto(f"{base}/projects/")
    page.wait_for_selector("form.login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{base}/projects/")
    assert username in page.inner_text("header.topbar .who")


def wait_ready(page: Page) -> None:
    page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=PAGE_READY_MS)


def wait_metrics(page: Page, condition: str, timeout: float) -> None:
    """Wait until `condition` on `m` (window.annotator.metrics) holds, or the page reports an error."""
    page.wait_for_function(
        f"() => {{ const m = window.annotator.metrics; return m.errors.length > 0 || ({condition}); }}",
        timeout=timeout,
    )
    errors = page.evaluate("() => window.annotator.metrics.errors")
    assert not errors, f"the page reported: {errors} (status: {page.inner_text('#status')})"


def no_page_errors(page: Page) -> None:
    errors = page.evaluate("() => window.annotator.metrics.errors")
    assert not errors, f"the page reported: {errors} (status: {page.inner_text('#status')})"


def native_mask(page: Page, shape: tuple[int, int, int]) -> np.ndarray:
    """The label map the viewer holds, in the server's (NIfTI) voxel order."""
    flat = page.evaluate("() => Array.from(window.annotator.page.viewer.nativeMask())")
    return np.asarray(flat, np.uint8).reshape(shape, order="F")


def canvas_pixels(page: Page) -> dict[str, float]:
    """What the viewer canvas shows: the lit fraction (the image) and the pixels of each class colour."""
    rgb = np.asarray(Image.open(BytesIO(page.locator("#viewer-canvas").screenshot())).convert("RGB"), int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "lit": float((rgb.max(axis=2) > 20).mean()),
        "grey_levels": len(np.unique(rgb[..., 0][np.abs(r - g) < 8])),
        "red": int(((r > g + 60) & (r > b + 60)).sum()),
        "green": int(((g > r + 60) & (g > b + 60)).sum()),
    }


# Native voxel -> page point on the 2D view drawn in `tile` (the viewer moves its crosshair there).
JS_POINT = "([ijk, tile]) => window.annotator.page.viewer.pagePoint(ijk, tile)"


def point(page: Page, ijk, tile: int) -> tuple[float, float]:
    x, y = page.evaluate(JS_POINT, [[int(v) for v in ijk], tile])
    return x, y


def drag(page: Page, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


AXIAL, CORONAL = 0, 1  # NiiVue's axCorSag


@dataclass(frozen=True)
class View:
    tile: int  # where NiiVue draws it on the canvas
    normal: int  # the native axis it looks along

    def drag(self, page: Page, lo, hi) -> None:
        """Drag from voxel `lo` to voxel `hi` (both on the view's slice) as a person would."""
        drag(page, point(page, lo, self.tile), point(page, hi, self.tile))


def view_of(page: Page, axcorsag: int) -> View:
    tile, normal = page.evaluate(
        """(view) => {
          const v = window.annotator.page.viewer;
          // axial slices are stacked along RAS z, coronal along y, sagittal along x
          const tile = v.nv.screenSlices.findIndex((s) => s.axCorSag === view);
          return [tile, v.orientation.rasAxis.indexOf(2 - view)];
        }""",
        axcorsag,
    )
    assert tile >= 0, f"the layout shows no view {axcorsag}"
    return View(tile=tile, normal=normal)


def largest_slice(mask: np.ndarray, axis: int) -> int:
    return int(np.argmax(mask.sum(axis=tuple(n for n in range(3) if n != axis))))


def extent(mask: np.ndarray, *, shape, insert: tuple[int, int] | None = None, margin: int = 2):
    """The voxel corners around a mask's voxels, `margin` out and inside the volume; a 2D mask gets the
    third coordinate from `insert` (axis, index)."""
    found = np.argwhere(mask)
    lo, hi = found.min(axis=0) - margin, found.max(axis=0) + margin
    if insert is not None:
        lo, hi = np.insert(lo, insert[0], insert[1]), np.insert(hi, insert[0], insert[1])
    return np.maximum(lo, 0), np.minimum(hi, np.asarray(shape) - 1)


def close(sent, drawn, tolerance: int = 1) -> bool:
    """A voxel sent for a drawn corner: a canvas point on a voxel's edge may land on its neighbour."""
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(sent, drawn, strict=True))


def until(what: str, check: Callable[[], object], timeout: float = 180.0):
    """Poll `check` (ORM reads, PACS queries) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"gave up after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)
    return found


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


# ---- the flow -------------------------------------------------------------------------------------


def test_annotate_review_and_export_in_the_browser(
    live_server, hippo_case, truth, people, workers, pages, seg_removed_after
):
    case, base = hippo_case, live_server.url
    shape = tuple(case.volume.shape)
    # The embeddings first (the gpu task's service, run here): the model tools must not race them.
    volume_embeddings_compute(volume_id=case.volume_id)

    # -- the annotator: projects, worklist, Next case
    page = pages.open("annotator")
    model_requests: list[dict] = []
    page.on(
        "request",
        lambda r: model_requests.append(r.post_data_json) if r.url.endswith("/interactive/") else None,
    )
    log_in(page, base, people[Role.ANNOTATOR])
    pages.shot(page, "projects")
    page.click(f"text={case.project.name}")
    page.wait_for_url(f"{base}/projects/{case.project_id}/")
    row = page.locator(f"tr[data-case='{case.id}']")
    assert "new" in row.inner_text()
    pages.shot(page, "worklist")
    page.click("#next-case")
    page.wait_for_url(f"{base}/cases/{case.id}/")
    wait_ready(page)
    pages.shot(page, "case")
    assert "You hold this case" in page.inner_text("#lock-banner")
    case.refresh_from_db()
    assert case.status == Case.Status.IN_PROGRESS and case.assignee.username == people[Role.ANNOTATOR]

    # -- the volume is on the canvas (the background is black), with no mask yet
    shown = canvas_pixels(page)
    assert shown["lit"] > 0.2 and shown["grey_levels"] > 30, f"the canvas shows no image: {shown}"
    assert shown["red"] == 0 and shown["green"] == 0, f"a mask is shown before any edit: {shown}"
    assert not native_mask(page, shape).any()

    # -- boxes around the anterior part on the axial view, then the coronal one (the two make the 3D
    # box: the model segments only within its slices), then a positive click in the axial slice
    target = truth == ANTERIOR
    page.keyboard.press("1")
    page.keyboard.press("x")
    axial = view_of(page, AXIAL)
    s = largest_slice(target, axial.normal)
    lo, hi = extent(np.take(target, s, axis=axial.normal), insert=(axial.normal, s), shape=shape)
    axial.drag(page, lo, hi)
    wait_metrics(page, "m.modelCalls.length >= 1", MODEL_MS)
    box = model_requests[-1]["box"]
    assert box["lo"][axial.normal] == box["hi"][axial.normal] == s, box  # one slice, so far
    assert close(box["lo"], lo) and close(box["hi"], hi), (box, lo, hi)
    assert (native_mask(page, shape) == ANTERIOR).any(), "the box gave no anterior voxels"

    coronal = view_of(page, CORONAL)
    c = largest_slice(target, coronal.normal)
    lo3, hi3 = extent(target, shape=shape)  # around the whole structure, drawn on its fullest slice
    lo3[coronal.normal] = hi3[coronal.normal] = c
    coronal.drag(page, lo3, hi3)
    wait_metrics(page, "m.modelCalls.length >= 2", MODEL_MS)
    box = model_requests[-1]["box"]
    lo3[coronal.normal], hi3[coronal.normal] = min(lo[coronal.normal], c), max(hi[coronal.normal], c)
    assert close(box["lo"], lo3) and close(box["hi"], hi3), (box, lo3, hi3)

    in_slice = np.argwhere(np.take(target, s, axis=axial.normal))
    ijk = np.insert(in_slice[len(in_slice) // 2], axial.normal, s)
    page.keyboard.press("c")
    page.mouse.click(*point(page, ijk, axial.tile))
    wait_metrics(page, "m.modelCalls.length >= 3", MODEL_MS)
    assert len(model_requests) == 3
    assert model_requests[-1]["clicks"] == [{"ijk": ijk.tolist(), "positive": True}]
    assert model_requests[-1]["box"] == box
    modelled = native_mask(page, shape)
    anterior = modelled == ANTERIOR
    assert anterior[tuple(ijk)], "the positively clicked voxel is not in the mask"
    assert set(np.unique(modelled)) == {0, ANTERIOR}
    # the mask is on the structure it was shown, across the box's slices (zero-shot LiteMedSAM propagated
    # slice to slice reaches a Dice of ~0.54 here: this checks where the mask is, not its quality)
    assert dice(anterior, target) > 0.3, f"Dice {dice(anterior, target):.2f} with the reference"
    assert len(np.unique(np.nonzero(anterior)[2])) > 3, "the mask did not propagate across slices"
    point(page, ijk, axial.tile)  # the crosshair on the clicked voxel: every 2D view shows the mask there
    overlay = canvas_pixels(page)
    assert overlay["red"] > 20 and overlay["green"] == 0, f"the model's mask is not drawn: {overlay}"
    pages.shot(page, "model-mask")
    page.keyboard.press("n")  # navigate: a click moves the crosshair, and the readout says what is there
    page.mouse.click(*point(page, ijk, axial.tile))
    i, j, k = ijk.tolist()
    expect(page.locator("#location")).to_have_text(
        re.compile(rf"^voxel {i}, {j}, {k} · value -?[\d.]+ · anterior$")
    )
    pages.shot(page, "readout")

    # -- a brush stroke of the posterior class
    page.keyboard.press("2")
    page.keyboard.press("b")
    page.keyboard.press("]")
    start = point(page, ijk, axial.tile)
    drag(page, start, (start[0] + 40, start[1] + 12), steps=10)
    painted = native_mask(page, shape)
    assert ((painted == POSTERIOR) & (modelled != POSTERIOR)).sum() > 0, "the brush painted nothing"
    assert canvas_pixels(page)["green"] > 0

    # -- save: the stored head version is what the page shows
    page.click("#save")
    wait_metrics(page, "m.saves.length >= 1 && !document.body.classList.contains('dirty')", SAVE_MS)
    versions = list(MaskVersion.objects.filter(case=case).order_by("number"))
    head = versions[-1]
    assert head.display_number == page.evaluate("() => window.annotator.metrics.saves.at(-1).version")
    np.testing.assert_array_equal(mask_read(head.path), painted)
    assert head.author.username == people[Role.ANNOTATOR]
    # effort since the last version, summed over versions (an autosave may have split it)
    assert sum(v.clicks for v in versions) == 3 and sum(v.model_calls for v in versions) == 3
    assert sum(v.strokes for v in versions) == 1 and sum(v.seconds for v in versions) > 0

    # -- reload: the same mask comes back from the server
    page.reload()
    wait_ready(page)
    np.testing.assert_array_equal(native_mask(page, shape), mask_read(head.path))
    assert f"Version {head.display_number}" in page.inner_text("#version-info")
    point(page, ijk, axial.tile)
    reloaded = canvas_pixels(page)
    assert reloaded["red"] > 0 and reloaded["green"] > 0, f"the reloaded mask is not drawn: {reloaded}"
    pages.shot(page, "reloaded")

    # -- submit
    page.click("#submit")
    page.wait_for_selector("body.read-only", state="attached", timeout=SAVE_MS)
    assert page.inner_text("#case-status") == "submitted"
    case.refresh_from_db()
    assert case.status == Case.Status.SUBMITTED
    assert MaskVersion.objects.filter(case=case).order_by("number").last() == head  # nothing new saved
    pages.shot(page, "submitted")

    # -- the reviewer, in a browser of their own: worklist, the case, approve
    review_page = pages.open("reviewer")
    log_in(review_page, base, people[Role.REVIEWER])
    review_page.click(f"text={case.project.name}")
    row = review_page.locator(f"tr[data-case='{case.id}']")
    assert "submitted" in row.inner_text()
    row.locator(f"a[href='/cases/{case.id}/']").click()
    wait_ready(review_page)
    assert "review it below" in review_page.inner_text("#lock-banner")
    np.testing.assert_array_equal(native_mask(review_page, shape), mask_read(head.path))
    review_page.wait_for_selector("#review-panel", state="visible")
    pages.shot(review_page, "review")
    review_page.click("#approve")
    review_page.wait_for_function(
        "() => /Approved version/.test(document.getElementById('lock-banner').textContent)", timeout=SAVE_MS
    )
    assert not review_page.evaluate("() => window.annotator.metrics.errors")
    pages.shot(review_page, "approved")
    case.refresh_from_db()
    assert case.status == Case.Status.APPROVED

    # -- the export task (queue cpu) puts the SEG in Orthanc: the saved mask, voxel for voxel
    review = Review.objects.get(case=case)
    assert review.version == head and review.reviewer.username == people[Role.REVIEWER]
    review = until(
        "the SEG export",
        lambda: Review.objects.filter(pk=review.pk).exclude(export_status=Review.Export.PENDING).first(),
    )
    if review.seg_series_instance_uid:
        seg_removed_after.append(review.seg_series_instance_uid)
    assert review.export_status == Review.Export.DONE, review.export_error
    study_uid = case.volume.series.study.study_instance_uid
    client = dw.client_for(case.volume.series.study.source)
    segs = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    assert review.seg_series_instance_uid in [dw.value(s, "0020000E") for s in segs]
    seg = client.retrieve_instance(study_uid, review.seg_series_instance_uid, review.seg_sop_instance_uid)
    back, names = seg_to_mask(seg, sop_instance_uids=case.volume.sop_instance_uids, shape=shape)
    np.testing.assert_array_equal(back, mask_read(head.path))
    assert names == {ANTERIOR: "anterior", POSTERIOR: "posterior"}
    assert not pages.page_errors, pages.page_errors


# ---- a fresh case at cold start (issue 15): readiness while slices are encoded, effort as done ------------


@pytest.fixture
def late_gpu_worker(settings) -> Iterator[Callable[[], None]]:
    """The worker of `workers` on the interactive and cpu queues only; calling what it yields makes it
    consume the gpu queue too (the embeddings task), as when the gpu worker is busy elsewhere when a case
    is taken and comes to it later. So a first box meets a volume of which only the slices the prompts
    are on are encoded (by the interactive worker), whatever the machine's speed."""
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120
    app.control.purge()
    with start_worker(
        app,
        queues=["interactive", "cpu"],
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=120,
    ) as worker:

        def gpu_joins() -> None:
            replies = app.control.add_consumer("gpu", destination=[worker.hostname], reply=True, timeout=30)
            assert replies and all("ok" in r for reply in replies for r in reply.values()), replies

        yield gpu_joins
        # The embeddings task goes on with the rest of the volume after the test's slab, and the worker's
        # stop does not wait for it: let it end here, or it outlives the test (its DB session then
        # blocks the test database's teardown, and it writes into a media folder that is gone).
        inspect = app.control.inspect(destination=[worker.hostname], timeout=10)
        until("the worker's tasks to end", lambda: (inspect.active() or {}).get(worker.hostname) == [], 600)


# Every text #model-readiness showed (and "" when hidden), in order, from the page's start.
JS_WATCH_READINESS = """() => {
  const el = document.getElementById('model-readiness');
  window.readinessSeen = [el.hidden ? '' : el.textContent];
  new MutationObserver(() => window.readinessSeen.push(el.hidden ? '' : el.textContent))
    .observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
}"""
READINESS = re.compile(r"^preparing the model: (\d+) of (\d+) slices$")
JS_SETTLED = """() => {
  const el = document.getElementById('model-readiness');
  const m = window.annotator.metrics;
  return m.errors.length > 0 || (el.hidden && !document.body.classList.contains('model-busy'));
}"""


def prompted(body: dict) -> tuple:
    """What a model request asks: its class, box and clicks (a request asking the same again is a
    follow-up while slices arrive, or a retry)."""
    return body["label"], json.dumps(body["box"], sort_keys=True), json.dumps(body["clicks"], sort_keys=True)


def test_a_first_box_on_a_fresh_case_answers_and_effort_counts_real_actions(
    live_server, hippo_case, truth, people, late_gpu_worker, pages
):
    case, base = hippo_case, live_server.url
    shape = tuple(case.volume.shape)
    assert not any((Path(settings.MEDIA_ROOT) / "embeddings").glob("*.npy")), "not a fresh volume"

    page = pages.open("annotator")
    answered: list[tuple[dict, int]] = []  # each model request the page made, with its answer's status
    saved: list[dict] = []
    page.on(
        "response",
        lambda r: (
            answered.append((r.request.post_data_json, r.status))
            if r.url.endswith("/interactive/")
            else saved.append(r.request.post_data_json)
            if r.url.endswith("/versions/create/")
            else None
        ),
    )
    log_in(page, base, people[Role.ANNOTATOR])
    page.goto(f"{base}/projects/{case.project_id}/")
    page.click("#next-case")  # takes the case: its embeddings task is queued (no gpu worker yet)
    page.wait_for_url(f"{base}/cases/{case.id}/")
    wait_ready(page)
    page.evaluate(JS_WATCH_READINESS)

    # -- at once, a box around the anterior part on its fullest axial slice, and right after it (while
    # the first request still runs) the same structure's extent on the coronal view: the 3D box
    target = truth == ANTERIOR
    page.keyboard.press("1")
    page.keyboard.press("x")
    axial, coronal = view_of(page, AXIAL), view_of(page, CORONAL)
    s = largest_slice(target, axial.normal)
    lo, hi = extent(np.take(target, s, axis=axial.normal), insert=(axial.normal, s), shape=shape)
    axial.drag(page, lo, hi)
    c = largest_slice(target, coronal.normal)
    lo3, hi3 = extent(target, shape=shape)
    lo3[coronal.normal] = hi3[coronal.normal] = c
    coronal.drag(page, lo3, hi3)

    # -- the 3D box is answered on the slices encoded so far, and the page says how far the model is
    page.wait_for_function(
        "() => window.annotator.metrics.errors.length > 0"
        " || !document.getElementById('model-readiness').hidden",
        timeout=MODEL_MS,
    )
    no_page_errors(page)
    readiness = page.inner_text("#model-readiness")
    ready, total = map(int, READINESS.match(readiness).groups())
    assert 1 <= ready < total, readiness
    assert (native_mask(page, shape) == ANTERIOR).any(), "the first answer gave no anterior voxels"
    # the project has no adapted model yet: the bundled LiteMedSAM answers, named as a person knows it
    assert page.inner_text("#model-answer") == "answered by LiteMedSAM (bundled)"
    pages.shot(page, "preparing")

    # -- a positive click while slices are still missing (a follow-up may be running: it goes after it)
    in_slice = np.argwhere(np.take(target, s, axis=axial.normal))
    ijk = np.insert(in_slice[len(in_slice) // 2], axial.normal, s)
    page.keyboard.press("c")
    with page.expect_response(
        lambda r: r.url.endswith("/interactive/") and bool(r.request.post_data_json["clicks"]),
        timeout=MODEL_MS,
    ) as click_answer:
        page.mouse.click(*point(page, ijk, axial.tile))
    assert click_answer.value.status == 200, click_answer.value.text()
    no_page_errors(page)

    # -- the gpu worker comes: the slab is encoded, the mask grows, the readiness goes away
    late_gpu_worker()
    page.wait_for_function(JS_SETTLED, timeout=MODEL_MS)
    no_page_errors(page)
    grown = native_mask(page, shape) == ANTERIOR
    slab = np.unique(np.nonzero(grown)[axial.normal])
    assert len(slab) > ready, f"the mask did not grow beyond the {ready} slices first ready: {slab}"
    assert dice(grown, target) > 0.3, f"Dice {dice(grown, target):.2f} with the reference"
    seen = [t for t in page.evaluate("() => window.readinessSeen") if t]
    counts = [tuple(map(int, READINESS.match(t).groups())) for t in seen]
    assert counts and all(n == total for _, n in counts), seen
    assert [r for r, _ in counts] == sorted(r for r, _ in counts), f"readiness went back: {seen}"
    pages.shot(page, "ready")

    # -- now that every slice is in, a negative click on a voxel of the mask (outside the structure where
    # the mask has any such voxel): the answer takes it out, so the mask changes and is saved
    in_mask = np.take(grown, s, axis=axial.normal)
    wrong = np.argwhere(in_mask & ~np.take(target, s, axis=axial.normal))
    ijk_out = np.insert((wrong if len(wrong) else np.argwhere(in_mask))[0], axial.normal, s)
    page.keyboard.press("v")
    with page.expect_response(
        lambda r: r.url.endswith("/interactive/") and len(r.request.post_data_json["clicks"]) == 2,
        timeout=MODEL_MS,
    ):
        page.mouse.click(*point(page, ijk_out, axial.tile))
    page.wait_for_function(JS_SETTLED, timeout=MODEL_MS)
    no_page_errors(page)
    assert native_mask(page, shape)[tuple(ijk_out)] != ANTERIOR, "the negative click was ignored"

    # -- every request was answered; the real ones are those that asked something new
    assert all(status == 200 for _, status in answered), [status for _, status in answered]
    real = [
        body
        for n, (body, _) in enumerate(answered)
        if n == 0 or prompted(body) != prompted(answered[n - 1][0])
    ]
    assert [len(b["clicks"]) for b in real] == [0, 0, 1, 2], real  # axial box, 3D box, two clicks
    assert len(answered) > len(real), "no follow-up while slices arrived: the case was not fresh"

    # -- save: the effort the page sends (and the versions keep) counts what the annotator did
    page.click("#save")
    wait_metrics(page, "m.saves.length >= 1 && !document.body.classList.contains('dirty')", SAVE_MS)
    sent = [body["effort"] for body in saved]
    assert sum(e["clicks"] for e in sent) == 4, sent  # two boxes (axial, coronal) and two clicks
    assert sum(e["model_calls"] for e in sent) == len(real) == 4, sent
    assert sum(e["strokes"] for e in sent) == 0, sent
    versions = MaskVersion.objects.filter(case=case)
    assert sum(v.clicks for v in versions) == 4 and sum(v.model_calls for v in versions) == 4
    assert not pages.page_errors, pages.page_errors


# ---- review feedback, double reading, landing (issue 17): small synthetic volumes, no model --------------


@pytest.fixture
def team(db) -> dict[str, str]:
    """Two annotators, a reviewer and an admin who log in with PASSWORD; usernames by name."""
    roles = {"annotator": Role.ANNOTATOR, "annotator2": Role.ANNOTATOR, "reviewer": Role.REVIEWER}
    roles["admin"] = Role.ADMIN
    return {
        name: user_create(username=f"{name}-br", role=role, password=PASSWORD)[0].username
        for name, role in roles.items()
    }


@pytest.fixture
def small_project(db, make_volume) -> Case:  # noqa: F811 (the fixture imported above)
    """A two-class project of one synthetic 32x32x8 volume (ramp image), read once."""
    project = project_create(name="Small (browser)", labels=LABELS, user=None, modality="MR")
    project_volumes_add(project=project, volumes=[make_volume(shape=(32, 32, 8))], user=None)
    return project


def drawn(rows: int) -> np.ndarray:
    """Anterior in `rows` rows of a block, posterior in another block."""
    mask = np.zeros((32, 32, 8), np.uint8)
    mask[8 : 8 + rows, 8:16, 2:6] = ANTERIOR
    mask[20:26, 20:26, 2:6] = POSTERIOR
    return mask


def submit_as(project, username: str, mask: np.ndarray) -> Case:
    from accounts.models import User
    from annotation.services import Effort, case_submit, mask_version_create, next_case_take

    user = User.objects.get(username=username)
    case = next_case_take(project=project, user=user)
    version = mask_version_create(case=case, user=user, parent=None, mask=mask, effort=Effort(seconds=30))
    case_submit(case=case, user=user, version=version)
    return case


def log_in_here(page: Page, base: str, username: str) -> None:
    """Log in from the login page itself, as a person does after opening the site."""
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


# What a worklist filter's placeholder needs and what it has, in pixels.
JS_PLACEHOLDERS = """() => [...document.querySelectorAll('.filters input[placeholder]')].map((el) => {
  const cs = getComputedStyle(el); const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = cs.font;
  return [el.name, ctx.measureText(el.placeholder).width, el.clientWidth - parseFloat(cs.paddingLeft)
          - parseFloat(cs.paddingRight)];
})"""


def test_each_role_lands_on_its_work(live_server, team, small_project, pages):
    base, project = live_server.url, small_project
    landing = {
        "admin": "/overview/",
        "annotator": f"/projects/{project.id}/",
        "reviewer": f"/projects/{project.id}/?status=submitted",
    }
    for name, path in landing.items():
        page = pages.open(name)
        log_in_here(page, base, team[name])
        assert page.url == base + path, name
        pages.shot(page, f"landing-{name}")
        nav = page.inner_text("header.topbar nav")
        assert ("Studies" in nav) == (name == "admin") and ("Overview" in nav) == (name == "admin")
        if name == "annotator":  # the filters' placeholders are not cut off
            for field, needs, has in page.evaluate(JS_PLACEHOLDERS):
                assert needs <= has, (
                    f"the {field} filter shows {has:.0f} of {needs:.0f} px of its placeholder"
                )


def test_a_rejection_comment_reaches_the_annotator(live_server, team, small_project, pages):
    base, project = live_server.url, small_project
    case = submit_as(project, team["annotator"], drawn(4))

    reviewer = pages.open("reviewer")
    log_in_here(reviewer, base, team["reviewer"])
    reviewer.click(f"tr[data-case='{case.id}'] a[href='/cases/{case.id}/']")
    wait_ready(reviewer)
    reviewer.fill("#review-comment", "Anterior tail missing on slices 3-4")
    reviewer.click("#reject")
    reviewer.wait_for_function("() => /Rejected/.test(document.getElementById('lock-banner').textContent)")
    pages.shot(reviewer, "rejected")

    annotator = pages.open("annotator")
    log_in_here(annotator, base, team["annotator"])
    row = annotator.locator(f"tr[data-case='{case.id}']")
    assert "Anterior tail missing on slices 3-4" in row.inner_text() and "rejected" in row.inner_text()
    row.locator(f"a[href='/cases/{case.id}/']").click()
    wait_ready(annotator)  # the annotator takes it again: the comment stays until they submit
    banner = annotator.locator("#rejection-banner")
    assert banner.is_visible() and "Anterior tail missing on slices 3-4" in banner.inner_text()
    assert "Rejected version 1" in annotator.inner_text("#history")
    pages.shot(annotator, "rejection-seen")
    assert not pages.page_errors, pages.page_errors


def test_double_reading_compared_and_agreement_reported(live_server, team, small_project, pages):
    from annotation.readings.services import project_double_reading_set

    base, project = live_server.url, small_project
    project_double_reading_set(project=project, percent=100, user=None)
    first = submit_as(project, team["annotator"], drawn(4))
    second = submit_as(project, team["annotator2"], drawn(2))
    assert (first.reading, second.reading) == (1, 2)

    reader = pages.open("annotator")  # a reader does not see the other reading's mask
    log_in_here(reader, base, team["annotator"])
    reader.goto(f"{base}/cases/{second.id}/")
    assert reader.locator("#hidden-reading").is_visible()

    reviewer = pages.open("reviewer")
    log_in_here(reviewer, base, team["reviewer"])
    reviewer.click(f"tr[data-case='{first.id}'] a.compare")
    reviewer.wait_for_url(f"{base}/cases/{first.id}/compare/")
    assert reviewer.inner_text("tr[data-class='1'] td.dice") == "0.667"  # 64 and 32 voxels, 32 shared
    assert reviewer.inner_text("tr[data-class='2'] td.dice") == "1.000"
    reviewer.wait_for_function("() => document.getElementById('readings-picture').naturalWidth > 0")
    pages.shot(reviewer, "compare")
    reviewer.check("input[name=decision][value=second]")
    reviewer.click("#adjudicate button[type=submit]")
    reviewer.wait_for_selector("#adjudication")
    assert "kept reading 2" in reviewer.inner_text("#adjudication")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Case.Status.ADJUDICATED, Case.Status.APPROVED)

    admin = pages.open("admin")
    log_in_here(admin, base, team["admin"])
    admin.goto(f"{base}/projects/{project.id}/learning/")
    rows = admin.locator("#reader-agreement tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-reader") == team["annotator"]  # the least agreeing first
    assert (
        rows.nth(0).locator("td.final").inner_text() == "0.833"
        and rows.nth(1).locator("td.final").inner_text() == "1.000"
    )
    pages.shot(admin, "agreement")
    assert not pages.page_errors, pages.page_errors


def test_an_admin_approves_their_own_work_only_with_a_reason(live_server, team, small_project, pages):
    base, project = live_server.url, small_project
    case = submit_as(project, team["admin"], drawn(3))
    admin = pages.open("admin")
    log_in_here(admin, base, team["admin"])
    admin.goto(f"{base}/cases/{case.id}/")
    wait_ready(admin)
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept("the only reviewer on call tonight")

    admin.once("dialog", answer)
    admin.click("#approve")
    admin.wait_for_function(
        "() => /Approved version 1/.test(document.getElementById('lock-banner').textContent)"
    )
    assert "another reviewer approves it" in asked[0]
    review = Review.objects.get(case=case)
    assert review.override_reason == "the only reviewer on call tonight"
    assert not pages.page_errors, pages.page_errors
