"""Paths in the media store. Rows keep paths relative to MEDIA_ROOT so the store can move."""

from pathlib import Path

from django.conf import settings


def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


def media_relative(path: Path) -> str:
    return str(Path(path).relative_to(settings.MEDIA_ROOT))


def volumes_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "volumes"
