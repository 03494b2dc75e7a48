"""DRF's content negotiation, remembered per distinct request shape.

Choosing a renderer parses the Accept header and ranks media types on every request: under cache
hits that was 4 % of the web's CPU (docs/performance.md, Remembered content negotiation), to reach the same answer for every request
a client sends. The choice depends only on the Accept header, the format asked for (`?format=` or a
suffix) and the renderers offered, so it is kept per such key; a refusal (406) is never kept.
"""

from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation

from mlsite.fastpaths import fast_path
from predictions.memos import memo

_KEPT_MAX = 512  # distinct keys kept per process; beyond it, choices are made as DRF makes them


class RememberedContentNegotiation(DefaultContentNegotiation):
    _chosen: dict[tuple, tuple[type, str]] = {}

    def select_renderer(self, request, renderers, format_suffix=None):
        if not fast_path("remembered_negotiation"):
            return super().select_renderer(request, renderers, format_suffix)
        key = (
            request.META.get("HTTP_ACCEPT"),
            format_suffix,
            request.query_params.get(self.settings.URL_FORMAT_OVERRIDE),
            tuple(type(renderer) for renderer in renderers),
        )
        kept = self._chosen.get(key)
        if kept is not None:
            renderer_class, media_type = kept
            return next(r for r in renderers if type(r) is renderer_class), media_type
        renderer, media_type = super().select_renderer(request, renderers, format_suffix)
        if len(self._chosen) < _KEPT_MAX:
            self._chosen[key] = (type(renderer), media_type)
        return renderer, media_type


@memo
def _choices_forget() -> None:
    RememberedContentNegotiation._chosen.clear()
