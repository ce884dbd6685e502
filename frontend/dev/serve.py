"""A development server for the viewer without Django, PostgreSQL or a model: it renders the real case
page markup (platform/templates/annotation/_case_body.html) at /dev/case/<id>/, serves the built bundle
from frontend/static/, and answers the JSON API the page calls (annotation.api's shapes) from memory,
with MSD hippocampus cases from the shared data as volumes and their labels as version 0.

The "model" of POST /api/cases/<id>/interactive/ is the ground truth: a box returns the class's true
voxels inside the box (widened by 2 voxels), clicks add (positive) or remove (negative) a small ball.

    .venv/bin/python frontend/dev/serve.py --port 8765 [--reorient] [--held-by bob]

--reorient serves the volumes transposed and flipped (a non-RAS voxel order) to exercise the mapping
between NiiVue's drawing order and the NIfTI order the server stores. /dev/bump/<id> saves a version
"elsewhere" (to try the 409 dialog). Development only: no auth, one process, state lost on exit.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np

FRONTEND = Path(__file__).resolve().parents[1]
REPO = FRONTEND.parent
TEMPLATES = REPO / "platform" / "templates"
DATA = REPO.parent / "shared" / "data" / "hippocampus"
LABELS = [
    {"value": 1, "name": "anterior", "colour": "#e6194b"},
    {"value": 2, "name": "posterior", "colour": "#3cb44b"},
]


def nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    return gzip.compress(img.to_bytes(), mtime=0)


@dataclass
class MockCase:
    id: int
    image: np.ndarray
    affine: np.ndarray
    truth: np.ndarray
    image_gz: bytes = b""
    versions: list[dict] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    status: str = "in_progress"
    holder: str | None = None
    log: list[dict] = field(default_factory=list)

    @property
    def head(self) -> dict | None:
        return self.versions[-1] if self.versions else None


class State:
    def __init__(
        self, *, reorient: bool, held_by: str | None, autosave: int, shape: tuple[int, int, int] | None
    ) -> None:
        self.cases: dict[int, MockCase] = {}
        self.autosave = autosave
        self.version_ids = 0
        self.held_by = held_by
        for case_id, name in ((1, "hippocampus_001"), (2, "hippocampus_003")):
            img = nib.load(DATA / "imagesTr" / f"{name}.nii.gz")
            lab = nib.load(DATA / "labelsTr" / f"{name}.nii.gz")
            image = np.asarray(img.dataobj).astype(np.float32)
            truth = np.asarray(lab.dataobj).astype(np.uint8)
            affine = img.affine.copy()
            if shape:  # nearest-neighbour resampling to a bigger grid, for timings on realistic sizes
                index = np.ix_(*(np.arange(n) * old // n for n, old in zip(shape, image.shape, strict=True)))
                zoom = np.diag([old / n for n, old in zip(shape, image.shape, strict=True)] + [1.0])
                image, truth, affine = image[index], truth[index], affine @ zoom
            if reorient:
                # new[a, b, c] = old[I-1-c, a, b]: voxel axes permuted and one flipped, the affine follows
                image, truth = (np.transpose(a[::-1], (1, 2, 0)) for a in (image, truth))
                n = img.shape[0]
                flip = np.eye(4)
                flip[0, 0], flip[0, 3] = -1, n - 1
                perm = np.zeros((4, 4))
                perm[0, 2] = perm[1, 0] = perm[2, 1] = perm[3, 3] = 1
                affine = affine @ flip @ perm
            case = MockCase(id=case_id, image=image, affine=affine, truth=truth)
            case.image_gz = nifti_gz(image, affine)
            self.add_version(case, truth.copy(), source="model", effort={})
            self.cases[case_id] = case

    def add_version(self, case: MockCase, mask: np.ndarray, *, source: str, effort: dict) -> dict:
        self.version_ids += 1
        head = case.head
        version = {
            "id": self.version_ids,
            "number": 0 if head is None else head["number"] + 1,
            "parent": None if head is None else head["id"],
            "author": None if source == "model" else "annotator",
            "source": source,
            "model_version": "ground-truth" if source == "model" else "",
            "sha256": "",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": float(effort.get("seconds", 0)),
            "clicks": int(effort.get("clicks", 0)),
            "strokes": int(effort.get("strokes", 0)),
            "model_calls": int(effort.get("model_calls", 0)),
        }
        case.versions.append(version)
        case.masks[version["id"]] = mask
        return version


class ApiError(Exception):
    def __init__(self, status: int, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


def decode_labelmap(text: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(text, validate=True), wbits=16 + zlib.MAX_WBITS)
    if len(raw) != int(np.prod(shape)):
        raise ApiError(400, f"The label map has {len(raw)} voxels but the volume has {np.prod(shape)}.")
    return np.frombuffer(raw, np.uint8).reshape(shape, order="F")


def apply_delta(base: np.ndarray, runs: list) -> np.ndarray:
    flat = base.ravel(order="F").copy()
    last = 0
    for start, length, value in runs:
        if start < last or length < 1 or start + length > flat.size or not 0 <= value <= 255:
            raise ApiError(400, "Delta runs must be sorted, not overlapping, inside the volume.")
        flat[start : start + length] = value
        last = start + length
    return flat.reshape(base.shape, order="F")


def ball(shape: tuple[int, ...], centre: list[int], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((grid[n] - centre[n]) ** 2 for n in range(3)) <= radius**2


def fake_model(case: MockCase, body: dict) -> dict:
    """The interactive endpoint's contract (annotation.api.CaseInteractiveApi), answered from the truth."""
    label = body.get("label")
    box = body.get("box")
    if label not in {lb["value"] for lb in LABELS}:
        raise ApiError(400, f"Class {label} is not in this project's label set [1, 2].")
    if not isinstance(box, dict) or len(box.get("lo", [])) != 3 or len(box.get("hi", [])) != 3:
        raise ApiError(400, "The request is not valid.", {"fields": {"box": ["This field is required."]}})
    lo, hi = np.array(box["lo"]), np.array(box["hi"])
    if (lo < 0).any() or (hi >= np.array(case.truth.shape)).any() or (lo > hi).any():
        raise ApiError(400, f"box from {lo.tolist()} to {hi.tolist()} reaches outside the volume")
    lo2 = np.maximum(lo - 2, 0)
    hi2 = np.minimum(hi + 2, np.array(case.truth.shape) - 1)
    region = tuple(slice(a, b + 1) for a, b in zip(lo2, hi2, strict=True))
    mask = np.zeros(case.truth.shape, bool)
    mask[region] = case.truth[region] == label
    for click in body.get("clicks", []):
        b = ball(case.truth.shape, click["ijk"], 2.5)
        mask = (mask | b) if click["positive"] else (mask & ~b)
    time.sleep(0.05)  # a model takes some time
    payload = base64.b64encode(gzip.compress(mask.astype(np.uint8).tobytes(order="F"))).decode()
    return {
        "label": label,
        "mask": payload,
        "seconds": 0.05,
        "incremental": False,
        "model": "ground-truth",
        "model_version": 1,
    }


class Handler(SimpleHTTPRequestHandler):
    state: State

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(FRONTEND), **kwargs)

    def log_message(self, fmt, *args):  # quieter: only API calls
        if "/api/" in (args[0] if args else ""):
            sys.stderr.write("%s\n" % (fmt % args))

    def send_json(self, status: int, data) -> None:
        body = b"" if data is None else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_bytes(self, data: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def case(self, case_id: str) -> MockCase:
        case = self.state.cases.get(int(case_id))
        if case is None:
            raise ApiError(404, "Not found.")
        return case

    def do_GET(self):
        try:
            if m := re.fullmatch(r"/dev/case/(\d+)/", self.path.split("?")[0]):
                html = render_page(self.case(m[1]), autosave=self.state.autosave)
                return self.send_bytes(html.encode(), "text/html; charset=utf-8")
            if m := re.fullmatch(r"/dev/bump/(\d+)", self.path):
                case = self.case(m[1])
                mask = case.masks[case.head["id"]].copy()
                mask[:3] = 0
                return self.send_json(200, self.state.add_version(case, mask, source="human", effort={}))
            if m := re.fullmatch(r"/dev/log/(\d+)", self.path):
                return self.send_json(200, self.case(m[1]).log)
            if m := re.fullmatch(r"/dev/mask/(\d+)", self.path):  # the head as a flat F-order list
                case = self.case(m[1])
                return self.send_json(200, case.masks[case.head["id"]].ravel(order="F").tolist())
            if m := re.fullmatch(r"/api/cases/(\d+)/image/", self.path):
                return self.send_bytes(self.case(m[1]).image_gz, "application/gzip")
            if m := re.fullmatch(r"/api/versions/(\d+)/mask/", self.path):
                vid = int(m[1])
                case = next((c for c in self.state.cases.values() if vid in c.masks), None)
                if case is None:
                    raise ApiError(404, "Not found.")
                return self.send_bytes(nifti_gz(case.masks[vid], case.affine), "application/gzip")
            return super().do_GET()
        except ApiError as exc:
            return self.send_json(exc.status, {"message": exc.message, "extra": exc.extra})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            if not self.headers.get("X-CSRFToken"):
                raise ApiError(403, "CSRF Failed: CSRF token missing.")
            return self.post(body, len(raw))
        except ApiError as exc:
            return self.send_json(exc.status, {"message": exc.message, "extra": exc.extra})

    def post(self, body: dict, size: int):
        path = self.path
        if m := re.fullmatch(r"/api/projects/(\d+)/next/", path):
            free = [c for c in self.state.cases.values() if c.status == "in_progress" and c.log == []]
            return self.send_json(204, None) if not free else self.send_json(200, {"id": free[-1].id})
        m = re.fullmatch(r"/api/cases/(\d+)/([a-z/]+)/", path)
        if not m:
            raise ApiError(404, "Not found.")
        case, action = self.case(m[1]), m[2]
        holder = self.state.held_by
        if action in ("take", "heartbeat"):
            if holder:
                raise ApiError(423, f"{holder} holds this case until 12:00:00 UTC.", {"holder": holder})
            return self.send_json(200, {"holder": "annotator", "expires_at": "2099-01-01T00:00:00Z"})
        if action == "release":
            return self.send_json(204, None)
        if action == "versions/create":
            parent = body.get("parent")
            head = case.head
            if (head and head["id"]) != parent:
                raise ApiError(
                    409,
                    f"This case changed since you loaded it (the head is version {head['number']}).",
                    {"head": {"id": head["id"], "number": head["number"]}},
                )
            if "labelmap" in body:
                mask = decode_labelmap(body["labelmap"], case.truth.shape)
                kind = "labelmap"
            else:
                mask = apply_delta(case.masks[parent], body["delta"])
                kind = "delta"
            unknown = set(np.unique(mask).tolist()) - {0, 1, 2}
            if unknown:
                raise ApiError(400, f"The mask holds values {sorted(unknown)} that are not classes.")
            version = self.state.add_version(case, mask, source="edited", effort=body.get("effort", {}))
            case.log.append({"action": "save", "kind": kind, "bytes": size, "effort": body.get("effort")})
            return self.send_json(201, version)
        if action == "interactive":
            case.log.append({"action": "interactive", "bytes": size, "request": body})
            return self.send_json(200, fake_model(case, body))
        if action == "submit":
            case.status = "submitted"
            case.log.append({"action": "submit", "version": body.get("version")})
            return self.send_json(200, {"id": case.id, "status": "submitted"})
        raise ApiError(404, "Not found.")


def render_page(case: MockCase, *, autosave: int) -> str:
    from django.template import Context, Engine

    engine = Engine(dirs=[str(TEMPLATES)], libraries={"static": "django.templatetags.static"})
    head = case.head
    page_data = {
        "apiBase": "/api/",
        "csrfToken": "dev-token",
        "user": "annotator",
        "case": {
            "id": case.id,
            "status": case.status,
            "project": 1,
            "modality": "MR",
            "shape": list(case.truth.shape),
        },
        "imageUrl": f"/api/cases/{case.id}/image/",
        "maskUrl": f"/api/versions/{head['id']}/mask/" if head else None,
        "head": {"id": head["id"], "number": head["number"]} if head else None,
        "labels": LABELS,
        "lock": None,
        "canAnnotate": True,
        "canReview": False,
        "interactiveModel": "ground-truth",
        "caseUrl": "/dev/case/{id}/",
        "worklistUrl": "/dev/case/1/",
        "heartbeatSeconds": 30,
        "autosaveSeconds": autosave,
    }
    status_display = case.status.replace("_", " ")
    ctx = {
        "case": {
            "id": case.id,
            "status": case.status,
            "get_status_display": status_display,
            "project": {"name": "Hippocampus (dev)"},
            "volume": {
                "shape": case.truth.shape,
                "series": {"modality": "MR", "description": "MSD hippocampus"},
            },
        },
        "labels": LABELS,
        "worklist_url": "/dev/case/1/",
        "page_data": page_data,
    }
    body = engine.get_template("annotation/_case_body.html").render(Context(ctx))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Case (dev harness)</title>'
        '<link rel="stylesheet" href="/static/css/app.css"></head><body>'
        '<header class="topbar"><span class="brand">Annotator · dev harness</span></header>'
        f"<main>{body}</main></body></html>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--reorient", action="store_true")
    parser.add_argument("--autosave", type=int, default=30, help="seconds between autosaves of a dirty case")
    parser.add_argument(
        "--shape", default=None, help="resample the volumes to I,J,K voxels, e.g. 256,256,128"
    )
    parser.add_argument(
        "--held-by", default=None, help="answer 423 to take/heartbeat as if this user held it"
    )
    args = parser.parse_args()

    import django
    from django.conf import settings

    settings.configure(STATIC_URL="/static/", INSTALLED_APPS=[], USE_I18N=False)
    django.setup()
    shape = tuple(int(n) for n in args.shape.split(",")) if args.shape else None
    Handler.state = State(reorient=args.reorient, held_by=args.held_by, autosave=args.autosave, shape=shape)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"http://127.0.0.1:{args.port}/dev/case/1/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
