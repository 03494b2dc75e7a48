"""Per-process memos, forgotten with one call.

A few things are remembered per process to spare a query or a computation on each request (which
user a token belongs to, the queue's depth, a validated ``?wait=``, …; docs/performance.md, Framework
bypasses). Each registers how to forget itself with ``@memo``; ``memos_forget()`` forgets them all: what
a test calls between tests, and what a process would call after changing the data they remember.
"""

from __future__ import annotations

from collections.abc import Callable

_forgetters: list[Callable[[], None]] = []


def memo(forget: Callable[[], None]) -> Callable[[], None]:
    """Register `forget` (a function of no arguments) to be called by memos_forget(); returns it unchanged."""
    _forgetters.append(forget)
    return forget


def memos_forget() -> None:
    """Forget everything this process remembers."""
    for forget in _forgetters:
        forget()
