"""Bad input: a clear 4xx naming the field, no row stored, no task sent."""

from __future__ import annotations

import json

import pytest

from predictions.middleware import MAX_URL_BYTES
from predictions.models import Batch, Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def nothing_changes(published):
    """Asserts after the test that no row was stored and no task was sent."""
    before = (Prediction.objects.count(), Batch.objects.count())
    yield
    assert (Prediction.objects.count(), Batch.objects.count()) == before
    assert published == []


PREDICTION_CASES = {
    "empty text": ({"text": ""}, "text", "blank"),
    "whitespace-only text": ({"text": " \t\n "}, "text", "non-whitespace"),
    "text with NUL": ({"text": "a\x00b"}, "text", "Null characters are not allowed"),
    "number as text": ({"text": 42}, "text", "Must be a string, not int"),
    "list as text": ({"text": ["a"]}, "text", "Must be a string, not list"),
    "null text": ({"text": None}, "text", "may not be null"),
    "missing text": ({"model": "sentiment"}, "text", "required"),
    "unknown model": (
        {"text": "hi", "model": "nope"},
        "model",
        "unknown model 'nope'; this deployment serves: sentiment, emotions",
    ),
    "non-string model": ({"text": "hi", "model": 3}, "model", "Must be a string naming a model"),
    "text too long": ({"text": "x" * 10_001}, "text", "at most 10000 characters (got 10001)"),
}


@pytest.mark.parametrize(("body", "field", "message"), PREDICTION_CASES.values(), ids=PREDICTION_CASES.keys())
def test_bad_prediction_input_is_400_naming_the_field(api, nothing_changes, body, field, message):
    response = api.post("/api/v1/predictions/", body)
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert any(message in m for m in errors[field]), errors


@pytest.mark.parametrize("wait", ["-1", "31", "soon", "nan"])
def test_wait_outside_0_to_30_is_400(api, nothing_changes, wait):
    response = api.post(f"/api/v1/predictions/?wait={wait}", {"text": "fine"})
    assert response.status_code == 400
    assert list(response.json()) == ["wait"]


def test_malformed_json_is_400_naming_the_body(api, nothing_changes):
    response = api.post("/api/v1/predictions/", '{"text": "unterminated', content_type="application/json", format=None)
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["body"][0]


def test_a_json_array_instead_of_an_object_is_400(api, nothing_changes):
    response = api.post("/api/v1/predictions/", ["text"])
    assert response.status_code == 400
    assert "Expected a dictionary" in response.json()["non_field_errors"][0]


BATCH_CASES = {
    "empty texts": ({"texts": []}, "texts", "may not be empty"),
    "texts not a list": ({"texts": "one"}, "texts", "Expected a list"),
    "missing texts": ({}, "texts", "required"),
    "unknown model": ({"texts": ["a"], "model": "nope"}, "model", "unknown model"),
}


@pytest.mark.parametrize(("body", "field", "message"), BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_bad_batch_input_is_400_naming_the_field(api, nothing_changes, body, field, message):
    response = api.post("/api/v1/batches/", body)
    assert response.status_code == 400
    assert any(message in m for m in response.json()[field]), response.json()


def test_one_bad_text_in_a_batch_rejects_the_batch_and_names_its_index(api, nothing_changes):
    response = api.post("/api/v1/batches/", {"texts": ["fine", "", "also fine", 7]})
    assert response.status_code == 400
    assert response.json() == {"texts": {"1": ["This field may not be blank."], "3": ["Must be a string, not int."]}}


def test_a_batch_over_max_batch_size_is_400(api, nothing_changes, settings):
    settings.API_BATCH_MAX_TEXTS = 5
    response = api.post("/api/v1/batches/", {"texts": ["t"] * 6})
    assert response.status_code == 400
    assert response.json() == {"texts": ["At most 5 texts per batch (got 6); see API_BATCH_MAX_TEXTS."]}


def test_the_default_batch_limit_is_1000(api, nothing_changes):
    response = api.post("/api/v1/batches/", {"texts": ["t"] * 1001})
    assert response.status_code == 400
    assert "At most 1000 texts" in response.json()["texts"][0]


def test_max_text_chars_is_read_from_settings(api, nothing_changes, settings):
    settings.MAX_TEXT_CHARS = 10
    response = api.post("/api/v1/predictions/", {"text": "x" * 11})
    assert response.json() == {"text": ["Must be at most 10 characters (got 11); see MAX_TEXT_CHARS."]}


def test_a_body_over_max_request_bytes_is_413_before_it_is_read(api, nothing_changes, settings):
    settings.MAX_REQUEST_BYTES = 2048
    body = json.dumps({"text": "x" * 5000})
    response = api.client.post("/api/v1/predictions/", body, content_type="application/json")
    assert response.status_code == 413
    assert "over the limit of 2048 bytes" in response.json()["detail"]


def test_a_url_over_max_url_bytes_is_414_and_a_long_one_under_it_is_served(api, nothing_changes):
    query = "&".join(["model=sentiment"] * ((MAX_URL_BYTES - 40) // 16))  # just under the limit
    assert api.get(f"/api/v1/predictions/?{query}").status_code == 200
    response = api.get(f"/api/v1/predictions/?{query}&{query}")
    assert response.status_code == 414
    assert response.json()["detail"].endswith(f"is over the limit of {MAX_URL_BYTES} bytes.")
    # The path counts as sent: 1,400 "é" are 8,400 bytes percent-encoded (UTF-8); 600 are 3,600.
    response = api.get("/api/v1/predictions/" + "%C3%A9" * 1400 + "/")
    assert response.status_code == 414
    assert "URL of 8421 bytes" in response.json()["detail"]
    assert api.get("/api/v1/predictions/" + "%C3%A9" * 600 + "/").status_code == 404


def test_another_users_prediction_is_404(api, stranger_api):
    body = api.post("/api/v1/predictions/", {"text": "mine"}).json()
    response = stranger_api.get(f"/api/v1/predictions/{body['id']}/")
    assert response.status_code == 404
    assert stranger_api.get("/api/v1/predictions/999999/").status_code == 404


def test_a_huge_batch_filter_is_400_not_a_500(api):
    response = api.get("/api/v1/predictions/?batch=100000000000000000000")
    assert response.status_code == 400
    assert "batch" in response.json()


@pytest.mark.parametrize(
    ("accept", "query", "answer"),
    [
        ("", {}, (200, "application/json")),
        ("*/*", {}, (200, "application/json")),
        ("application/json", {}, (200, "application/json")),
        ("text/html", {}, (200, "text/html; charset=utf-8")),
        ("text/html;q=0.5, application/json", {}, (200, "application/json")),
        ("*/*", {"format": "api"}, (200, "text/html; charset=utf-8")),
        ("*/*", {"format": "json"}, (200, "application/json")),
        ("image/png", {}, (406, "application/json")),
        ("application/json", {"format": "xml"}, (404, "application/json")),
    ],
)
def test_the_api_negotiates_its_renderer_as_drf_does(api, accept, query, answer):
    """JSON by default, the browsable API when asked for HTML, 406 for a media type it cannot render."""
    extra = {"HTTP_ACCEPT": accept} if accept else {}
    response = api.get("/api/v1/models/", data=query, **extra)
    assert (response.status_code, response["Content-Type"]) == answer


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"text": "good film"}, {"text": "good film", "model": "sentiment"}),
        ({"text": " joy\u00e9 ", "model": "emotions", "x": 1}, {"text": " joy\u00e9 ", "model": "emotions"}),
        ({"text": " "}, "text"),
        ({"text": "a\x00"}, "text"),
        ({"text": 1}, "text"),
        ({"text": "x" * 10_001}, "text"),
        ({"text": "x", "model": " sentiment"}, {"text": "x", "model": "sentiment"}),  # a name is trimmed
        ({"text": "x", "model": None}, "model"),
        ({"text": "x", "model": "nope"}, "model"),
        ({"model": "sentiment"}, "text"),
    ],
)
def test_a_posted_body_is_taken_as_the_serializer_reads_it_or_refused_naming_the_field(api, body, accepted):
    response = api.post("/api/v1/predictions/", body)
    if isinstance(accepted, dict):
        assert response.status_code in (200, 202), response.json()
        row = Prediction.objects.get(pk=response.json()["id"])
        assert {"text": row.text, "model": row.model_name} == accepted
    else:
        assert response.status_code == 400, response.json()
        assert accepted in response.json(), response.json()
        assert Prediction.objects.count() == 0
