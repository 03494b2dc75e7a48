"""Model versions as rows: register a candidate, promote it, roll back; what is served follows, the
cache never answers for another version, a running worker takes a promotion up without a restart,
and only the `model managers` group may promote (each step in the admin's log)."""

from __future__ import annotations

import io
import json
import os

import pytest
from django.conf import settings as django_settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from predictions.models import ModelVersion, ModelVersionState, Prediction, PredictionStatus, ReprocessRun
from predictions.registry import active_versions_forget, model_info_get, model_source
from predictions.services.versions import (
    VersionRefused,
    model_version_promote,
    model_version_register,
    model_version_rollback,
)
from tests.factories import tiny_bert_save
from tests.test_pools import Pool, pool_env
from tests.test_worker import eventually

pytestmark = pytest.mark.django_db

VERSIONS = "/admin/predictions/modelversion/"


@pytest.fixture(autouse=True)
def versions_read_at_once(settings, tiny_models):
    settings.MODEL_VERSION_CHECK_SECONDS = 0  # every use reads the active versions (a worker: within seconds)
    active_versions_forget()


@pytest.fixture(scope="module")
def candidate_dirs(tmp_path_factory):
    """Two more tiny sentiment models with other weights (so other versions), and an emotions one."""
    labels = ["negative", "positive"]
    return {
        "b": tiny_bert_save(tmp_path_factory.mktemp("sentiment-b"), labels=labels, seed=1),
        "c": tiny_bert_save(tmp_path_factory.mktemp("sentiment-c"), labels=labels, seed=2),
    }


def register(directory, name: str = "sentiment") -> ModelVersion:
    version, _ = model_version_register(name=name, source=f"path:{directory}")
    return version


@pytest.fixture
def manager(django_user_model):
    user = django_user_model.objects.create_user("mona", password="pw-mona-1234", is_staff=True)
    user.groups.add(Group.objects.get(name="model managers"))
    return user


@pytest.fixture
def reviewer(django_user_model):
    user = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    user.groups.add(Group.objects.get(name="reviewers"))
    return user


def test_a_registered_candidate_is_recorded_and_not_served(candidate_dirs, tiny_sentiment_dir):
    served = model_info_get("sentiment").version
    candidate = register(candidate_dirs["b"])
    assert candidate.state == ModelVersionState.CANDIDATE
    assert candidate.version != served
    assert model_info_get("sentiment").version == served
    assert model_source("sentiment") == django_settings.MLSITE_MODELS["sentiment"]
    assert register(candidate_dirs["b"]).pk == candidate.pk  # registering it again: the same row


def test_a_candidate_whose_labels_are_not_the_model_s_is_refused_naming_the_source(tiny_emotions_dir):
    with pytest.raises(VersionRefused, match=r"^source: its labels \['joy'"):
        register(tiny_emotions_dir)
    assert not ModelVersion.objects.exists()


def test_after_a_promotion_new_texts_are_answered_by_it_and_the_cache_never_answers_for_another_version(
    api, candidate_dirs
):
    first = api.post("/api/v1/predictions/?wait=5", {"text": "a witty film"}, format="json").json()
    old = Prediction.objects.get(pk=first["id"])
    candidate = register(candidate_dirs["b"])
    assert model_version_promote(candidate, user=None) is None  # nothing was active: the configured model served

    again = api.post("/api/v1/predictions/?wait=5", {"text": "a witty film"}, format="json").json()
    new = Prediction.objects.get(pk=again["id"])
    assert (new.cached, new.model_version) == (False, candidate.version)
    old.refresh_from_db()
    assert old.model_version != candidate.version  # a row keeps the version that answered it
    third = api.post("/api/v1/predictions/?wait=5", {"text": "a witty film"}, format="json").json()
    assert Prediction.objects.get(pk=third["id"]).cached  # the new version's own answer, from the cache


def test_rollback_walks_back_through_the_versions_to_the_configured_model(candidate_dirs):
    configured = model_info_get("sentiment").version
    b, c = register(candidate_dirs["b"]), register(candidate_dirs["c"])
    model_version_promote(b, user=None)
    assert model_version_promote(c, user=None) == b
    assert model_info_get("sentiment").version == c.version

    retired, back = model_version_rollback("sentiment", user=None)
    assert (retired, back) == (c, b)
    assert model_info_get("sentiment").version == b.version
    retired, back = model_version_rollback("sentiment", user=None)
    assert (retired, back) == (b, None)
    assert model_info_get("sentiment").version == configured
    assert set(ModelVersion.objects.values_list("state", flat=True)) == {ModelVersionState.RETIRED}
    with pytest.raises(VersionRefused, match="nothing to roll back"):
        model_version_rollback("sentiment", user=None)


def test_there_is_never_more_than_one_active_version_of_a_model(candidate_dirs):
    from django.db import IntegrityError, transaction  # noqa: PLC0415

    b, c = register(candidate_dirs["b"]), register(candidate_dirs["c"])
    model_version_promote(b, user=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=c.pk).update(state=ModelVersionState.ACTIVE)
    with pytest.raises(VersionRefused, match="already active"):
        model_version_promote(b, user=None)


def admin_action(client, action: str, version: ModelVersion):
    return client.post(VERSIONS, {"action": action, "_selected_action": [version.pk]}, follow=True)


def test_a_model_manager_promotes_and_rolls_back_from_the_admin_and_the_log_says_who(client, manager, candidate_dirs):
    candidate = register(candidate_dirs["b"])
    client.force_login(manager)
    page = admin_action(client, "promote", candidate).content.decode()
    assert "is active" in page
    candidate.refresh_from_db()
    assert (candidate.state, candidate.promoted_by) == (ModelVersionState.ACTIVE, manager)
    admin_action(client, "rollback", candidate)
    candidate.refresh_from_db()
    assert candidate.state == ModelVersionState.RETIRED
    log = list(LogEntry.objects.filter(user=manager).order_by("pk").values_list("object_repr", "change_message"))
    assert [message for _, message in log] == [
        "Promoted to active.",
        f"Rolled back: the configured {django_settings.MLSITE_MODELS['sentiment']} served again.",
    ]


def test_a_reviewer_sees_the_versions_but_cannot_promote_them(client, reviewer, candidate_dirs):
    candidate = register(candidate_dirs["b"])
    client.force_login(reviewer)
    page = client.get(VERSIONS)
    assert page.status_code == 200
    assert candidate.version[:12] in page.content.decode()
    assert 'value="promote"' not in page.content.decode()
    admin_action(client, "promote", candidate)
    candidate.refresh_from_db()
    assert candidate.state == ModelVersionState.CANDIDATE
    assert not LogEntry.objects.exists()


def test_after_a_promotion_the_admin_re_runs_the_history_earlier_versions_answered(
    client, manager, owner, candidate_dirs, django_capture_on_commit_callbacks
):
    old = [
        Prediction.objects.create(
            owner=owner,
            text=f"old {i}",
            model_name="sentiment",
            model_version="0ld",
            status=PredictionStatus.SUCCEEDED,
            label="positive",
        )
        for i in range(3)
    ]
    candidate = register(candidate_dirs["b"])
    model_version_promote(candidate, user=manager)
    client.force_login(manager)
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_action(client, "rerun_history", candidate).content.decode()
    assert "Queued 3 prediction(s) answered by earlier versions" in page
    assert ReprocessRun.objects.get().created_by == manager
    for row in old:
        row.refresh_from_db()
        assert row.model_version == candidate.version
        assert row.history.get().model_version == "0ld"  # the earlier result, kept


def test_register_model_prints_the_version_and_refuses_an_unknown_model(candidate_dirs):
    out = io.StringIO()
    call_command("register_model", "sentiment", f"path:{candidate_dirs['b']}", "--promote", stdout=out)
    printed = json.loads(out.getvalue())
    assert printed["state"] == "active"
    assert ModelVersion.objects.get(version=printed["version"]).state == ModelVersionState.ACTIVE
    with pytest.raises(CommandError, match="unknown model 'nope'"):
        call_command("register_model", "nope", f"path:{candidate_dirs['b']}")


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_takes_up_a_promotion_within_seconds_without_a_restart(
    api, candidate_dirs, tiny_sentiment_dir, tiny_emotions_dir, tmp_path, celery_eager
):
    env = pool_env(tiny_sentiment_dir, tiny_emotions_dir, tmp_path, MODEL_VERSION_CHECK_SECONDS="1")
    celery_eager.conf.task_always_eager = False
    pool = Pool("sentiment", env, tmp_path).start()
    try:
        before = api.post("/api/v1/predictions/?wait=20", {"text": "before"}, format="json").json()
        configured = model_info_get("sentiment").version
        assert before["model"]["version"] == configured
        candidate = register(candidate_dirs["b"])
        model_version_promote(candidate, user=None)

        def answered_by_the_candidate():
            row = api.post("/api/v1/predictions/?wait=20", {"text": f"after {os.urandom(4).hex()}"}, format="json")
            return row.json()["model"]["version"] == candidate.version

        assert eventually(answered_by_the_candidate, timeout=20)
        assert pool.process.poll() is None  # the same worker process, never restarted
    finally:
        pool.stop()
