"""Failed password logins are limited per account and per address (django-axes), recorded for the audit,
and unlocked by a superuser; API tokens are not passwords and are not counted."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from bench.stack import ROOT
from tests.browser import chromium_page, needs_chromium

pytestmark = pytest.mark.django_db

RIGHT = "pw-root-1234"


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", password=RIGHT)


def log_in(username: str, password: str, address: str = "203.0.113.1", path: str = "/admin/login/"):
    """One login through the form, from `address`, in a fresh client (no session, no cookie carried over)."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(path, {"username": username, "password": password, "next": "/admin/"})
    response.logged_in = "_auth_user_id" in client.session
    return response


def assert_locked(response) -> None:
    assert response.status_code == 429
    assert not response.logged_in
    page = response.content.decode()
    assert "Login locked" in page
    assert "logging in is locked, even with the right password" in page
    assert "15 minutes" in page
    assert "ask an administrator" in page


def test_wrong_passwords_for_one_account_lock_it_from_every_address(root, settings):
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5
    answers = [log_in("root", f"guess-{i}", address=f"198.51.100.{i}") for i in range(limit)]
    assert [r.status_code for r in answers] == [200] * (limit - 1) + [429]
    assert "Please enter the correct username and password" in answers[0].content.decode()
    assert_locked(answers[-1])
    assert_locked(log_in("root", RIGHT, address="192.0.2.99"))  # the right password, from a new address
    assert log_in("other", "whatever", address="192.0.2.99").status_code == 200  # that address is not locked

    # The audit: every failure kept, the lockout marked, the count per account.
    assert AccessFailureLog.objects.filter(username="root").count() == limit + 1
    assert AccessFailureLog.objects.filter(username="root", locked_out=True).exists()
    assert sum(AccessAttempt.objects.filter(username="root").values_list("failures_since_start", flat=True)) >= limit
    assert not AccessLog.objects.filter(username="root").exists()  # never logged in


def test_wrong_passwords_from_one_address_lock_it_for_every_account(root, django_user_model, settings):
    django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    answers = [log_in(f"user{i}", "guess", address="198.51.100.7") for i in range(settings.AXES_FAILURE_LIMIT)]
    assert [r.status_code for r in answers][-1] == 429
    assert_locked(log_in("root", RIGHT, address="198.51.100.7"))  # an account that never failed
    assert_locked(log_in("rita", "pw-rita-1234", address="198.51.100.7"))
    assert log_in("root", RIGHT, address="198.51.100.8").logged_in  # another address is not locked


def test_the_browsable_apis_login_has_the_same_limit(root, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        last = log_in("root", "guess", path="/api-auth/login/")
    assert_locked(last)
    assert_locked(log_in("root", RIGHT, address="192.0.2.50", path="/api-auth/login/"))
    assert_locked(log_in("root", RIGHT, address="192.0.2.50"))  # one count for both login pages


@pytest.mark.parametrize("how", ["axes_reset_username", "the admin"])
def test_a_superuser_unlocks_an_account(root, django_user_model, settings, how):
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in("root", "guess", address=f"198.51.100.{i}")
    assert_locked(log_in("root", RIGHT))
    if how == "axes_reset_username":
        call_command("axes_reset_username", "root")
    else:
        admin = Client()
        admin.force_login(django_user_model.objects.create_superuser("second", password="pw-second-1234"))
        listed = admin.get("/admin/axes/accessattempt/?q=root")
        assert listed.status_code == 200
        assert "root" in listed.content.decode()
        assert "198.51.100.0" in admin.get("/admin/axes/accessfailurelog/").content.decode()
        ids = [str(pk) for pk in AccessAttempt.objects.filter(username="root").values_list("pk", flat=True)]
        answer = admin.post(
            "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
        )
        assert answer.status_code == 302
    assert not AccessAttempt.objects.filter(username="root").exists()
    assert log_in("root", RIGHT).logged_in
    assert AccessLog.objects.filter(username="root").exists()  # the successful login, audited


def test_the_lock_lifts_by_itself_fifteen_minutes_after_the_last_failure(root, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        last = log_in("root", "guess")
    assert last.status_code == 429
    # The clock moved on: the attempts are dated back rather than waited for.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=14))
    assert_locked(log_in("root", RIGHT))  # still locked, and this attempt starts the wait again
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert log_in("root", RIGHT).logged_in


def test_a_few_typos_do_not_lock_and_the_right_password_logs_in(root, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in("root", "typo").status_code == 200
    assert log_in("root", RIGHT).logged_in


def settings_in_a_process(**env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOGIN_")}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), ','.join(s.AXES_LOCKOUT_PARAMETERS))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**environ, "DJANGO_SETTINGS_MODULE": "mlsite.settings", **env},
        capture_output=True,
        text=True,
    )


def test_the_limits_are_read_from_the_environment():
    assert settings_in_a_process().stdout.split() == ["5", "900.0", "username,ip_address"]
    custom = settings_in_a_process(LOGIN_FAILURE_LIMIT="3", LOGIN_LOCKOUT_MINUTES="60", LOGIN_LOCKOUT_BY="username")
    assert custom.stdout.split() == ["3", "3600.0", "username"]
    bad = settings_in_a_process(LOGIN_LOCKOUT_BY="email")
    assert bad.returncode != 0
    assert "LOGIN_LOCKOUT_BY: unknown email" in bad.stderr


def test_bad_api_tokens_are_refused_and_never_counted_as_password_failures(client, root):
    """A token is 40 random hex digits (160 bits): guessing is hopeless, so tokens are not counted, and a
    stream of bad ones can lock no account or address out of the admin."""
    for i in range(20):
        response = client.get("/api/v1/models/", HTTP_AUTHORIZATION=f"Token {i:040x}", REMOTE_ADDR="203.0.113.1")
        assert response.status_code == 401
    assert not AccessAttempt.objects.exists()
    assert not AccessFailureLog.objects.exists()
    assert log_in("root", RIGHT).logged_in


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_the_lockout_page_reads_clearly_in_a_browser(live_server, root, settings, monkeypatch, tmp_path):
    with chromium_page(monkeypatch) as page:
        for i in range(settings.AXES_FAILURE_LIMIT):
            page.goto(f"{live_server.url}/admin/login/")
            page.fill("#id_username", "root")
            page.fill("#id_password", f"guess-{i}")
            page.click("input[type=submit]")
        page.wait_for_selector(".login-locked")
        heading = page.inner_text("#content h1")
        message = page.inner_text(".login-locked")
        page.screenshot(path=str(tmp_path / "locked.png"), full_page=True)
        assert page.locator(".login-locked").is_visible()
        page.goto(f"{live_server.url}/admin/login/")  # the right password now: still the lockout page
        page.fill("#id_username", "root")
        page.fill("#id_password", RIGHT)
        page.click("input[type=submit]")
        page.wait_for_selector(".login-locked")
        assert page.locator("#site-name").count() == 1  # the admin's own header: a page of this site
    assert heading == "Login locked"
    assert "Too many failed logins for “root”" in message
    assert "15 minutes" in message
    assert "ask an administrator" in message
