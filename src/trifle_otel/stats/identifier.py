"""Trifle::Stats identifiers: how key, granularity and bucket are stored.

``full`` (default): one ``key`` field ``"<key>::<granularity>::<unix seconds>"``;
``partial``: ``key = "<key>::<granularity>"`` plus an ``at`` field;
``separated``: ``key``, ``granularity`` and ``at`` fields.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError

SEPARATOR = "::"
MODES = ("full", "partial", "separated")
SYSTEM_KEY = "__system__key__"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"identifier mode {mode!r} is not known: use one of {', '.join(MODES)}")
    return mode


def identifier(mode: str, key: str, granularity: str, at: int) -> dict[str, Any]:
    """The stored identifier fields of one bucket (``at`` in unix seconds)."""
    if mode == "full":
        return {"key": f"{key}{SEPARATOR}{granularity}{SEPARATOR}{at}"}
    if mode == "partial":
        return {"key": f"{key}{SEPARATOR}{granularity}", "at": datetime.fromtimestamp(at, timezone.utc)}
    return {"key": key, "granularity": granularity, "at": datetime.fromtimestamp(at, timezone.utc)}
