"""The learning loop made visible: each project's learning policy, its model versions (a registry with
lineage and one active version at most) and the jobs (adaptation, pre-segmentation and scoring) that
change them.

Writes go through learning.services; reads through learning.selectors.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


def default_network() -> dict:
    """The native 3D net a project without a pretrained base starts from (small: it trains on a CPU)."""
    return {"init_filters": 8, "roi_size": [48, 64, 48], "spacing": [1.0, 1.0, 1.0]}


SECOND_OPINION_SUFFIX = "+litemedsam"


class LearningPolicy(models.Model):
    """How a project's model learns: when a round starts, with which method, how a candidate is judged.

    ``base_checkpoint``: a native 3D segmentation checkpoint an admin points to (a site's trained
    model); empty: the first round trains the network from its initialisation (method ``full``), which
    carries the weights of ``pretrained`` when set (Volume Fusion pretraining on the site's own
    unlabelled volumes, ``python -m ml_worker pretrain``).
    """

    project = models.OneToOneField("annotation.Project", on_delete=models.CASCADE, related_name="learning")
    adapt_every = models.PositiveIntegerField(
        default=5, help_text="Start an adaptation round when this many new masks were approved (0: never)"
    )
    method = models.CharField(max_length=32, default="lora_conv", help_text="PEFT method of a round")
    strategy = models.CharField(
        max_length=32,
        default="hybrid",
        help_text="Selection strategy of the worklist (disagreement: the native net against LiteMedSAM "
        "prompted with its boxes, which then pre-segments where it does better on the validation split; "
        "it costs the slice embeddings of every pool volume)",
    )
    manual_promotion = models.BooleanField(
        default=False, help_text="A candidate that passes the gate waits for an admin to promote it"
    )
    margin = models.FloatField(default=0.01, help_text="Least mean Dice gain over the active model")
    alpha = models.FloatField(default=0.05, help_text="Significance of the paired test")
    first_floor = models.FloatField(default=0.5, help_text="Least mean Dice of a project's first model")
    base_checkpoint = models.CharField(max_length=500, blank=True)
    pretrained = models.CharField(
        max_length=500,
        blank=True,
        help_text="Volume Fusion pretraining file (python -m ml_worker pretrain, same init_filters) the "
        "first model starts from, without a base checkpoint",
    )
    network = models.JSONField(default=default_network, help_text="The initial network, without a base")
    lr = models.FloatField(default=2e-3)
    epochs = models.PositiveIntegerField(default=4)
    steps_per_epoch = models.PositiveIntegerField(default=25)

    class Meta:
        verbose_name_plural = "learning policies"

    def __str__(self) -> str:
        return f"learning policy of {self.project}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from ml_worker.adaptation.peft import get_method
        from ml_worker.uncertainty.strategies import get_strategy

        errors = {}
        for name, check in (("method", lambda v: get_method("native3d", v)), ("strategy", get_strategy)):
            try:
                check(getattr(self, name))
            except (KeyError, ValueError) as exc:
                errors[name] = str(exc).strip("'\"")
        if not 0 < self.alpha < 1:
            errors["alpha"] = "alpha is a significance level in (0, 1)"
        if self.margin < 0 or not 0 <= self.first_floor <= 1:
            errors["margin"] = "the margin is >= 0 and the first model's floor a Dice in [0, 1]"
        if errors:
            raise ValidationError(errors)


class Job(models.Model):
    """A long task as the UI sees it. The Celery message carries only the id; the state lives here, so
    a lost message is re-sent and a duplicate finds the job taken or done."""

    class Kind(models.TextChoices):
        ADAPT = "adapt", "adaptation round"
        ADAPT_SAM = "adapt_sam", "LiteMedSAM adaptation round"
        SCORE = "score", "pre-segment and score the pool"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    UNFINISHED = (State.QUEUED, State.RUNNING)

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    params = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    progress = models.FloatField(default=0.0, help_text="0-100")
    log = models.TextField(blank=True, help_text="The last lines of the job's log")
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=128, blank=True, help_text="host:pid of the process running it")

    class Meta:
        ordering = ["-id"]
        constraints = [
            # One unfinished job of a kind per project: a second trigger joins the first.
            models.UniqueConstraint(
                fields=["project", "kind"],
                condition=Q(state__in=["queued", "running"]),
                name="job_one_unfinished_per_kind",
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=100), name="job_progress_0_100"
            ),
        ]
        permissions = [("manage_models", "Can start and cancel adaptation, promote and roll back models")]

    def __str__(self) -> str:
        return f"job {self.pk} {self.kind} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state not in self.UNFINISHED


class ModelVersion(models.Model):
    """One model of a project: a frozen base checkpoint plus an adapter, and the merged weights the
    workers serve. Files are written before the row exists, so a row never points at a half-written
    file. A project has two lineages, one per network: the native 3D net (pre-segmentation, scoring,
    boxes and clicks) and LiteMedSAM (boxes and clicks only); at most one version of each is active
    (the DB enforces it)."""

    class State(models.TextChoices):
        CANDIDATE = "candidate", "candidate"
        ACTIVE = "active", "active"
        RETIRED = "retired", "retired"

    class Model(models.TextChoices):
        NATIVE3D = "native3d", "native 3D net"
        LITEMEDSAM = "litemedsam", "LiteMedSAM"

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="model_versions")
    model = models.CharField(max_length=16, choices=Model.choices, default=Model.NATIVE3D)
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.CANDIDATE)
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    job = models.OneToOneField(
        Job, on_delete=models.PROTECT, null=True, blank=True, related_name="model_version"
    )
    method = models.CharField(max_length=32)
    base_path = models.CharField(max_length=500, help_text="The base checkpoint, relative to MEDIA_ROOT")
    base_sha256 = models.CharField(max_length=64)
    adapter_path = models.CharField(max_length=500)
    adapter_sha256 = models.CharField(max_length=64)
    weights_path = models.CharField(max_length=500, help_text="Base and adapter merged, for inference")
    weights_sha256 = models.CharField(max_length=64)
    snapshot = models.JSONField(default=list, help_text="Ids of the approved mask versions it learned from")
    validation = models.JSONField(default=dict, help_text="Dice per validation case and class")
    validation_dice = models.FloatField(null=True, blank=True, help_text="Mean over validation cases")
    gate = models.JSONField(default=dict, help_text="The validation gate's decision and why")
    history = models.JSONField(default=list)
    train_seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="model_version_number_unique"),
            models.UniqueConstraint(
                fields=["project", "model"], condition=Q(state="active"), name="model_version_one_active"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} model v{self.number} ({self.state})"

    @property
    def label(self) -> str:
        """What pre-segmentations and scores record as their model (MaskVersion.model_version)."""
        return f"{self.model}:p{self.project_id}v{self.number}"

    @property
    def second_opinion_label(self) -> str:
        """What a pre-segmentation records when LiteMedSAM, prompted with boxes around this version's
        structures, made it (see learning.services._second_opinion)."""
        return self.label + SECOND_OPINION_SUFFIX
