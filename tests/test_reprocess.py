"""manage.py reprocess: selectors, dry run, sync and queued runs, resume, and history that is never lost."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from predictions.models import Batch, Prediction, PredictionResult, PredictionStatus, ReprocessRun
from predictions.registry import classifier_get
from predictions.services import reprocess as reprocess_service
from predictions.services import review

pytestmark = pytest.mark.django_db


def finished(
    owner, text: str, *, model: str = "sentiment", label: str = "positive", status: str = "succeeded", **extra
) -> Prediction:
    return Prediction.objects.create(
        owner=owner,
        text=text,
        model_name=model,
        model_version="old-version",
        status=status,
        label=label,
        score=0.9,
        scores={label: 0.9},
        finished_at=timezone.now(),
        **extra,
    )


def reprocess(*args: str) -> tuple[str, dict]:
    out = io.StringIO()
    call_command("reprocess", *args, stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1]) if "{" in text else {}


def test_sync_rerun_keeps_the_earlier_result_in_history_and_never_changes_the_row_count(owner):
    rows = [finished(owner, "good film"), finished(owner, "bad plot", label="negative")]
    before = Prediction.objects.count()
    text, summary = reprocess("--all", "--sync")
    assert "selected 2 prediction(s) to re-run" in text
    assert summary["selected"] == 2
    assert summary["rerun"] == 2
    assert summary["failed"] == 0
    assert summary["unchanged"] + summary["changed"] == 2
    assert Prediction.objects.count() == before
    for row in rows:
        row.refresh_from_db()
        assert row.status == PredictionStatus.SUCCEEDED
        assert row.model_version != "old-version"
        [earlier] = row.history.all()
        assert (earlier.model_version, earlier.score, earlier.scores) == ("old-version", 0.9, {earlier.label: 0.9})


def test_a_second_rerun_adds_to_history_rather_than_replacing_it(owner):
    row = finished(owner, "good film")
    reprocess("--ids", str(row.pk), "--sync")
    reprocess("--ids", str(row.pk), "--sync")
    assert row.history.count() == 2
    assert ReprocessRun.objects.filter(status="finished").count() == 2


def test_dry_run_changes_nothing_and_says_what_it_would_do(owner):
    finished(owner, "a")
    finished(owner, "b", model="emotions", label="joy")
    Prediction.objects.create(owner=owner, text="in flight", model_name="sentiment")
    snapshot = list(Prediction.objects.order_by("pk").values())
    out = io.StringIO()
    call_command("reprocess", "--all", "--dry-run", stdout=out)
    assert "would re-run 2 prediction(s) (1 × emotions, 1 × sentiment)" in out.getvalue()
    assert "1 queued or running would be left alone" in out.getvalue()
    assert list(Prediction.objects.order_by("pk").values()) == snapshot
    assert not PredictionResult.objects.exists()
    assert not ReprocessRun.objects.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "failed"], {"failed one"}),
        (["--model", "emotions"], {"emotion"}),
        (["--model-version", "v2"], {"newer"}),
        (["--since", "2026-01-01"], {"good", "failed one", "emotion", "newer", "batched"}),
        (["--until", "2020-12-31"], {"ancient"}),
        (["--since", "2020-01-01", "--until", "2020-12-31"], {"ancient"}),
        (["--status", "succeeded", "--model", "sentiment", "--since", "2026-01-01"], {"good", "newer", "batched"}),
    ],
)
def test_each_selector_picks_its_rows_and_they_combine(owner, args, expected):
    finished(owner, "good")
    finished(owner, "failed one", status="failed", label="")
    finished(owner, "emotion", model="emotions", label="joy")
    Prediction.objects.filter(pk=finished(owner, "newer").pk).update(model_version="v2")
    old = finished(owner, "ancient")
    Prediction.objects.filter(pk=old.pk).update(created_at=datetime(2020, 6, 1, tzinfo=UTC))

    batch = Batch.objects.create(owner=owner, model_name="sentiment", size=1)
    finished(owner, "batched", batch=batch)
    Prediction.objects.exclude(pk=old.pk).update(created_at=timezone.now())
    out = io.StringIO()
    call_command("reprocess", *args, "--dry-run", stdout=out)
    assert f"would re-run {len(expected)} prediction(s)" in out.getvalue()
    reprocess(*args, "--sync")
    assert set(Prediction.objects.filter(history__isnull=False).values_list("text", flat=True)) == expected


def test_ids_and_batch_selectors(owner):
    batch = Batch.objects.create(owner=owner, model_name="sentiment", size=2)
    a, b = finished(owner, "a", batch=batch), finished(owner, "b", batch=batch)
    c = finished(owner, "c")
    reprocess("--ids", f"{a.pk},{c.pk}", "--sync")
    assert set(PredictionResult.objects.values_list("prediction_id", flat=True)) == {a.pk, c.pk}
    reprocess("--batch", str(batch.pk), "--sync")
    assert PredictionResult.objects.filter(prediction=b).count() == 1


def test_to_model_reruns_under_another_model(owner):
    row = finished(owner, "happy joy")
    reprocess("--ids", str(row.pk), "--to-model", "emotions", "--sync")
    row.refresh_from_db()
    assert row.model_name == "emotions"
    assert set(row.scores) == {"joy", "anger", "fear", "neutral"}
    assert row.history.get().model_name == "sentiment"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no selector"),
        (["--all", "--to-model", "nope"], "--to-model: unknown model 'nope'"),
        (["--since", "yesterday"], "--since: 'yesterday' is not a date"),
        (["--until", "2026-13-01"], "--until: '2026-13-01' is not a date"),
        (["--ids", "1,x"], "--ids: '1,x' must be comma-separated integers"),
        (["--status", "done"], "unknown status 'done'"),
        (["--all", "--chunk-size", "0"], "--chunk-size must be at least 1"),
    ],
)
def test_refusals_are_clear_errors(owner, args, message):
    finished(owner, "x")
    with pytest.raises(CommandError, match=message):
        call_command("reprocess", *args)
    assert not PredictionResult.objects.exists()


def test_an_interrupted_run_resumes_without_redoing_rows(owner, monkeypatch):
    rows = [finished(owner, f"text {i}") for i in range(5)]
    real_chunk = reprocess_service.reprocess_chunk
    calls = {"n": 0}

    def interrupted(run, ids, *, sync):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third chunk, before it archived anything
        real_chunk(run, ids, sync=sync)

    monkeypatch.setattr(reprocess_service, "reprocess_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        call_command("reprocess", "--all", "--sync", "--chunk-size", "2", stdout=io.StringIO(), stderr=io.StringIO())
    assert PredictionResult.objects.count() == 4
    run = ReprocessRun.objects.get()
    assert run.status == "running"

    monkeypatch.setattr(reprocess_service, "reprocess_chunk", real_chunk)
    text, summary = reprocess("--all", "--sync", "--chunk-size", "2")
    assert f"resuming run {run.pk}: 4 already re-run, skipped" in text
    assert "selected 1 prediction(s)" in text
    assert summary["rerun"] == 5
    assert summary["selected"] == 5
    assert all(r.history.count() == 1 for r in rows)  # nobody re-run twice
    run.refresh_from_db()
    assert run.status == "finished"


def test_a_row_archived_but_not_yet_run_when_interrupted_is_run_on_resume(owner, monkeypatch):
    row = finished(owner, "good film")
    monkeypatch.setattr(
        reprocess_service, "predictions_run", lambda ids, **_: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        call_command("reprocess", "--ids", str(row.pk), "--sync", stdout=io.StringIO(), stderr=io.StringIO())
    row.refresh_from_db()
    assert row.status == PredictionStatus.QUEUED
    assert row.history.count() == 1
    monkeypatch.undo()
    _, summary = reprocess("--ids", str(row.pk), "--sync")
    row.refresh_from_db()
    assert row.status == PredictionStatus.SUCCEEDED
    assert row.history.count() == 1
    assert summary["rerun"] == 1


def test_queued_mode_publishes_chunks_to_the_workers(owner, published, django_capture_on_commit_callbacks):
    for i in range(5):
        finished(owner, f"text {i}")
    with django_capture_on_commit_callbacks(execute=True):
        text, _ = reprocess("--all", "--chunk-size", "2")
    assert [len(ids) for ids in published] == [2, 2, 1]
    assert "queued to workers" in text
    assert Prediction.objects.filter(status=PredictionStatus.SUCCEEDED).count() == 5  # the (eager) workers ran them


def test_rows_still_in_flight_are_left_alone(owner):
    finished(owner, "done")
    busy = Prediction.objects.create(
        owner=owner,
        text="busy",
        model_name="sentiment",
        status=PredictionStatus.RUNNING,
        started_at=timezone.now() - timedelta(seconds=1),
    )
    text, summary = reprocess("--all", "--sync")
    assert "1 queued or running elsewhere, left alone" in text
    assert summary["selected"] == 1
    busy.refresh_from_db()
    assert busy.status == PredictionStatus.RUNNING
    assert not busy.history.exists()


def test_the_same_command_after_a_finished_run_starts_a_new_run(owner):
    row = finished(owner, "good film")
    reprocess("--model", "sentiment", "--sync")
    text, summary = reprocess("--model", "sentiment", "--sync")
    assert "resuming" not in text
    assert summary["rerun"] == 1
    assert row.history.count() == 2
    assert ReprocessRun.objects.filter(status="finished").count() == 2


def test_new_run_ignores_an_interrupted_run(owner, monkeypatch):
    finished(owner, "a")
    finished(owner, "b")
    real_chunk = reprocess_service.reprocess_chunk
    monkeypatch.setattr(
        reprocess_service, "reprocess_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        call_command("reprocess", "--all", "--sync", stdout=io.StringIO(), stderr=io.StringIO())
    monkeypatch.setattr(reprocess_service, "reprocess_chunk", real_chunk)
    text, summary = reprocess("--all", "--sync", "--new-run")
    assert "resuming" not in text
    assert summary["selected"] == 2
    assert ReprocessRun.objects.count() == 2


def test_sync_chunks_larger_than_a_batch_run_every_row(owner, settings):
    settings.CLAIM_MAX_ROWS = 2
    for i in range(5):
        finished(owner, f"text {i}")
    _, summary = reprocess("--all", "--sync", "--chunk-size", "5")
    assert summary["rerun"] == 5
    assert not Prediction.objects.exclude(status="succeeded").exists()


def test_a_review_moves_into_history_with_the_result_it_reviewed(owner, staff):
    row = finished(owner, "oh great, another sequel")
    review.prediction_review(prediction=row, reviewer=staff, corrected_label="negative", note="sarcasm")
    reprocess("--ids", str(row.pk), "--sync")
    row.refresh_from_db()
    earlier = row.history.get()
    assert (earlier.corrected_label, earlier.review_note, earlier.reviewed_by) == ("negative", "sarcasm", staff)
    assert (row.corrected_label, row.reviewed_by, row.reviewed_at) == ("", None, None)


def test_a_rerun_counts_attempts_afresh_so_its_rows_share_passes_and_are_never_given_up(owner, settings, monkeypatch):
    """A row's attempts count its worker's deaths in this run, not earlier runs: rows run before are
    not mistaken for rows whose worker died (run one by one, then failed after MAX_ATTEMPTS)."""
    settings.MAX_ATTEMPTS = 2
    rows = [finished(owner, f"text {i}", attempts=1) for i in range(3)]
    classifier = classifier_get("sentiment")
    real_passes, passes = classifier.passes, []

    def spy(texts, **kwargs):
        for indexes, answers in real_passes(texts, **kwargs):
            passes.append(len(indexes))
            yield indexes, answers

    monkeypatch.setattr(classifier, "passes", spy)
    for _ in range(settings.MAX_ATTEMPTS + 1):
        passes.clear()
        _, summary = reprocess("--all", "--sync")
        assert summary["rerun"] == 3
        assert summary["failed"] == 0
        assert passes == [3]  # together, as fresh rows are
    for row in rows:
        row.refresh_from_db()
        assert (row.status, row.attempts, row.error) == (PredictionStatus.SUCCEEDED, 1, "")
        assert row.history.count() == settings.MAX_ATTEMPTS + 1


def test_the_archive_in_one_statement_keeps_what_django_s_bulk_create_kept(owner, django_user_model):
    """FAST_PATHS_OFF=archive_by_select runs Django's way; both archive the same rows, field for field."""
    from django.test import override_settings  # noqa: PLC0415

    from predictions.services.sql import results_archive  # noqa: PLC0415

    reviewer = django_user_model.objects.create_user("rita")
    fields = reprocess_service.ARCHIVED_FIELDS + reprocess_service.REVIEW_FIELDS
    kept = [f if f != "reviewed_by" else "reviewed_by_id" for f in fields]
    archives = []
    for off in (frozenset(), frozenset({"archive_by_select"})):
        Prediction.objects.all().delete()
        rows = [
            finished(
                owner, "reviewed", margin=0.8, labels=["positive"], task_id="t1", started_at=timezone.now(),
                corrected_label="negative", review_note="sarcasm", reviewed_by=reviewer, reviewed_at=timezone.now(),
            ),
            finished(owner, "broken", status="failed", label="", error="ValueError: no", model="emotions"),
            Prediction.objects.create(owner=owner, text="still queued", model_name="sentiment"),
            finished(owner, "redacted", redacted_at=timezone.now()),
        ]  # fmt: skip
        run, _ = reprocess_service.reprocess_run_open(selectors={"all": True, "off": sorted(off)}, resume=False)
        with override_settings(FAST_PATHS_OFF=off):
            archived = results_archive(run.pk, [r.pk for r in rows], fields)
            assert results_archive(run.pk, [r.pk for r in rows], fields) == []  # once per run
        assert archived == [(rows[0].pk, "sentiment"), (rows[1].pk, "emotions")]
        archive = list(
            PredictionResult.objects.filter(run=run).order_by("prediction_id").values_list("prediction__text", *kept)
        )
        source = list(
            Prediction.objects.filter(pk__in=[pk for pk, _ in archived]).order_by("pk").values_list("text", *kept)
        )
        assert archive == source  # every field as the row had it, the review included
        assert PredictionResult.objects.filter(run=run, archived_at__isnull=True).count() == 0
        archives.append([tuple(v for v in row if not isinstance(v, datetime)) for row in archive])
    assert archives[0] == archives[1]
    assert "sarcasm" in archives[0][0]
