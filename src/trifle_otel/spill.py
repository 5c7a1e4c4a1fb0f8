"""Spill to local disk: what the stores could not take during an outage, replayed later.

Finished trace documents that overflow the in-memory retry buffer, and everything still
unwritten at shutdown (documents and stats increments), are appended to files under the
spill directory; the next pipeline that starts with the same spill directory claims the
files (an atomic rename, so two processes never replay the same file) and writes their
content.  The directory is bounded by ``max_bytes``; past it, data is dropped and counted.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from .jsonutil import dumps, loads
from .stores.base import TIME_FIELDS
from .translate import Document

logger = logging.getLogger("trifle_otel")

Op = tuple[str, str, int, dict[str, Any]]


def _encode_document(doc: Document) -> dict[str, Any]:
    return {
        "t": "doc",
        "record": doc.record,
        "parts": doc.parts,
        "artifacts": [[name, base64.b64encode(body).decode()] for name, body in doc.artifacts],
    }


def _decode_document(item: dict[str, Any]) -> Document:
    record = item["record"]
    for name in TIME_FIELDS:
        if isinstance(record.get(name), str):
            record[name] = datetime.fromisoformat(record[name])
    parts = item["parts"]
    lines = [line for part in parts for line in part]
    artifacts = [(name, base64.b64decode(body)) for name, body in item.get("artifacts", [])]
    return Document(record, lines, parts, artifacts)


class Spill:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._n = 0

    def _size(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.directory.glob("spill-*"))
        except OSError:
            return 0

    def save(self, documents: Iterable[Document] = (), inc: Iterable[Op] = (), sets: Iterable[Op] = ()) -> bool:
        """Write to a new spill file; False (nothing saved) when it cannot or is full."""
        lines = [dumps(_encode_document(d)) for d in documents]
        inc, sets = list(inc), list(sets)
        if inc:
            lines.append(dumps({"t": "inc", "ops": inc}))
        if sets:
            lines.append(dumps({"t": "set", "ops": sets}))
        if not lines:
            return True
        body = b"\n".join(lines) + b"\n"
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                if self._size() + len(body) > self.max_bytes:
                    logger.warning("trifle-otel spill directory %s is full (%d bytes)", self.directory, self.max_bytes)
                    return False
                self._n += 1
                name = f"spill-{os.getpid()}-{time.time_ns()}-{self._n}.jsonl"
                tmp = self.directory / f".{name}.tmp"
                tmp.write_bytes(body)
                os.replace(tmp, self.directory / name)
                return True
            except OSError as exc:
                logger.warning("trifle-otel cannot spill to %s: %s", self.directory, exc.strerror)
                return False

    def claim(self) -> tuple[list[Document], list[Op], list[Op]]:
        """Take every spill file (removing it) and return its documents and stats operations."""
        documents: list[Document] = []
        inc: list[Op] = []
        sets: list[Op] = []
        try:
            files = sorted(self.directory.glob("spill-*.jsonl"))
        except OSError:
            return documents, inc, sets
        for file in files:
            claimed = file.with_name(f"{file.name}.claimed-{os.getpid()}")
            try:
                os.rename(file, claimed)  # atomic: one process gets it
            except OSError:
                continue
            try:
                for raw in claimed.read_bytes().splitlines():
                    if not raw.strip():
                        continue
                    item = loads(raw)
                    if item.get("t") == "doc":
                        documents.append(_decode_document(item))
                    elif item.get("t") in ("inc", "set"):
                        ops = [(k, g, int(at), values) for k, g, at, values in item["ops"]]
                        (inc if item["t"] == "inc" else sets).extend(ops)
                claimed.unlink()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("trifle-otel cannot replay spill file %s: %s", claimed, exc)
        if documents or inc or sets:
            logger.info("trifle-otel replays %d executions and %d stats buckets from %s",
                        len(documents), len(inc) + len(sets), self.directory)
        return documents, inc, sets
