"""Shadow traffic: a candidate answers a sampled share of live texts in the workers' idle time; its
answers are stored, never returned, and compared in the admin before anyone promotes it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from predictions.models import ModelVersion, Prediction, PredictionStatus, ShadowAnswer
from predictions.registry import active_versions_forget, model_info_get
from predictions.selectors import reviewed_agreement, shadow_agreement
from predictions.services.shadow import (
    shadow_answers_claim,
    shadow_compare_on_reviews,
    shadow_run,
    shadow_sample,
    shadow_start,
    shadow_stop,
)
from predictions.services.versions import VersionRefused, model_version_promote, model_version_register
from tests.factories import tiny_bert_save

pytestmark = pytest.mark.django_db

VERSIONS = "/admin/predictions/modelversion/"


@pytest.fixture(autouse=True)
def versions_read_at_once(settings, tiny_models):
    settings.MODEL_VERSION_CHECK_SECONDS = 0
    settings.SHADOW_RATE = 1.0
    active_versions_forget()


@pytest.fixture(scope="module")
def candidate_dir(tmp_path_factory):
    return tiny_bert_save(tmp_path_factory.mktemp("shadow-candidate"), labels=["negative", "positive"], seed=3)


@pytest.fixture
def shadowed(candidate_dir) -> ModelVersion:
    version, _ = model_version_register(name="sentiment", source=f"path:{candidate_dir}")
    shadow_start(version)
    return version


def finished(owner, text: str, label: str = "positive") -> Prediction:
    return Prediction.objects.create(
        owner=owner, text=text, model_name="sentiment", status=PredictionStatus.SUCCEEDED, label=label
    )


def test_a_shadowed_version_answers_live_texts_and_clients_never_see_its_answers(api, shadowed):
    served = model_info_get("sentiment").version
    response = api.post("/api/v1/predictions/?wait=5", {"text": "a witty, moving film"}, format="json")
    body = response.content.decode()
    prediction = Prediction.objects.get(pk=response.json()["id"])
    answer = ShadowAnswer.objects.get(prediction=prediction)
    assert (answer.version, answer.status) == (shadowed, PredictionStatus.SUCCEEDED)
    assert set(answer.scores) == {"negative", "positive"}
    assert answer.margin is not None
    assert prediction.model_version == served  # the client's answer is the active model's
    read = api.get(f"/api/v1/predictions/{prediction.pk}/").content.decode()
    for page in (body, read):
        assert shadowed.version not in page
        assert "shadow" not in page


def test_shadow_work_waits_while_live_rows_are_queued(owner, shadowed):
    row = finished(owner, "a text")
    assert shadow_sample([row]) == 1
    assert shadow_run(["sentiment"], live_waiting=lambda: True, deadline=time.monotonic() + 5) == 0
    assert ShadowAnswer.objects.get().status == PredictionStatus.QUEUED
    assert shadow_run(["sentiment"], live_waiting=lambda: False, deadline=time.monotonic() + 5) == 1
    assert ShadowAnswer.objects.get().status == PredictionStatus.SUCCEEDED


def test_nothing_is_shadowed_at_rate_zero_without_a_shadowed_version_or_for_a_failed_row(owner, settings, shadowed):
    row = finished(owner, "a text")
    failed = Prediction.objects.create(owner=owner, text="x", model_name="sentiment", status=PredictionStatus.FAILED)
    assert shadow_sample([failed]) == 0
    settings.SHADOW_RATE = 0.0
    assert shadow_sample([row]) == 0
    settings.SHADOW_RATE = 1.0
    shadow_stop(shadowed)
    assert shadow_sample([row]) == 0
    assert not ShadowAnswer.objects.exists()


def test_stopping_a_shadow_drops_its_queued_answers_and_keeps_those_given(owner, shadowed):
    given, waiting = finished(owner, "given"), finished(owner, "waiting")
    shadow_sample([given])
    shadow_run(["sentiment"], live_waiting=lambda: False, deadline=time.monotonic() + 5)
    shadow_sample([waiting])
    assert shadow_stop(shadowed) == 1
    assert list(ShadowAnswer.objects.values_list("prediction__text", "status")) == [("given", "succeeded")]


def test_an_answer_left_running_by_a_dead_worker_is_taken_again(owner, settings, shadowed):
    shadow_sample([finished(owner, "a text")])
    [taken] = shadow_answers_claim(["sentiment"], limit=16)
    assert shadow_answers_claim(["sentiment"], limit=16) == []  # running: not taken twice
    ShadowAnswer.objects.update(started_at=timezone.now() - timedelta(seconds=settings.SWEEP_RUNNING_AFTER + 1))
    assert [a.pk for a in shadow_answers_claim(["sentiment"], limit=16)] == [taken.pk]


def test_an_active_version_cannot_be_shadowed_and_a_promoted_one_stops_being_shadowed(shadowed):
    model_version_promote(shadowed, user=None)
    shadowed.refresh_from_db()
    assert not shadowed.shadow
    with pytest.raises(VersionRefused, match="is active"):
        shadow_start(shadowed)


def test_the_admin_shows_live_agreement_with_its_interval_and_the_disagreements(
    client, django_user_model, owner, shadowed
):
    manager = django_user_model.objects.create_user("mona", password="pw-mona-1234", is_staff=True)
    manager.groups.add(Group.objects.get(name="model managers"))
    rows = [finished(owner, f"text {i}", label="positive") for i in range(10)]
    for i, row in enumerate(rows):
        ShadowAnswer.objects.create(
            prediction=row,
            version=shadowed,
            status=PredictionStatus.SUCCEEDED,
            label="negative" if i < 2 else "positive",
        )
    client.force_login(manager)
    page = client.get(f"{VERSIONS}{shadowed.pk}/change/").content.decode()
    assert "8 of 10 live texts answered alike: <strong>80.0%</strong> (95 % interval 49.0%–94.3%)" in page
    assert page.count("<tr><td><a href=") == 2
    assert "text 0" in page


def test_a_reviewer_cannot_start_a_shadow(client, django_user_model, candidate_dir):
    reviewer = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="reviewers"))
    version, _ = model_version_register(name="sentiment", source=f"path:{candidate_dir}")
    client.force_login(reviewer)
    client.post(VERSIONS, {"action": "shadow_on", "_selected_action": [version.pk]})
    version.refresh_from_db()
    assert not version.shadow


def test_a_candidate_compared_on_reviewed_predictions_is_scored_against_the_reviewers(
    client, django_user_model, owner, candidate_dir, django_capture_on_commit_callbacks
):
    reviewed = [finished(owner, f"reviewed {i}") for i in range(4)]
    Prediction.objects.filter(pk__in=[r.pk for r in reviewed[:2]]).update(
        corrected_label="negative", reviewed_at=timezone.now()
    )
    Prediction.objects.filter(pk__in=[r.pk for r in reviewed[2:]]).update(reviewed_at=timezone.now())
    finished(owner, "never reviewed")
    version, _ = model_version_register(name="sentiment", source=f"path:{candidate_dir}")
    with django_capture_on_commit_callbacks(execute=True):  # the wake-up: a worker with nothing live answers them
        assert shadow_compare_on_reviews(version) == 4
    assert set(ShadowAnswer.objects.values_list("status", flat=True)) == {PredictionStatus.SUCCEEDED}
    assert shadow_compare_on_reviews(version) == 0  # each prediction answered once by a version

    truth = {r.pk: ("negative" if i < 2 else "positive") for i, r in enumerate(reviewed)}
    answers = dict(ShadowAnswer.objects.values_list("prediction_id", "label"))
    figures = reviewed_agreement(version)
    assert figures["answered"] == 4
    assert figures["served_right"] == 2  # the two confirmed; the two corrected were wrong
    assert figures["candidate_right"] == sum(answers[pk] == label for pk, label in truth.items())
    assert {row[0] for row in figures["disagreements"]} == {pk for pk, label in truth.items() if answers[pk] != label}
    assert shadow_agreement(version)["answered"] == 0  # not live traffic

    manager = django_user_model.objects.create_user("mona", password="pw-mona-1234", is_staff=True)
    manager.groups.add(Group.objects.get(name="model managers"))
    client.force_login(manager)
    page = client.get(f"{VERSIONS}{version.pk}/change/").content.decode()
    assert "On 4 reviewed predictions, the reviewers' label is this version's in" in page
    assert "and the answer clients got in <strong>50.0% (15.0%–85.0%)</strong>" in page


def test_a_task_ends_without_a_query_for_shadow_work_where_there_is_none(settings, django_assert_num_queries):
    settings.MODEL_VERSION_CHECK_SECONDS = 60
    assert shadow_run(["sentiment"], live_waiting=lambda: False, deadline=time.monotonic() + 5) == 0  # reads once
    with django_assert_num_queries(0):
        assert shadow_run(["sentiment"], live_waiting=lambda: False, deadline=time.monotonic() + 5) == 0
