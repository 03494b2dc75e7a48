"""Quality per model version on the overview: agreement with reviewers on the audit sample (with its
interval) and on all reviews, the confusion matrix, reliability, confidence and label drift."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from predictions.models import Prediction, PredictionStatus
from predictions.quality import model_quality, total_variation, training_label_shares, version_quality
from predictions.registry import model_info_get

pytestmark = pytest.mark.django_db


def reviewed(owner, n: int, *, version: str, right: int, sample: bool, score: float = 0.9) -> None:
    """n reviewed positive answers of `version`, the first `right` confirmed, the rest corrected to negative."""
    Prediction.objects.bulk_create(
        Prediction(
            owner=owner,
            text=f"{version} {sample} {i}",
            model_name="sentiment",
            model_version=version,
            status=PredictionStatus.SUCCEEDED,
            label="positive",
            score=score,
            corrected_label="" if i < right else "negative",
            reviewed_at=timezone.now(),
            review_sample=sample,
        )
        for i in range(n)
    )


def test_agreement_is_estimated_on_the_audit_sample_with_its_interval_and_shown_apart_on_all_reviews(owner):
    reviewed(owner, 10, version="v1", right=8, sample=True, score=0.95)
    reviewed(owner, 10, version="v1", right=2, sample=False, score=0.55)
    quality = version_quality("sentiment", "v1")
    assert (quality["reviewed"], quality["sample_reviewed"]) == (20, 10)
    assert quality["sample_agreement"] == pytest.approx(0.8)
    assert quality["sample_interval"] == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert quality["all_agreement"] == pytest.approx(0.5)
    assert quality["confusion"] == {("positive", "positive"): 10, ("positive", "negative"): 10}
    by_bin = {round(middle, 2): (n, right) for middle, n, right in quality["reliability"] if n}
    assert by_bin == {0.95: (10, 0.8), 0.55: (10, 0.2)}


def test_drift_is_the_total_variation_between_recent_and_training_label_shares(owner, settings, tmp_path):
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.1}) == pytest.approx(0.4)
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("label\tsentence\n1\tgood\n1\tfine\n1\tgreat\n0\tbad\n")
    settings.DATASETS_DIR = tmp_path
    training_label_shares.cache_clear()
    assert training_label_shares("sentiment", ("negative", "positive"), tmp_path) == {
        "negative": 0.25,
        "positive": 0.75,
    }
    assert training_label_shares("sentiment", ("sad", "happy"), tmp_path) is None  # another model's labels
    Prediction.objects.bulk_create(
        Prediction(
            owner=owner,
            text=f"t{i}",
            model_name="sentiment",
            status=PredictionStatus.SUCCEEDED,
            label="negative" if i % 2 else "positive",
            score=0.7,
        )
        for i in range(10)
    )
    quality = model_quality("sentiment")
    assert quality["recent_shares"] == {"negative": 0.5, "positive": 0.5}
    assert quality["drift"] == pytest.approx(0.25)
    assert dict(quality["confidence_histogram"])["0.7–0.8"] == 10
    training_label_shares.cache_clear()


def test_the_overview_shows_each_version_s_quality_to_a_reviewer(client, owner, django_user_model, settings, tmp_path):
    settings.DATASETS_DIR = tmp_path  # no dataset here: drift is not computed, and the page says why
    training_label_shares.cache_clear()
    served = model_info_get("sentiment").version
    reviewed(owner, 10, version=served, right=8, sample=True)
    reviewer = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="reviewers"))
    client.force_login(reviewer)
    html = client.get(reverse("admin:predictions_prediction_overview")).content.decode()
    section = html.split('id="quality-sentiment"')[1].split("</section>")[0]
    assert '<td class="sample-agreement">80.0% (49.0%–94.3%) of 10</td>' in section
    assert "<caption>Confusion: reviewers' label (rows) × model's label (columns)</caption>" in section
    assert section.count("<svg") == 3  # reliability, confidence, drift
    assert "which is not here" in section
    assert 'class="drift">—<' in section
