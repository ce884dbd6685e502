"""How static files are stored and served. collectstatic (deploy/run.sh, the Dockerfile) writes each
file under a name with a hash of its content, beside a gzip copy (WhiteNoise's
CompressedManifestStaticFilesStorage); pages link to the hashed names (``{% static %}``), which WhiteNoise
serves compressed with a one-year ``immutable`` cache: a new build is a new name.

The browser bundle is split into ES modules (frontend/build.mjs: entries and chunks that import each
other by relative path); ``support_js_module_import_aggregation`` rewrites those imports to the hashed
names too, so a cached entry never loads a chunk of another build.
"""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    support_js_module_import_aggregation = True
