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
