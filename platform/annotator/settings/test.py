"""pytest-django: real PostgreSQL (test database), real Redis on its own database number."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403

SECRET_KEY = "test-only-secret-key-not-for-production-use-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
CELERY_BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
# Subprocesses started by a test (manage.py, workers) get the same folder through the environment.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or tempfile.mkdtemp(prefix="annotator-test-media-"))
# Pages are served from the source folders in tests; collectstatic is not run.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT = Path(tempfile.mkdtemp(prefix="annotator-test-static-"))
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; tests only
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PACS_TIMEOUT_SECONDS = 10
# Fernet key of the PACS passwords at rest: base64 of b"test-only-pacs-credentials-key-0".
PACS_CREDENTIALS_KEYS = ["dGVzdC1vbmx5LXBhY3MtY3JlZGVudGlhbHMta2V5LTA="]
# Each test run its own Redis key prefix: two runs on one machine (or a developer's run beside CI) never
# take each other's tasks or results. Subprocesses inherit it through the environment.
_REDIS_PREFIX = os.environ.setdefault("ANNOTATOR_TEST_REDIS_PREFIX", f"test-{os.getpid()}-")
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "global_keyprefix": _REDIS_PREFIX}  # noqa: F405
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"global_keyprefix": _REDIS_PREFIX}
JOB_LEASE_SECONDS = 5.0  # the worker tests kill a worker and wait for the lease to pass
