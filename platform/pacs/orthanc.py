"""The local Orthanc (Debian packages orthanc + orthanc-dicomweb): its config and its process.

Plain Python, no Django: deploy/ starts the development PACS with it (manage.py orthanc_serve) and
the tests start throw-away ones on free ports. Facts behind the settings are in DESIGN.md.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get(
    "ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_config(*, http_port: int, storage_dir: Path, username: str, password: str, name: str) -> dict:
    return {
        "Name": name,
        "StorageDirectory": str(storage_dir / "storage"),
        "IndexDirectory": str(storage_dir / "index"),
        "HttpPort": http_port,
        # Orthanc has no bind address: refuse remote clients and require a password instead.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        # Gzip on multipart DICOM makes WADO-RS about 20x slower here.
        "HttpCompressionEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        "StableAge": 5,
        "KeepAlive": True,
        "HttpThreadsCount": 16,
        "OverwriteInstances": False,
        "StorageCompression": False,
    }


def orthanc_write_config(*, storage_dir: Path, **kwargs) -> Path:
    storage_dir.mkdir(parents=True, exist_ok=True)
    path = storage_dir / "orthanc.json"
    path.write_text(json.dumps(orthanc_config(storage_dir=storage_dir, **kwargs), indent=2))
    path.chmod(0o600)  # it holds the password
    return path


def orthanc_check_installed() -> None:
    missing = [p for p in (ORTHANC_BINARY, DICOMWEB_PLUGIN) if not Path(p).exists() and not shutil.which(p)]
    if missing:
        raise RuntimeError(
            f"Orthanc is not installed ({', '.join(missing)} missing): "
            "apt-get install orthanc orthanc-dicomweb (deploy/bootstrap.sh does it)."
        )


def orthanc_start(config_path: Path, log_path: Path) -> subprocess.Popen:
    orthanc_check_installed()
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
    return subprocess.Popen([ORTHANC_BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT)


def orthanc_wait_ready(
    *, http_port: int, auth: tuple[str, str], timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    """Block until Orthanc answers with its DICOMweb plugin loaded; raise with the reason otherwise."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{http_port}/plugins/dicom-web"
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode} while starting; see its log.")
        try:
            if requests.get(url, auth=auth, timeout=2).ok:
                return
            last = "DICOMweb plugin not loaded"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc on port {http_port} not ready after {timeout:.0f} s ({last}).")


@dataclass
class OrthancServer:
    """An Orthanc of our own on 127.0.0.1 (tests, benchmarks): started and stopped by its owner."""

    storage: Path
    port: int = field(default_factory=free_port)
    username: str = "annotator"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def start(self) -> OrthancServer:
        config = orthanc_write_config(
            storage_dir=self.storage,
            http_port=self.port,
            username=self.username,
            password=self.password,
            name="annotator-scratch",
        )
        self.process = orthanc_start(config, self.storage / "orthanc.log")
        orthanc_wait_ready(http_port=self.port, auth=self.auth, process=self.process)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
