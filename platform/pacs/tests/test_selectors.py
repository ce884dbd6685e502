import datetime as dt

import pytest

from pacs.models import PacsSource
from pacs.selectors import pacs_sources_due

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("enabled", "last_started", "interval_s", "due"),
    [
        (True, None, 300, True),  # never synced
        (True, NOW - dt.timedelta(seconds=299), 300, False),
        (True, NOW - dt.timedelta(seconds=300), 300, True),
        (False, None, 300, False),  # disabled sources are never polled
    ],
)
def test_pacs_sources_due(enabled, last_started, interval_s, due):
    source = PacsSource.objects.create(
        name="PACS", base_url="http://127.0.0.1:9/dicom-web", enabled=enabled, poll_interval_s=interval_s
    )
    PacsSource.objects.filter(pk=source.pk).update(last_sync_started_at=last_started)
    assert pacs_sources_due(now=NOW) == ([source.id] if due else [])
