"""The Trifle::Traces data layout shared by every data store (S3 and directory).

``<retention>/<prefix>/<key>/<reference>/data_<n>.json[.gz]`` for line parts and
``.../artifacts/<name>`` for payloads too large to keep inline.
"""

from __future__ import annotations

import gzip
import re
from typing import Any

from ..jsonutil import dumps, loads

DEFAULT_PREFIX = "traces"
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]")


def safe_segment(segment: str) -> str:
    cleaned = _UNSAFE.sub("_", segment)[:200]
    return "_" * len(cleaned) if set(cleaned) <= {"."} else cleaned


_safe_keys: dict[str, str] = {}


def _safe_key(key: str) -> str:
    """A key as a path (each segment made safe), remembered: executions share their keys."""
    safe = _safe_keys.get(key)
    if safe is None:
        safe = "/".join(safe_segment(s) for s in key.split("/") if s)
        if len(_safe_keys) >= 10_000:  # keys come from data: bound what is remembered
            _safe_keys.clear()
        _safe_keys[key] = safe
    return safe


def data_prefix(record: dict[str, Any], prefix: str = DEFAULT_PREFIX) -> str:
    parts = [str(record["retention"]), prefix.strip("/"), _safe_key(record["key"]), safe_segment(record["reference"])]
    return "/".join(p for p in parts if p) + "/"


def part_name(number: int, compressed: bool) -> str:
    return f"data_{number}.json" + (".gz" if compressed else "")


def encode_part(lines: list[dict[str, Any]], compressed: bool) -> bytes:
    body = dumps(lines)
    return gzip.compress(body, compresslevel=5, mtime=0) if compressed else body


def decode_part(body: bytes) -> list[dict[str, Any]]:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return loads(body)
