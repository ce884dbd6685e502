"""Drive the built viewer in headless Chromium against frontend/dev/serve.py and check what reaches the
"server": the volume renders with its mask, voxel coordinates of clicks and boxes, brush + save (delta),
undo/redo, the 409 dialog and its merge, effort counters, a case held by someone else, and the prompts
drawn on the views (box outline, +/- markers on every plane through a click), taking back a click, the
answering model's name and the crisp-voxels option.

    .venv/bin/python frontend/dev/smoke.py [--screenshot PATH] [--reorient]

Needs the bundle (cd frontend && npm run build), Debian's /usr/bin/chromium and the playwright package.
Prints one JSON line; exits non-zero on the first failed check.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mock_server(*extra: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "serve.py"), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        proc.stdout.readline()  # the URL, once it listens
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get_json(url: str):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"FAILED: {what}")


# Native voxel -> page point on the 2D view drawn in `tile` (the viewer moves its crosshair there).
JS_POINT = "([ijk, tile]) => window.annotator.page.viewer.pagePoint(ijk, tile)"


def point(page: Page, ijk, view: int = 0) -> tuple[float, float]:
    x, y = page.evaluate(JS_POINT, [list(map(int, ijk)), view])
    return x, y


def native_mask(page: Page) -> np.ndarray:
    return np.array(page.evaluate("() => Array.from(window.annotator.page.viewer.nativeMask())"), np.uint8)


def server_mask(base: str, case: int = 1) -> np.ndarray:
    return np.array(get_json(f"{base}/dev/mask/{case}"), np.uint8)


def truth(reorient: bool) -> np.ndarray:
    lab = np.asarray(
        nib.load(HERE.parents[2] / "shared/data/hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj
    )
    return np.transpose(lab[::-1], (1, 2, 0)) if reorient else lab


def canvas_stats(page: Page) -> dict:
    png = page.locator("#viewer-canvas").screenshot()
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    lit = rgb.max(axis=2) > 20
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "lit_fraction": round(float(lit.mean()), 3),
        "red_overlay_px": int(((r > g + 60) & (r > b + 60)).sum()),
        "green_overlay_px": int(((g > r + 40) & (g > b + 40)).sum()),
    }


def run(page: Page, base: str, reorient: bool, screenshot: Path | None) -> dict:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/dev/case/1/")
    page.wait_for_selector("body[data-viewer-ready]", timeout=60_000)
    out: dict = {"first_paint_ms": round(page.evaluate("() => window.annotator.metrics.firstPaintMs"))}

    # the drawing, read back in NIfTI order, is the stored version 0
    lab = truth(reorient)
    check(
        np.array_equal(native_mask(page), lab.ravel(order="F")), "the shown mask is version 0 in NIfTI order"
    )
    stats = canvas_stats(page)
    check(stats["lit_fraction"] > 0.2, f"the canvas shows the volume ({stats})")
    check(
        stats["red_overlay_px"] > 50 and stats["green_overlay_px"] > 50,
        f"both classes are overlaid ({stats})",
    )
    out["canvas"] = stats
    if screenshot:  # with the 3D view, which is off by default under software WebGL
        page.select_option("#layout", "multi3d")
        page.wait_for_timeout(500)
        page.screenshot(path=str(screenshot))
        page.select_option("#layout", "multi")

    # a positive click on a voxel reaches the server as that voxel, with the box around the class
    # (no box was drawn yet: the client boxes the class's current voxels, padded by 2)
    target = np.argwhere(lab == 1)
    ijk = target[len(target) // 2]
    dims = np.array(lab.shape)
    derived = {
        "lo": np.maximum(target.min(axis=0) - 2, 0).tolist(),
        "hi": np.minimum(target.max(axis=0) + 2, dims - 1).tolist(),
    }
    page.keyboard.press("1")
    page.keyboard.press("c")
    x, y = point(page, ijk)
    page.mouse.click(x, y)
    page.wait_for_function("() => window.annotator.metrics.modelCalls.length === 1", timeout=30_000)
    sent = get_json(f"{base}/dev/log/1")[-1]["request"]
    check(
        sent == {"label": 1, "box": derived, "clicks": [{"ijk": ijk.tolist(), "positive": True}]}, f"{sent}"
    )

    # a box drawn on the axial view sets the two in-plane extents and keeps the third
    axis = page.evaluate("() => window.annotator.page.viewer.orientation.rasAxis.indexOf(2)")
    lo, hi = target.min(axis=0), target.max(axis=0)
    a, b = ijk.copy(), ijk.copy()
    for n in range(3):
        if n != axis:
            a[n], b[n] = lo[n], hi[n]
    page.keyboard.press("x")
    x0, y0 = point(page, a)
    x1, y1 = point(page, b)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    page.mouse.move(x1, y1, steps=3)
    page.mouse.up()
    page.wait_for_function("() => window.annotator.metrics.modelCalls.length === 2", timeout=30_000)
    sent = get_json(f"{base}/dev/log/1")[-1]["request"]
    exp_lo = [int(min(a[n], b[n])) for n in range(3)]
    exp_hi = [int(max(a[n], b[n])) for n in range(3)]
    exp_lo[axis] = min(derived["lo"][axis], int(a[axis]))
    exp_hi[axis] = max(derived["hi"][axis], int(a[axis]))
    check(sent == {"label": 1, "box": {"lo": exp_lo, "hi": exp_hi}, "clicks": []}, f"box {sent}")
    after_model = native_mask(page)
    out["model_calls"] = page.evaluate("() => window.annotator.metrics.modelCalls")

    # brush stroke with class 2, save (a delta), the server holds exactly what the page shows
    page.keyboard.press("2")
    page.keyboard.press("b")
    page.keyboard.press("]")
    p0 = point(page, ijk)
    p1 = (p0[0] + 40, p0[1] + 10)
    page.mouse.move(*p0)
    page.mouse.down()
    page.mouse.move(*p1, steps=8)
    page.mouse.up()
    painted = native_mask(page)
    check(int(((painted == 2) & (after_model != 2)).sum()) > 0, "the brush painted class 2")
    page.keyboard.press("s")
    page.wait_for_function("() => window.annotator.metrics.saves.length === 1", timeout=30_000)
    save = get_json(f"{base}/dev/log/1")[-1]
    check(save["action"] == "save", f"saved: {save}")
    check(np.array_equal(server_mask(base), painted), "the saved version is what the page shows")
    effort = save["effort"]
    check(effort["clicks"] == 2 and effort["model_calls"] == 2 and effort["strokes"] == 1, f"effort {effort}")
    check(effort["seconds"] > 0, f"time on case counted: {effort}")
    out["save"] = {"bytes": save["bytes"], "effort": effort}

    # undo/redo
    page.keyboard.press("Control+z")
    check(np.array_equal(native_mask(page), after_model), "undo takes the stroke back")
    page.keyboard.press("Control+Shift+z")
    check(np.array_equal(native_mask(page), painted), "redo puts it back")

    # someone saves elsewhere: the next save gets 409, the dialog offers a merge, the merge is saved
    get_json(f"{base}/dev/bump/1")
    bumped = server_mask(base)
    page.keyboard.press("e")
    q = point(page, ijk)
    page.mouse.move(*q)
    page.mouse.down()
    page.mouse.move(q[0] + 15, q[1], steps=4)
    page.mouse.up()
    mine = native_mask(page)
    page.keyboard.press("s")
    page.wait_for_selector("#stale-dialog[open]", timeout=30_000)
    page.click("#stale-merge")
    page.wait_for_function("() => window.annotator.metrics.saves.length === 2", timeout=30_000)
    merged = server_mask(base)
    changed = mine != painted
    check(np.array_equal(merged[changed], mine[changed]), "my edits are in the merged version")
    check(np.array_equal(merged[~changed], bumped[~changed]), "the other version is kept elsewhere")
    check(np.array_equal(native_mask(page), merged), "the page shows the merged version")
    kinds = page.evaluate("() => window.annotator.metrics.saves.map(s => [s.kind, s.bytesSent])")
    check(kinds[-1][0] == "delta", f"a small edit on a parent travels as a delta: {kinds}")
    out["saves"] = kinds

    # submit
    page.click("#submit")
    page.wait_for_selector("body.read-only", timeout=30_000)
    check(get_json(f"{base}/dev/log/1")[-1]["action"] == "submit", "submitted")
    check(not errors, f"page errors: {errors}")
    return out


# Pixels of a colour on the prompt-marks canvas within `r` CSS pixels of a page point (null: anywhere).
JS_MARKS = """([point, r, colour]) => {
  const c = document.querySelector("canvas.prompt-marks");
  const rect = c.getBoundingClientRect();
  const dpr = c.width / rect.width;
  let [x0, y0, w, h] = [0, 0, c.width, c.height];
  if (point) {
    x0 = Math.max(0, Math.round((point[0] - rect.left - r) * dpr));
    y0 = Math.max(0, Math.round((point[1] - rect.top - r) * dpr));
    w = h = Math.round(2 * r * dpr);
  }
  const px = c.getContext("2d").getImageData(x0, y0, w, h).data;
  let n = 0;
  for (let p = 0; p < px.length; p += 4) {
    const d = Math.abs(px[p] - colour[0]) + Math.abs(px[p + 1] - colour[1]) + Math.abs(px[p + 2] - colour[2]);
    if (px[p + 3] > 200 && d < 60) n++;
  }
  return n;
}"""
POSITIVE, NEGATIVE, BOX = (255, 255, 255), (255, 92, 240), (79, 209, 255)  # marks.ts MARK_STYLE


def marks(page: Page, colour, near: tuple[float, float] | None = None, r: float = 10) -> int:
    return page.evaluate(JS_MARKS, [list(near) if near else None, r, list(colour)])


def run_prompts(page: Page, base: str) -> dict:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/dev/case/1/")
    page.wait_for_selector("body[data-viewer-ready]", timeout=60_000)
    lab = truth(False)
    shown = native_mask(page)
    target = np.argwhere(lab == 1)
    ijk = target[len(target) // 2]
    check(marks(page, POSITIVE) == 0 and marks(page, BOX) == 0, "no prompts drawn before any")

    # a positive click: its marker on every 2D view (each shows the clicked voxel's plane), and the box
    # the client derived around the class drawn too
    page.keyboard.press("1")
    page.keyboard.press("c")
    page.mouse.click(*point(page, ijk))
    page.wait_for_function("() => window.annotator.metrics.modelCalls.length === 1", timeout=30_000)
    after_click = native_mask(page)
    for view in range(3):
        check(marks(page, POSITIVE, point(page, ijk, view)) > 10, f"the + marker is on view {view}")
    check(marks(page, BOX) > 50, "the box is outlined")
    answer = page.inner_text("#model-answer")
    check(answer == "answered by ground-truth v1", f"the answering model is named: {answer!r}")

    # scrolled to another plane, a view no longer shows the marker
    away = ijk.copy()
    axis = page.evaluate("() => window.annotator.page.viewer.orientation.rasAxis.indexOf(2)")
    away[axis] = target[:, axis].max() + 3 if target[:, axis].max() + 3 < lab.shape[axis] else 0
    check(
        marks(page, POSITIVE, point(page, np.where(np.arange(3) == axis, away, ijk), 0)) == 0,
        "an axial slice without the click shows no marker",
    )

    # a negative click on the class's edge carves it; Backspace takes it back without asking the model
    edge = target[0]
    page.keyboard.press("v")
    q = point(page, edge)
    page.mouse.click(*q)
    page.wait_for_function("() => window.annotator.metrics.modelCalls.length === 2", timeout=30_000)
    check(marks(page, NEGATIVE, point(page, edge)) > 5, "the - marker is drawn")
    check(not np.array_equal(native_mask(page), after_click), "the negative click changed the mask")
    page.keyboard.press("Backspace")
    check(np.array_equal(native_mask(page), after_click), "taking the click back restores the mask before it")
    check(marks(page, NEGATIVE, point(page, edge)) == 0, "its marker is gone")
    page.keyboard.press("Backspace")
    check(np.array_equal(native_mask(page), shown), "and the first click's answer is undone too")
    calls = page.evaluate("() => window.annotator.metrics.modelCalls.length")
    check(calls == 2, f"undoing clicks asked the model nothing: {calls} calls")
    sent = [e for e in get_json(f"{base}/dev/log/1") if e["action"] == "interactive"]
    check(len(sent) == 2, f"two requests reached the server: {len(sent)}")

    # crisp voxels: nearest-neighbour display, remembered for the next case
    page.check("#crisp")
    check(page.evaluate("() => window.annotator.page.viewer.nv.opts.isNearestInterpolation"), "crisp is on")
    page.reload()
    page.wait_for_selector("body[data-viewer-ready]", timeout=60_000)
    check(page.is_checked("#crisp"), "crisp voxels are remembered")
    check(not errors, f"page errors: {errors}")
    return {"model_answer": answer, "model_calls": calls}


def run_autosave(page: Page, base: str) -> dict:
    page.goto(f"{base}/dev/case/1/")
    page.wait_for_selector("body[data-viewer-ready]", timeout=60_000)
    page.keyboard.press("b")
    ijk = np.argwhere(truth(False) == 2)[0]
    x, y = point(page, ijk)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 30, y + 5, steps=5)
    page.mouse.up()
    shown = native_mask(page)
    page.wait_for_function("() => window.annotator.metrics.saves.length >= 1", timeout=30_000)
    log = get_json(f"{base}/dev/log/1")
    check([e["action"] for e in log] == ["save"], f"one autosave, nothing asked: {log}")
    check(np.array_equal(server_mask(base), shown), "the autosaved version is what the page shows")
    return {"saved": log[0]["kind"], "bytes": log[0]["bytes"]}


def run_locked(page: Page, base: str) -> dict:
    page.goto(f"{base}/dev/case/1/")
    page.wait_for_selector("body[data-viewer-ready]", timeout=60_000)
    text = page.inner_text("#lock-banner")
    check("bob" in text and page.evaluate("document.body.classList.contains('read-only')"), f"banner: {text}")
    return {"banner": text}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--reorient", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    result: dict = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            # no autosave during the scripted edits: each save below is asked for
            with mock_server("--autosave", "3600", *(["--reorient"] if args.reorient else [])) as base:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                result["case"] = run(page, base, args.reorient, args.screenshot)
            with mock_server("--autosave", "3600") as base:
                result["prompts"] = run_prompts(
                    browser.new_page(viewport={"width": 1400, "height": 900}), base
                )
            with mock_server("--autosave", "2") as base:
                result["autosave"] = run_autosave(
                    browser.new_page(viewport={"width": 1200, "height": 800}), base
                )
            with mock_server("--held-by", "bob") as base:
                result["locked"] = run_locked(browser.new_page(viewport={"width": 1200, "height": 800}), base)
        finally:
            browser.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["reorient"] = args.reorient
    print(json.dumps(result))


if __name__ == "__main__":
    main()
