"""Thin Celery tasks of the learning loop: each carries a job id, the job row carries the rest.

Adaptation goes to queue train (one at a time per worker), pre-segmentation and scoring to gpu, the
periodic check to cpu (CELERY_TASK_ROUTES). A duplicate delivery while another worker holds the job
comes back later (JobBusy); a finished job is a no-op. Services send jobs through learning.dispatch,
which this module connects its tasks to, so they never import it: tasks -> services, one way.
"""

from celery import shared_task

from learning import dispatch, services


@shared_task(bind=True, acks_late=True, max_retries=None)
def adaptation_run(self, job_id: int) -> int | None:
    try:
        version = services.adaptation_run(job_id=job_id)
    except services.JobBusy as busy:
        raise self.retry(countdown=busy.retry_after) from None
    return None if version is None else version.number


@shared_task(bind=True, acks_late=True, max_retries=None)
def pool_score(self, job_id: int) -> int | None:
    try:
        return services.pool_score_run(job_id=job_id)
    except services.JobBusy as busy:
        raise self.retry(countdown=busy.retry_after) from None


@shared_task(acks_late=True)
def learning_tick() -> dict:
    return services.learning_tick()


dispatch.connect(adaptation_run=adaptation_run, pool_score=pool_score)
