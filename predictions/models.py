"""Predictions, the batches they arrive in, and the history of every earlier result."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PredictionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Lane(models.IntegerChoices):
    """Which work a worker's claim takes first (docs/architecture.md, Lanes): lower runs first."""

    INTERACTIVE = 0, "Interactive"  # POST /api/v1/predictions/: a client is waiting for one text
    BULK = 1, "Bulk"  # POST /api/v1/batches/
    BACKGROUND = 2, "Background"  # reprocess and the admin's re-run


FINISHED_STATUSES = (PredictionStatus.SUCCEEDED, PredictionStatus.FAILED)
# What a finished run writes on its row.
RESULT_FIELDS = ("status", "error", "label", "score", "scores", "labels", "margin", "model_version", "finished_at")


class Batch(models.Model):
    """Texts submitted together in one POST /api/v1/batches/."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="prediction_batches",
        help_text="Who submitted the batch.",
    )
    model_name = models.CharField(max_length=100, help_text="Registry name of the model asked for.")
    size = models.PositiveIntegerField(help_text="Number of texts in the batch.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.size} × {self.model_name})"


class ModelOutput(models.Model):
    """What one run of a model produced for a text: shared by a prediction and each of its earlier results."""

    model_name = models.CharField(max_length=100, help_text="Registry name of the model (e.g. sentiment).")
    model_version = models.CharField(max_length=64, blank=True, help_text="Version of the model that answered.")
    status = models.CharField(max_length=16, choices=PredictionStatus.choices, default=PredictionStatus.QUEUED)
    label = models.CharField(max_length=100, blank=True, help_text="Top label.")
    score = models.FloatField(null=True, blank=True, help_text="Score of the top label.")
    scores = models.JSONField(null=True, blank=True, help_text="Score of every label, by label.")
    labels = models.JSONField(null=True, blank=True, help_text="Labels over their threshold (multi-label models).")
    margin = models.FloatField(
        null=True,
        blank=True,
        help_text="How far the answer is from going another way: top score minus the second (single-label), "
        "smallest distance of a score from its threshold (multi-label). The review queue shows the smallest first.",
    )
    cached = models.BooleanField(default=False, help_text="Answered from the result cache, without a worker.")
    error = models.TextField(blank=True, help_text="Why the prediction failed.")
    task_id = models.CharField(max_length=255, blank=True, help_text="Celery task id of the run.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


def model_output_fields() -> list[str]:
    """Names of the fields a re-run archives into the history."""
    return [field.name for field in ModelOutput._meta.get_fields()]


class Prediction(ModelOutput):
    """One text classified by one model; the row is the source of truth for its state."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="predictions",
        help_text="Who asked for this prediction.",
    )
    batch = models.ForeignKey(
        Batch,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="predictions",
        help_text="The batch this text came in, if any.",
    )
    position = models.PositiveIntegerField(default=0, help_text="Index of the text within its batch.")
    text = models.TextField(help_text="The text as submitted.")
    text_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the UTF-8 text; part of the cache key.")
    request_id = models.CharField(
        max_length=128,
        blank=True,
        help_text="Id of the request that submitted it (X-Request-ID; its log lines carry it).",
    )
    lane = models.PositiveSmallIntegerField(
        choices=Lane.choices, default=Lane.INTERACTIVE, help_text="Which queued work a worker takes first."
    )
    turn = models.BigIntegerField(
        default=0, help_text="Its place among the queued rows of its lane: one owner's backlog is not served first."
    )
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a worker started this row.")
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="When a task for this row was last sent to the broker (the sweeper resends)."
    )
    created_at = models.DateTimeField(
        default=timezone.now,
        editable=False,
        help_text="When the prediction was submitted; a cache hit starts and finishes at this same moment.",
    )
    corrected_label = models.CharField(max_length=100, blank=True, help_text="The label a reviewer says is right.")
    review_note = models.TextField(blank=True, help_text="The reviewer's note.")
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who last reviewed this prediction.",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True, help_text="When it was last reviewed.")
    review_sample = models.BooleanField(
        default=False,
        help_text="Drawn at random when the prediction was made (REVIEW_SAMPLE_RATE): the audit sample "
        "quality is estimated on, kept apart from the uncertainty-ordered review queue.",
    )
    redacted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When purge_predictions --redact replaced the text with a marker (the row is kept for audit).",
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="prediction_owner_created"),
            models.Index(fields=["status", "created_at"], name="prediction_status_created"),
            models.Index(fields=["model_name", "model_version"], name="prediction_model_version"),
            models.Index(fields=["label"], name="prediction_label"),
            models.Index(fields=["created_at"], name="prediction_created"),
            models.Index(fields=["batch", "position"], name="prediction_batch_position"),
            models.Index(fields=["reviewed_at"], name="prediction_reviewed"),
            # Small (queued rows only): a lane's next turn, and an owner's last queued turn (services.lanes).
            models.Index(fields=["lane", "turn"], name="prediction_queued_turn", condition=Q(status="queued")),
            # The claim's interactive pick, oldest first: without it PostgreSQL walks the primary key
            # through every finished row of the table (docs/scaling.md, Past the ceiling).
            models.Index(fields=["lane", "id"], name="prediction_queued_id", condition=Q(status="queued")),
            models.Index(
                fields=["owner", "lane", "turn"], name="prediction_queued_owner_turn", condition=Q(status="queued")
            ),
            # The review queue: unreviewed answers of a model, most uncertain first; and the audit sample.
            models.Index(
                fields=["model_name", "margin"],
                name="prediction_review_queue",
                condition=Q(status="succeeded", reviewed_at__isnull=True),
            ),
            models.Index(fields=["model_name"], name="prediction_review_sample", condition=Q(review_sample=True)),
        ]

    def __str__(self) -> str:
        return f"Prediction {self.pk} ({self.model_name}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at and self.created_at:
            return (self.finished_at - self.created_at).total_seconds()
        return None


class ReprocessRun(models.Model):
    """One invocation of `reprocess` (or the admin's re-run action): what it selected and what came of it.

    A run interrupted and started again with the same selectors resumes: rows it already re-ran are skipped.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"

    key = models.CharField(max_length=64, db_index=True, help_text="Hash of the selectors; a re-invocation resumes.")
    selectors = models.JSONField(help_text="The selectors as given.")
    to_model = models.CharField(
        max_length=100, blank=True, help_text="Model the rows are re-run under (blank: their own)."
    )
    sync = models.BooleanField(default=False, help_text="Run in the command's process rather than on workers.")
    source = models.CharField(max_length=20, default="command", help_text="command or admin.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who started it from the admin (blank for the command).",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    selected = models.PositiveIntegerField(default=0, help_text="Rows the selectors matched when the run started.")
    dispatched_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When every selected row had been archived and queued or run; until then it resumes.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.status})"


class PredictionResult(ModelOutput):
    """An earlier result of a prediction, kept when the prediction is re-run: history is never overwritten."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="history")
    run = models.ForeignKey(
        ReprocessRun,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="archived_results",
        help_text="The re-run that replaced this result.",
    )
    archived_at = models.DateTimeField(auto_now_add=True, help_text="When this result was replaced.")
    corrected_label = models.CharField(max_length=100, blank=True, help_text="The review this result had.")
    review_note = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["prediction", "run"], name="result_once_per_run"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.model_version}: {self.label or self.status}"


class PredictionReview(models.Model):
    """Every correction a reviewer made, append-only: who, when, what."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    corrected_label = models.CharField(max_length=100, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"review of {self.prediction_id} by {self.reviewer_id}"


class IdempotencyEndpoint(models.TextChoices):
    PREDICTIONS = "predictions", "POST /api/v1/predictions/"
    BATCHES = "batches", "POST /api/v1/batches/"


class IdempotencyKey(models.Model):
    """The first response to a POST sent with an Idempotency-Key header, replayed to any retry with
    the same key (same user, same endpoint) for IDEMPOTENCY_TTL_HOURS."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", help_text="Who sent the key."
    )
    key = models.CharField(max_length=255, help_text="The Idempotency-Key header as sent.")
    endpoint = models.CharField(max_length=20, choices=IdempotencyEndpoint.choices)
    request_sha256 = models.CharField(
        max_length=64, help_text="SHA-256 of the validated request; a retry with another body is refused."
    )
    status_code = models.PositiveSmallIntegerField(help_text="Status of the first response.")
    response_body = models.TextField(help_text="JSON body of the first response, as it was then.")
    location = models.CharField(max_length=255, blank=True, help_text="Location header of the first response.")
    created_at = models.DateTimeField(
        auto_now_add=True, db_index=True, help_text="Expires IDEMPOTENCY_TTL_HOURS later."
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "key", "endpoint"], name="idempotency_key_once"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} key {self.key!r} of user {self.owner_id}"


class ModelVersionState(models.TextChoices):
    ACTIVE = "active", "Active"  # answers the model's traffic
    CANDIDATE = "candidate", "Candidate"  # registered (e.g. trained on reviews), not served yet
    RETIRED = "retired", "Retired"  # was active; a rollback can make it active again


class ModelVersion(models.Model):
    """One version of a served model's artifact, and its state: at most one active per model name.

    Workers and the web serve the active version's artifact (predictions.registry), or the one
    MLSITE_MODELS names while no version is active. Promotions and rollbacks are admin actions
    for the `model managers` group, each also in the admin's log.
    """

    name = models.CharField(max_length=100, help_text="Registry name of the model (a key of MLSITE_MODELS).")
    version = models.CharField(max_length=64, help_text="The artifact's version: a hash of its weights.")
    source = models.CharField(
        max_length=500, help_text="Where the artifact lies: bundled:NAME, a local directory, or a hub id."
    )
    state = models.CharField(max_length=16, choices=ModelVersionState.choices, default=ModelVersionState.CANDIDATE)
    metrics = models.JSONField(null=True, blank=True, help_text="Evaluation figures, e.g. dev accuracy, by name.")
    note = models.TextField(blank=True, help_text="How it was made (data, recipe) or why it was registered.")
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who registered it (blank: a command run without --user).",
    )
    registered_at = models.DateTimeField(auto_now_add=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who last made it active.",
    )
    promoted_at = models.DateTimeField(null=True, blank=True, help_text="When it was last made active.")
    retired_at = models.DateTimeField(null=True, blank=True, help_text="When it last stopped being active.")
    shadow = models.BooleanField(
        default=False,
        help_text="Runs on a sampled share of live traffic (SHADOW_RATE), on the shadow workers; its "
        "answers are stored beside the active version's and never returned to clients.",
    )
    replaced = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The version active when this one was first promoted: what a rollback serves again.",
    )

    class Meta:
        ordering = ["name", "-registered_at"]
        permissions = [("promote_modelversion", "Can promote and roll back model versions")]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="model_version_once"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(state="active"), name="model_version_one_active_per_name"
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(shadow=True), name="model_version_one_shadow_per_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version[:12]} ({self.state})"


class ShadowAnswer(models.Model):
    """A candidate version's answer to a prediction's text: stored beside the answer the client got,
    never returned to clients, compared in the admin before anyone promotes the version."""

    class Origin(models.TextChoices):
        LIVE = "live", "Live traffic (shadow)"  # sampled from texts workers answered (SHADOW_RATE)
        REVIEWED = "reviewed", "Reviewed prediction"  # run to compare with the reviewers' labels

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="shadow_answers")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="shadow_answers")
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.LIVE)
    status = models.CharField(max_length=16, choices=PredictionStatus.choices, default=PredictionStatus.QUEUED)
    label = models.CharField(max_length=100, blank=True, help_text="Top label of the candidate version.")
    score = models.FloatField(null=True, blank=True)
    scores = models.JSONField(null=True, blank=True)
    labels = models.JSONField(null=True, blank=True)
    margin = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prediction", "version"], name="shadow_answer_once")]
        indexes = [
            models.Index(fields=["version", "id"], name="shadow_answer_version"),
            # Small: the shadow work left to do, oldest first.
            models.Index(fields=["id"], name="shadow_answer_queued", condition=Q(status__in=["queued", "running"])),
        ]

    def __str__(self) -> str:
        return f"Shadow answer {self.pk} ({self.version_id}, {self.status})"
