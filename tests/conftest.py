"""Fixtures for flows across services: a real Orthanc (+DICOMweb) per test session on a free port,
holding the shared DICOM, and PACS sources pointing at it. PostgreSQL and Redis are the real ones
that deploy/test.sh makes sure are running."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from pacs.demo import dicom_file_bundles, hippocampus_bundles
from pacs.models import PacsSource
from pacs.orthanc import orthanc_start, orthanc_wait_ready, orthanc_write_config
from pacs.services.store import pacs_store_datasets

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANNOTATOR_SHARED_DATA", REPO.parent / "shared" / "data"))
# Hippocampus cases loaded into the session PACS: enough to exercise a multi-study sync, quick to load.
HIPPOCAMPUS_CASES = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    port: int
    storage: Path
    username: str = "test"
    password: str = "test-password"
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def start(self) -> None:
        config = orthanc_write_config(
            storage_dir=self.storage,
            http_port=self.port,
            username=self.username,
            password=self.password,
            name="test-pacs",
        )
        self.process = orthanc_start(config, self.storage / "orthanc.log")
        orthanc_wait_ready(http_port=self.port, auth=self.auth, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def source(self, name: str = "Test PACS") -> PacsSource:
        """An unsaved source for this Orthanc (enough for the DICOMweb client)."""
        return PacsSource(name=name, base_url=self.base_url, username=self.username, password=self.password)


def start_orthanc(storage: Path) -> Orthanc:
    orthanc = Orthanc(port=free_port(), storage=storage)
    orthanc.start()
    return orthanc


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """A real Orthanc holding every shared DICOM file and a few hippocampus cases as MR studies."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    source = server.source()
    bundles = [
        *dicom_file_bundles([SHARED_DATA / "dicom", SHARED_DATA / "dicom-seg", SHARED_DATA / "dicom-edge"]),
        *hippocampus_bundles(SHARED_DATA / "hippocampus", limit=HIPPOCAMPUS_CASES),
    ]
    for bundle in bundles:
        pacs_store_datasets(source=source, datasets=bundle.load())
    yield server
    server.stop()


@pytest.fixture
def pacs_source(db, orthanc) -> PacsSource:
    source = orthanc.source()
    source.save()
    return source


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
