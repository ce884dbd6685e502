from django.conf import settings
from django.db import transaction

from pacs.models import PacsSource

LOCAL_ORTHANC_NAME = "Local Orthanc"


@transaction.atomic
def pacs_source_ensure_local() -> PacsSource:
    """The development Orthanc that deploy/ starts, as a source; updated in place when settings change."""
    source, _ = PacsSource.objects.update_or_create(
        name=LOCAL_ORTHANC_NAME,
        defaults={
            "base_url": f"http://{settings.ORTHANC_HOST}:{settings.ORTHANC_HTTP_PORT}/dicom-web",
            "username": settings.ORTHANC_USERNAME,
            "password": settings.ORTHANC_PASSWORD,
        },
    )
    return source
