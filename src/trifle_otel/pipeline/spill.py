"""Spill to local disk: what the stores could not take during an outage, replayed later.

Finished trace documents that overflow the in-memory retry buffer, and everything still
unwritten at shutdown (documents and stats increments), are written to files under the
spill directory.  A pipeline with the same stores replays them once its stores work: it
claims one file at a time (an atomic rename, so two processes never replay one file),
writes its documents, and deletes it only then; a file whose claimer died is claimed
again.  Files name the stores they are for, so a pipeline never replays another
configuration's data.  The directory is bounded by ``max_bytes``; past it, data is dropped
and counted.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from ..jsonutil import dumps, loads
from ..stores.base import TIME_FIELDS
from ..sinks import part_lines
from ..translate import Document

logger = logging.getLogger("trifle_otel")

Op = tuple[str, str, int, dict[str, Any]]
_CLAIMED = re.compile(r"^(?P<name>spill-.+\.jsonl)\.claimed-(?P<pid>\d+)$")


def _encode_document(doc: Document) -> dict[str, Any]:
    return {
        "t": "doc",
        "record": doc.record,
        "parts": part_lines(doc),
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@dataclass
class Claim:
    """One claimed spill file and its content."""

    path: Path
    original: Path
    documents: list[Document] = field(default_factory=list)
    inc: list[Op] = field(default_factory=list)
    sets: list[Op] = field(default_factory=list)

    def done(self) -> None:
        """Its content is written: the file goes."""
        try:
            self.path.unlink()
        except OSError:
            pass

    def release(self) -> None:
        """Not written after all: give the file back for a later try."""
        try:
            os.rename(self.path, self.original)
        except OSError:
            pass


class Spill:
    def __init__(self, directory: str | Path, max_bytes: int, stores: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # Which stores the files are for: a hash of their URLs (never the URLs: secrets).
        self.tag = hashlib.blake2b("\n".join(stores).encode(), digest_size=4).hexdigest()
        self._lock = threading.Lock()
        self._n = 0
        self._bytes: int | None = None  # size of the directory, counted once then kept
        # Whether files may be waiting: true at start (an earlier run's) and after a save;
        # false once a claim finds none, so a healthy worker does not list the directory.
        self._maybe = True

    def _size(self) -> int:
        if self._bytes is None:
            try:
                self._bytes = sum(p.stat().st_size for p in self.directory.glob("spill-*"))
            except OSError:
                self._bytes = 0
        return self._bytes

    def save(self, documents: Iterable[Document] = (), inc: Iterable[Op] = (), sets: Iterable[Op] = ()) -> bool:
        """Write a new spill file; False (nothing saved) when it cannot or the directory is full."""
        tmp = None
        try:
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
                self.directory.mkdir(parents=True, exist_ok=True)
                if self._size() + len(body) > self.max_bytes:
                    logger.warning("trifle-otel spill directory %s is full (%d bytes)", self.directory, self.max_bytes)
                    return False
                self._n += 1
                name = f"spill-{self.tag}-{os.getpid()}-{time.time_ns()}-{self._n}.jsonl"
                tmp = self.directory / f".{name}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.directory / name)
                tmp = None
                self._bytes = self._size() + len(body)
                self._maybe = True
                return True
        except Exception as exc:  # a full disk, an unencodable value: never raise into the worker
            logger.warning("trifle-otel cannot spill to %s: %s", self.directory, exc)
            return False
        finally:
            if tmp is not None:
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def pending(self) -> int:
        """Spill files for our stores that wait to be replayed (claimed ones included)."""
        if not self._maybe:
            return 0
        try:
            count = sum(1 for _ in self.directory.glob(f"spill-{self.tag}-*"))
        except OSError:
            count = 0
        self._maybe = count > 0
        return count

    def claim(self) -> Claim | None:
        """Take the oldest spill file for our stores, or None when there is none."""
        try:
            names = sorted(p.name for p in self.directory.glob(f"spill-{self.tag}-*"))
        except OSError:
            return None
        for name in names:
            path = self.directory / name
            stale = _CLAIMED.match(name)
            if stale and _alive(int(stale.group("pid"))):
                continue  # another live process is replaying it
            original = self.directory / (stale.group("name") if stale else name)
            claimed = self.directory / f"{original.name}.claimed-{os.getpid()}"
            try:
                os.rename(path, claimed)  # atomic: one process gets it
            except OSError:
                continue
            claim = Claim(claimed, original)
            try:
                for raw in claimed.read_bytes().splitlines():
                    if not raw.strip():
                        continue
                    item = loads(raw)
                    if item.get("t") == "doc":
                        claim.documents.append(_decode_document(item))
                    elif item.get("t") in ("inc", "set"):
                        ops = [(k, g, int(at), values) for k, g, at, values in item["ops"]]
                        (claim.inc if item["t"] == "inc" else claim.sets).extend(ops)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                damaged = self.directory / f"damaged-{original.name}"
                logger.warning("trifle-otel spill file %s cannot be read (%s): kept as %s", original, exc, damaged)
                try:
                    os.rename(claimed, damaged)
                except OSError:
                    pass
                self._bytes = None
                continue
            self._bytes = None
            return claim
        self._maybe = False
        return None
