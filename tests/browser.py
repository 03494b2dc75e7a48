"""Headless Chromium driven by Playwright, shared by the browser tests (the review desk, the API docs, the login lockout)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)",
)


@contextmanager
def chromium_page(monkeypatch) -> Iterator[Page]:
    """One page of a fresh headless Chromium; the browser is closed on the way out."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in this thread
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})  # a laptop: the desk must read here
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()
            # Playwright's event loop counts as running in this thread, so Django keeps this thread's
            # connections in a context variable here, apart from those pytest-django closes: close
            # them while it still does, or one stays open and the test database cannot be dropped.
            connections.close_all()
