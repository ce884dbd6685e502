"""One machine, started by deploy/run.sh. Secrets come from var/secrets.env, written at the first run and
read here, so `python manage.py ...` works in a fresh shell without exporting anything."""

import os

from .secrets_file import secrets_file_load, secrets_file_path

# Before base reads the environment: the file fills in what the environment does not set.
secrets_file_load()

from .base import *  # noqa: E402, F403
from .base import SECRET_KEY  # noqa: E402

if not SECRET_KEY:
    raise RuntimeError(
        f"DJANGO_SECRET_KEY is not set and {secrets_file_path()} does not hold one: "
        "run deploy/run.sh once (it writes that file), or set DJANGO_SECRET_KEY."
    )
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
