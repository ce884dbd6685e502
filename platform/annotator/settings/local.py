"""One machine, started by deploy/run.sh. Secrets come from var/secrets.env written at first run."""

import os

from .base import *  # noqa: F403
from .base import SECRET_KEY

if not SECRET_KEY:
    raise RuntimeError("DJANGO_SECRET_KEY is not set: deploy/run.sh writes one into var/secrets.env")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
