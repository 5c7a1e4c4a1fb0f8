"""Parsing of times given on the command line: ISO 8601, ``now``, or an age like ``15m``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from .errors import ConfigError

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None, what: str = "time") -> datetime:
    """``2026-11-23T10:00:00Z``, ``2026-11-23``, ``now``, or ``90m`` (ninety minutes ago)."""
    now = now or datetime.now(timezone.utc)
    value = text.strip()
    if value.lower() == "now":
        return now
    age = _AGE.match(value.lower())
    if age:
        try:
            return now - timedelta(**{_UNITS[age.group(2)]: float(age.group(1))})
        except OverflowError:
            raise ConfigError(f"{what} {text!r} is too far back: give an age of less than 9999 years") from None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a time: use ISO 8601 (2026-11-23T10:00:00Z), 'now', "
            "or an age such as 30s, 15m, 2h, 7d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def jsonable(record: dict) -> dict:
    """A record with its times as ISO 8601 UTC: the JSON shape the CLI and the UI's API share."""
    from .stores.base import TIME_FIELDS

    out = dict(record)
    for name in TIME_FIELDS:
        if isinstance(out.get(name), datetime):
            out[name] = iso(out[name])
    return out
