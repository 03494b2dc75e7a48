"""The review desk in a real browser (headless Chromium driven by Playwright): what a reviewer does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from mlsite.celery import app
from predictions.models import Prediction, PredictionResult, PredictionReview, PredictionStatus
from tests.browser import chromium_page, needs_chromium

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
    log_in(page, live_server, "rita", "pw-rita-1234")
    page.goto(f"{live_server.url}/admin/predictions/prediction/")
    assert page.locator("#result_list tbody tr").count() == 6
    page.screenshot(path=str(screenshots / "admin-changelist.png"), full_page=True)

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
