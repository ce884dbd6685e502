"""The README's management commands in a fresh shell: no DJANGO_SECRET_KEY, no DJANGO_SETTINGS_MODULE
exported, only the secrets file that deploy/run.sh writes (var/secrets.env). Real PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.db import connection

from accounts.roles import Role
from accounts.services import user_create
from annotation.services import LabelSpec, project_create
from learning.models import Job

REPO = Path(__file__).resolve().parents[1]
# The local settings' broker, on the test database number; the message is removed afterwards.
BROKER = "redis://127.0.0.1:6379/15"

pytestmark = pytest.mark.django_db(transaction=True)


def fresh_shell(var_dir: Path, **extra: str) -> dict[str, str]:
    """What a new login shell has: PATH, HOME, a locale; and where this test's var/ and database are."""
    db = connection.settings_dict
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "ANNOTATOR_VAR_DIR": str(var_dir),
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER,
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def var_dir(tmp_path) -> Path:
    """A var/ as deploy/run.sh leaves it: secrets.env, readable by its owner only."""
    var = tmp_path / "var"
    var.mkdir()
    secrets = var / "secrets.env"
    secrets.write_text(
        "DJANGO_SECRET_KEY=from-the-file-0123456789abcdefghij\nORTHANC_PASSWORD=orthanc-secret\n"
    )
    secrets.chmod(0o600)
    return var


@pytest.fixture
def broker_cleaned():
    yield
    redis.Redis.from_url(BROKER).delete("train")


def test_readme_commands_run_in_a_fresh_shell(var_dir, broker_cleaned):
    admin = user_create(username="admin", role=Role.ADMIN)[0]
    project = project_create(
        name="Hippocampus (demo)", modality="MR", labels=[LabelSpec(1, "hippocampus", "#e4572e")], user=admin
    )
    env = fresh_shell(var_dir)

    retrain = manage(env, "retrain", "--project", project.name, "--as", "admin")
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    job = Job.objects.get(project=project)
    assert (job.state, job.params["trigger"], job.created_by) == (Job.State.QUEUED, "command", admin)
    assert Job.objects.filter(pk=job.pk, dispatched_at__isnull=False).exists(), "sent to the broker"

    promote = manage(env, "promote", "--project", project.name, "--model", "3")
    assert promote.returncode == 1
    assert "has no model v3" in promote.stderr
    assert "DJANGO_SECRET_KEY" not in promote.stderr


def test_the_environment_wins_over_the_file_and_a_missing_file_is_named(var_dir, tmp_path):
    show = [
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY, settings.ORTHANC_PASSWORD)",
    ]
    from_file = manage(fresh_shell(var_dir), *show)
    assert from_file.stdout.splitlines()[-1].split() == [
        "from-the-file-0123456789abcdefghij",
        "orthanc-secret",
    ]
    exported = manage(fresh_shell(var_dir, DJANGO_SECRET_KEY="exported-key-0123456789abcdefghijkl"), *show)
    assert exported.stdout.splitlines()[-1].split() == [
        "exported-key-0123456789abcdefghijkl",
        "orthanc-secret",
    ]

    empty = tmp_path / "empty-var"
    empty.mkdir()
    missing = manage(fresh_shell(empty), "promote", "--project", "x", "--model", "1")
    assert missing.returncode != 0
    assert f"{empty / 'secrets.env'} does not hold one: run deploy/run.sh once" in missing.stderr


def test_the_pacs_credentials_key_comes_from_the_secrets_file_or_a_secrets_backend_file(var_dir, tmp_path):
    show = ["shell", "-c", "from django.conf import settings; print(*settings.PACS_CREDENTIALS_KEYS)"]
    with (var_dir / "secrets.env").open("a") as secrets:
        secrets.write("PACS_CREDENTIALS_KEY=key-from-the-file\n")
    assert manage(fresh_shell(var_dir), *show).stdout.splitlines()[-1] == "key-from-the-file"
    rendered = tmp_path / "vault-rendered-key"  # what a secrets backend's agent writes: new key first
    rendered.write_text("new-key\nold-key\n")
    backend = manage(fresh_shell(var_dir, PACS_CREDENTIALS_KEY_FILE=str(rendered)), *show)
    assert backend.stdout.splitlines()[-1] == "new-key old-key"
