"""The review desk in a real browser (headless Chromium driven by Playwright): what a reviewer does."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from mlsite.celery import app
from predictions.models import (
    Batch,
    ModelVersion,
    Prediction,
    PredictionResult,
    PredictionReview,
    PredictionStatus,
    ShadowAnswer,
)
from predictions.registry import active_versions_forget
from predictions.services.versions import model_version_register
from tests.browser import chromium_page, needs_chromium
from tests.factories import tiny_bert_save

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),  # keeps the migration-made reviewers group
    needs_chromium,
]


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where pages are photographed: docs/ with SCREENSHOTS_DIR=docs (make screenshots), else a temp dir."""
    directory = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def page(live_server, monkeypatch):
    with chromium_page(monkeypatch) as page:
        yield page


@pytest.fixture
def desk(django_user_model, owner):
    """A reviewer, a superuser and a table of predictions with a failure, a batch of labels and a history."""
    reviewer = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="reviewers"))
    django_user_model.objects.create_superuser("root", password="pw-root-1234")
    now = timezone.now()
    texts = [
        ("a gorgeous, witty, moving film", "positive", 0.97),
        ("a dull, lifeless and boring mess", "negative", 0.95),
        ("oh great, another sequel nobody asked for", "positive", 0.62),
        ("the acting is superb", "positive", 0.93),
        ("i want my two hours back", "negative", 0.88),
    ]
    rows = [
        Prediction.objects.create(
            owner=owner,
            text=text,
            text_sha256="x",
            model_name="sentiment",
            model_version="9f3c2a1b7d4e",
            status=PredictionStatus.SUCCEEDED,
            label=label,
            score=score,
            scores={label: score, ("negative" if label == "positive" else "positive"): round(1 - score, 4)},
            labels=[label],
            started_at=now,
            finished_at=now,
            task_id=f"task-{i}",
        )
        for i, (text, label, score) in enumerate(texts)
    ]
    Prediction.objects.create(
        owner=owner,
        text="a text the model choked on",
        model_name="sentiment",
        status=PredictionStatus.FAILED,
        error="RuntimeError: the model choked",
        finished_at=now,
    )
    PredictionResult.objects.create(
        prediction=rows[2],
        model_name="sentiment",
        model_version="1a2b3c4d5e6f",
        status="succeeded",
        label="negative",
        score=0.71,
        scores={"negative": 0.71, "positive": 0.29},
        finished_at=now,
    )
    return rows


def log_in(page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def test_a_reviewer_filters_searches_opens_and_corrects_a_prediction(page, live_server, desk, screenshots):
    Prediction.objects.filter(pk=desk[1].pk).update(  # a long text and a correction, as real rows have
        text="a dull, lifeless and boring mess " * 8, corrected_label="positive", reviewed_at=timezone.now()
    )
    log_in(page, live_server, "rita", "pw-rita-1234")
    page.goto(f"{live_server.url}/admin/predictions/prediction/")
    assert page.locator("#result_list tbody tr").count() == 6
    page.screenshot(path=str(screenshots / "admin-changelist.png"), full_page=True)
    # At 1280 px every column shows without scrolling sideways, and each row is one line high.
    table_right = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
    box_right = page.evaluate("document.querySelector('#changelist .results').getBoundingClientRect().right")
    assert table_right <= box_right + 1  # no column hidden behind a sideways scroll
    heights = page.eval_on_selector_all("#result_list tbody tr", "rows => rows.map(r => r.offsetHeight)")
    assert max(heights) < 1.6 * min(heights)

    page.click("#changelist-filter a:text-is('Failed')")
    page.wait_for_url("**status__exact=failed**")
    assert page.locator("#result_list tbody tr").count() == 1
    assert "the model choked" in page.locator("#result_list").inner_text()

    page.goto(f"{live_server.url}/admin/predictions/prediction/")
    page.fill("#searchbar", "sequel")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=sequel**")
    assert page.locator("#result_list tbody tr").count() == 1

    page.click("#result_list tbody tr th a")
    page.wait_for_selector(".score-bars")
    assert page.locator(".score-row").count() == 2
    assert "1a2b3c4d" in page.locator(".result-history").inner_text()  # the earlier result, kept
    page.select_option("#id_corrected_label", "negative")
    page.fill("#id_review_note", "sarcasm: this is negative")
    page.screenshot(path=str(screenshots / "admin-detail.png"), full_page=True)
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")

    sarcastic = Prediction.objects.get(text__contains="sequel")
    assert sarcastic.corrected_label == "negative"
    assert sarcastic.reviewed_by.username == "rita"
    assert sarcastic.label == "positive"  # the model's answer stays as it was
    assert PredictionReview.objects.get().note == "sarcasm: this is negative"


def test_a_superuser_reruns_selected_rows_and_sees_the_overview(page, live_server, desk, screenshots, settings):
    app.conf.task_always_eager = True
    log_in(page, live_server, "root", "pw-root-1234")
    page.goto(f"{live_server.url}/admin/predictions/prediction/?status__exact=succeeded")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "rerun")
    page.click("button[name=index]")
    message = page.wait_for_selector(".messagelist .success").inner_text()
    assert "Queued 5 prediction(s) for re-run" in message
    assert PredictionResult.objects.filter(run__source="admin").count() == 5
    assert Prediction.objects.count() == 6

    page.click("a:text-is('Overview')")
    page.wait_for_selector("#total")
    assert page.inner_text("#total") == "6"
    assert page.locator("svg.chart").count() >= 3
    page.screenshot(path=str(screenshots / "admin-overview.png"), full_page=True)


def test_a_reviewer_works_through_the_review_queue_with_the_keyboard(page, live_server, desk, screenshots):
    margins = {"a gorgeous, witty, moving film": 0.94, "a dull, lifeless and boring mess": 0.9}
    margins |= {"oh great, another sequel nobody asked for": 0.24, "the acting is superb": 0.86}
    margins |= {"i want my two hours back": 0.76}
    for text, margin in margins.items():
        Prediction.objects.filter(text=text).update(margin=margin)
    sampled = Prediction.objects.get(text="the acting is superb")
    Prediction.objects.filter(pk=sampled.pk).update(review_sample=True)
    log_in(page, live_server, "rita", "pw-rita-1234")
    page.goto(f"{live_server.url}/admin/predictions/prediction/")
    page.click("a:text-is('Review queue')")
    page.wait_for_selector("#queue")
    texts = page.locator("#queue li.item .text").all_inner_texts()
    assert texts == sorted(margins, key=margins.get)  # most uncertain first; the failed row is not there
    assert "active" in page.locator("#queue li.item").first.get_attribute("class")

    page.keyboard.press("1")  # the sarcastic one, corrected to its first other label: negative
    page.wait_for_selector("#queue li.item.done")
    assert page.locator("#queue li.item").first.locator(".outcome").inner_text() == "corrected to negative"
    page.keyboard.press("n")
    page.keyboard.type("clearly negative")
    page.keyboard.press("Enter")  # in the note: confirms the second item (now active) with that note
    page.wait_for_selector("#queue li.item:nth-child(2).done")
    page.keyboard.press("k")
    page.screenshot(path=str(screenshots / "admin-review-queue.png"), full_page=True)

    sarcastic = Prediction.objects.get(text__contains="sequel")
    assert (sarcastic.label, sarcastic.corrected_label, sarcastic.reviewed_by.username) == (
        "positive",
        "negative",
        "rita",
    )
    second = Prediction.objects.get(text="i want my two hours back")
    assert second.reviewed_at is not None
    assert second.corrected_label == ""
    assert second.review_note == "clearly negative"
    assert PredictionReview.objects.count() == 2

    page.click("a:text-is('Audit sample')")
    page.wait_for_url("**sample=1**")
    assert page.locator("#queue li.item .text").all_inner_texts() == ["the acting is superb"]
    page.goto(f"{live_server.url}/admin/predictions/prediction/review/")
    assert len(page.locator("#queue li.item").all()) == 3  # the two reviewed left the queue


def test_a_batch_page_shows_its_counts_timings_and_predictions(page, live_server, desk, owner, screenshots):
    batch = Batch.objects.create(owner=owner, model_name="sentiment", size=4)
    created = batch.created_at
    for i, (status, label) in enumerate(
        [("succeeded", "positive"), ("succeeded", "negative"), ("failed", ""), ("queued", "")]
    ):
        finished = created + timedelta(seconds=1 + i) if status != "queued" else None
        Prediction.objects.create(
            owner=owner,
            batch=batch,
            position=i,
            text=f"batch text {i}",
            model_name="sentiment",
            status=status,
            label=label,
            score=0.8 if label else None,
            created_at=created,
            started_at=created + timedelta(seconds=0.5) if finished else None,
            finished_at=finished,
        )
    log_in(page, live_server, "rita", "pw-rita-1234")
    page.goto(f"{live_server.url}/admin/predictions/batch/{batch.pk}/change/")
    page.wait_for_selector("table.batch-predictions")
    counts = page.locator(".field-status_counts").inner_text()
    assert "queued: 1" in counts
    assert "succeeded: 2" in counts
    assert "failed: 1" in counts
    timings = page.locator(".field-timings").inner_text()
    assert "first started 0.50 s after submission" in timings
    assert "last finished 3.00 s after submission" in timings
    assert "3 finished, 1.0 texts/s" in timings
    assert page.locator("table.batch-predictions tbody tr").count() == 4
    page.screenshot(path=str(screenshots / "admin-batch.png"), full_page=True)
    page.click(".field-status_counts a:text-is('succeeded: 2')")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 2


def test_a_model_manager_compares_a_candidate_with_the_reviews_and_live_traffic_then_promotes_it(
    page, live_server, desk, screenshots, django_user_model, tmp_path, settings
):
    settings.MODEL_VERSION_CHECK_SECONDS = 0
    active_versions_forget()
    manager = django_user_model.objects.create_user("mona", password="pw-mona-1234", is_staff=True)
    manager.groups.add(Group.objects.get(name="model managers"))
    source = f"path:{tiny_bert_save(tmp_path / 'candidate', labels=['negative', 'positive'], seed=5)}"
    version, _ = model_version_register(name="sentiment", source=source, metrics={"dev_accuracy": 0.9121, "dev_n": 872})
    ModelVersion.objects.filter(pk=version.pk).update(source="path:/models/sentiment-reviews")  # shown, not loaded
    sarcastic, dull, superb = (Prediction.objects.get(text__contains=t) for t in ("sequel", "dull", "superb"))
    Prediction.objects.filter(pk=sarcastic.pk).update(corrected_label="negative", reviewed_at=timezone.now())
    Prediction.objects.filter(pk__in=[dull.pk, superb.pk]).update(reviewed_at=timezone.now())
    for row, label in ((sarcastic, "negative"), (dull, "negative"), (superb, "negative")):
        ShadowAnswer.objects.create(prediction=row, version=version, origin="reviewed", status="succeeded", label=label)
    for row in Prediction.objects.filter(status="succeeded", reviewed_at__isnull=True):  # one answer per version
        ShadowAnswer.objects.create(
            prediction=row, version=version, origin="live", status="succeeded", label="positive"
        )

    log_in(page, live_server, "mona", "pw-mona-1234")
    page.goto(f"{live_server.url}/admin/predictions/modelversion/")
    page.click(f"a:text-is('{version.name}')")
    page.wait_for_selector(".review-agreement")
    review = page.inner_text(".review-agreement")
    assert "On 3 reviewed predictions" in review
    assert "this version's in 66.7%" in review  # superb: the candidate says negative, the reviewer confirmed positive
    assert "the answer clients got in 66.7%" in review  # the sarcastic one was wrong
    assert "1 of 2 live texts answered alike" in page.inner_text(".shadow-agreement")
    assert "0.9121" in page.inner_text(".metrics-beside")
    page.screenshot(path=str(screenshots / "admin-model-version.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/predictions/modelversion/")
    page.check(f"input[name=_selected_action][value='{version.pk}']")
    page.select_option("select[name=action]", "promote")
    page.click("button[name=index]")
    assert "is active" in page.wait_for_selector(".messagelist .success").inner_text()
    version.refresh_from_db()
    assert (version.state, version.promoted_by) == ("active", manager)
