"""The API's docs page (Swagger UI, /api/docs/) works with no network: its CSS and JS are this project's
static files (drf-spectacular-sidecar), served by the live server, by `make run` and by the image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from urllib.parse import urljoin, urlsplit

import pytest

from bench.stack import ROOT
from tests.browser import chromium_page, needs_chromium
from tests.web_server import web_server

SWAGGER_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_the_swagger_page_renders_every_operation_with_no_request_leaving_the_server(live_server, monkeypatch):
    server = urlsplit(live_server.url).netloc
    outside: list[str] = []  # requests the page tried to send anywhere but the live server
    served: dict[str, int] = {}  # path → status of what the live server answered

    def only_the_live_server(route) -> None:
        if urlsplit(route.request.url).netloc == server:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with chromium_page(monkeypatch) as page:
        page.route("**/*", only_the_live_server)
        page.on("response", lambda response: served.__setitem__(urlsplit(response.url).path, response.status))
        page.goto(f"{live_server.url}/api/docs/")
        page.wait_for_selector(".opblock")
        paths = set(page.locator(".opblock-summary-path").all_inner_texts())
        methods = page.locator(".opblock-summary-method").all_inner_texts()
        title = page.locator(".info .title").inner_text()
        page.locator(".opblock-summary").first.click()  # an operation opens: the page is interactive, not a picture
        page.wait_for_selector(".opblock-body")

    assert outside == []
    assert {path.rsplit("/", 1)[-1] for path, status in served.items() if status == 200} >= SWAGGER_FILES
    shown = {path.replace("\u200b", "") for path in paths}  # Swagger UI puts zero-width spaces after each slash
    assert {"/api/v1/predictions/", "/api/v1/predictions/{id}/", "/api/v1/batches/", "/api/v1/models/"} <= shown
    assert "POST" in methods
    assert "GET" in methods
    assert "mlsite API" in title


def page_assets(base: str) -> list[str]:
    """The URLs of every stylesheet, script and icon /api/docs/ links to, absolute."""
    with urllib.request.urlopen(f"{base}/api/docs/", timeout=30) as response:
        html = response.read().decode()
    return [urljoin(f"{base}/api/docs/", ref) for ref in re.findall(r'(?:src|href)="([^"]+)"', html)]


@pytest.mark.parametrize("how", ["make run", "the image"])
def test_the_real_web_server_serves_the_docs_page_files(how, tmp_path):
    """`make run` (DEBUG on: WhiteNoise finds the files in the installed apps) and the image (DEBUG off:
    the Dockerfile's collectstatic copies them to STATIC_ROOT, which WhiteNoise serves)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DATABASE_URL", "REDIS_URL", "STATIC_ROOT")}
    env.update({"MLSITE_VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": "memory://", "HF_HUB_OFFLINE": "1"})
    if how == "the image":
        env["DEBUG"] = "0"
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    with web_server(env) as (base, _):
        assets = page_assets(base)
        assert {url.rsplit("/", 1)[-1] for url in assets} >= SWAGGER_FILES
        for url in assets:
            assert url.startswith(f"{base}/"), url  # nothing from another host
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.status == 200, url
                assert len(response.read()) > 0, url
