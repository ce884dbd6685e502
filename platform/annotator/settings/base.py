"""Settings shared by every environment. Everything deployment-specific comes from the environment
(12-factor) with defaults that work on one local machine."""

import os
from pathlib import Path

import dj_database_url

from .celery import *  # noqa: F403
from .media import *  # noqa: F403
from .pacs import *  # noqa: F403

REPO_DIR = Path(__file__).resolve().parents[3]
PLATFORM_DIR = REPO_DIR / "platform"
VAR_DIR = Path(os.environ.get("ANNOTATOR_VAR_DIR", REPO_DIR / "var"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "common",
    "accounts",
    "pacs",
    "studies",
    "annotation",
    "learning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "annotator.urls"
WSGI_APPLICATION = "annotator.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PLATFORM_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/annotator"),
        conn_max_age=60,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"  # accounts.views.home: each role on its work
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# The JSON API: session auth (CSRF enforced), a permission per view, one error shape.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "annotation.errors.api_exception_handler",
}
# A case lock lasts this long without a heartbeat; an upload of a mask version at most this many bytes.
ANNOTATION_LOCK_LEASE_SECONDS = int(os.environ.get("ANNOTATION_LOCK_LEASE_SECONDS", "300"))
ANNOTATION_MAX_UPLOAD_BYTES = int(os.environ.get("ANNOTATION_MAX_UPLOAD_BYTES", str(64 * 1024 * 1024)))
# A click waits this long for an interactive worker; a worker keeps this many bytes of embeddings in memory.
INTERACTIVE_TIMEOUT_SECONDS = float(os.environ.get("INTERACTIVE_TIMEOUT_SECONDS", "30"))
INTERACTIVE_CACHE_BYTES = int(os.environ.get("INTERACTIVE_CACHE_BYTES", str(2 << 30)))
# Embeddings computed ahead for this many new cases at the top of each project's worklist.
INTERACTIVE_PREFETCH_CASES = int(os.environ.get("INTERACTIVE_PREFETCH_CASES", "2"))
# A volume's embeddings task not heard from for this long is taken as lost and may be queued again.
EMBEDDINGS_CLAIM_STALE_SECONDS = float(os.environ.get("EMBEDDINGS_CLAIM_STALE_SECONDS", "600"))
# LiteMedSAM's image encoder runtime in the workers: auto (the fastest this CPU runs), or one of
# openvino-bf16, onnxruntime, openvino-f32, torch-bf16, torch-f32 (see ml_worker.models.encoders).
INTERACTIVE_ENCODER = os.environ.get("INTERACTIVE_ENCODER", "auto")
# A results.json of `python -m ml_worker effort-simulate` whose curves the Learning dashboard draws beside
# the real effort per case (same units: ml_worker.effort); empty: none.
EFFORT_SIMULATION_RESULTS = os.environ.get("EFFORT_SIMULATION_RESULTS", "")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [REPO_DIR / "frontend" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # hashed names + gzip copies, served with a one-year immutable cache (common.staticfiles)
    "staticfiles": {"BACKEND": "common.staticfiles.StaticStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # It logs every request at INFO, with study UIDs.
    "loggers": {"dicomweb_client": {"level": "WARNING"}},
}
