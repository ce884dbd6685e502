from django.conf import settings
from django.db import transaction

from pacs.credentials import token_rotate
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


@transaction.atomic
def pacs_credentials_rotate() -> int:
    """Re-encrypt every stored PACS password with the first configured key (after a new key was put
    first in PACS_CREDENTIALS_KEY, the old one kept after it); returns how many were re-encrypted.
    Raises CredentialsKeyError, changing nothing, when a password opens with none of the keys."""
    sources = list(PacsSource.objects.select_for_update().exclude(password_encrypted=""))
    rotated = [
        (source, token_rotate(source.password_encrypted, source_name=source.name)) for source in sources
    ]  # all checked first
    for source, token in rotated:
        source.password_encrypted = token
        source.save(update_fields=["password_encrypted"])
    return len(rotated)
