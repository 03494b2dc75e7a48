"""One small view per operation: validate → service → serialize."""

from __future__ import annotations

import logging

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mlsite.fastpaths import fast_path
from predictions.api.authentication import signed_in_user
from predictions.api.idempotency import (
    IDEMPOTENCY_PARAMETER,
    REPLAYED_HEADER,
    IdempotentCreateMixin,
    idempotency_key_from,
)
from predictions.api.serializers import (
    BatchInputSerializer,
    BatchSerializer,
    ErrorDetailSerializer,
    FieldErrorsSerializer,
    ModelDescriptionSerializer,
    PredictionInputSerializer,
    PredictionListQuerySerializer,
    PredictionSerializer,
    WaitQuerySerializer,
    prediction_input_fast,
)
from predictions.memos import memo
from predictions.middleware import MAX_URL_BYTES
from predictions.models import Batch, IdempotencyEndpoint, Prediction
from predictions.registry import model_info_get, model_names
from predictions.selectors import batches_visible_to, predictions_filter, predictions_visible_to
from predictions.services import submission, waiting
from textclf import ModelLoadError

logger = logging.getLogger(__name__)

Detail, FieldErrors = ErrorDetailSerializer, FieldErrorsSerializer
AUTH_ERRORS = {
    401: OpenApiResponse(
        Detail, description="No or invalid credentials: send Authorization: Bearer <token> (or Token <token>)."
    )
}
NOT_FOUND = {404: OpenApiResponse(Detail, description="No such object among those visible to you.")}
WRITE_ERRORS = {
    400: OpenApiResponse(
        FieldErrors,
        description="Invalid input or Idempotency-Key header (an unknown `model` too); "
        "the body maps each bad field to its messages.",
    ),
    403: OpenApiResponse(Detail, description="Signed in by session (the browsable API) without a CSRF token."),
    413: OpenApiResponse(Detail, description="Request body larger than MAX_REQUEST_BYTES (chunked bodies included)."),
    415: OpenApiResponse(Detail, description="Body not JSON (Content-Type: application/json)."),
    422: OpenApiResponse(
        FieldErrors,
        description='The Idempotency-Key was already used for a different request: {"Idempotency-Key": ["…"]}.',
    ),
    429: OpenApiResponse(
        Detail, description="Over your submission rate (THROTTLE_SUBMIT); retry after the Retry-After seconds."
    ),
    503: OpenApiResponse(
        Detail,
        description="MAX_QUEUED predictions already queued or running, or the database unreachable; nothing was stored. "
        "Retry after Retry-After seconds.",
    ),
    **AUTH_ERRORS,
}
READ_ERRORS = {
    429: OpenApiResponse(
        Detail, description="Over your read rate (THROTTLE_READ); retry after the Retry-After seconds."
    ),
    503: OpenApiResponse(Detail, description="The database unreachable; retry after the Retry-After seconds."),
    **AUTH_ERRORS,
}
URI_TOO_LONG = {  # operations with query parameters: their URL can outgrow the limit
    414: OpenApiResponse(Detail, description=f"URL (path and query string) over {MAX_URL_BYTES} bytes.")
}
BAD_QUERY = {400: OpenApiResponse(FieldErrors, description="A bad query parameter, named in the body.")}

# Response headers, each on the statuses that carry it.
LOCATION_HEADER = OpenApiParameter(
    "Location",
    {"type": "string", "format": "uri"},
    location=OpenApiParameter.HEADER,
    response=[200, 202],
    required=True,
    description="The absolute URL of what was created (the body's url).",
)
RETRY_AFTER_HEADER = OpenApiParameter(
    "Retry-After",
    {"type": "string", "pattern": "^[0-9]+$"},
    location=OpenApiParameter.HEADER,
    response=[429, 503],
    description="Seconds to wait before trying again.",
)
WWW_AUTHENTICATE_HEADER = OpenApiParameter(
    "WWW-Authenticate",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    response=[401],
    description="The scheme to authenticate with: Token (Bearer is accepted as well).",
)
READ_HEADERS = [RETRY_AFTER_HEADER, WWW_AUTHENTICATE_HEADER]
WRITE_HEADERS = [LOCATION_HEADER, REPLAYED_HEADER, *READ_HEADERS]

WAIT_PARAMETER = OpenApiParameter(
    "wait",
    {"type": "number", "minimum": 0, "maximum": settings.MAX_WAIT_SECONDS},
    description="Wait up to this many seconds (0–30) for the result.",
)

BATCH_WAIT_PARAMETER = OpenApiParameter(
    "wait",
    {"type": "number", "minimum": 0, "maximum": settings.MAX_WAIT_SECONDS},
    description="Wait up to this many seconds (0–30) for every text of the batch to finish, then answer as without it.",
)


_WAITS: dict[str, float] = {}  # query string → its validated ?wait=
_WAITS_MAX = 256


@memo
def _waits_forget() -> None:
    _WAITS.clear()


def wait_from(request: Request) -> float:
    """The validated ?wait= seconds (0 without it); a 400 naming `wait` when it is bad.

    WaitQuerySerializer runs once per distinct query string: a client sends the same one on every
    request, and the serializer costs a fifth of a millisecond. Errors raise and are not kept."""
    raw = request.META.get("QUERY_STRING", "")
    wait = _WAITS.get(raw) if fast_path("remembered_wait") else None
    if wait is None:
        query = WaitQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        wait = query.validated_data["wait"]
        if len(_WAITS) < _WAITS_MAX:
            _WAITS[raw] = wait
    return wait


class PredictionListCreateView(IdempotentCreateMixin, generics.GenericAPIView):
    serializer_class = PredictionSerializer
    idempotency_endpoint = IdempotencyEndpoint.PREDICTIONS

    def get_queryset(self):
        return predictions_visible_to(signed_in_user(self.request))

    @extend_schema(
        summary="List your predictions",
        description="Newest first, paginated (API_PAGE_SIZE), filtered by the query parameters.",
        parameters=[PredictionListQuerySerializer, *READ_HEADERS],
        responses={
            200: PredictionSerializer(many=True),
            **BAD_QUERY,
            **READ_ERRORS,
            **URI_TOO_LONG,
        },
    )
    def get(self, request: Request) -> Response:
        query = PredictionListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        queryset = predictions_filter(self.get_queryset(), query.validated_data)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        summary="Submit a text",
        description="202 with the queued prediction, or 200 once it finished (from the cache, or within ?wait).",
        request=PredictionInputSerializer,
        parameters=[WAIT_PARAMETER, IDEMPOTENCY_PARAMETER, *WRITE_HEADERS],
        responses={
            200: OpenApiResponse(PredictionSerializer, description="Finished: from the cache, or within ?wait."),
            202: OpenApiResponse(PredictionSerializer, description="Queued; poll the Location URL."),
            **WRITE_ERRORS,
            **URI_TOO_LONG,
        },
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key_from(request)
        self.wait = wait_from(request)
        data = prediction_input_fast(request.data) if fast_path("fast_input") else None
        if data is None:  # not the plain valid case: the serializer says what is wrong
            payload = PredictionInputSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            data = payload.validated_data
        return self.create_once(data, key=key)

    def create(self, data: dict) -> Prediction:
        return submission.prediction_create(
            owner=signed_in_user(self.request), text=data["text"], model_name=data["model"]
        )

    def settle(self, prediction: Prediction) -> Prediction | None:
        """With ?wait, the row once it finished in time (None when it was finished already or did not)."""
        if not self.wait or prediction.is_finished:
            return None
        prediction = waiting.prediction_wait(prediction, timeout=self.wait)
        return prediction if prediction.is_finished else None

    def answer(self, prediction: Prediction) -> Response:
        code = status.HTTP_200_OK if prediction.is_finished else status.HTTP_202_ACCEPTED
        location = self.request.build_absolute_uri(reverse("prediction-detail", kwargs={"pk": prediction.pk}))
        return Response(self.get_serializer(prediction).data, status=code, headers={"Location": location})


class PredictionDetailView(generics.RetrieveAPIView):
    serializer_class = PredictionSerializer

    def get_queryset(self):
        return predictions_visible_to(signed_in_user(self.request))

    @extend_schema(
        summary="Get a prediction",
        description="Poll until status is succeeded or failed.",
        parameters=READ_HEADERS,
        responses={200: PredictionSerializer, **READ_ERRORS, **NOT_FOUND},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class BatchCreateView(IdempotentCreateMixin, generics.GenericAPIView):
    serializer_class = BatchSerializer
    idempotency_endpoint = IdempotencyEndpoint.BATCHES

    @extend_schema(
        summary="Submit a batch of texts",
        description="202 with the batch, or 200 when every text was answered by the time of the answer "
        "(from the cache, or a worker that quick).",
        request=BatchInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER, *WRITE_HEADERS],
        responses={
            200: OpenApiResponse(
                BatchSerializer, description="Every text answered: from the cache, or by a quick worker."
            ),
            202: OpenApiResponse(BatchSerializer, description="Saved; poll the Location URL."),
            **WRITE_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key_from(request)
        payload = BatchInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self.create_once(payload.validated_data, key=key)

    def create(self, data: dict) -> Batch:
        return submission.batch_create(
            owner=signed_in_user(self.request), texts=data["texts"], model_name=data["model"]
        )

    def answer(self, batch: Batch) -> Response:
        """200 when every text is answered by now (from the cache, or a worker that quick), else 202."""
        body = self.get_serializer(batch).data
        code = status.HTTP_200_OK if body["finished"] else status.HTTP_202_ACCEPTED
        location = self.request.build_absolute_uri(reverse("batch-detail", kwargs={"pk": batch.pk}))
        return Response(body, status=code, headers={"Location": location})


class BatchDetailView(generics.RetrieveAPIView):
    serializer_class = BatchSerializer

    def get_queryset(self):
        return batches_visible_to(signed_in_user(self.request))

    @extend_schema(
        summary="Get a batch",
        description="Counts per status and every text's prediction, in input order; `finished` once all are.",
        parameters=[BATCH_WAIT_PARAMETER, *READ_HEADERS],
        responses={200: BatchSerializer, **BAD_QUERY, **READ_ERRORS, **NOT_FOUND, **URI_TOO_LONG},
    )
    def get(self, request, *args, **kwargs):
        wait = wait_from(request)
        batch = self.get_object()
        if wait:
            waiting.batch_wait(batch, timeout=wait)
        return Response(self.get_serializer(batch).data)


class ModelListView(APIView):
    @extend_schema(
        summary="List the served models",
        description="The names `model` accepts, with labels, version and kind.",
        parameters=READ_HEADERS,
        responses={200: ModelDescriptionSerializer(many=True), **READ_ERRORS},
    )
    def get(self, request: Request) -> Response:
        described = []
        for name in model_names():
            entry = {"name": name, "default": name == settings.DEFAULT_MODEL, "available": True, "error": ""}
            try:
                info = model_info_get(name)
                entry.update(version=info.version, kind=info.kind.value, labels=info.labels)
            except (ModelLoadError, OSError, ValueError) as exc:
                logger.error("model %r unavailable: %s", name, exc)
                entry.update(
                    available=False, error="model files unavailable", version="", kind="single_label", labels=[]
                )
            described.append(entry)
        return Response(ModelDescriptionSerializer(described, many=True).data)
