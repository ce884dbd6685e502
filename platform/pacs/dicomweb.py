"""DICOMweb access to a PACS source (dicomweb-client), with timeouts and errors people can act on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from django.conf import settings

from common.exceptions import ApplicationError, TransientError
from pacs.models import PacsSource

T = TypeVar("T")

# Ask for what the PACS stored: Orthanc's transcoding to some syntaxes fails, and it costs time anyway.
STORED_TRANSFER_SYNTAX = (("application/dicom", "*"),)

# DICOM JSON tags used by the sync (QIDO-RS answers).
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
PATIENT_ID = "00100020"
STUDY_DATE = "00080020"
STUDY_DESCRIPTION = "00081030"
MODALITIES_IN_STUDY = "00080061"
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
SERIES_NUMBER = "00200011"
STUDY_NUM_SERIES = "00201206"
STUDY_NUM_INSTANCES = "00201208"
SERIES_NUM_INSTANCES = "00201209"


STUDY_FIELDS = [STUDY_DESCRIPTION, MODALITIES_IN_STUDY, STUDY_NUM_SERIES, STUDY_NUM_INSTANCES]
SERIES_FIELDS = [SERIES_DESCRIPTION, SERIES_NUMBER, MODALITY, SERIES_NUM_INSTANCES]


class PacsUnavailable(TransientError):
    """The PACS did not answer (down, refused, timed out, 5xx): try again later."""


class PacsRequestError(ApplicationError):
    """The PACS answered with a refusal (4xx): retrying the same request will not help."""


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def client_for(source: PacsSource) -> DICOMwebClient:
    session = _TimeoutSession(settings.PACS_TIMEOUT_SECONDS)
    if source.username:
        session.auth = (source.username, source.password)
    client = DICOMwebClient(url=source.base_url.rstrip("/"), session=session)
    # Retries belong to the Celery task (backoff across minutes, visible on the Job), not to a
    # request that would block a worker for half a minute.
    client.set_http_retry_params(retry=False)
    return client


@contextmanager
def pacs_errors(source: PacsSource, what: str) -> Iterator[None]:
    """Turn transport faults into PacsUnavailable and refusals into PacsRequestError, naming the PACS."""
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is None or status >= 500 or status == 429:
            raise PacsUnavailable(
                f"PACS '{source.name}' failed to {what} (HTTP {status}); will retry."
            ) from exc
        if status in (401, 403):
            raise PacsRequestError(
                f"PACS '{source.name}' refused to {what} (HTTP {status}): "
                "check the source's username and password."
            ) from exc
        raise PacsRequestError(f"PACS '{source.name}' refused to {what} (HTTP {status}).") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsUnavailable(
            f"Cannot reach PACS '{source.name}' at {source.base_url} to {what}: "
            f"{type(exc).__name__}; will retry."
        ) from exc


def call(source: PacsSource, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    with pacs_errors(source, what):
        return fn(*args, **kwargs)


def search_studies(source: PacsSource, client: DICOMwebClient) -> Iterator[dict]:
    """Every study the PACS lists (QIDO-RS), page by page: PACS often cap the results of one query."""
    page, offset = settings.PACS_QIDO_PAGE_SIZE, 0
    while True:
        items = call(
            source, "list studies", client.search_for_studies, fields=STUDY_FIELDS, limit=page, offset=offset
        )
        yield from items
        if len(items) < page:
            return
        offset += len(items)


def value(item: dict, tag: str, default=None):
    """First value of ``tag`` in a DICOM JSON object (QIDO answer), or ``default``."""
    values = item.get(tag, {}).get("Value")
    first = values[0] if values else None
    if first is None:  # absent, empty, or sent as null
        return default
    if isinstance(first, dict) and "Alphabetic" in first:  # person names
        return first["Alphabetic"]
    return first


def values(item: dict, tag: str) -> list:
    return list(item.get(tag, {}).get("Value") or [])
