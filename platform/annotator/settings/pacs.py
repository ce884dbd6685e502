"""The local development PACS (Orthanc + DICOMweb) that deploy/ starts, and client behaviour."""

import os
from pathlib import Path

ORTHANC_HOST = os.environ.get("ORTHANC_HOST", "127.0.0.1")
ORTHANC_HTTP_PORT = int(os.environ.get("ORTHANC_HTTP_PORT", "8042"))
ORTHANC_USERNAME = os.environ.get("ORTHANC_USERNAME", "annotator")
ORTHANC_PASSWORD = os.environ.get("ORTHANC_PASSWORD", "")
ORTHANC_STORAGE_DIR = Path(
    os.environ.get("ORTHANC_STORAGE_DIR", Path(__file__).resolve().parents[3] / "var" / "orthanc")
)
# Seconds to wait for a PACS answer before calling it unavailable.
PACS_TIMEOUT_SECONDS = float(os.environ.get("PACS_TIMEOUT_SECONDS", "60"))
# QIDO page size; hospital PACS often cap results per query.
PACS_QIDO_PAGE_SIZE = int(os.environ.get("PACS_QIDO_PAGE_SIZE", "500"))


def _credentials_keys() -> list[str]:
    """Keys of the PACS passwords at rest (pacs.credentials), comma- or line-separated, newest first:
    PACS_CREDENTIALS_KEY (var/secrets.env or the environment), or the file a secrets backend writes
    (PACS_CREDENTIALS_KEY_FILE: a Docker/Kubernetes secret, a Vault agent template)."""
    path = os.environ.get("PACS_CREDENTIALS_KEY_FILE", "")
    text = Path(path).read_text() if path else os.environ.get("PACS_CREDENTIALS_KEY", "")
    return [key.strip() for key in text.replace("\n", ",").split(",") if key.strip()]


PACS_CREDENTIALS_KEYS = _credentials_keys()
