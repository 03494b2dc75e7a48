"""GET /api/v1/models/, /healthz, /readyz and the OpenAPI schema."""

from __future__ import annotations

import pytest
import yaml

from mlsite.celery import app
from tests.factories import DEAD_REDIS

pytestmark = pytest.mark.django_db


def test_models_lists_each_served_model_with_labels_version_and_kind(api):
    models = {m["name"]: m for m in api.get("/api/v1/models/").json()}
    assert set(models) == {"sentiment", "emotions"}
    assert models["sentiment"]["labels"] == ["negative", "positive"]
    assert models["sentiment"]["kind"] == "single_label"
    assert models["sentiment"]["default"] is True
    assert models["emotions"]["kind"] == "multi_label"
    assert models["emotions"]["default"] is False
    assert all(len(m["version"]) == 12 for m in models.values())


def test_healthz_needs_no_auth(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_degraded_naming_the_worker_when_none_answers(client, settings):
    settings.READYZ_WORKER_TIMEOUT_MS = 200  # no worker runs in this process's tests
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {
        "database": "ok",
        "broker": "ok",
        "models": "ok",
        "cache": "ok",
        "worker": "degraded: no worker answered a ping within 0.2s",
    }


def test_readyz_reports_each_served_model_with_its_version_and_source(client, settings, tiny_models):
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    models = {m["name"]: m for m in client.get("/readyz").json()["models"]}
    assert set(models) == {"sentiment", "emotions"}
    for name, model in models.items():
        assert model["source"] == tiny_models[name]
        assert len(model["version"]) == 12


def test_readyz_is_503_without_a_worker_when_the_deployment_requires_one(client, settings):
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    settings.READYZ_REQUIRE_WORKER = True
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["worker"] == "error: no worker answered a ping within 0.1s"


def test_readyz_pings_the_workers_at_most_once_per_cache_period(client, settings, monkeypatch):
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    settings.READYZ_WORKER_CACHE_SECONDS = 60
    pings = []
    real_ping = app.control.ping
    monkeypatch.setattr(app.control, "ping", lambda **kwargs: pings.append(kwargs) or real_ping(**kwargs))
    for _ in range(3):
        assert client.get("/readyz").json()["checks"]["worker"].startswith("degraded: no worker")
    assert pings == [{"timeout": 0.1, "limit": 1}]  # one real ping; the first answer would end it


def test_readyz_is_200_degraded_naming_the_cache_when_it_is_down(client, settings):
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    settings.CACHES = DEAD_REDIS
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["cache"].startswith("degraded: ")
    assert body["checks"]["database"] == "ok"


def test_readyz_is_503_naming_a_model_whose_files_are_missing(client, settings, tmp_path):
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    settings.MLSITE_MODELS = {"sentiment": f"path:{tmp_path / 'gone'}"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "gone" in response.json()["checks"]["models"]
    assert response.json()["models"] == [{"name": "sentiment", "source": f"path:{tmp_path / 'gone'}", "version": None}]


def test_readyz_is_503_naming_the_broker_when_it_is_down(client, monkeypatch):
    monkeypatch.setattr(app.conf, "broker_write_url", "amqp://guest:guest@127.0.0.1:1//")  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"].startswith("error:")
    assert checks["worker"] == "error: not pinged, the broker is down"


def test_the_schema_documents_every_error_response(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    paths = schema["paths"]
    create = paths["/api/v1/predictions/"]["post"]["responses"]
    assert {"200", "202", "400", "401", "413"} <= set(create)
    assert {"202", "400", "401", "413"} <= set(paths["/api/v1/batches/"]["post"]["responses"])
    assert {"200", "401", "404"} <= set(paths["/api/v1/predictions/{id}/"]["get"]["responses"])
    assert {"200", "401", "404"} <= set(paths["/api/v1/batches/{id}/"]["get"]["responses"])
    assert {"200", "400", "401"} <= set(paths["/api/v1/predictions/"]["get"]["responses"])
    assert "wait" in {p["name"] for p in paths["/api/v1/predictions/"]["post"]["parameters"]}


def test_the_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def test_models_marks_a_model_whose_files_are_missing_as_unavailable(api, settings, tmp_path):
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "broken": f"path:{tmp_path / 'gone'}"}
    response = api.get("/api/v1/models/")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()}
    assert models["broken"]["available"] is False
    assert models["broken"]["error"] == "model files unavailable"
    assert models["sentiment"]["available"] is True
