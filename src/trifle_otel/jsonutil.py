"""JSON on the hot paths (data parts, index records) with orjson: ~10x the stdlib encoder."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; datetimes as ISO 8601; anything unknown as its ``str``."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError:
        # orjson refuses what the stdlib takes (integers past 64 bits): never lose a document to it.
        return json.dumps(value, default=_stdlib_default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _stdlib_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return _default(value)


def dumps_text(value: Any) -> str:
    return dumps(value).decode("utf-8")


loads = orjson.loads
