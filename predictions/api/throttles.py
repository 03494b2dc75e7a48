"""Per-user rate limits: one budget for submissions (POST), one for reads (GET), from settings.

Counts live in the Django cache (Redis in production). A cache outage lets requests through
(fail open) rather than answering 500: a rate limit is a guard, not a dependency.
"""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)


class _SettingsRateThrottle(UserRateThrottle):
    """A UserRateThrottle whose rate is read from a Django setting when the request comes in
    (DRF's own reads DEFAULT_THROTTLE_RATES once, at import); an empty rate is no limit."""

    setting_name = ""
    reads = False  # True: applies to GET/HEAD/OPTIONS; False: to every other method

    def get_rate(self) -> str | None:
        return getattr(settings, self.setting_name) or None

    def allow_request(self, request, view) -> bool:
        if (request.method in SAFE_METHODS) != self.reads:
            return True
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # cache down: let the request through (fail open), never a 500
            logger.warning("rate limit %s not checked, cache unavailable (%s): %s", self.scope, type(exc).__name__, exc)
            return True


class SubmitRateThrottle(_SettingsRateThrottle):
    scope = "submit"
    setting_name = "THROTTLE_SUBMIT"


class ReadRateThrottle(_SettingsRateThrottle):
    scope = "read"
    setting_name = "THROTTLE_READ"
    reads = True
