"""Thin Celery tasks around the annotation services (routed to queue cpu by CELERY_TASK_ROUTES).

Services send through annotation.dispatch, which this module connects its tasks to, so they never import
it: tasks -> services, one way.
"""

from celery import shared_task

from annotation import dispatch
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


# Beat: queue again the exports that were lost (queued while the broker was down).
@shared_task(acks_late=True)
def review_exports_requeue() -> list[int]:
    from annotation.services import review_exports_requeue as requeue

    return requeue()


# Embeddings of a volume: minutes on a CPU, seconds on a GPU; safe to run twice (skips what exists).
@shared_task(acks_late=True)
def volume_embeddings_compute(volume_id: int) -> bool:
    from annotation.services import volume_embeddings_compute as compute

    return compute(volume_id=volume_id)


# A click: nobody waits for a redelivered one (the request has timed out by then), so no late ack.
@shared_task(acks_late=False)
def case_interactive_segment(volume_id: int, request: dict, route: dict | None = None) -> dict:
    from annotation.services import interactive_segment

    return interactive_segment(volume_id=volume_id, request=request, route=route)


dispatch.connect(
    review_seg_export=review_seg_export,
    volume_embeddings_compute=volume_embeddings_compute,
    case_interactive_segment=case_interactive_segment,
)
