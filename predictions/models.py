"""Predictions, the batches they arrive in, and the history of every earlier result."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PredictionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


FINISHED_STATUSES = (PredictionStatus.SUCCEEDED, PredictionStatus.FAILED)


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


class Prediction(models.Model):
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
    model_name = models.CharField(max_length=100, help_text="Registry name of the model (e.g. sentiment).")
    model_version = models.CharField(max_length=64, blank=True, help_text="Version of the model that answered.")
    status = models.CharField(max_length=16, choices=PredictionStatus.choices, default=PredictionStatus.QUEUED)
    label = models.CharField(max_length=100, blank=True, help_text="Top label.")
    score = models.FloatField(null=True, blank=True, help_text="Score of the top label.")
    scores = models.JSONField(null=True, blank=True, help_text="Score of every label, by label.")
    labels = models.JSONField(null=True, blank=True, help_text="Labels over their threshold (multi-label models).")
    cached = models.BooleanField(default=False, help_text="Answered from the result cache, without a worker.")
    error = models.TextField(blank=True, help_text="Why the prediction failed.")
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a worker started this row.")
    task_id = models.CharField(max_length=255, blank=True, help_text="Celery task id of the last run.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="prediction_owner_created"),
            models.Index(fields=["status", "created_at"], name="prediction_status_created"),
            models.Index(fields=["model_name", "model_version"], name="prediction_model_version"),
            models.Index(fields=["label"], name="prediction_label"),
            models.Index(fields=["created_at"], name="prediction_created"),
            models.Index(fields=["batch", "position"], name="prediction_batch_position"),
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
