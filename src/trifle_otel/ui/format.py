"""Small text formatters for the pages (Jinja filters): times in UTC, ages, durations, numbers.

They return plain strings (the templates escape them like everything else), and an empty
one for a value that is missing or of another type: a record written by another writer
may lack a field.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

STATE_ICONS = {"success": "✓", "warning": "▲", "error": "✖", "running": "●", "debug": "·", "ignored": "○"}


def utc(value: datetime | None) -> str:
    if not isinstance(value, datetime):
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    if not isinstance(value, datetime):
        return ""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def seconds(value: float | None) -> str:
    """``75`` → ``1m 15s``; ``5400`` → ``1h 30m``; whole units, two at most."""
    if not isinstance(value, (int, float)):
        return ""
    total = max(0, int(value))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def ago(value: datetime | None, now: datetime) -> str:
    if not isinstance(value, datetime):
        return ""
    delta = (now - value).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{seconds(delta)} ago" if delta > 0 else f"in {seconds(-delta)}"


def ms(value: float | None) -> str:
    """Milliseconds as the CLI shows them: ``8.5ms``, ``120ms``, ``2.35s``, ``1.5m``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    if value >= 60_000:
        return f"{value / 60_000:.1f}m"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value < 10:
        return f"{value:.1f}ms"
    return f"{value:.0f}ms"


def num(value: Any, digits: int = 2) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.{digits}f}"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError, OverflowError):
        return str(value)


def pretty(value: Any) -> str:
    """A value as indented JSON (strings as they are)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def state_icon(state: str) -> str:
    return STATE_ICONS.get(state, "·")


FILTERS = {"utc": utc, "iso": iso, "seconds": seconds, "ago": ago, "ms": ms, "num": num, "pretty": pretty,
           "state_icon": state_icon}
