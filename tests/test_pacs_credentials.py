"""PACS passwords at rest: encrypted with the key from the settings (secrets file or backend), used in
clear only by the DICOMweb client of a real Orthanc; key rotation; the data migration of stored rows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.roles import Role
from accounts.services import user_create
from pacs.credentials import CredentialsKeyError
from pacs.models import PacsSource
from pacs.services.sources import pacs_credentials_rotate
from pacs.services.sync import pacs_source_sync

NEW_KEY = "bmV3LXRlc3Qta2V5LW9mLXBhY3MtY3JlZGVudGlhbHM="  # base64 of 32 bytes, as Fernet wants
OTHER_KEY = "b3RoZXItdGVzdC1rZXktbm9ib2R5LXNhdmVkLXdpdGg="


def stored(source: PacsSource) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM pacs_pacssource WHERE id = %s", [source.id])
        return cursor.fetchone()[0]


@pytest.mark.orthanc
def test_a_password_is_a_token_at_rest_and_opens_the_real_pacs(pacs_source, orthanc):
    token = stored(pacs_source)
    assert orthanc.password not in token and token.startswith("gAAAA")  # a Fernet token
    assert PacsSource.objects.get(pk=pacs_source.pk).password == orthanc.password
    assert pacs_source_sync(source_id=pacs_source.id).studies_seen > 0


@pytest.mark.orthanc
def test_a_key_that_does_not_open_it_is_a_clear_error_on_the_source(pacs_source, settings):
    settings.PACS_CREDENTIALS_KEYS = [OTHER_KEY]
    with pytest.raises(CredentialsKeyError, match="cannot be decrypted with the configured"):
        pacs_source_sync(source_id=pacs_source.id)
    pacs_source.refresh_from_db()
    assert pacs_source.sync_status == PacsSource.SyncStatus.ERROR
    assert "PACS_CREDENTIALS_KEY" in pacs_source.last_error


@pytest.mark.orthanc
def test_rotation_re_encrypts_with_the_new_key_and_refuses_what_no_key_opens(pacs_source, orthanc, settings):
    old = settings.PACS_CREDENTIALS_KEYS[0]
    settings.PACS_CREDENTIALS_KEYS = [NEW_KEY, old]
    assert pacs_credentials_rotate() == 1
    settings.PACS_CREDENTIALS_KEYS = [NEW_KEY]  # the old key removed
    assert PacsSource.objects.get(pk=pacs_source.pk).password == orthanc.password
    assert pacs_source_sync(source_id=pacs_source.id).studies_seen > 0

    before = stored(pacs_source)
    settings.PACS_CREDENTIALS_KEYS = [OTHER_KEY]
    with pytest.raises(CredentialsKeyError):
        pacs_credentials_rotate()
    assert stored(pacs_source) == before


def test_without_a_key_the_admin_says_what_to_set_and_saves_nothing(client, db, settings):
    admin = user_create(username="admin-1", role=Role.ADMIN)[0]
    client.force_login(admin)
    form = {"name": "New PACS", "base_url": "https://pacs.example.org/dicom-web", "username": "u"}
    settings.PACS_CREDENTIALS_KEYS = []
    response = client.post("/admin/pacs/pacssource/add/", {**form, "password": "pw", "poll_interval_s": 300})
    assert response.status_code == 200 and "no key is set" in response.content.decode()
    assert not PacsSource.objects.exists()
    settings.PACS_CREDENTIALS_KEYS = [NEW_KEY]
    response = client.post("/admin/pacs/pacssource/add/", {**form, "password": "pw", "poll_interval_s": 300})
    assert response.status_code == 302
    source = PacsSource.objects.get()
    assert source.password == "pw" and "pw" not in stored(source)


@pytest.fixture
def pacs_at_0001(transactional_db):
    """The pacs app migrated back to before encryption; forward to the latest of every app afterwards."""
    executor = MigrationExecutor(connection)
    executor.migrate([("pacs", "0001_initial")])
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def migrate_pacs_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([node for node in executor.loader.graph.leaf_nodes() if node[0] == "pacs"])


def test_the_data_migration_encrypts_stored_passwords_and_keeps_them(pacs_at_0001, settings):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pacs_pacssource (name, base_url, username, password, enabled, poll_interval_s,"
            " sync_status, last_error, created_at) VALUES"
            " ('Old', 'http://h/dicom-web', 'u', 'plain-pw', true, 300, 'never', '', now()),"
            " ('Open', 'http://o/dicom-web', '', '', true, 300, 'never', '', now())"
        )
    settings.PACS_CREDENTIALS_KEYS = []
    with pytest.raises(CredentialsKeyError, match="no key is set"):
        migrate_pacs_to_latest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM pacs_pacssource WHERE name = 'Old'")
        assert cursor.fetchone() == ("plain-pw",)  # the failed migration changed nothing

    settings.PACS_CREDENTIALS_KEYS = [NEW_KEY]
    migrate_pacs_to_latest()
    old, open_ = PacsSource.objects.get(name="Old"), PacsSource.objects.get(name="Open")
    assert old.password == "plain-pw" and "plain-pw" not in stored(old)
    assert (open_.password, stored(open_)) == ("", "")
