"""Shadow traffic: a candidate answers a sampled share of live texts on shadow workers (their own
processes, at the lowest CPU priority); its answers are stored, never returned, and compared in the
admin before anyone promotes it."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from predictions.memos import memos_forget
from predictions.models import ModelVersion, Prediction, PredictionStatus, ShadowAnswer
from predictions.registry import active_versions_forget, model_info_get
from predictions.selectors import reviewed_agreement, shadow_agreement
from predictions.services import dispatch
from predictions.services.shadow import (
    shadow_answers_claim,
    shadow_compare_on_reviews,
    shadow_run,
    shadow_sample,
    shadow_start,
    shadow_stop,
    shadow_sweep,
)
from predictions.services.versions import VersionRefused, model_version_promote, model_version_register
from predictions.tasks import predictions_shadow_task
from tests.factories import tiny_bert_save
from tests.test_pools import Pool, pool_env
from tests.test_worker import eventually

pytestmark = pytest.mark.django_db

VERSIONS = "/admin/predictions/modelversion/"


@pytest.fixture(autouse=True)
def versions_read_at_once(settings, tiny_models):
    settings.MODEL_VERSION_CHECK_SECONDS = 0
    settings.SHADOW_RATE = 1.0
    active_versions_forget()
    dispatch.shadow_wakeup_taken()  # no wake-up left pending by another test


@pytest.fixture
def held(monkeypatch, celery_eager):
    """Shadow wake-ups are recorded, not run: their messages wait, as for a busy shadow worker."""
    celery_eager.conf.task_always_eager = False  # published (here: recorded), as by a deployment
    sent: list[str] = []
    monkeypatch.setattr(
        predictions_shadow_task, "apply_async", lambda queue=None, **_: sent.append(queue) or SimpleNamespace(id="")
    )
    return sent


def shadow_all() -> int:
    answered, finished = shadow_run(["sentiment"], deadline=time.monotonic() + 30)
    assert finished
    return answered


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


def test_a_shadowed_version_answers_live_texts_and_clients_never_see_its_answers(
    api, shadowed, django_capture_on_commit_callbacks
):
    served = model_info_get("sentiment").version
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/predictions/?wait=5", {"text": "a witty, moving film"}, format="json")
    body = response.content.decode()
    prediction = Prediction.objects.get(pk=response.json()["id"])
    answer = ShadowAnswer.objects.get(prediction=prediction)
    assert answer.status == PredictionStatus.QUEUED  # tasks run eagerly here: never inside the live task
    predictions_shadow_task.run()  # as a shadow worker takes its wake-up
    answer.refresh_from_db()
    assert (answer.version, answer.status) == (shadowed, PredictionStatus.SUCCEEDED)
    assert set(answer.scores) == {"negative", "positive"}
    assert answer.margin is not None
    assert prediction.model_version == served  # the client's answer is the active model's
    read = api.get(f"/api/v1/predictions/{prediction.pk}/").content.decode()
    for page in (body, read):
        assert shadowed.version not in page
        assert "shadow" not in page


def test_live_work_only_queues_shadow_answers_and_sends_one_wake_up_to_the_shadow_queue(
    owner, shadowed, held, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert shadow_sample([finished(owner, "first")]) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert shadow_sample([finished(owner, "second")]) == 1
    assert held == [f"{settings.CELERY_TASK_DEFAULT_QUEUE}.shadow"]  # the second found one pending
    assert set(ShadowAnswer.objects.values_list("status", flat=True)) == {PredictionStatus.QUEUED}
    predictions_shadow_task.run()  # as the shadow worker takes the message: it clears the mark, then answers
    assert set(ShadowAnswer.objects.values_list("status", flat=True)) == {PredictionStatus.SUCCEEDED}
    with django_capture_on_commit_callbacks(execute=True):
        shadow_sample([finished(owner, "third")])
    assert len(held) == 2  # after the task: a new wake-up


def test_a_shadow_task_stopped_by_its_deadline_hands_the_rest_to_a_new_wake_up(owner, shadowed, held, settings):
    settings.PASS_MAX_TEXTS, settings.CLAIM_LOOP_SECONDS = 1, 0
    for text in ("one", "two"):
        shadow_sample([finished(owner, text)])
    assert predictions_shadow_task.run() == {"shadow": 0}
    assert len(held) == 1
    assert shadow_all() == 2


def test_on_a_shared_host_a_shadow_pass_waits_until_its_models_live_traffic_pauses(owner, shadowed, settings):
    settings.SHADOW_LIVE_QUIET_MS = 300
    shadow_sample([finished(owner, "shadowed")])
    live = Prediction.objects.create(owner=owner, text="live", model_name="sentiment")
    Prediction.objects.create(owner=owner, text="other model", model_name="emotions")  # not its model's: no wait
    Prediction.objects.update(created_at=timezone.now() - timedelta(seconds=5))
    for status in (PredictionStatus.QUEUED, PredictionStatus.RUNNING):
        Prediction.objects.filter(pk=live.pk).update(status=status)
        assert shadow_run(["sentiment"], deadline=time.monotonic() + 0.2) == (0, False)
    assert ShadowAnswer.objects.get().status == PredictionStatus.QUEUED
    # Answered, but just submitted (a cache hit): traffic has not paused yet.
    Prediction.objects.filter(pk=live.pk).update(status=PredictionStatus.SUCCEEDED, created_at=timezone.now())
    started = time.monotonic()
    assert shadow_run(["sentiment"], deadline=time.monotonic() + 30) == (1, True)
    assert time.monotonic() - started >= 0.2  # it waited for the pause


def test_with_cores_of_its_own_a_shadow_worker_does_not_wait_for_live_work(owner, shadowed, settings):
    settings.SHADOW_LIVE_QUIET_MS = 0
    shadow_sample([finished(owner, "shadowed")])
    Prediction.objects.create(owner=owner, text="live", model_name="sentiment")
    assert shadow_run(["sentiment"], deadline=time.monotonic() + 30) == (1, True)


def test_the_sweeper_wakes_a_shadow_worker_while_answers_wait(owner, shadowed, held, settings):
    assert shadow_sweep() is False
    assert held == []
    shadow_sample([finished(owner, "waiting")])  # its own wake-up was lost (never committed here)
    assert shadow_sweep() is True
    assert len(held) == 1
    assert shadow_sweep() is True
    assert len(held) == 1  # one pending: not sent twice
    shadow_all()
    assert shadow_sweep() is False


@pytest.mark.django_db(transaction=True)
def test_a_shadow_worker_answers_at_the_lowest_cpu_priority_and_takes_no_live_work(
    owner, candidate_dir, tiny_sentiment_dir, tiny_emotions_dir, tmp_path, celery_eager
):
    """`runstack`'s shadow worker, a real process on the test PostgreSQL and RabbitMQ."""
    psutil = pytest.importorskip("psutil")
    # Not yielding to live rows: the live row below stays queued (nothing serves it) to show it is never taken.
    env = pool_env(
        tiny_sentiment_dir, tiny_emotions_dir, tmp_path, MODEL_VERSION_CHECK_SECONDS="0", SHADOW_LIVE_QUIET_MS="0"
    )
    celery_eager.conf.task_always_eager = False
    version, _ = model_version_register(name="sentiment", source=f"path:{candidate_dir}")
    shadow_start(version)
    live = Prediction.objects.create(owner=owner, text="a live text", model_name="sentiment")
    worker = Pool("sentiment", env, tmp_path, kind="shadow").start()
    try:
        processes = [psutil.Process(worker.process.pid), *psutil.Process(worker.process.pid).children(recursive=True)]
        assert len(processes) >= 2  # the main process and its pool process
        assert {os.sched_getscheduler(p.pid) for p in processes} == {os.SCHED_IDLE}
        dispatch.predictions_publish([live.pk])  # a live run task, on the model's queue
        assert shadow_sample([finished(owner, "a shadowed text")]) == 1  # commits, then wakes the shadow worker
        assert eventually(lambda: ShadowAnswer.objects.filter(status=PredictionStatus.SUCCEEDED).exists(), 60)
        [answer] = ShadowAnswer.objects.all()
        assert set(answer.scores) == {"negative", "positive"}
        live.refresh_from_db()
        assert live.status == PredictionStatus.QUEUED  # the shadow worker never takes live work
        assert f"consuming only {dispatch.shadow_queue()}" in worker.log_path.read_text()
    finally:
        worker.stop()


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


def test_past_shadow_max_queued_waiting_answers_no_more_are_sampled_until_they_are_given(owner, settings, shadowed):
    """The cap counts answers queued or running (any process's, at the next count); once they are
    given, sampling resumes. Live rows are never held back by it."""
    settings.SHADOW_MAX_QUEUED = 3
    memos_forget()  # count the backlog afresh, as a new process would
    rows = [finished(owner, f"text {i}") for i in range(5)]
    assert shadow_sample(rows[:2]) == 2
    assert shadow_sample(rows[2:]) == 1  # counted by this process since: no query needed to know
    assert ShadowAnswer.objects.count() == 3
    shadow_all()
    memos_forget()
    more = [finished(owner, f"more {i}") for i in range(2)]
    assert shadow_sample(more) == 2  # recounted: the three were given
    settings.SHADOW_MAX_QUEUED = 0  # no limit
    assert shadow_sample([finished(owner, f"last {i}") for i in range(4)]) == 4


def test_stopping_a_shadow_drops_its_queued_answers_and_keeps_those_given(owner, shadowed):
    given, waiting = finished(owner, "given"), finished(owner, "waiting")
    shadow_sample([given])
    shadow_all()
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
    with django_capture_on_commit_callbacks(execute=True):
        assert shadow_compare_on_reviews(version) == 4
    predictions_shadow_task.run()  # as a shadow worker takes the wake-up
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
