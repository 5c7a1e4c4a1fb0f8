"""JSON on the hot paths (data parts, index records) with orjson: ~10x the stdlib encoder."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS
_SURROGATE = re.compile("[\ud800-\udfff]")


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; datetimes as ISO 8601; anything unknown as its ``str``."""
    try:
        # The usual document (string keys, JSON types and datetimes) without the options
        # for the unusual: the non-string-keys option alone makes orjson ~1.6x slower.
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError:
        # orjson refuses what the stdlib takes (integers past 64 bits): never lose a document to it.
        # (and strings with lone surrogates, which become U+FFFD: never a failed write)
        return storable(json.dumps(value, default=_stdlib_default, ensure_ascii=False, separators=(",", ":"))).encode()


def _stdlib_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return _default(value)


def dumps_text(value: Any) -> str:
    return dumps(value).decode("utf-8")


loads = orjson.loads


def storable(text: str) -> str:
    """Text every store can take: a lone surrogate (a Python string built from span data
    can hold one) becomes U+FFFD instead of failing the write."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
