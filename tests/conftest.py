"""Fixtures for flows across services: a real Orthanc (+DICOMweb) per test session on a free port,
holding the shared DICOM, and PACS sources pointing at it. PostgreSQL and Redis are the real ones
that deploy/test.sh makes sure are running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from pacs.models import PacsSource
from pacs.orthanc import OrthancServer
from pacs.services.demo import pacs_demo_load

REPO = Path(__file__).resolve().parents[1]
# What a failed test leaves for a person to look at (git-ignored): screenshots of the pages it drove.
ARTIFACTS = REPO / "tests" / "artifacts"
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
SHARED_DATA = Path(os.environ.get("ANNOTATOR_SHARED_DATA", REPO.parent / "shared" / "data"))
# Hippocampus cases loaded into the session PACS: enough to exercise a multi-study sync, quick to load.
HIPPOCAMPUS_CASES = 6


class Orthanc(OrthancServer):
    def source(self, name: str = "Test PACS") -> PacsSource:
        """An unsaved source for this Orthanc (enough for the DICOMweb client)."""
        return PacsSource(name=name, base_url=self.base_url, username=self.username, password=self.password)


def start_orthanc(storage: Path) -> Orthanc:
    return Orthanc(storage=storage).start()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """A real Orthanc holding every shared DICOM file and a few hippocampus cases as MR studies."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs_demo_load(source=server.source(), shared_data=SHARED_DATA, hippocampus_limit=HIPPOCAMPUS_CASES)
    yield server
    server.stop()


@pytest.fixture
def pacs_source(db, orthanc) -> PacsSource:
    source = orthanc.source()
    source.save()
    return source


@pytest.fixture
def seg_removed_after(orthanc) -> Iterator[list[str]]:
    """Deletes the SEG series a test stores from the session PACS, which other tests count."""
    stored: list[str] = []
    yield stored
    rest = f"http://127.0.0.1:{orthanc.port}"
    for uid in stored:
        found = requests.post(f"{rest}/tools/lookup", data=uid, auth=orthanc.auth, timeout=10).json()
        for item in found:
            requests.delete(f"{rest}/series/{item['ID']}", auth=orthanc.auth, timeout=10).raise_for_status()


@pytest.fixture
def scratch_orthanc(tmp_path) -> Iterator[Orthanc]:
    """An Orthanc of the test's own, which the test may stop and start."""
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


def read_series_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path) -> None:
    """Each test writes volumes into a folder of its own."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so its fixtures can tell at teardown that it failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def item_failed(item: pytest.Item) -> bool:
    """Whether the test's setup or body failed (for fixtures that keep evidence at teardown)."""
    reports = item.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())
