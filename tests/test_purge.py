"""Retention: `purge_predictions` deletes or redacts old finished rows, their copies and their cache entries."""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.core.management import CommandError, call_command
from django.utils import timezone

from predictions import selectors
from predictions.cache import result_cache_get, result_cache_set_many
from predictions.models import Batch, Prediction, PredictionResult, PredictionReview, PredictionStatus, text_sha256
from predictions.services import reprocess, retention, review
from tests.factories import DEAD_REDIS

pytestmark = pytest.mark.django_db


def purge(*args: str) -> tuple[str, dict]:
    out = io.StringIO()
    call_command("purge_predictions", *args, stdout=out, stderr=io.StringIO())
    lines = out.getvalue().strip().splitlines()
    return lines[0], json.loads(lines[-1])


def age(rows, days: int = 40) -> None:
    """Make rows (and their batches) look `days` old."""
    moment = timezone.now() - timedelta(days=days)
    ids = [row if isinstance(row, int) else row.pk for row in rows]
    Prediction.objects.filter(pk__in=ids).update(created_at=moment)
    Batch.objects.filter(predictions__pk__in=ids).update(created_at=moment)


def redis_keys_naming(digest: str) -> list[bytes]:
    """Every key in the test Redis db that contains this text hash."""
    return redis.Redis.from_url(os.environ["REDIS_URL"]).keys(f"*{digest}*")


needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (make test sets it)")


def test_delete_removes_old_finished_rows_with_history_reviews_and_emptied_batches(api, owner, staff):
    old = Prediction.objects.get(pk=api.post("/api/v1/predictions/", {"text": "old film"}).json()["id"])
    batch = api.post("/api/v1/batches/", {"texts": ["old plot", "old acting"]}).json()
    recent = api.post("/api/v1/predictions/", {"text": "new film"}).json()["id"]
    stuck = Prediction.objects.create(owner=owner, text="old but queued", model_name="sentiment")
    review.prediction_review(prediction=old, reviewer=staff, corrected_label="positive", note="looks right")
    PredictionResult.objects.create(prediction=old, model_name="sentiment", model_version="v0", label="negative")
    age([old, stuck, *(r["id"] for r in batch["results"])])

    line, counts = purge("--older-than", "30")

    assert list(Prediction.objects.values_list("pk", flat=True).order_by("pk")) == [recent, stuck.pk]
    assert not PredictionResult.objects.exists()
    assert not PredictionReview.objects.exists()
    assert not Batch.objects.exists()
    assert counts == {
        "mode": "delete",
        "dry_run": False,
        "predictions": 3,
        "history": 1,
        "reviews": 1,
        "batches": 1,
        "cache_keys": 4,  # three texts under the served version, and the old text under its history's "v0"
        "unfinished_left": 1,
    }
    assert line == (  # the example in docs/operations.md
        "deleted 3 finished prediction(s) created more than 30 day(s) ago (1 earlier result(s), 1 review(s), "
        "1 emptied batch(es)); 4 result-cache key(s) cleared; 1 queued or running left alone."
    )
    assert line in (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()


@needs_redis
def test_delete_also_clears_the_cache_entries_of_the_deleted_texts(api):
    old = Prediction.objects.get(pk=api.post("/api/v1/predictions/", {"text": "old film"}).json()["id"])
    api.post("/api/v1/predictions/", {"text": "new film"})
    assert redis_keys_naming(old.text_sha256)
    age([old])
    purge("--older-than", "30")
    assert redis_keys_naming(old.text_sha256) == []
    assert redis_keys_naming(text_sha256("new film"))  # the kept row's entry stays


@needs_redis
def test_redact_keeps_the_row_but_no_copy_of_the_text_in_the_database_or_the_cache(api, staff, published):
    text = "a secret witty film"
    row = Prediction.objects.get(pk=api.post("/api/v1/predictions/", {"text": text}).json()["id"])
    digest = row.text_sha256
    review.prediction_review(prediction=row, reviewer=staff, corrected_label="positive", note=f"'{text}' is ironic")
    earlier = PredictionResult.objects.create(
        prediction=row, model_name="sentiment", model_version="0ld0ld0ld0ld", label="negative", review_note=text
    )
    result_cache_set_many({("sentiment", "0ld0ld0ld0ld", digest): {"label": "negative"}})  # an older version's entry
    assert len(redis_keys_naming(digest)) == 2
    age([row])

    line, counts = purge("--older-than", "30", "--redact")

    row.refresh_from_db()
    assert row.text == retention.REDACTED_TEXT
    assert row.text_sha256 == ""
    assert row.redacted_at is not None
    assert row.review_note == retention.REDACTED_TEXT
    assert row.corrected_label == "positive"  # who said what stays
    assert row.label in ("negative", "positive")
    assert row.scores
    assert row.status == PredictionStatus.SUCCEEDED
    earlier.refresh_from_db()
    assert earlier.review_note == retention.REDACTED_TEXT
    assert earlier.label == "negative"
    assert PredictionReview.objects.get().note == retention.REDACTED_TEXT
    assert redis_keys_naming(digest) == []
    assert result_cache_get("sentiment", row.model_version, digest) is None
    assert (counts["predictions"], counts["history"], counts["reviews"], counts["cache_keys"]) == (1, 1, 1, 2)
    assert line.startswith("redacted 1 finished prediction(s)")

    again = api.post("/api/v1/predictions/", {"text": text})  # the text is not confirmed by a cache hit
    assert again.status_code == 202
    assert again.json()["cached"] is False
    assert len(published) == 2
    assert purge("--older-than", "30", "--redact")[1]["predictions"] == 0  # already redacted: nothing to do


def test_a_redacted_row_is_never_re_run(api):
    row_id = api.post("/api/v1/predictions/", {"text": "good film"}).json()["id"]
    age([row_id])
    purge("--older-than", "30", "--redact")
    assert not selectors.reprocess_selection(everything=True).exists()
    run, _ = reprocess.reprocess_run_open(selectors={"ids": [row_id]})
    assert selectors.reprocess_pending(run, Prediction.objects.filter(pk=row_id)) == ([], 0)
    reprocess.reprocess_chunk(run, [row_id], sync=True)
    assert Prediction.objects.get(pk=row_id).text == retention.REDACTED_TEXT
    assert not PredictionResult.objects.exists()


def test_a_dry_run_changes_nothing_and_says_what_it_would_do(api, owner):
    ids = [r["id"] for r in api.post("/api/v1/batches/", {"texts": ["good", "bad"]}).json()["results"]]
    Prediction.objects.create(owner=owner, text="old but running", model_name="sentiment", status="running")
    age([*ids, *Prediction.objects.filter(status="running")])
    before = list(Prediction.objects.values_list("pk", "text", "text_sha256").order_by("pk"))

    line, counts = purge("--older-than", "30", "--dry-run")
    assert line.startswith("dry run: would delete 2 finished prediction(s)")
    assert "1 emptied batch(es)" in line
    assert counts["predictions"] == 2
    assert counts["batches"] == 1
    assert counts["unfinished_left"] == 1
    line, counts = purge("--older-than", "30", "--dry-run", "--redact")
    assert line.startswith("dry run: would redact 2 finished prediction(s)")
    assert line.endswith("Nothing was changed.")
    assert list(Prediction.objects.values_list("pk", "text", "text_sha256").order_by("pk")) == before
    assert Batch.objects.count() == 1


def test_rows_go_in_chunks_of_batch_size_each_its_own_transaction(owner, django_assert_max_num_queries):
    rows = Prediction.objects.bulk_create(
        [Prediction(owner=owner, text=f"t{i}", model_name="sentiment", status="succeeded") for i in range(5)]
    )
    age(rows)
    chunks: list[int] = []
    retention.predictions_purge(older_than_days=30, batch_size=2, on_chunk=chunks.append)
    assert chunks == [2, 2, 1]
    assert not Prediction.objects.exists()
    assert purge("--older-than", "30", "--batch-size", "2")[1]["predictions"] == 0


def test_a_cache_outage_rolls_the_chunk_back_and_names_the_cause(api, settings):
    row_id = api.post("/api/v1/predictions/", {"text": "good film"}).json()["id"]
    age([row_id])
    settings.CACHES = DEAD_REDIS
    with pytest.raises(CommandError, match=r"purge stopped after 0 row.*ConnectionError.*rolled back"):
        purge("--older-than", "30", "--redact")
    row = Prediction.objects.get(pk=row_id)
    assert row.text == "good film"
    assert row.redacted_at is None
    assert row.text_sha256


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "0"], "--older-than: must be at least 1 day"),
        (["--older-than", "30", "--batch-size", "0"], "--batch-size: must be at least 1"),
        ([], "the following arguments are required: --older-than"),
        (["--older-than", "soon"], "--older-than: invalid int value"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option(args, message):
    with pytest.raises(CommandError, match=message):
        purge(*args)
