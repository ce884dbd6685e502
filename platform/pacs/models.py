from django.db import models

from pacs.credentials import password_decrypt, password_encrypt


class PacsSource(models.Model):
    """A DICOMweb endpoint the platform pulls studies from and sends DICOM SEG back to."""

    class SyncStatus(models.TextChoices):
        NEVER = "never", "never synced"
        RUNNING = "running", "running"
        OK = "ok", "ok"
        ERROR = "error", "error"

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(help_text="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    username = models.CharField(max_length=150, blank=True)
    password_encrypted = models.TextField(
        blank=True, editable=False, help_text="The password as a Fernet token (pacs.credentials)."
    )
    enabled = models.BooleanField(default=True, help_text="Polled by the scheduler when enabled.")
    poll_interval_s = models.PositiveIntegerField(default=300)

    sync_status = models.CharField(max_length=16, choices=SyncStatus.choices, default=SyncStatus.NEVER)
    sync_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_sync_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_sync_finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When a sync last finished without error."
    )
    last_error = models.TextField(blank=True, editable=False, help_text="Cleared by a successful sync.")
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("sync_pacssource", "Can start a sync from a PACS source")]

    def __str__(self) -> str:
        return self.name

    @property
    def password(self) -> str:
        """The password in clear, for the DICOMweb client only; at rest it is encrypted."""
        return password_decrypt(self.password_encrypted, source_name=self.name)

    @password.setter
    def password(self, value: str) -> None:
        self.password_encrypted = password_encrypt(value)
