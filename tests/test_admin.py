"""The review desk without a browser: permissions, query counts, the CSV export, the overview figures."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from predictions.export import csv_rows
from predictions.models import Prediction, PredictionResult, PredictionReview, PredictionStatus
from predictions.overview import percentile

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/predictions/prediction/"


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-root-1234")


@pytest.fixture
def reviewer(django_user_model):
    user = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    user.groups.add(Group.objects.get(name="reviewers"))
    return user


def rows(owner, n: int, **extra) -> list[Prediction]:
    now = timezone.now()
    return Prediction.objects.bulk_create(
        [
            Prediction(
                owner=owner,
                text=f"text {i}",
                model_name="sentiment",
                model_version="abc",
                status=PredictionStatus.SUCCEEDED,
                label="positive" if i % 2 else "negative",
                score=0.9,
                scores={"negative": 0.1, "positive": 0.9},
                started_at=now,
                finished_at=now,
                **extra,
            )
            for i in range(n)
        ]
    )


def test_the_changelist_of_100_rows_runs_a_fixed_small_number_of_queries(
    client, superuser, owner, django_assert_max_num_queries
):
    rows(owner, 100)
    client.force_login(superuser)
    with django_assert_max_num_queries(12) as captured:
        response = client.get(CHANGELIST + "?all=")
    assert response.status_code == 200
    few = len(captured)
    rows(owner, 100)
    with django_assert_max_num_queries(few):  # twice the rows, no more queries: no N+1
        assert client.get(CHANGELIST).status_code == 200


def test_the_reviewers_group_exists_with_view_and_review_rights_only(reviewer):
    assert reviewer.has_perm("predictions.view_prediction")
    assert reviewer.has_perm("predictions.change_prediction")
    assert reviewer.has_perm("predictions.view_predictionresult")
    assert not reviewer.has_perm("predictions.delete_prediction")
    assert not reviewer.has_perm("predictions.add_prediction")


def test_a_reviewer_can_set_a_correction_and_it_records_who_and_when(client, reviewer, owner):
    [row] = rows(owner, 1)
    client.force_login(reviewer)
    url = reverse("admin:predictions_prediction_change", args=[row.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert b"No earlier results: this is the first run." in page.content
    response = client.post(
        url,
        {
            "corrected_label": "positive",
            "review_note": "sarcasm, actually positive",
            "text": "HACKED",
            "label": "HACKED",
        },
    )
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.corrected_label == "positive"
    assert row.review_note == "sarcasm, actually positive"
    assert row.reviewed_by == reviewer
    assert row.reviewed_at is not None
    assert row.text == "text 0"
    assert row.label == "negative"  # model output and text are read-only
    review = PredictionReview.objects.get()
    assert (review.reviewer, review.corrected_label) == (reviewer, "positive")


def test_a_correction_must_be_one_of_the_models_labels(client, reviewer, owner):
    [row] = rows(owner, 1)
    client.force_login(reviewer)
    response = client.post(reverse("admin:predictions_prediction_change", args=[row.pk]), {"corrected_label": "banana"})
    assert response.status_code == 200
    assert b"Select a valid choice" in response.content
    assert not PredictionReview.objects.exists()


def test_only_superusers_may_delete(client, reviewer, superuser, owner):
    [row] = rows(owner, 1)
    client.force_login(reviewer)
    assert (
        client.post(reverse("admin:predictions_prediction_delete", args=[row.pk]), {"post": "yes"}).status_code == 403
    )
    assert Prediction.objects.filter(pk=row.pk).exists()
    client.force_login(superuser)
    client.post(reverse("admin:predictions_prediction_delete", args=[row.pk]), {"post": "yes"})
    assert not Prediction.objects.filter(pk=row.pk).exists()


def test_history_and_reviews_are_read_only_even_for_superusers(client, superuser, owner):
    [row] = rows(owner, 1)
    result = PredictionResult.objects.create(
        prediction=row, model_name="sentiment", status="succeeded", label="positive"
    )
    client.force_login(superuser)
    url = reverse("admin:predictions_predictionresult_change", args=[result.pk])
    client.post(url, {"label": "negative"})
    result.refresh_from_db()
    assert result.label == "positive"
    assert client.get(reverse("admin:predictions_predictionresult_add")).status_code == 403


def test_the_rerun_action_queues_rows_and_keeps_their_history(
    client, reviewer, owner, django_capture_on_commit_callbacks
):
    selected = rows(owner, 3)
    client.force_login(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            CHANGELIST, {"action": "rerun", "_selected_action": [r.pk for r in selected]}, follow=True
        )
    assert b"Queued 3 prediction(s) for re-run" in response.content
    assert PredictionResult.objects.filter(run__source="admin", run__created_by=reviewer).count() == 3
    assert set(Prediction.objects.values_list("status", flat=True)) == {"succeeded"}
    assert Prediction.objects.count() == 3


def test_mark_reviewed_stamps_each_row(client, reviewer, owner):
    selected = rows(owner, 2)
    client.force_login(reviewer)
    client.post(CHANGELIST, {"action": "mark_reviewed", "_selected_action": [r.pk for r in selected]})
    assert Prediction.objects.filter(reviewed_by=reviewer, reviewed_at__isnull=False).count() == 2
    assert PredictionReview.objects.count() == 2


def test_the_csv_export_streams_every_selected_row(client, superuser, owner):
    selected = rows(owner, 5)
    Prediction.objects.filter(pk=selected[0].pk).update(text='comma, "quote"\nnewline')
    client.force_login(superuser)
    response = client.post(CHANGELIST, {"action": "export_csv", "_selected_action": [r.pk for r in selected]})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(table) == 5
    assert table[0]["text"] == 'comma, "quote"\nnewline'
    assert table[0]["owner"] == "owner"
    assert table[0]["model"] == "sentiment"


def test_the_csv_export_reads_rows_in_chunks_not_all_at_once(owner):
    rows(owner, 5)
    stream = csv_rows(Prediction.objects.all())
    assert next(stream).startswith("id,created_at,owner")  # a generator: nothing is materialised up front
    assert sum(1 for _ in stream) == 5


def test_the_overview_shows_volume_errors_and_latency(client, superuser, owner):
    rows(owner, 4)
    Prediction.objects.create(
        owner=owner, text="x", model_name="sentiment", status="failed", finished_at=timezone.now()
    )
    client.force_login(superuser)
    response = client.get(reverse("admin:predictions_prediction_overview"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<strong id="total">5</strong>' in html
    assert '<strong id="error-rate">20.00%</strong>' in html
    assert html.count("<svg") >= 3
    assert "cdn" not in html.lower()
    assert "Label distribution: sentiment" in html


def test_each_status_bar_on_the_overview_has_its_colour_in_the_per_day_legend(client, superuser, owner):
    import re  # noqa: PLC0415

    rows(owner, 3)
    Prediction.objects.create(owner=owner, text="x", model_name="sentiment", status="failed")
    Prediction.objects.create(owner=owner, text="y", model_name="sentiment", status="queued")
    client.force_login(superuser)
    html = client.get(reverse("admin:predictions_prediction_overview")).content.decode()
    per_day, rest = html.split("Predictions per day and status")[1].split("Predictions per status")
    per_status = rest.split("Label distribution")[0]
    legend = re.findall(r'y="2" width="12" height="12" fill="(#\w+)"></rect><text [^>]*>(\w+)</text>', per_day)
    bars = re.findall(r'fill="(#\w+)"><title>(\w+): ', per_status)
    assert {status: colour for colour, status in bars} == {status: colour for colour, status in legend}
    assert len({colour for colour, _ in bars}) == 4  # queued, running, succeeded, failed: four colours


def test_percentile_is_nearest_rank():
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([], 0.95) is None
    assert percentile([3.0], 0.95) == 3.0


def test_task_results_are_cleaned_on_beat_with_configurable_retention(settings):
    assert settings.CELERY_BEAT_SCHEDULE["task-results-cleanup"]["task"] == "celery.backend_cleanup"
    assert settings.CELERY_RESULT_EXPIRES.days == settings.TASK_RESULT_RETENTION_DAYS


def test_the_csv_export_defuses_spreadsheet_formulas(owner):
    rows(owner, 1)
    Prediction.objects.update(text='=HYPERLINK("http://evil")')
    lines = list(csv_rows(Prediction.objects.all()))
    assert "'=HYPERLINK" in lines[1]
