"""Settings read from the environment: renamed variables still read under their old names for one release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from mlsite.env import RenamedSettingWarning, env_int

ROOT = Path(__file__).resolve().parent.parent
RENAMED = {  # old name → new name
    "MAX_BATCH_SIZE": "API_BATCH_MAX_TEXTS",
    "BATCH_CHUNK_SIZE": "PUBLISH_CHUNK_ROWS",
    "BATCH_MAX_SIZE": "CLAIM_MAX_ROWS",
    "BATCH_MAX_WAIT_MS": "CLAIM_WAIT_MS",
    "BATCH_LOOP_SECONDS": "CLAIM_LOOP_SECONDS",
    "INFERENCE_BATCH_SIZE": "PASS_MAX_TEXTS",
    "BATCH_MAX_TOKENS": "PASS_MAX_TOKENS",
}


def test_an_old_name_alone_is_read_with_a_warning_naming_the_new_one(monkeypatch):
    monkeypatch.delenv("CLAIM_MAX_ROWS", raising=False)
    monkeypatch.setenv("BATCH_MAX_SIZE", "64")
    with pytest.warns(RenamedSettingWarning, match="BATCH_MAX_SIZE is now CLAIM_MAX_ROWS"):
        assert env_int("CLAIM_MAX_ROWS", 128, minimum=1, old="BATCH_MAX_SIZE") == 64


def test_the_new_name_wins_and_the_old_one_is_said_to_be_ignored(monkeypatch):
    monkeypatch.setenv("CLAIM_MAX_ROWS", "32")
    monkeypatch.setenv("BATCH_MAX_SIZE", "64")
    with pytest.warns(RenamedSettingWarning, match="BATCH_MAX_SIZE is ignored"):
        assert env_int("CLAIM_MAX_ROWS", 128, minimum=1, old="BATCH_MAX_SIZE") == 32


def test_an_old_name_is_checked_like_the_new_one(monkeypatch):
    monkeypatch.delenv("CLAIM_MAX_ROWS", raising=False)
    monkeypatch.setenv("BATCH_MAX_SIZE", "0")
    with pytest.warns(RenamedSettingWarning), pytest.raises(ImproperlyConfigured, match="BATCH_MAX_SIZE=0"):
        env_int("CLAIM_MAX_ROWS", 128, minimum=1, old="BATCH_MAX_SIZE")


def test_the_settings_read_every_old_name_under_its_new_one():
    """A fresh process with only the old names set: each new setting takes the old variable's value."""
    env = {k: v for k, v in os.environ.items() if k not in RENAMED and k not in RENAMED.values()}
    env.update({old: str(100 + i) for i, old in enumerate(RENAMED)})
    code = (
        "import json, warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from mlsite import settings\n"
        f"print(json.dumps({{'values': {{n: getattr(settings, n) for n in {list(RENAMED.values())!r}}}, "
        "'warned': sorted(str(w.message) for w in caught if w.category.__name__ == 'RenamedSettingWarning')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["values"] == {new: 100 + i for i, new in enumerate(RENAMED.values())}
    assert result["warned"] == sorted(
        f"{old} is now {new}; the old name is read until the next release" for old, new in RENAMED.items()
    )


def test_the_served_settings_hash_passwords_with_django_s_default_not_the_tests_md5():
    """tests/conftest.py hashes with MD5 in the test process for speed; the settings a deployment
    reads keep Django's slow default (PBKDF2) first."""
    from django.conf import global_settings  # noqa: PLC0415

    import mlsite.settings as served  # noqa: PLC0415

    hashers = getattr(served, "PASSWORD_HASHERS", global_settings.PASSWORD_HASHERS)
    assert hashers[0] == "django.contrib.auth.hashers.PBKDF2PasswordHasher", hashers
    assert not any("MD5" in hasher for hasher in hashers), hashers
