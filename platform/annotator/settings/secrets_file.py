"""The secrets file that deploy/run.sh writes once (var/secrets.env, mode 600), read by the settings
themselves: a management command in a fresh shell finds the same secrets as the running services.

The file holds shell assignments (KEY=value, one a line). A variable already set in the environment
wins over the file, so a deployment that injects its secrets (docker-compose, systemd, a vault agent)
is unaffected.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def secrets_file_path() -> Path:
    """``ANNOTATOR_SECRETS_FILE``, or ``secrets.env`` in ``ANNOTATOR_VAR_DIR`` (default: the repo's var/)."""
    explicit = os.environ.get("ANNOTATOR_SECRETS_FILE")
    if explicit:
        return Path(explicit)
    var = os.environ.get("ANNOTATOR_VAR_DIR") or Path(__file__).resolve().parents[3] / "var"
    return Path(var) / "secrets.env"


def secrets_file_read(path: Path) -> dict[str, str]:
    """KEY -> value of the file's assignments; blank lines and comments are skipped, quotes removed."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise RuntimeError(f"{path}, line {number}: not a KEY=value assignment.")
        words = shlex.split(raw) if raw.strip() else [""]
        values[key] = words[0] if len(words) == 1 else raw.strip()
    return values


def secrets_file_load() -> Path | None:
    """Put the file's values into ``os.environ`` where the environment has none; returns the file read,
    or None when there is no file (a deployment that passes its secrets in the environment)."""
    path = secrets_file_path()
    if not path.is_file():
        return None
    for key, value in secrets_file_read(path).items():
        os.environ.setdefault(key, value)
    return path
