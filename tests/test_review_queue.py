"""The review queue without a browser: its order, its filters, the audit sample, and a decision taken from it."""

from __future__ import annotations

import random

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from mlsite.env import env_fraction
from predictions.models import Prediction, PredictionReview, PredictionStatus
from predictions.selectors import review_queue

pytestmark = pytest.mark.django_db

QUEUE = "/admin/predictions/prediction/review/"


@pytest.fixture
def reviewer(django_user_model):
    user = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    user.groups.add(Group.objects.get(name="reviewers"))
    return user


def answer(owner, text: str, margin: float | None, **extra) -> Prediction:
    """A finished sentiment answer whose top score beats the other by `margin`."""
    positive = 0.5 + (margin or 0) / 2
    now = timezone.now()
    fields = {
        "owner": owner,
        "text": text,
        "model_name": "sentiment",
        "model_version": "v1",
        "status": PredictionStatus.SUCCEEDED,
        "label": "positive",
        "score": positive,
        "scores": {"positive": positive, "negative": 1 - positive},
        "margin": margin,
        "started_at": now,
        "finished_at": now,
        **extra,
    }
    return Prediction.objects.create(**fields)


def decide(client, row: Prediction, label: str, note: str = "", **headers):
    return client.post(f"{QUEUE}{row.pk}/", {"corrected_label": label, "note": note, "next": QUEUE}, headers=headers)


def test_the_queue_puts_the_most_uncertain_unreviewed_answers_first(owner, reviewer, client):
    sure = answer(owner, "sure", 0.9)
    close = answer(owner, "close call", 0.02)
    middling = answer(owner, "middling", 0.4)
    unknown = answer(owner, "stored before margins were kept", None)
    answer(owner, "already reviewed", 0.01, reviewed_at=timezone.now(), reviewed_by=reviewer)
    answer(owner, "failed", None, status=PredictionStatus.FAILED, label="", scores=None)
    assert list(review_queue()) == [close, middling, sure, unknown]

    client.force_login(reviewer)
    page = client.get(QUEUE).content.decode()
    positions = [page.index(f'id="item-{row.pk}"') for row in (close, middling, sure, unknown)]
    assert positions == sorted(positions)
    assert "already reviewed" not in page
    assert ">failed<" not in page
    assert "<strong>4</strong> waiting" in page


def test_the_queue_filters_by_model_and_version(owner, reviewer, client):
    old = answer(owner, "old version", 0.1, model_version="v0")
    new = answer(owner, "new version", 0.2)
    emotions = answer(owner, "joyful", 0.05, model_name="emotions", scores={"joy": 0.6, "anger": 0.1}, label="joy")
    assert list(review_queue(model_name="sentiment")) == [old, new]
    assert list(review_queue(model_name="sentiment", model_version="v1")) == [new]

    client.force_login(reviewer)
    page = client.get(QUEUE, {"model": "sentiment", "version": "v0"}).content.decode()
    assert f'id="item-{old.pk}"' in page
    assert f'id="item-{new.pk}"' not in page
    assert f'id="item-{emotions.pk}"' not in page
    unknown_model = client.get(QUEUE, {"model": "no-such-model"}).content.decode()  # ignored: every model
    assert all(f'id="item-{row.pk}"' in unknown_model for row in (old, new, emotions))


def test_the_audit_sample_tab_lists_only_sampled_rows_oldest_first_whatever_their_margin(owner, reviewer, client):
    answer(owner, "uncertain, not sampled", 0.01)
    first = answer(owner, "sampled, sure", 0.95, review_sample=True)
    second = answer(owner, "sampled, unsure", 0.05, review_sample=True)
    assert list(review_queue(sample=True)) == [first, second]
    client.force_login(reviewer)
    page = client.get(QUEUE, {"sample": "1"}).content.decode()
    assert page.index(f'id="item-{first.pk}"') < page.index(f'id="item-{second.pk}"')
    assert "uncertain, not sampled" not in page


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (1.0, 200, 200), (0.25, 30, 75)])
def test_each_prediction_is_drawn_into_the_audit_sample_when_made_at_the_rate_set(api, settings, rate, low, high):
    settings.REVIEW_SAMPLE_RATE = rate
    random.seed(20261206)
    for start in (0, 100):
        response = api.post("/api/v1/batches/", {"texts": [f"text {start + i}" for i in range(100)]}, format="json")
        assert response.status_code in (200, 201, 202), response.content
    sampled = Prediction.objects.filter(review_sample=True).count()
    assert Prediction.objects.count() == 200
    assert low <= sampled <= high  # 0.25 of 200: 50 expected, these bounds are over 3.5 standard deviations


def test_a_worker_stores_each_answer_s_margin_and_a_cache_hit_keeps_it(api):
    first = api.post("/api/v1/predictions/?wait=5", {"text": "a quietly moving film"}, format="json").json()
    row = Prediction.objects.get(pk=first["id"])
    assert row.status == PredictionStatus.SUCCEEDED
    assert not row.cached
    top, second = sorted(row.scores.values(), reverse=True)
    assert row.margin == pytest.approx(top - second, abs=2e-6)
    again = api.post("/api/v1/predictions/?wait=5", {"text": "a quietly moving film"}, format="json").json()
    hit = Prediction.objects.get(pk=again["id"])
    assert hit.cached
    assert hit.margin == row.margin


def test_a_reviewer_confirms_from_the_queue_and_the_trail_records_who_and_when(owner, reviewer, client):
    row = answer(owner, "close call", 0.02)
    client.force_login(reviewer)
    response = decide(client, row, "", "looks right", Accept="application/json")
    assert response.status_code == 200
    assert response.json() == {"id": row.pk, "label": "positive", "corrected_label": "", "reviewed_by": "rita"}
    row.refresh_from_db()
    assert row.reviewed_by == reviewer
    assert row.reviewed_at is not None
    assert row.corrected_label == ""
    assert PredictionReview.objects.get(prediction=row).note == "looks right"
    assert list(review_queue()) == []


def test_a_correction_is_stored_and_the_model_s_own_label_counts_as_a_confirmation(owner, reviewer, client):
    wrong, right = answer(owner, "oh great, another sequel", 0.1), answer(owner, "superb", 0.3)
    client.force_login(reviewer)
    assert decide(client, wrong, "negative", Accept="application/json").json()["corrected_label"] == "negative"
    assert decide(client, right, "positive", Accept="application/json").json()["corrected_label"] == ""
    wrong.refresh_from_db()
    right.refresh_from_db()
    assert (wrong.label, wrong.corrected_label) == ("positive", "negative")  # the model's answer is kept
    assert right.corrected_label == ""
    assert right.reviewed_at is not None


def test_a_correction_to_a_label_the_model_does_not_have_is_refused_naming_the_field(owner, reviewer, client):
    row = answer(owner, "close call", 0.02)
    client.force_login(reviewer)
    response = decide(client, row, "sarcastic", Accept="application/json")
    assert response.status_code == 400
    assert "corrected_label" in response.json()["errors"]
    row.refresh_from_db()
    assert row.reviewed_at is None
    assert not PredictionReview.objects.exists()


def test_without_javascript_a_decision_goes_back_to_the_queue_and_never_to_another_site(owner, reviewer, client):
    row, other = answer(owner, "close call", 0.02), answer(owner, "another", 0.03)
    client.force_login(reviewer)
    response = decide(client, row, "negative")
    assert response.status_code == 302
    assert response["Location"] == QUEUE
    response = client.post(f"{QUEUE}{other.pk}/", {"corrected_label": "", "next": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"] == QUEUE
    assert client.get(f"{QUEUE}{row.pk}/").status_code == 405


def test_staff_without_review_rights_can_neither_open_the_queue_nor_decide(owner, django_user_model, client):
    row = answer(owner, "close call", 0.02)
    viewer = django_user_model.objects.create_user("vic", password="pw-vic-1234", is_staff=True)
    client.force_login(viewer)
    assert client.get(QUEUE).status_code == 403
    assert decide(client, row, "negative").status_code == 403
    row.refresh_from_db()
    assert row.reviewed_at is None


@pytest.mark.parametrize(("raw", "value"), [("0.01", 0.01), ("1%", 0.01), ("100%", 1.0), ("0", 0.0)])
def test_review_sample_rate_reads_a_share_or_a_percentage(monkeypatch, raw, value):
    monkeypatch.setenv("REVIEW_SAMPLE_RATE", raw)
    assert env_fraction("REVIEW_SAMPLE_RATE", 0.5) == pytest.approx(value)


@pytest.mark.parametrize("raw", ["2", "-1%", "often"])
def test_a_review_sample_rate_out_of_range_stops_start_up_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("REVIEW_SAMPLE_RATE", raw)
    with pytest.raises(ImproperlyConfigured, match="REVIEW_SAMPLE_RATE"):
        env_fraction("REVIEW_SAMPLE_RATE", 0.01)
