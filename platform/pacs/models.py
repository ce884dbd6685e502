from django.db import models


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
    password = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True, help_text="Polled by the scheduler when enabled.")
    poll_interval_s = models.PositiveIntegerField(default=300)

    sync_status = models.CharField(max_length=16, choices=SyncStatus.choices, default=SyncStatus.NEVER)
    sync_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_sync_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_sync_finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("sync_pacssource", "Can start a sync from a PACS source")]

    def __str__(self) -> str:
        return self.name
