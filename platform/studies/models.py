from django.db import models


class Study(models.Model):
    """A study as the PACS lists it. ``num_instances`` is what the PACS reported when it was last
    examined: a study whose count changes is examined again, an unchanged one is not."""

    source = models.ForeignKey("pacs.PacsSource", on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    patient_id = models.CharField(max_length=64, blank=True)
    study_date = models.DateField(null=True, blank=True)
    description = models.CharField(max_length=256, blank=True)
    modalities = models.CharField(max_length=64, blank=True)
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    gone_at = models.DateTimeField(
        null=True, blank=True, help_text="When a sync found it deleted from the PACS; empty while listed."
    )
    first_seen_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-study_date", "id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "study_instance_uid"], name="study_unique_per_source")
        ]

    def __str__(self) -> str:
        return self.description or self.study_instance_uid


class Series(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        INGESTING = "ingesting", "ingesting"
        READY = "ready", "ready"
        ERROR = "error", "error"
        SKIPPED = "skipped", "not an image"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=256, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    num_instances = models.PositiveIntegerField(default=0, help_text="As last reported by the PACS.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error_kind = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    ingested_num_instances = models.PositiveIntegerField(null=True, blank=True)
    ingested_at = models.DateTimeField(null=True, blank=True)
    gone_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a sync found it deleted from the PACS (its volumes and annotations are kept); "
        "empty while listed.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "series"
        ordering = ["series_number", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "series_instance_uid"], name="series_unique_per_study")
        ]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.description or self.series_instance_uid


class Volume(models.Model):
    """A 3D image built from a series, on the series' own voxel grid (see ml_worker.io.volume).

    A series usually gives one volume; one whose slice spacing changes gives one resampled onto a
    regular grid (index 0, flagged by ``source_slices`` and ``spacing_range``) and one exact volume per
    uniform run.
    """

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="volumes")
    index = models.PositiveSmallIntegerField(default=0)
    path = models.CharField(max_length=255, help_text="NIfTI file, relative to MEDIA_ROOT")
    sha256 = models.CharField(max_length=64)
    shape = models.JSONField()
    spacing = models.JSONField()
    affine = models.JSONField()
    dtype = models.CharField(max_length=16)
    nbytes = models.BigIntegerField()
    sop_instance_uids = models.JSONField(help_text="Source instance of each slice, in slice order")
    frame_numbers = models.JSONField(default=list)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    warnings = models.JSONField(default=list)
    source_slices = models.JSONField(
        default=list,
        blank=True,
        help_text="Resampled onto a regular grid (uneven slice spacing): the slice nearest each source "
        "instance, in sop_instance_uids order; empty for a volume on its source grid",
    )
    spacing_range = models.JSONField(
        null=True, blank=True, help_text="Resampled: least and largest acquired step along the normal (mm)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["series_id", "index"]
        constraints = [models.UniqueConstraint(fields=["series", "index"], name="volume_unique_index")]

    def __str__(self) -> str:
        return f"{self.series} [{self.index}]"

    @property
    def resampled(self) -> bool:
        return bool(self.source_slices)
