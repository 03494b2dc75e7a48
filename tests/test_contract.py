"""The contract: a client generated from the served schema (openapi-python-client) works as it is.

A live server (pytest-django's, tasks run eagerly at commit) serves the real schema; the test checks
it with openapi-spec-validator, generates a client package from it, imports it and drives the
README's scenario and the error paths through the generated code alone: every answer parsed into
its typed model, with the generated client's default `Authorization: Bearer` header.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from rest_framework.authtoken.models import Token

from predictions.models import Prediction

PACKAGE = "mlsite_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
OPERATIONS = {
    "predictions_create",
    "predictions_list",
    "predictions_retrieve",
    "batches_create",
    "batches_retrieve",
    "models_list",
}


@pytest.fixture(scope="module")
def schema(live_server):
    response = httpx.get(f"{live_server.url}/api/schema/", params={"format": "json"}, timeout=30)
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def generated(schema, tmp_path_factory):
    """The generated package, imported from a directory of its own (and forgotten afterwards)."""
    import json  # noqa: PLC0415 (only this fixture writes JSON)

    root = tmp_path_factory.mktemp("client")
    (root / "schema.json").write_text(json.dumps(schema))
    (root / "config.json").write_text(json.dumps({"post_hooks": []}))  # no formatter run: the code is used as generated
    result = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(root / "schema.json"),
            "--config",
            str(root / "config.json"),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def module(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture
def token(owner) -> str:
    return Token.objects.create(user=owner).key


@pytest.fixture
def client(generated, live_server, token):
    """The generated client as a newcomer makes it: base URL and token, every other option its default."""
    with generated.AuthenticatedClient(base_url=live_server.url, token=token, timeout=httpx.Timeout(60)) as client:
        yield client


def test_the_served_schema_is_valid_openapi(schema):
    validate(schema)


def test_operation_ids_follow_one_scheme(schema):
    operations = [operation for path in schema["paths"].values() for operation in path.values()]
    assert {operation["operationId"] for operation in operations} == OPERATIONS
    for operation in operations:  # what a generated client's docstring says: the operation, not a mixin's docstring
        assert operation["summary"], operation["operationId"]
        assert "create(data)" not in operation["description"], operation["operationId"]


def test_bearer_is_declared_for_every_operation_and_the_token_form_stays_documented(schema):
    schemes = schema["components"]["securitySchemes"]
    assert {key: schemes["bearerAuth"][key] for key in ("type", "scheme")} == {"type": "http", "scheme": "bearer"}
    assert (schemes["tokenAuth"]["in"], schemes["tokenAuth"]["name"]) == ("header", "Authorization")
    for path in schema["paths"].values():
        for operation in path.values():
            assert {"bearerAuth": []} in operation["security"]
            assert {"tokenAuth": []} in operation["security"]


def _untyped(node) -> bool:
    """An object whose properties a client cannot know: `{}` as additionalProperties, or no shape at all."""
    if isinstance(node, dict):
        if node.get("additionalProperties") in ({}, True) or (
            node.get("type") == "object" and not {"properties", "additionalProperties", "$ref"} & set(node)
        ):
            return True
        return any(_untyped(value) for value in node.values())
    return isinstance(node, list) and any(_untyped(value) for value in node)


def test_every_response_is_a_typed_component_with_its_headers(schema):
    components = schema["components"]["schemas"]
    assert not [name for name, component in components.items() if _untyped(component)]
    assert components["Batch"]["properties"]["results"]["items"] == {"$ref": "#/components/schemas/Prediction"}
    assert components["ErrorDetail"]["required"] == ["detail"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                where = f"{method} {path} {code}"
                body = response["content"]["application/json"]["schema"]
                ref = body["items"]["$ref"] if body.get("type") == "array" else body["$ref"]
                assert ref.startswith("#/components/schemas/"), where
                if code in ("400", "422"):
                    assert ref == "#/components/schemas/FieldErrors", where
                elif code.startswith(("4", "5")):
                    assert ref == "#/components/schemas/ErrorDetail", where
                headers = set(response.get("headers", {}))
                if code in ("429", "503"):
                    assert "Retry-After" in headers, where
                if code == "401":
                    assert "WWW-Authenticate" in headers, where
                if method == "post" and code in ("200", "202"):
                    assert {"Location", "Idempotent-Replayed"} <= headers, where
                    assert response["headers"]["Location"]["required"], where


def test_model_is_a_string_the_server_validates_with_a_served_example(schema, settings):
    components = schema["components"]["schemas"]
    for name in ("PredictionInputRequest", "BatchInputRequest"):
        model = components[name]["properties"]["model"]
        assert "enum" not in model, name
        assert model["type"] == "string"
        assert model["example"] == settings.DEFAULT_MODEL
        assert "/api/v1/models/" in model["description"]


def test_the_idempotency_key_and_page_declare_what_the_server_enforces(schema):
    create = schema["paths"]["/api/v1/predictions/"]["post"]
    key = {p["name"]: p for p in create["parameters"]}["Idempotency-Key"]["schema"]
    assert (key["minLength"], key["maxLength"]) == (1, 255)
    pattern = re.compile(key["pattern"])
    for good in ("a", "order-1234", "a b", " a ", "~" * 255):
        assert pattern.search(good), good
    for bad in ("", " ", "   ", "é", "a\tb", "\x7f"):
        assert not pattern.search(bad), bad
    page = {p["name"]: p for p in schema["paths"]["/api/v1/predictions/"]["get"]["parameters"]}["page"]
    assert page["schema"]["minimum"] == 1
    assert "past the last" in page["description"]


@pytest.mark.django_db
def test_the_list_filters_declare_what_the_server_accepts(schema, api):
    """A filter value the schema allows is served (200), one it refuses is a 400 naming it, and no other way round."""
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/predictions/"]["get"]["parameters"]}
    for name in ("label", "model"):
        pattern = re.compile(parameters[name]["pattern"])
        for value in ("positive", " x ", "a b", "é", " ", "\t\n", "\u3000", "\x00", "a\x00b"):
            response = api.get("/api/v1/predictions/", data={name: value})
            assert response.status_code == (200 if pattern.search(value) else 400), (name, value, response.content)
            if response.status_code == 400:
                assert list(response.json()) == [name]


def test_the_readme_scenario_runs_through_the_generated_client(generated, client, transactional_db):
    models = module("models")
    create, retrieve, listing = (
        module("api.predictions.predictions_create"),
        module("api.predictions.predictions_retrieve"),
        module("api.predictions.predictions_list"),
    )
    batches_create, batches_retrieve = module("api.batches.batches_create"), module("api.batches.batches_retrieve")
    models_list = module("api.models.models_list")

    # Submit and wait.
    answer = create.sync_detailed(client=client, body=models.PredictionInputRequest(text="a gorgeous film"), wait=10)
    assert answer.status_code == 200, answer.content
    prediction = answer.parsed
    assert isinstance(prediction, models.Prediction)
    assert prediction.status == models.StatusEnum.SUCCEEDED
    assert prediction.label in {"negative", "positive"}
    assert isinstance(prediction.model, models.ModelRef)
    assert prediction.model.name == "sentiment"
    assert answer.headers["Location"] == prediction.url

    # Get it back.
    again = retrieve.sync(client=client, id=prediction.id)
    assert isinstance(again, models.Prediction)
    assert (again.id, again.label, again.text) == (prediction.id, prediction.label, "a gorgeous film")

    # Another model, then list with filters.
    emotion = create.sync(
        client=client, body=models.PredictionInputRequest(text="thank you!", model="emotions"), wait=10
    )
    assert isinstance(emotion, models.Prediction)
    assert emotion.model.name == "emotions"
    page = listing.sync(client=client, status=models.PredictionsListStatus.SUCCEEDED, model="emotions")
    assert isinstance(page, models.PaginatedPredictionList)
    assert page.count == 1
    assert [row.text for row in page.results] == ["thank you!"]
    assert [row.id for row in listing.sync(client=client, model="sentiment").results] == [prediction.id]

    # A batch, and wait for it: every result a typed prediction.
    texts = ["great fun", "awful", "a masterpiece"]
    submitted = batches_create.sync_detailed(
        client=client, body=models.BatchInputRequest(texts=texts, model="sentiment")
    )
    assert submitted.status_code in (200, 202), submitted.content
    assert isinstance(submitted.parsed, models.Batch)
    assert submitted.headers["Location"] == submitted.parsed.url
    batch = batches_retrieve.sync(client=client, id=submitted.parsed.id, wait=10)
    assert isinstance(batch, models.Batch)
    assert batch.finished
    assert isinstance(batch.counts, models.BatchCounts)
    assert (batch.counts.succeeded, batch.counts.queued) == (3, 0)
    assert all(isinstance(row, models.Prediction) for row in batch.results)
    assert [row.text for row in batch.results] == texts
    assert all(row.status == models.StatusEnum.SUCCEEDED and row.label for row in batch.results)
    assert {row.batch for row in batch.results} == {batch.id}

    # The served models.
    described = models_list.sync(client=client)
    assert all(isinstance(model, models.ModelDescription) for model in described)
    assert {model.name: model.default for model in described} == {"sentiment": True, "emotions": False}
    assert {model.name: model.kind for model in described} == {
        "sentiment": models.KindEnum.SINGLE_LABEL,
        "emotions": models.KindEnum.MULTI_LABEL,
    }

    # An idempotent retry: the first answer again, nothing created.
    body = models.PredictionInputRequest(text="sent twice")
    first = create.sync_detailed(client=client, body=body, idempotency_key="order-1234")
    rows = Prediction.objects.count()
    retry = create.sync_detailed(client=client, body=body, idempotency_key="order-1234")
    assert (first.headers["Idempotent-Replayed"], retry.headers["Idempotent-Replayed"]) == ("false", "true")
    assert isinstance(retry.parsed, models.Prediction)
    assert retry.parsed.id == first.parsed.id
    assert retry.headers["Location"] == first.headers["Location"]
    assert Prediction.objects.count() == rows


def test_error_answers_parse_into_typed_error_models(generated, client, live_server, settings, transactional_db):
    models = module("models")
    create, retrieve = module("api.predictions.predictions_create"), module("api.predictions.predictions_retrieve")
    models_list = module("api.models.models_list")

    # 400: an unknown model is the server's to refuse, naming the field.
    unknown = create.sync_detailed(client=client, body=models.PredictionInputRequest(text="hi", model="no-such-model"))
    assert unknown.status_code == 400
    assert isinstance(unknown.parsed, models.FieldErrors)
    assert "no-such-model" in unknown.parsed["model"][0]
    blank = create.sync_detailed(client=client, body=models.PredictionInputRequest(text="   "))
    assert blank.status_code == 400
    assert isinstance(blank.parsed, models.FieldErrors)
    assert list(blank.parsed.additional_properties) == ["text"]

    # 422: the same Idempotency-Key with another body.
    create.sync(client=client, body=models.PredictionInputRequest(text="one"), idempotency_key="key-422")
    reused = create.sync_detailed(
        client=client, body=models.PredictionInputRequest(text="two"), idempotency_key="key-422"
    )
    assert reused.status_code == 422
    assert isinstance(reused.parsed, models.FieldErrors)
    assert reused.parsed["Idempotency-Key"][0]

    # 401: a wrong token, and no token at all.
    with (
        generated.AuthenticatedClient(base_url=live_server.url, token="not-a-token") as wrong,
        generated.Client(base_url=live_server.url) as anonymous,
    ):
        answers = [models_list.sync_detailed(client=wrong), models_list.sync_detailed(client=anonymous)]
    for answer in answers:
        assert answer.status_code == 401
        assert isinstance(answer.parsed, models.ErrorDetail)
        assert answer.parsed.detail
        assert answer.headers["WWW-Authenticate"] == "Token"

    # 404.
    missing = retrieve.sync_detailed(client=client, id=10**9)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.ErrorDetail)
    assert missing.parsed.detail.startswith("No ")

    # 429, with the seconds to wait.
    settings.THROTTLE_READ = "1/min"
    assert models_list.sync_detailed(client=client).status_code == 200
    throttled = models_list.sync_detailed(client=client)
    assert throttled.status_code == 429
    assert isinstance(throttled.parsed, models.ErrorDetail)
    assert "throttled" in throttled.parsed.detail
    assert int(throttled.headers["Retry-After"]) > 0


def test_the_token_form_works_through_the_generated_client_too(generated, live_server, token, transactional_db):
    models_list = module("api.models.models_list")
    with generated.AuthenticatedClient(base_url=live_server.url, token=token, prefix="Token") as token_client:
        assert models_list.sync_detailed(client=token_client).status_code == 200
