"""Celery: Redis broker, four queues, late acks so a killed worker's task is delivered again."""

import os

from kombu import Exchange, Queue

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
# Each queue its own direct exchange and key: a bare Queue(name) would inherit the default queue's.
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in ("interactive", "gpu", "train", "cpu")
]
CELERY_TASK_DEFAULT_QUEUE = "cpu"
# PACS I/O, ingest and SEG export are CPU work; a click goes to interactive, embeddings to gpu.
CELERY_TASK_ROUTES = {
    "annotation.tasks.case_interactive_segment": {"queue": "interactive"},
    "annotation.tasks.volume_embeddings_compute": {"queue": "gpu"},
    "learning.tasks.adaptation_run": {"queue": "train"},
    "learning.tasks.pool_score": {"queue": "gpu"},
    "learning.tasks.*": {"queue": "cpu"},
    "pacs.tasks.*": {"queue": "cpu"},
    "annotation.tasks.*": {"queue": "cpu"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
# A task may run longer than Redis' default visibility timeout (1 h) would allow before redelivery.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "pacs-poll": {
        "task": "pacs.tasks.pacs_sources_poll",
        "schedule": float(os.environ.get("PACS_POLL_SECONDS", "60")),
        "options": {"queue": "cpu", "expires": 55},
    },
    "exports-requeue": {
        "task": "annotation.tasks.review_exports_requeue",
        "schedule": float(os.environ.get("EXPORT_REQUEUE_SECONDS", "60")),
        "options": {"queue": "cpu", "expires": 55},
    },
    "learning-tick": {
        "task": "learning.tasks.learning_tick",
        "schedule": float(os.environ.get("LEARNING_TICK_SECONDS", "60")),
        "options": {"queue": "cpu", "expires": 55},
    },
}
# Jobs (learning app): a running job's worker renews its lease at every progress report; a job held
# past its lease by a worker that stopped is taken over. Queued jobs whose message got lost are re-sent,
# and so are running jobs whose whole worker died (their message is back only after the visibility timeout).
JOB_LEASE_SECONDS = float(os.environ.get("JOB_LEASE_SECONDS", "120"))
JOB_REDISPATCH_SECONDS = float(os.environ.get("JOB_REDISPATCH_SECONDS", "600"))
JOB_STALE_SECONDS = float(os.environ.get("JOB_STALE_SECONDS", "3600"))
JOB_MAX_ATTEMPTS = int(os.environ.get("JOB_MAX_ATTEMPTS", "3"))
