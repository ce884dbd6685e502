"""/healthz: is each dependency reachable right now? 200 when all are, 503 otherwise.

Anyone (a load balancer, a monitor) gets only ok or not; which dependency failed, and the names of the
PACS sources, only a signed-in admin (permission pacs.view_pacssource) sees.
"""

from __future__ import annotations

import redis
import requests
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from pacs.models import PacsSource


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _broker() -> str:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
    client.ping()
    return "ok"


def _pacs(source: PacsSource) -> str:
    auth = (source.username, source.password) if source.username else None
    # The cheapest DICOMweb query there is: at most one study.
    response = requests.get(
        f"{source.base_url.rstrip('/')}/studies", params={"limit": 1}, auth=auth, timeout=3
    )
    return "ok" if response.status_code in (200, 204) else f"HTTP {response.status_code}"


def _check(fn, *args) -> str:
    try:
        return fn(*args)
    except Exception as exc:  # a health check reports, it never raises
        return f"error: {type(exc).__name__}"


def healthz(request):
    checks = {"database": _check(_database), "broker": _check(_broker)}
    pacs = {}
    if checks["database"] == "ok":
        for source in PacsSource.objects.filter(enabled=True):
            pacs[source.name] = _check(_pacs, source)
    healthy = all(v == "ok" for v in checks.values()) and all(v == "ok" for v in pacs.values())
    body = {"status": "ok" if healthy else "degraded"}
    if request.user.is_authenticated and request.user.has_perm("pacs.view_pacssource"):
        body.update(checks, pacs=pacs)
    return JsonResponse(body, status=200 if healthy else 503)
