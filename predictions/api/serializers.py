"""Input serializers validate; output serializers shape responses. No business logic here."""

from __future__ import annotations

import re

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mlsite.fastpaths import fast_path
from predictions.api.schema import FILTER_SCHEMA, MODEL_SCHEMA, TEXT_SCHEMA, TEXTS_SCHEMA
from predictions.models import Batch, Prediction, PredictionStatus
from predictions.registry import UnknownModel, model_exists, model_names


@extend_schema_field(TEXT_SCHEMA)
class TextField(serializers.CharField):
    """A non-empty string: numbers, lists and objects are refused rather than coerced; NUL is refused."""

    default_error_messages = {  # noqa: RUF012 (DRF's idiom: read per class, never changed)
        "not_a_string": "Must be a string, not {kind}.",
        "blank_text": "Must contain at least one non-whitespace character.",
        "too_long": "Must be at most {limit} characters (got {length}); see MAX_TEXT_CHARS.",
    }

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string", kind=type(data).__name__ if data is not None else "null")
        value = super().to_internal_value(data)
        if not value.strip():
            self.fail("blank_text")
        if len(value) > settings.MAX_TEXT_CHARS:
            self.fail("too_long", limit=settings.MAX_TEXT_CHARS, length=len(value))
        return value


@extend_schema_field(TEXTS_SCHEMA)
class TextListField(serializers.ListField):
    """A list of 1 to API_BATCH_MAX_TEXTS texts; the length is checked before any text is, so a 2 MiB
    body of 500,000 empty strings is one short error, not 500,000 of them."""

    default_error_messages = {  # noqa: RUF012 (DRF's idiom: read per class, never changed)
        "too_many": "At most {limit} texts per batch (got {length}); see API_BATCH_MAX_TEXTS.",
    }

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("child", TextField())
        kwargs.setdefault("allow_empty", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, list) and len(data) > settings.API_BATCH_MAX_TEXTS:
            self.fail("too_many", limit=settings.API_BATCH_MAX_TEXTS, length=len(data))
        return super().to_internal_value(data)


@extend_schema_field(MODEL_SCHEMA)
class ModelNameField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(f"Must be a string naming a model: {', '.join(model_names())}.")
        value = super().to_internal_value(data)
        if not model_exists(value):
            raise serializers.ValidationError(str(UnknownModel(value)))
        return value


def _default_model() -> str:
    return settings.DEFAULT_MODEL


MODEL_HELP = (
    "A served model's name, as GET /api/v1/models/ lists them; default DEFAULT_MODEL. "
    "The server checks it: an unknown name is a 400 naming `model`."
)


class PredictionInputSerializer(serializers.Serializer):
    text = TextField(help_text="The text to classify (at most MAX_TEXT_CHARS characters, not blank, no NUL).")
    model = ModelNameField(required=False, default=_default_model, help_text=MODEL_HELP)


_SURROGATES = re.compile("[\ud800-\udfff]")


def prediction_input_fast(data: object) -> dict | None:
    """PredictionInputSerializer's validated data for a plain, valid body, without building the
    serializer, or None for anything else: the serializer then validates it and names what is wrong.

    A serializer deep-copies its declared fields and their validators for every instance: about
    0.07–0.1 ms of a cache-hit POST (docs/performance.md, Fast input parser). This accepts a subset of
    what the serializer accepts (a JSON object whose text is a non-blank string within MAX_TEXT_CHARS,
    without NUL or lone surrogates, and whose model, if any, is a registry name as it stands) and
    returns the same data; tests/test_properties.py pins both on generated bodies.
    """
    if type(data) is not dict:
        return None
    text = data.get("text")
    if (
        type(text) is not str
        or not text.strip()
        or len(text) > settings.MAX_TEXT_CHARS
        or "\x00" in text
        or (not text.isascii() and _SURROGATES.search(text))
    ):
        return None
    if "model" not in data:
        return {"text": text, "model": settings.DEFAULT_MODEL}
    model = data["model"]
    if type(model) is not str or model != model.strip() or not model_exists(model):
        return None
    return {"text": text, "model": model}


class BatchInputSerializer(serializers.Serializer):
    texts = TextListField(help_text="1 to API_BATCH_MAX_TEXTS texts.")
    model = ModelNameField(required=False, default=_default_model, help_text=MODEL_HELP)


class QuerySerializer(serializers.Serializer):
    """Query parameters: `?wait=` or `?status=` is refused like any other bad value; DRF would take
    an empty value of an optional field as absent and silently ignore it."""

    def to_internal_value(self, data):
        empty = [name for name in self.fields if name in data and data.get(name) == ""]
        if empty:
            raise serializers.ValidationError(
                {name: ["May not be empty; leave the parameter out instead."] for name in empty}  # type: ignore[misc]  # drf-stubs: a BindingDict iterates its names
            )
        return super().to_internal_value(data)


IDEMPOTENCY_KEY_MAX_LENGTH = 255


def idempotency_key_validate(raw: str) -> str:
    """The Idempotency-Key header: 1 to 255 printable ASCII characters; else 400 naming the header."""
    if not raw or len(raw) > IDEMPOTENCY_KEY_MAX_LENGTH or not all(" " <= char <= "~" for char in raw):
        raise serializers.ValidationError(
            {
                "Idempotency-Key": [
                    f"Must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters "
                    f"(got {len(raw)} characters{'' if raw.isascii() else ', not all ASCII'})."
                ]
            }
        )
    return raw


class WaitQuerySerializer(QuerySerializer):
    wait = serializers.FloatField(
        required=False,
        default=0,
        min_value=0,
        max_value=settings.MAX_WAIT_SECONDS,
        help_text="Seconds (0–30) to wait for the result before answering 202.",
    )


@extend_schema_field(FILTER_SCHEMA)
class FilterField(serializers.CharField):
    """A text filter: CharField strips whitespace and refuses NUL, so the schema says the same."""


class PredictionListQuerySerializer(QuerySerializer):
    status = serializers.ChoiceField(choices=PredictionStatus.choices, required=False)
    model = FilterField(required=False)
    label = FilterField(required=False)  # type: ignore[assignment]  # a field: DRF's metaclass takes it off the class
    batch = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)


class ModelRefSerializer(serializers.Serializer):
    name = serializers.CharField(source="model_name")
    version = serializers.CharField(source="model_version")


class PredictionSerializer(serializers.ModelSerializer):
    model = ModelRefSerializer(source="*")
    scores = serializers.DictField(child=serializers.FloatField(), allow_null=True)
    labels = serializers.ListField(child=serializers.CharField(), allow_null=True)
    url = serializers.HyperlinkedIdentityField(view_name="prediction-detail")

    class Meta:
        model = Prediction
        fields = (
            "id",
            "url",
            "text",
            "status",
            "label",
            "score",
            "scores",
            "labels",
            "model",
            "cached",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "batch",
        )
        read_only_fields = fields

    def to_representation(self, prediction: Prediction) -> dict:
        """The same JSON the declared fields produce, built directly: DRF's field machinery cost
        about 4.5 ms of the 10 ms a cache-hit POST took (pyinstrument). A test pins the equality."""
        if not fast_path("hand_built_json"):
            return super().to_representation(prediction)
        request = self.context.get("request")
        path = reverse("prediction-detail", kwargs={"pk": prediction.pk})
        return {
            "id": prediction.pk,
            "url": request.build_absolute_uri(path) if request is not None else path,
            "text": prediction.text,
            "status": prediction.status,
            "label": prediction.label,
            "score": prediction.score,
            "scores": prediction.scores,
            "labels": prediction.labels,
            "model": {"name": prediction.model_name, "version": prediction.model_version},
            "cached": prediction.cached,
            "created_at": _iso(prediction.created_at),
            "started_at": _iso(prediction.started_at),
            "finished_at": _iso(prediction.finished_at),
            "error": prediction.error,
            "batch": prediction.batch_id,
        }


def _iso(moment) -> str | None:
    """DRF's default DateTimeField output: ISO 8601 in the current time zone, 'Z' for UTC."""
    if moment is None:
        return None
    text = timezone.localtime(moment).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class BatchCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name")
    url = serializers.HyperlinkedIdentityField(view_name="batch-detail")
    counts = serializers.SerializerMethodField()
    finished = serializers.SerializerMethodField()
    results = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ("id", "url", "model", "size", "created_at", "counts", "finished", "results")
        read_only_fields = fields

    def _rows(self, batch: Batch) -> list[Prediction]:
        if not hasattr(batch, "_rows_cache"):
            batch._rows_cache = list(batch.predictions.order_by("position"))  # type: ignore[attr-defined]  # a memo on the instance
        return batch._rows_cache  # type: ignore[attr-defined]  # as above

    @extend_schema_field(BatchCountsSerializer)
    def get_counts(self, batch: Batch) -> dict[str, int]:
        counts = {status: 0 for status in PredictionStatus.values}
        for row in self._rows(batch):
            counts[row.status] += 1
        return counts

    def get_finished(self, batch: Batch) -> bool:
        return all(row.is_finished for row in self._rows(batch))

    @extend_schema_field(PredictionSerializer(many=True))
    def get_results(self, batch: Batch) -> list[dict]:
        return PredictionSerializer(self._rows(batch), many=True, context=self.context).data  # type: ignore[return-value]  # many=True: a list; drf-stubs says ReturnDict


class ModelDescriptionSerializer(serializers.Serializer):
    name = serializers.CharField()
    available = serializers.BooleanField(help_text="False when the model's files cannot be read (see error).")
    error = serializers.CharField(allow_blank=True)
    version = serializers.CharField(allow_blank=True)
    kind = serializers.ChoiceField(choices=["single_label", "multi_label"])
    labels = serializers.ListField(child=serializers.CharField())
    default = serializers.BooleanField()


class ErrorDetailSerializer(serializers.Serializer):
    """The body of a 401, 403, 404, 406, 413, 414, 415, 429 and 503: {"detail": "…"}."""

    detail = serializers.CharField()


class FieldErrorsSerializer(serializers.Serializer):
    """The body of a 400 and of the 422 for a reused Idempotency-Key: {"field": ["message"]}.
    No fields: its schema is predictions.api.schema.FieldErrorsExtension's."""
