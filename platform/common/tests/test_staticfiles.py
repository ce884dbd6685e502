"""Static files as deployed (common.staticfiles, base settings; the test settings serve the sources):
collectstatic hashes every file and keeps a gzip copy, the split bundle's imports point at hashed
files that exist, and WhiteNoise serves the pages' files compressed with a one-year immutable cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.http import HttpResponse
from django.templatetags.static import static
from django.test import RequestFactory
from whitenoise.middleware import WhiteNoiseMiddleware

from annotator.settings.base import STORAGES as DEPLOYED_STORAGES

BUNDLE = Path(settings.STATICFILES_DIRS[0]) / "annotation" / "case.js"
# `import{...}from"./x.js"`, `import("./x.js")`: the relative imports of an ES module
RELATIVE_IMPORT = re.compile(r"""(?:from\s*|import\(\s*)["'](\.{1,2}/[^"']+)["']""")


@pytest.fixture
def collected(settings, tmp_path) -> Path:
    assert BUNDLE.exists(), f"{BUNDLE} is missing: build it with `cd frontend && npm run build`"
    settings.STORAGES = DEPLOYED_STORAGES
    settings.STATIC_ROOT = tmp_path / "static"
    settings.WHITENOISE_USE_FINDERS = False
    settings.WHITENOISE_AUTOREFRESH = False
    call_command("collectstatic", interactive=False, verbosity=0)
    return settings.STATIC_ROOT


def test_pages_link_hashed_files_whose_module_imports_are_hashed_too(collected):
    url = static("annotation/case.js")
    assert re.fullmatch(r"/static/annotation/case\.[0-9a-f]{12}\.js", url), url
    pending, seen = [url.removeprefix("/static/")], set()
    while pending:  # the entry and every chunk it reaches, statically or on demand
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for target in RELATIVE_IMPORT.findall((collected / name).read_text()):
            resolved = (collected / name).parent.joinpath(target).resolve().relative_to(collected.resolve())
            assert re.search(r"\.[0-9a-f]{12}\.js$", target), f"{name} imports an unhashed {target}"
            assert (collected / resolved).exists(), f"{name} imports {target}, which is not there"
            pending.append(str(resolved))
    assert len(seen) > 1, "the bundle is split into chunks"
    assert (collected / f"{url.removeprefix('/static/')}.gz").exists()


def test_whitenoise_serves_them_compressed_and_cached_for_good(collected):
    middleware = WhiteNoiseMiddleware(lambda request: HttpResponse(status=404))
    for name in ("annotation/case.js", "annotation/case.css", "css/app.css"):
        request = RequestFactory().get(static(name), HTTP_ACCEPT_ENCODING="gzip, deflate, br")
        response = middleware(request)
        assert response.status_code == 200, name
        assert response["Content-Encoding"] == "gzip", name
        assert response["Cache-Control"] == "max-age=315360000, public, immutable", name
        assert int(response["Content-Length"]) < (collected / name).stat().st_size, name
    # the unhashed name still answers (an old page), but only for a minute
    response = middleware(RequestFactory().get("/static/annotation/case.js"))
    assert response.status_code == 200 and response["Cache-Control"] == "max-age=60, public"
