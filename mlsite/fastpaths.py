"""The framework bypasses, in one list: where mlsite departs from Django's, DRF's or redis-py's own way for speed.

Each entry names the framework behaviour it replaces. Each bypass checks `fast_path(name)` and, when
FAST_PATHS_OFF names it, runs the framework's own code instead: that is how `make weigh` measures
what each one saves, alternating on and off, and how each one's test holds it equal to the framework
(docs/performance.md, Framework bypasses).
"""

from __future__ import annotations

from django.conf import settings

BYPASSES: dict[str, str] = {
    "prebuilt_insert": "Model.save() of a new prediction (predictions/services/sql.py)",
    "one_statement_results": "QuerySet.bulk_update of a forward pass's results (predictions/services/sql.py)",
    "archive_by_select": "a re-run chunk's rows loaded, then bulk_create of their archived results (predictions/services/sql.py)",
    "fast_input": "PredictionInputSerializer for a plain, valid POST /predictions/ body (predictions/api/serializers.py)",
    "remembered_wait": "WaitQuerySerializer on every request with ?wait= (predictions/api/views.py)",
    "hand_built_json": "PredictionSerializer's declared fields (predictions/api/serializers.py)",
    "remembered_tokens": "TokenAuthentication's query on every request (predictions/api/authentication.py)",
    "quiet_health_check": "Django's SELECT 1 before a request's first query (mlsite/postgresql/base.py)",
    "redis_client_per_pool": "a new redis.Redis per cache call (mlsite/redis_cache.py)",
    "queue_depth_memo": "a COUNT of the queue on every submission (predictions/services/backpressure.py)",
}


def fast_path(name: str) -> bool:
    """Whether the bypass `name` runs (it does unless FAST_PATHS_OFF names it)."""
    return name not in settings.FAST_PATHS_OFF
