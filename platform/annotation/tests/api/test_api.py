"""The JSON API over HTTP (Django test client, real PostgreSQL): roles on every endpoint, CSRF, the error
shape and statuses, payload checks that store nothing, downloads with ETags, the whole case flow."""

from __future__ import annotations

import base64
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from django.test import Client

from annotation import tasks
from annotation.masks import labelmap_encode
from annotation.models import CaseLock, MaskVersion, Review
from annotation.services import case_take
from annotation.tests.helpers import SHAPE, labelmap, save

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_user(users):
    def login(name: str) -> Client:
        client = Client()
        client.force_login(users[name])
        return client

    return login


def post(client: Client, url: str, body=None):
    return client.post(url, json.dumps(body or {}), content_type="application/json")


def version_body(parent: int | None, mask: np.ndarray | None = None, **extra) -> dict:
    return {"parent": parent, "labelmap": labelmap_encode(labelmap() if mask is None else mask), **extra}


def urls(project, case, version) -> list[tuple[str, str, str]]:
    """(method, url, permission-bearing role) for every endpoint."""
    p, c, v = project.id, case.id, version.id
    return [
        ("get", "/api/projects/", "annotator"),
        ("get", f"/api/projects/{p}/", "annotator"),
        ("post", "/api/projects/create/", "admin"),
        ("post", f"/api/projects/{p}/volumes/add/", "admin"),
        ("post", f"/api/projects/{p}/double-reading/", "admin"),
        ("get", f"/api/projects/{p}/worklist/", "annotator"),
        ("post", f"/api/projects/{p}/next/", "annotator"),
        ("get", f"/api/projects/{p}/effort/", "admin"),
        ("get", f"/api/cases/{c}/", "annotator"),
        ("post", f"/api/cases/{c}/take/", "annotator"),
        ("post", f"/api/cases/{c}/heartbeat/", "annotator"),
        ("post", f"/api/cases/{c}/release/", "annotator"),
        ("get", f"/api/cases/{c}/image/", "annotator"),
        ("get", f"/api/cases/{c}/versions/", "annotator"),
        ("post", f"/api/cases/{c}/versions/create/", "annotator"),
        ("post", f"/api/cases/{c}/interactive/", "annotator"),
        ("post", f"/api/cases/{c}/submit/", "annotator"),
        ("post", f"/api/cases/{c}/review/", "reviewer"),
        ("get", f"/api/cases/{c}/readings/", "reviewer"),
        ("post", f"/api/cases/{c}/adjudicate/", "reviewer"),
        ("get", f"/api/versions/{v}/mask/", "annotator"),
        ("get", "/api/audit/", "admin"),
    ]


@pytest.fixture
def version(case, users):
    case_take(case=case, user=users["annotator2"])
    return save(case, users["annotator2"], None)


def test_anonymous_gets_403_everywhere(client, project, case, version):
    for method, url, _ in urls(project, case, version):
        response = getattr(client, method)(url)
        assert response.status_code == 403, url
        assert response.json() == {"message": "Authentication credentials were not provided.", "extra": {}}


# Who may not call what: reviewers do not edit, annotators do not review, only admins administer.
FORBIDDEN = {
    "annotator": {
        "/api/projects/create/",
        "volumes/add/",
        "/double-reading/",
        "/effort/",
        "/review/",
        "/readings/",
        "/adjudicate/",
        "/api/audit/",
    },
    "reviewer": {
        "/api/projects/create/",
        "volumes/add/",
        "/double-reading/",
        "/effort/",
        "/next/",
        "/take/",
        "/heartbeat/",
        "/release/",
        "/versions/create/",
        "/interactive/",
        "/submit/",
        "/api/audit/",
    },
    "admin": set(),
}


@pytest.mark.parametrize("role", ["annotator", "reviewer", "admin"])
def test_roles_are_checked_on_every_endpoint(as_user, project, case, version, role):
    client = as_user(role)
    for method, url, _ in urls(project, case, version):
        status = getattr(client, method)(
            url, **({"content_type": "application/json"} if method == "post" else {})
        )
        forbidden = any(part in url for part in FORBIDDEN[role])
        assert (status.status_code == 403) == forbidden, (role, url, status.status_code)


def test_csrf_is_enforced_for_session_users(users, case):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["annotator"])
    refused = client.post(f"/api/cases/{case.id}/take/", "{}", content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["message"]
    assert not CaseLock.objects.exists()
    client.cookies["csrftoken"] = token = "k" * 32  # what a page's cookie and form would carry
    taken = client.post(
        f"/api/cases/{case.id}/take/", "{}", content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert taken.status_code == 200 and CaseLock.objects.get().user == users["annotator"]


def test_the_case_flow(as_user, project, case, monkeypatch, django_capture_on_commit_callbacks):
    annotator, reviewer = as_user("annotator"), as_user("reviewer")
    worklist = annotator.get(f"/api/projects/{project.id}/worklist/").json()
    assert [c["id"] for c in worklist["results"]] == [case.id] and worklist["next_cursor"] is None
    assert worklist["results"][0]["volume"]["shape"] == list(SHAPE)

    taken = post(annotator, f"/api/projects/{project.id}/next/")
    assert taken.status_code == 200 and taken.json()["lock"]["holder"] == "annotator"
    assert post(annotator, f"/api/cases/{case.id}/heartbeat/").json()["holder"] == "annotator"

    image = annotator.get(f"/api/cases/{case.id}/image/")
    assert image.status_code == 200 and image["ETag"] == f'"{case.volume.sha256}"'
    data = gzip.decompress(b"".join(image.streaming_content))
    assert nib.Nifti1Image.from_bytes(data).shape == SHAPE
    again = annotator.get(f"/api/cases/{case.id}/image/", HTTP_IF_NONE_MATCH=image["ETag"])
    assert again.status_code == 304

    v0 = post(annotator, f"/api/cases/{case.id}/versions/create/", version_body(None, effort={"seconds": 5}))
    assert v0.status_code == 201, v0.json()
    v0 = v0.json()
    delta = {"parent": v0["id"], "delta": [[0, 2, 2]], "effort": {"clicks": 2, "model_calls": 1}}
    v1 = post(annotator, f"/api/cases/{case.id}/versions/create/", delta).json()
    # numbered from 1, as people count
    assert (v0["number"], v1["number"]) == (1, 2)
    assert (v1["parent"], v1["source"], v1["author"]) == (v0["id"], "edited", "annotator")

    mask = annotator.get(f"/api/versions/{v1['id']}/mask/")
    assert mask["Cache-Control"] == "private, max-age=31536000, immutable"
    array = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(mask.streaming_content))).dataobj)
    expected = labelmap()
    expected[0, 0, 0] = expected[1, 0, 0] = 2
    np.testing.assert_array_equal(array, expected)
    versions = annotator.get(f"/api/cases/{case.id}/versions/").json()
    assert [v["number"] for v in versions] == [1, 2]

    submitted = post(annotator, f"/api/cases/{case.id}/submit/", {"version": v1["id"]})
    assert submitted.status_code == 200 and submitted.json()["status"] == "submitted"

    queued = []
    monkeypatch.setattr(tasks.review_seg_export, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        review = post(reviewer, f"/api/cases/{case.id}/review/", {"version": v1["id"], "decision": "approve"})
    assert review.status_code == 201 and review.json()["export_status"] == "pending"
    assert queued == [review.json()["id"]]
    detail = annotator.get(f"/api/cases/{case.id}/").json()
    assert detail["status"] == "approved" and [r["decision"] for r in detail["reviews"]] == ["approve"]
    frozen = post(annotator, f"/api/cases/{case.id}/versions/create/", version_body(v1["id"]))
    assert frozen.status_code == 409 and "frozen" in frozen.json()["message"]

    effort = as_user("admin").get(f"/api/projects/{project.id}/effort/").json()
    assert effort["cases"][0]["clicks"] == 2 and effort["totals"]["model_calls"] == 1
    audit = as_user("admin").get("/api/audit/", {"object_type": "annotation.case"}).json()
    assert [e["action"] for e in audit][:3] == ["case.approve", "case.submit", "case.take"]


def test_a_stale_parent_gets_409_with_the_head(as_user, case, users):
    client = as_user("annotator")
    post(client, f"/api/cases/{case.id}/take/")
    v0 = post(client, f"/api/cases/{case.id}/versions/create/", version_body(None)).json()
    v1 = post(client, f"/api/cases/{case.id}/versions/create/", version_body(v0["id"])).json()
    stale = post(client, f"/api/cases/{case.id}/versions/create/", version_body(v0["id"], labelmap(2)))
    assert stale.status_code == 409
    assert stale.json()["extra"] == {"head": {"id": v1["id"], "number": 2}}
    assert "reload" in stale.json()["message"]
    assert MaskVersion.objects.filter(case=case).count() == 2


def test_someone_elses_case_gets_423_naming_the_holder(as_user, case):
    post(as_user("annotator"), f"/api/cases/{case.id}/take/")
    other = as_user("annotator2")
    refused = post(other, f"/api/cases/{case.id}/take/")
    assert refused.status_code == 423 and refused.json()["extra"]["holder"] == "annotator"
    assert "annotator holds this case until" in refused.json()["message"]
    save_refused = post(other, f"/api/cases/{case.id}/versions/create/", version_body(None))
    assert save_refused.status_code == 423 and not MaskVersion.objects.exists()
    assert post(other, f"/api/cases/{case.id}/release/").status_code == 423
    assert post(as_user("admin"), f"/api/cases/{case.id}/release/").status_code == 204
    assert not CaseLock.objects.exists()


def raw_gzip(values: bytes) -> str:
    return base64.b64encode(gzip.compress(values)).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (version_body(None, np.zeros((8, 6, 5), np.uint8)), "voxels but the volume has 8x6x4 = 192"),
        ({"parent": None, "labelmap": raw_gzip(bytes(100))}, "has 100 voxels but the volume has"),
        (version_body(None, labelmap(7)), "values [7] that are not classes"),
        ({"parent": None, "labelmap": "%%%not base64"}, "not valid base64"),
        ({"parent": None, "labelmap": "aGVsbG8="}, "not gzip"),
        ({"parent": None}, "either 'labelmap' or 'delta'"),
        ({"parent": None, "labelmap": labelmap_encode(labelmap()), "delta": []}, "either"),
        ({"parent": None, "delta": [[0, 1, 1]]}, "A delta needs a parent"),
        ({"parent": None, "delta": [[0, 1]]}, "runs of integers"),
        ({"labelmap": labelmap_encode(labelmap())}, "The request is not valid."),
        (version_body(None, effort={"clicks": -1}), "The request is not valid."),
        ({"parent": 999999, "labelmap": labelmap_encode(labelmap())}, "is not a version of case"),
    ],
)
def test_bad_payloads_get_400_and_store_nothing(as_user, case, settings, body, message):
    client = as_user("annotator")
    post(client, f"/api/cases/{case.id}/take/")
    response = post(client, f"/api/cases/{case.id}/versions/create/", body)
    assert response.status_code == 400, response.json()
    assert message in response.json()["message"]
    assert not MaskVersion.objects.exists() and not (settings.MEDIA_ROOT / "masks").exists()


def test_malformed_json_gets_400(as_user, case):
    client = as_user("annotator")
    post(client, f"/api/cases/{case.id}/take/")
    response = client.post(
        f"/api/cases/{case.id}/versions/create/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400 and "JSON parse error" in response.json()["message"]
    assert not MaskVersion.objects.exists()


def test_a_huge_upload_gets_413_and_stores_nothing(as_user, case, settings):
    settings.ANNOTATION_MAX_UPLOAD_BYTES = 10_000
    client = as_user("annotator")
    post(client, f"/api/cases/{case.id}/take/")
    noise = np.random.default_rng(0).bytes(20_000)  # incompressible
    response = post(
        client, f"/api/cases/{case.id}/versions/create/", {"parent": None, "labelmap": raw_gzip(noise)}
    )
    assert response.status_code == 413 and "at most 10000" in response.json()["message"]
    assert not MaskVersion.objects.exists() and not (settings.MEDIA_ROOT / "masks").exists()


def test_a_gzip_bomb_is_refused_without_inflating_it(as_user, case):
    client = as_user("annotator")
    post(client, f"/api/cases/{case.id}/take/")
    bomb = raw_gzip(bytes(50_000_000))  # ~50 kB compressed, 50 MB inflated
    response = post(client, f"/api/cases/{case.id}/versions/create/", {"parent": None, "labelmap": bomb})
    assert response.status_code == 400 and "more than 192 voxels" in response.json()["message"]


def test_reject_needs_a_comment_and_returns_the_case(as_user, case, users):
    annotator, reviewer = as_user("annotator"), as_user("reviewer")
    post(annotator, f"/api/cases/{case.id}/take/")
    v0 = post(annotator, f"/api/cases/{case.id}/versions/create/", version_body(None)).json()
    post(annotator, f"/api/cases/{case.id}/submit/", {"version": v0["id"]})
    bad = post(reviewer, f"/api/cases/{case.id}/review/", {"version": v0["id"], "decision": "maybe"})
    assert bad.status_code == 400 and "decision" in bad.json()["extra"]["fields"]
    no_comment = post(reviewer, f"/api/cases/{case.id}/review/", {"version": v0["id"], "decision": "reject"})
    assert no_comment.status_code == 400 and not Review.objects.exists()
    rejected = post(
        reviewer,
        f"/api/cases/{case.id}/review/",
        {"version": v0["id"], "decision": "reject", "comment": "Too big"},
    )
    assert rejected.status_code == 201
    mine = annotator.get(f"/api/projects/{case.project_id}/worklist/", {"assignee": "me"}).json()["results"]
    assert [(c["id"], c["status"]) for c in mine] == [(case.id, "rejected")]
    assert annotator.get(f"/api/cases/{case.id}/").json()["reviews"][0]["comment"] == "Too big"
    assert mine[0]["rejection"]["comment"] == "Too big" and mine[0]["rejection"]["reviewer"] == "reviewer"


def test_approving_ones_own_work_gets_403_unless_an_admin_says_why(as_user, case):
    admin = as_user("admin")
    post(admin, f"/api/cases/{case.id}/take/")
    v0 = post(admin, f"/api/cases/{case.id}/versions/create/", version_body(None)).json()
    post(admin, f"/api/cases/{case.id}/submit/", {"version": v0["id"]})
    refused = post(admin, f"/api/cases/{case.id}/review/", {"version": v0["id"], "decision": "approve"})
    assert refused.status_code == 403 and refused.json()["extra"] == {"can_override": True}
    assert "another reviewer" in refused.json()["message"] and not Review.objects.exists()
    body = {"version": v0["id"], "decision": "approve", "override_reason": "sole admin on call"}
    approved = post(admin, f"/api/cases/{case.id}/review/", body)
    assert approved.status_code == 201 and approved.json()["override_reason"] == "sole admin on call"


def test_worklist_pages_and_bad_filters(as_user, project, make_volume):
    from annotation.services import project_volumes_add

    project_volumes_add(project=project, volumes=[make_volume() for _ in range(5)], user=None)
    client = as_user("annotator")
    seen, cursor = [], ""
    while True:
        page = client.get(f"/api/projects/{project.id}/worklist/", {"limit": 2, "cursor": cursor}).json()
        seen += [c["id"] for c in page["results"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
        assert {c["reading"] for c in page["results"]} == {1}  # read once
    assert len(seen) == len(set(seen)) == 5
    assert client.get(f"/api/projects/{project.id}/worklist/", {"limit": 0}).status_code == 400
    assert client.get(f"/api/projects/{project.id}/worklist/", {"status": "x"}).status_code == 400
    assert client.get(f"/api/projects/{project.id}/worklist/", {"cursor": "zz"}).status_code == 400
    assert client.get("/api/projects/999999/worklist/").status_code == 404


def test_admin_creates_a_project_and_adds_volumes(as_user, make_volume):
    admin = as_user("admin")
    body = {"name": "Liver", "modality": "CT", "labels": [{"value": 1, "name": "liver", "colour": "#AA0000"}]}
    created = post(admin, "/api/projects/create/", body)
    assert created.status_code == 201 and created.json()["labels"][0]["colour"] == "#aa0000"
    project_id = created.json()["id"]
    duplicate = post(admin, "/api/projects/create/", body)
    assert duplicate.status_code == 400 and "exists already" in duplicate.json()["message"]
    volume = make_volume(modality="CT")
    added = post(admin, f"/api/projects/{project_id}/volumes/add/", {"volume_ids": [volume.id]})
    assert added.json() == {"added": 1}
    missing = post(admin, f"/api/projects/{project_id}/volumes/add/", {"volume_ids": [volume.id, 999999]})
    assert missing.status_code == 400 and missing.json()["extra"]["missing"] == [999999]
    assert admin.get(f"/api/projects/{project_id}/").json()["n_cases"] == 1


def test_openapi_schema_describes_the_api(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    doc = json.loads(schema.content)
    create = doc["paths"]["/api/cases/{case_id}/versions/create/"]["post"]
    assert create["operationId"] == "versionCreate"
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"parent", "labelmap", "delta", "effort"} <= set(doc["components"]["schemas"][body]["properties"])
    params = {p["name"] for p in doc["paths"]["/api/projects/{project_id}/worklist/"]["get"]["parameters"]}
    assert {"project_id", "status", "modality", "assignee", "cursor", "limit"} <= params
    assert len(doc["paths"]) == 24  # with the learning jobs API (learning.api)


def test_an_admin_sets_the_share_of_cases_read_twice(as_user, project, case):
    admin = as_user("admin")
    assert post(admin, f"/api/projects/{project.id}/double-reading/", {"percent": 100}).json() == {
        "added": 1,
        "removed": 0,
    }
    assert admin.get(f"/api/projects/{project.id}/").json()["double_reading_percent"] == 100
    refused = post(admin, f"/api/projects/{project.id}/double-reading/", {"percent": 150})
    assert refused.status_code == 400 and "percent" in refused.json()["extra"]["fields"]
    readings = admin.get(f"/api/projects/{project.id}/worklist/").json()["results"]
    assert sorted(c["reading"] for c in readings) == [1, 2]


def test_a_reviewer_compares_two_readings_and_decides_through_the_api(as_user, project, case, users):
    from annotation.readings.services import project_double_reading_set
    from annotation.services import case_submit, next_case_take

    reviewer = as_user("reviewer")
    once = reviewer.get(f"/api/cases/{case.id}/readings/")
    assert once.status_code == 400 and "read once" in once.json()["message"]
    project_double_reading_set(project=project, percent=100, user=None)
    heads = []
    for name, value in (("annotator", 1), ("annotator2", 2)):
        taken = next_case_take(project=project, user=users[name])
        version = save(taken, users[name], None, labelmap(value))
        case_submit(case=taken, user=users[name], version=version)
        heads.append(version.id)
    readings = reviewer.get(f"/api/cases/{case.id}/readings/").json()
    assert (readings["first"]["reading"], readings["second"]["reading"]) == (1, 2)
    classes = readings["comparison"]["classes"]
    assert [(c["label"], c["dice"], c["hd95_mm"]) for c in classes] == [(1, 0.0, None), (2, 0.0, None)]
    body = {
        "decision": "merge",
        "first_head": heads[0],
        "second_head": heads[1],
        "sources": {"1": "sideways"},
    }
    refused = post(reviewer, f"/api/cases/{case.id}/adjudicate/", body)
    assert refused.status_code == 400 and "sources" in refused.json()["extra"]["fields"]
    body["sources"] = {"1": "first", "2": "second"}
    decided = post(reviewer, f"/api/cases/{case.id}/adjudicate/", body)
    assert decided.status_code == 201, decided.json()
    assert decided.json()["kept_case"] == readings["first"]["id"] and decided.json()["result"]["number"] == 2
    again = post(reviewer, f"/api/cases/{case.id}/adjudicate/", body)
    assert again.status_code == 409 and "must be submitted" in again.json()["message"]
