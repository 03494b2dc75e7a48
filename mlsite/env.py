"""Typed readers for environment variables; a bad value stops start-up with the variable named."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


class RenamedSettingWarning(FutureWarning):
    """A variable was set under the name it had before a release renamed it (read for one more release)."""


def _renamed(name: str, old: str | None) -> str:
    """The variable to read: `name`, or `old` when only the old name is set (with a warning)."""
    if old is None or old not in os.environ:
        return name
    if name in os.environ:
        warnings.warn(f"{old} is ignored: {name}, its new name, is set too", RenamedSettingWarning, stacklevel=3)
        return name
    warnings.warn(
        f"{old} is now {name}; the old name is read until the next release", RenamedSettingWarning, stacklevel=3
    )
    return old


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None, old: str | None = None
) -> int:
    """An integer within [minimum, maximum]; `old`: the variable's name before a rename, still read."""
    name = _renamed(name, old)
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value}: must be at most {maximum}")
    return value


def env_fraction(name: str, default: float) -> float:
    """A share between 0 and 1, written as 0.01 or as a percentage (1%)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a share such as 0.01 or 1%") from None
    if not 0 <= value <= 1:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be between 0 and 1 (0% and 100%)")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


RATE_PERIODS = {"s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"}


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate such as '600/min' ('N/s', 'N/min', 'N/hour', 'N/day'); empty means no limit."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip()
    if not value:
        return ""
    number, sep, period = value.partition("/")
    if not sep or not number.strip().isdigit() or int(number) < 1 or period.strip().lower() not in RATE_PERIODS:
        raise ImproperlyConfigured(
            f"{name}={raw!r}: expected a rate such as 600/min (N/s, N/min, N/hour, N/day) or empty"
        )
    return f"{int(number)}/{period.strip().lower()}"


def env_subset(name: str, choices: Iterable[str]) -> frozenset[str]:
    """Comma-separated names, each one of `choices`; empty or unset: none."""
    names = frozenset(env_list(name, []))
    unknown = sorted(names - set(choices))
    if unknown:
        raise ImproperlyConfigured(f"{name}: unknown {', '.join(unknown)}; one of {', '.join(sorted(choices))}")
    return names


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_models(name: str, default: dict[str, str]) -> dict[str, str]:
    """'sentiment=bundled:sentiment,custom=path:/models/x' → {'sentiment': 'bundled:sentiment', ...}."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    models = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, source = item.partition("=")
        if not sep or not key.strip() or not source.strip():
            raise ImproperlyConfigured(
                f"{name}: {item!r} must look like NAME=SOURCE (e.g. sentiment=bundled:sentiment)"
            )
        models[key.strip()] = source.strip()
    if not models:
        raise ImproperlyConfigured(f"{name} names no model")
    return models
