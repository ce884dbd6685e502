"""Thin Celery tasks around the annotation services (routed to queue cpu by CELERY_TASK_ROUTES)."""

from celery import shared_task

from common.exceptions import TransientError


# A PACS outage: back off from 30 s to 15 min, about two hours in all (as pacs.tasks does).
@shared_task(
    acks_late=True,
    autoretry_for=(TransientError,),
    retry_backoff=30,
    retry_backoff_max=900,
    max_retries=8,
)
def review_seg_export(review_id: int) -> dict:
    from annotation.services import review_seg_export as export

    review = export(review_id=review_id)
    return {"status": review.export_status, "sop_instance_uid": review.seg_sop_instance_uid}
