"""Projects, their cases (a volume to annotate), locks, immutable mask versions, reviews and the audit log.

Writes go through annotation.services; reads through annotation.selectors.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Project(models.Model):
    """A label set applied to a pool of volumes. ``interactive_model`` names the promptable model the
    interactive endpoint uses (an ml_worker registry name)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    modality = models.CharField(max_length=16, blank=True, help_text="Expected modality, e.g. MR or CT")
    interactive_model = models.CharField(max_length=64, blank=True)
    double_reading_percent = models.PositiveSmallIntegerField(
        default=0,
        help_text="Share of the cases (in %) that two annotators read independently, for a reviewer to "
        "compare and choose or merge; 0: none, 100: all",
    )
    intake_series_description = models.CharField(
        max_length=128,
        blank=True,
        help_text="New volumes whose series description contains this (any case) and whose modality is the "
        "project's join the project by themselves; empty: volumes are added by hand",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(double_reading_percent__lte=100), name="project_double_reading_percent"
            )
        ]

    def __str__(self) -> str:
        return self.name


class LabelClass(models.Model):
    """One value of the project's label maps (0 is background and is never a class)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="labels")
    value = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    colour = models.CharField(max_length=7, help_text="#rrggbb")

    class Meta:
        ordering = ["project_id", "value"]
        constraints = [
            models.UniqueConstraint(fields=["project", "value"], name="label_value_unique_per_project"),
            models.UniqueConstraint(fields=["project", "name"], name="label_name_unique_per_project"),
            models.CheckConstraint(condition=Q(value__gte=1, value__lte=255), name="label_value_1_255"),
        ]

    def __str__(self) -> str:
        return f"{self.value}: {self.name}"


class Case(models.Model):
    """A volume in a project: its place in the worklist (active-learning score), its state and split.

    ``assignee`` is the annotator whose work it is (set on take; a rejected case keeps it). ``split`` is
    drawn once from the volume's identity when the case is created and never changes.

    Double reading: a volume read twice has two cases in the project, ``reading`` 1 and 2, each with its
    own reader, lock and versions. A reviewer compares the two once both are submitted and keeps one
    reading or a merge (annotation.readings): the kept case is approved, the other one ``adjudicated``.
    """

    class Status(models.TextChoices):
        NEW = "new", "new"
        IN_PROGRESS = "in_progress", "in progress"
        SUBMITTED = "submitted", "submitted"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        ADJUDICATED = "adjudicated", "adjudicated"  # a double reading whose other reading or merge was kept

    class Split(models.TextChoices):
        TRAIN = "train", "train"
        VALIDATION = "validation", "validation"
        TEST = "test", "test"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="cases")
    volume = models.ForeignKey("studies.Volume", on_delete=models.PROTECT, related_name="cases")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    reading = models.PositiveSmallIntegerField(
        default=1, help_text="1: the volume's first (or only) reading; 2: its second, independent reading"
    )
    split = models.CharField(max_length=16, choices=Split.choices)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    score = models.FloatField(default=0.0, help_text="Active-learning score: higher comes first")
    score_reason = models.TextField(blank=True)
    score_model = models.CharField(max_length=64, blank=True, help_text="Empty: not scored yet")
    score_version = models.CharField(max_length=64, blank=True)
    score_inputs = models.JSONField(
        default=dict, blank=True, help_text="What the model said ({scores, embedding}), to re-rank without it"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-score", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "volume", "reading"], name="case_unique_reading"),
            models.CheckConstraint(condition=Q(reading__in=[1, 2]), name="case_reading_1_or_2"),
        ]
        # The worklist walks this index in order: (score, id) keyset pages of one project.
        indexes = [
            models.Index(
                models.F("project"), models.F("score").desc(), models.F("id").desc(), name="case_worklist"
            )
        ]
        permissions = [
            ("annotate_case", "Can take, edit and submit cases"),
            ("review_case", "Can approve or reject submitted cases"),
            ("release_any_lock", "Can release a lock someone else holds"),
            ("view_effort", "Can see annotation effort per case"),
            ("approve_own_work", "Can approve a case they annotated, giving a reason (audited)"),
        ]

    def __str__(self) -> str:
        return f"case {self.pk} ({self.project})"


class CaseLock(models.Model):
    """A lease on a case for one user. One row per case at most (the DB enforces it); a row whose
    ``expires_at`` has passed counts as free and is replaced by the next take."""

    case = models.OneToOneField(Case, on_delete=models.CASCADE, related_name="lock")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    taken_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.case} held by {self.user} until {self.expires_at:%Y-%m-%d %H:%M:%S}"


class MaskVersion(models.Model):
    """One immutable state of a case's label map. Versions form a chain: each has the previous head as
    its parent (the DB refuses two children of one parent). The first version (stored number 0, shown
    as 1: ``display_number``) is often the pre-segmentation.

    The file is a gzipped NIfTI-1 uint8 label map on the volume's grid, named by the SHA-256 of its
    uncompressed bytes under MEDIA_ROOT/masks/. Effort fields count the work since the parent.
    """

    class Source(models.TextChoices):
        MODEL = "model", "model"
        HUMAN = "human", "human"
        EDITED = "edited", "edited model output"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    parent = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="child"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    source = models.CharField(max_length=8, choices=Source.choices)
    model_version = models.CharField(max_length=64, blank=True, help_text="The model, for source=model")
    path = models.CharField(max_length=255, help_text="Relative to MEDIA_ROOT")
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    seconds = models.FloatField(default=0.0)
    clicks = models.PositiveIntegerField(default=0)
    strokes = models.PositiveIntegerField(default=0)
    model_calls = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["case_id", "number"]
        constraints = [models.UniqueConstraint(fields=["case", "number"], name="version_number_unique")]

    def __str__(self) -> str:
        return f"{self.case} v{self.display_number}"

    @property
    def display_number(self) -> int:
        """The number people see (pages, API, exports): 1 for the first version, as people count. The
        stored ``number`` starts at 0 and stays so (the chain, its unique constraint and stale-version
        checks use ids and stored numbers; nothing stored is renumbered)."""
        return self.number + 1


class Review(models.Model):
    """A reviewer's decision on a submitted version; an approval also exports it as DICOM SEG."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "approve"
        REJECT = "reject", "reject"

    class Export(models.TextChoices):
        NONE = "", "not exported"
        PENDING = "pending", "pending"
        DONE = "done", "in the PACS"
        FAILED = "failed", "failed"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="reviews")
    version = models.ForeignKey(MaskVersion, on_delete=models.PROTECT, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True)
    override_reason = models.TextField(
        blank=True, help_text="Why an admin approved their own work (empty: the reviewer did not annotate it)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    export_status = models.CharField(max_length=8, choices=Export.choices, blank=True)
    export_error = models.TextField(blank=True)
    seg_series_instance_uid = models.CharField(max_length=64, blank=True)
    seg_sop_instance_uid = models.CharField(max_length=64, blank=True)
    exported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["case_id", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.decision} {self.version}"


class AuditEvent(models.Model):
    """Who did what to which object. ``actor`` is empty for the system (a model, a task)."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=32)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    at = models.DateTimeField(auto_now_add=True)
    details = models.JSONField(default=dict)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type} {self.object_id}"


class Adjudication(models.Model):
    """A reviewer's decision on a volume read twice: which reading was kept (or how they were merged),
    with the two readings' agreement at that moment. ``agreement`` holds per class
    ``{label: {dice, hd95_mm, assd_mm}}`` between the readers; ``final_dice`` each reader's mean Dice
    with the kept mask (``{"first": x, "second": y}``), for the team's quality report."""

    class Decision(models.TextChoices):
        FIRST = "first", "kept reading 1"
        SECOND = "second", "kept reading 2"
        MERGE = "merge", "merged"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="adjudications")
    first = models.OneToOneField(Case, on_delete=models.CASCADE, related_name="adjudication_as_first")
    second = models.OneToOneField(Case, on_delete=models.CASCADE, related_name="adjudication_as_second")
    first_version = models.ForeignKey(MaskVersion, on_delete=models.PROTECT, related_name="+")
    second_version = models.ForeignKey(MaskVersion, on_delete=models.PROTECT, related_name="+")
    first_reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    second_reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    result = models.ForeignKey(MaskVersion, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    sources = models.JSONField(
        default=dict, blank=True, help_text="A merge: label -> first/second/union/both"
    )
    agreement = models.JSONField(default=dict)
    mean_dice = models.FloatField(help_text="Between the readers, mean over the project's classes")
    mean_hd95_mm = models.FloatField(null=True, blank=True, help_text="Over the classes both readers drew")
    final_dice = models.JSONField(default=dict)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} of cases {self.first_id}/{self.second_id}"
