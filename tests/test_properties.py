"""Hostile input, generated: whatever arrives, the API stores it exactly or answers 4xx naming the field.

Every request goes through the real stack of parsers: DRF's test client sends bytes, the project's
JSON parser reads them, the serializers validate, PostgreSQL stores. A 500 would raise here (the test
client re-raises server errors). Examples are bounded so the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import urlencode

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictions.api.schema import TEXT_PATTERN
from predictions.api.serializers import (
    BatchInputSerializer,
    PredictionInputSerializer,
    PredictionListQuerySerializer,
    prediction_input_fast,
)
from predictions.models import Batch, Prediction

pytestmark = pytest.mark.django_db

API = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FAST = settings(API, max_examples=300)  # serializers alone, no HTTP and no database

SURROGATES = st.characters(categories=["Cs"])
CONTROLS = st.sampled_from([chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]] + ["\u2028", "\ufeff"])
HOSTILE_CHARACTERS = st.one_of(st.characters(), SURROGATES, CONTROLS)
HOSTILE_TEXT = st.lists(HOSTILE_CHARACTERS, max_size=30).map("".join)  # st.text() would drop surrogates
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
NOT_A_STRING = JSON_VALUES.filter(lambda value: not isinstance(value, str))


def text_is_acceptable(text: str) -> bool:
    """The API's rule for a text: not blank, no NUL, valid Unicode (no lone surrogate), not too long."""
    return bool(text.strip()) and "\x00" not in text and not re.search("[\ud800-\udfff]", text) and len(text) <= 10_000


def as_parsed(text: str) -> str:
    """The string the server reads: JSON joins an escaped high + low surrogate into one character."""
    return json.loads(json.dumps(text))


def post_json(api, url: str, body):
    """POST `body` as JSON text: lone surrogates travel as \\ud800 escapes, exactly as a client may send them."""
    return api.post(url, json.dumps(body), content_type="application/json", format=None)


def post_raw(api, url: str, raw: str | bytes):
    return api.post(url, raw, content_type="application/json", format=None)


def rows() -> tuple[int, int]:
    return Prediction.objects.count(), Batch.objects.count()


# --- Texts: arbitrary Unicode, surrogates, control characters, NUL ---------------------------------


@API
@given(text=HOSTILE_TEXT)
def test_any_text_is_stored_exactly_or_refused_naming_text(api, text):
    before = rows()
    response = post_json(api, "/api/v1/predictions/", {"text": text})
    if text_is_acceptable(as_parsed(text)):
        assert response.status_code in (200, 202), response.json()
        assert Prediction.objects.get(pk=response.json()["id"]).text == as_parsed(text)
        assert response.json()["text"] == as_parsed(text)
    else:
        assert response.status_code == 400, response.content
        assert list(response.json()) == ["text"]
        assert rows() == before


@API
@given(texts=st.lists(HOSTILE_TEXT, min_size=1, max_size=5))
def test_a_batch_is_stored_in_order_or_refused_naming_each_bad_index(api, texts):
    before = rows()
    response = post_json(api, "/api/v1/batches/", {"texts": texts})
    bad = [str(i) for i, text in enumerate(texts) if not text_is_acceptable(as_parsed(text))]
    if not bad:
        # 200 exactly when every text was answered (the cache: an earlier example may have sent them)
        assert response.status_code == (200 if response.json()["finished"] else 202), response.json()
        stored = Prediction.objects.filter(batch_id=response.json()["id"]).order_by("position")
        assert [p.text for p in stored] == [as_parsed(text) for text in texts]
    else:
        assert response.status_code == 400
        assert sorted(response.json()["texts"]) == sorted(bad)
        assert rows() == before


@pytest.mark.parametrize(
    "escaped",
    [r'"\ud800"', r'"ok \udfff"', r'"\udc00\ud800"', r'"a\ud83d"', r'"\ude00 then text"'],
    ids=["high", "low-after-text", "reversed-pair", "unpaired-high-at-end", "unpaired-low-first"],
)
def test_a_lone_surrogate_escape_is_400_naming_text_and_nothing_is_stored(api, escaped):
    before = rows()
    response = post_raw(api, "/api/v1/predictions/", '{"text": ' + escaped + "}")
    assert response.status_code == 400
    assert response.json()["text"][0].startswith("Surrogate characters are not allowed: U+D")
    assert rows() == before


def test_a_surrogate_pair_escape_is_one_character_and_is_stored(api):
    response = post_raw(api, "/api/v1/predictions/", r'{"text": "smile \ud83d\ude00"}')
    assert response.status_code in (200, 202)
    assert Prediction.objects.get(pk=response.json()["id"]).text == "smile \U0001f600"


def test_a_lone_surrogate_in_a_batch_names_its_index(api):
    response = post_raw(api, "/api/v1/batches/", r'{"texts": ["fine", "bad \ud800", "fine too"]}')
    assert response.status_code == 400
    assert list(response.json()["texts"]) == ["1"]
    assert "U+D800" in response.json()["texts"]["1"][0]


@pytest.mark.parametrize("text", ["\x00", "a\x00", "\x00b", "ok\x00ok" * 100])
def test_nul_is_400_naming_text_not_a_database_error(api, text):
    before = rows()
    response = post_json(api, "/api/v1/predictions/", {"text": text})
    assert response.status_code == 400
    assert list(response.json()) == ["text"]
    assert "Null characters are not allowed" in response.json()["text"][0]
    batch = post_json(api, "/api/v1/batches/", {"texts": ["fine", text]})
    assert batch.status_code == 400
    assert list(batch.json()["texts"]) == ["1"]
    assert rows() == before


def test_control_characters_other_than_nul_are_stored_exactly(api):
    text = "".join(chr(c) for c in range(1, 32)) + "\x7f\x85\u200b\ufeff visible"
    response = post_json(api, "/api/v1/predictions/", {"text": text})
    assert response.status_code in (200, 202)
    assert Prediction.objects.get(pk=response.json()["id"]).text == text


def test_the_documented_text_pattern_accepts_exactly_what_the_api_accepts():
    """The schema's pattern (for schemathesis and clients) spells Python's whitespace and NUL rule."""
    pattern = re.compile(TEXT_PATTERN)
    for code in [*range(0, 0x3001), 0xFEFF, 0x1F600]:
        char = chr(code)
        for text in (char, f"a{char}", f"{char}{char}"):
            expected = bool(text.strip()) and "\x00" not in text
            assert bool(pattern.search(text)) == expected, (hex(code), text)


# --- Wrong types for every field ------------------------------------------------------------------


@API
@given(value=NOT_A_STRING)
def test_a_text_that_is_not_a_string_is_400_naming_text(api, value):
    response = post_json(api, "/api/v1/predictions/", {"text": value})
    assert response.status_code == 400
    assert list(response.json()) == ["text"]


@API
@given(value=NOT_A_STRING)
def test_a_model_that_is_not_a_string_is_400_naming_model(api, value):
    response = post_json(api, "/api/v1/predictions/", {"text": "fine", "model": value})
    assert response.status_code == 400
    assert list(response.json()) == ["model"]


@API
@given(value=JSON_VALUES.filter(lambda v: not (isinstance(v, list) and v and all(isinstance(t, str) for t in v))))
def test_texts_that_are_not_a_list_of_strings_are_400_naming_texts(api, value):
    before = rows()
    response = post_json(api, "/api/v1/batches/", {"texts": value})
    assert response.status_code == 400
    assert list(response.json()) == ["texts"]
    assert rows() == before


@API
@given(body=JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_a_body_that_is_not_an_object_is_400(api, body):
    for url in ("/api/v1/predictions/", "/api/v1/batches/"):
        response = post_json(api, url, body)
        assert response.status_code == 400
        assert list(response.json()) == ["non_field_errors"]


@FAST
@given(data=st.dictionaries(st.sampled_from(["text", "texts", "model", "other"]), JSON_VALUES, max_size=4))
def test_the_input_serializers_never_raise_on_any_json(data):
    """Straight to the serializer classes: is_valid() answers True or names fields, never raises."""
    for serializer_class in (PredictionInputSerializer, BatchInputSerializer):
        serializer = serializer_class(data=data)
        if not serializer.is_valid():
            assert set(serializer.errors) <= set(data) | {"text", "texts"}


MODEL_VALUES = st.sampled_from(["sentiment", "emotions", " sentiment", "sentiment\n", "nope", "", "\x00"])


@FAST
@given(
    data=st.one_of(
        st.dictionaries(
            st.sampled_from(["text", "model", "other"]), st.one_of(JSON_VALUES, HOSTILE_TEXT, MODEL_VALUES), max_size=3
        ),
        st.builds(lambda text, model: {"text": text, "model": model}, HOSTILE_TEXT, MODEL_VALUES),
        JSON_VALUES,
    )
)
def test_the_fast_input_path_returns_what_the_serializer_returns_or_steps_aside(data):
    """prediction_input_fast spares a valid body the serializer: it must never accept what the
    serializer refuses, nor return other data than the serializer would."""
    fast = prediction_input_fast(data)
    serializer = PredictionInputSerializer(data=data)
    if fast is not None:
        assert serializer.is_valid(), (data, serializer.errors)
        assert dict(serializer.validated_data) == fast


def test_the_fast_input_path_takes_plain_valid_bodies_and_leaves_the_rest_to_the_serializer():
    assert prediction_input_fast({"text": "good film"}) == {"text": "good film", "model": "sentiment"}
    assert prediction_input_fast({"text": " joy\u00e9 ", "model": "emotions", "x": 1}) == {
        "text": " joy\u00e9 ",
        "model": "emotions",
    }
    for body in [
        {"text": " "},
        {"text": "a\x00"},
        {"text": "a\ud800"},
        {"text": 1},
        {"text": "x" * 10_001},
        {"text": "x", "model": " sentiment"},
        {"text": "x", "model": None},
        {"text": "x", "model": "nope"},
        {"model": "sentiment"},
        ["good film"],
    ]:
        assert prediction_input_fast(body) is None, body


# --- Huge numbers, NaN and Infinity ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"text": 1e308}', "text"),
        ('{"text": 1e999}', "text"),  # Python reads it as inf
        ('{"text": -1e999}', "text"),
        ('{"text": NaN}', "body"),  # not JSON: the strict parser refuses the constant
        ('{"text": Infinity}', "body"),
        ('{"text": "fine", "model": -Infinity}', "body"),
        ('{"text": ' + "9" * 5000 + "}", "body"),  # over Python's int-from-string limit
        ('{"text": ' + "9" * 4000 + "}", "text"),
        ('{"texts": [1e308, "fine"]}', "texts"),
    ],
)
def test_huge_numbers_and_non_finite_constants_are_400_naming_the_field(api, raw, field):
    url = "/api/v1/batches/" if "texts" in raw else "/api/v1/predictions/"
    before = rows()
    response = post_raw(api, url, raw)
    assert response.status_code == 400, response.json()
    assert list(response.json()) == [field], response.json()
    assert rows() == before


def wait_is_acceptable(raw: str) -> bool:
    try:
        value = float(raw)
    except ValueError:
        return False
    return math.isfinite(value) and 0 <= value <= 30


@API
@given(
    wait=st.one_of(
        st.text(HOSTILE_CHARACTERS.filter(lambda c: not "\ud800" <= c <= "\udfff"), max_size=12),
        st.sampled_from(["1e308", "-1e308", "1e-400", "nan", "NaN", "inf", "-Infinity", "", "30.0000001", "0", "30"]),
        st.floats().map(repr),
        st.integers().map(str),
    )
)
def test_wait_is_a_number_from_0_to_30_or_400_naming_wait(api, wait):
    """The body names an unknown model, so an accepted wait answers 400 naming the model and never blocks."""
    response = post_json(api, "/api/v1/predictions/?" + urlencode({"wait": wait}), {"text": "x", "model": "nope"})
    assert response.status_code == 400
    assert list(response.json()) == (["model"] if wait_is_acceptable(wait) else ["wait"]), (wait, response.json())


# --- Deep JSON and huge lists ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_json_nested_deeper_than_python_can_parse_is_400_naming_the_body(api, depth):
    before = rows()
    for raw in (
        "[" * depth + "]" * depth,
        '{"text": ' + "[" * depth + "]" * depth + "}",
        '{"a":' * depth + "1" + "}" * depth,
    ):
        for url in ("/api/v1/predictions/", "/api/v1/batches/"):
            response = post_raw(api, url, raw)
            assert response.status_code == 400, response.content
            assert response.json() == {"body": ["JSON parse error - nested too deeply"]}
    assert rows() == before


def test_json_nested_as_deep_as_python_can_parse_is_400_naming_the_field(api):
    response = post_raw(api, "/api/v1/predictions/", '{"text": ' + "[" * 500 + "]" * 500 + "}")
    assert response.status_code == 400
    assert response.json() == {"text": ["Must be a string, not list."]}


def test_a_list_of_half_a_million_texts_is_one_short_error_not_one_per_item(api):
    raw = json.dumps({"texts": [""] * 500_000})  # 2 MB, just under MAX_REQUEST_BYTES
    response = post_raw(api, "/api/v1/batches/", raw)
    assert response.status_code == 400
    assert response.json() == {"texts": ["At most 1000 texts per batch (got 500000); see API_BATCH_MAX_TEXTS."]}


def test_a_list_over_max_request_bytes_is_413(api):
    response = post_raw(api, "/api/v1/batches/", json.dumps({"texts": ["a"] * 1_000_000}))
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.json()["detail"]


def test_a_body_that_is_not_json_is_415_naming_the_media_type(api):
    response = api.post(
        "/api/v1/predictions/", "text=hello", content_type="application/x-www-form-urlencoded", format=None
    )
    assert response.status_code == 415
    assert "application/x-www-form-urlencoded" in response.json()["detail"]


def test_a_body_that_is_not_utf8_is_400_naming_the_body(api):
    response = post_raw(api, "/api/v1/predictions/", b'{"text": "\xff\xfe bad bytes"}')
    assert response.status_code == 400
    assert list(response.json()) == ["body"]


# --- The list endpoint's query parameters ----------------------------------------------------------

QUERY_VALUES = st.one_of(
    st.text(HOSTILE_CHARACTERS.filter(lambda c: not "\ud800" <= c <= "\udfff"), max_size=20),
    st.integers().map(str),
    st.datetimes().map(lambda moment: moment.isoformat()),
    st.builds(
        lambda moment, minutes: (
            f"{moment.isoformat()}{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        ),
        st.datetimes(),
        st.integers(-1439, 1439),
    ),
    st.sampled_from(["queued", "succeeded", "sentiment", "positive", "1", str(10**100), "-1", "1.5", "nan"]),
)
FILTERS = ["status", "model", "label", "batch", "created_after", "created_before"]


@API
@given(query=st.dictionaries(st.sampled_from(FILTERS), QUERY_VALUES, max_size=4))
def test_list_filters_answer_200_or_400_naming_only_bad_filters(api, query):
    response = api.get("/api/v1/predictions/?" + urlencode(query))
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert set(response.json()) <= set(query), (query, response.json())
    else:
        assert PredictionListQuerySerializer(data=query).is_valid()


@pytest.mark.parametrize(
    "query",
    [
        "created_after=0001-01-01T00:00:00%2B14:00",  # before year 1 in UTC: overflows
        "created_before=9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
        "created_after=2026-13-01",
        "created_after=2026-01-01T00:00:00%2B99:00",
        "label=%00",
        "model=a%00b",
        "batch=-1",
        "batch=1.5",
        f"batch={10**100}",
        "status=",
        "status=QUEUED",
    ],
)
def test_bad_list_filters_are_400_naming_the_filter(api, query):
    response = api.get(f"/api/v1/predictions/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [query.split("=")[0]], response.json()


def test_percent_escapes_that_are_not_utf8_are_read_as_replacement_characters(api):
    response = api.get("/api/v1/predictions/?label=%ED%A0%80&model=%FF%FE")  # a UTF-8-encoded surrogate; junk
    assert response.status_code == 200
    assert response.json()["count"] == 0


def test_the_extreme_representable_dates_are_valid_filters(api):
    response = api.get("/api/v1/predictions/?created_after=0001-01-01T00:00:00Z&created_before=9999-12-31T23:59:59Z")
    assert response.status_code == 200


def page_is_acceptable(raw: str) -> bool:
    """One page exists (at most one row is stored when this runs)."""
    if raw == "last":
        return True
    try:
        return int(raw) == 1
    except ValueError:
        return False


@API
@given(
    page=st.one_of(
        st.integers().map(str),
        st.sampled_from([str(10**100), "0", "-1", "1.0", "last", "", "1e3", "１"]),  # noqa: RUF001 (a fullwidth 1: int() reads it)
        st.text(HOSTILE_CHARACTERS.filter(lambda c: not "\ud800" <= c <= "\udfff"), max_size=8),
    )
)
def test_page_is_200_or_400_naming_page(api, page):
    response = api.get("/api/v1/predictions/?" + urlencode({"page": page}))
    if page_is_acceptable(page):
        assert response.status_code == 200, (page, response.json())
    else:
        assert response.status_code == 400, (page, response.json())
        assert list(response.json()) == ["page"], (page, response.json())


def test_a_page_past_the_last_is_400_naming_page(api):
    post_json(api, "/api/v1/predictions/", {"text": "one row"})
    response = api.get(f"/api/v1/predictions/?page={10**100}")
    assert response.status_code == 400
    assert response.json() == {"page": ["Invalid page: That page contains no results."]}


def test_too_many_query_parameters_is_400_not_an_html_page(api):
    response = api.get("/api/v1/predictions/?" + "&".join(["x"] * 1100))  # 2,199 bytes: under MAX_URL_BYTES
    assert response.status_code == 400
    assert list(response.json()) == ["request"]


@pytest.mark.parametrize("path", ["/api/v1/predictions/abc/", "/api/v1/batches/-1/", "/api/v1/nothing-here"])
def test_an_api_url_that_matches_no_route_is_a_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_an_id_beyond_bigint_is_404_not_a_database_error(api):
    for path in (f"/api/v1/predictions/{10**30}/", f"/api/v1/batches/{2**63}/"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["detail"].startswith("No ")


def test_the_schema_limits_follow_the_settings(api, settings):
    """What schemathesis (and a client) reads: the MAX_* limits and the default model of this deployment."""
    settings.MAX_TEXT_CHARS = 77
    settings.API_BATCH_MAX_TEXTS = 5
    settings.DEFAULT_MODEL = "emotions"
    schemas = yaml.safe_load(api.get("/api/schema/").content)["components"]["schemas"]
    text = schemas["PredictionInputRequest"]["properties"]["text"]
    assert text["maxLength"] == 77
    assert text["pattern"] == TEXT_PATTERN
    assert "x-mlsite" not in text
    texts = schemas["BatchInputRequest"]["properties"]["texts"]
    assert texts["maxItems"] == 5
    assert texts["items"]["maxLength"] == 77
    model = schemas["BatchInputRequest"]["properties"]["model"]
    assert model["example"] == "emotions"
    assert "enum" not in model  # the server validates the name: a client generated earlier still sends a new one
