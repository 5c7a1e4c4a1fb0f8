"""The Trifle::Traces data layout shared by every data store (S3 and directory).

``<retention>/<prefix>/<key>/<reference>/data_<n>.json[.gz]`` for line parts and
``.../artifacts/<name>`` for payloads too large to keep inline.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from typing import Any

from ..jsonutil import dumps, loads

DEFAULT_PREFIX = "traces"
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]")


def safe_segment(segment: str) -> str:
    cleaned = _UNSAFE.sub("_", segment)[:200]
    return "_" * len(cleaned) if set(cleaned) <= {"."} else cleaned


@lru_cache(maxsize=10_000)  # executions share their keys; keys come from data: bounded
def _safe_key(key: str) -> str:
    """A key as a path, each segment made safe."""
    return "/".join(safe_segment(s) for s in key.split("/") if s)


@lru_cache(maxsize=10_000, typed=True)
def _head(retention: Any, prefix: str, key: str) -> str:
    """``<retention>/<prefix>/<key>/``: shared by every execution of a key."""
    head = "/".join(p for p in (str(retention), prefix.strip("/"), _safe_key(key)) if p)
    return head + "/" if head else ""


def data_prefix(record: dict[str, Any], prefix: str = DEFAULT_PREFIX) -> str:
    reference = record["reference"]
    # A reference the bridge made is hex: safe as it is (the regex is a fifth of this call).
    if not (type(reference) is str and reference.isascii() and reference.isalnum() and len(reference) <= 200):
        reference = safe_segment(reference)
    head = _head(record["retention"], prefix, record["key"])
    return head + reference + "/" if reference else (head or "/")


_PART_NAMES = tuple((f"data_{n}.json", f"data_{n}.json.gz") for n in range(64))


def part_name(number: int, compressed: bool) -> str:
    if 0 < number < 64:
        return _PART_NAMES[number][compressed]
    return f"data_{number}.json" + (".gz" if compressed else "")


def encode_part(lines: list[dict[str, Any]], compressed: bool) -> bytes:
    body = dumps(lines)
    return gzip.compress(body, compresslevel=5, mtime=0) if compressed else body


def decode_part(body: bytes) -> list[dict[str, Any]]:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return loads(body)
