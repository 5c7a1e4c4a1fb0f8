"""Buffered sinks: where translated documents go (trace data, trace index; stats next).

Data parts and artifacts are written before the index record, so a record never points
at parts that are not there.  In live mode a document is written several times: parts
whose content did not change since the last write are skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from .stores.base import DataStore, TraceIndex
from .stores.layout import data_prefix, decode_part, encode_part, part_name
from .translate import Document


def encode_parts(doc: Document, compressed: bool = False) -> Document:
    """Encode a document's parts for the data store now and let go of its line dicts.

    The worker does this right after translation: a cycle's documents wait for their write
    as a few bytes objects rather than thousands of dicts, which the garbage collector would
    otherwise promote and scan again and again in the host application's process."""
    if doc.bodies is None:
        doc.bodies = tuple([encode_part(lines, compressed) for lines in doc.parts])
        doc.lines = ()
        doc.parts = ()
        if not doc.artifacts:
            doc.artifacts = ()
        # Tuples of strings are not tracked by the collector: a document waiting for its
        # write costs it a few objects, not ten.
        record = doc.record
        for name in _RECORD_LISTS:
            value = record.get(name)
            if type(value) is list:
                record[name] = tuple(value)
    return doc


_RECORD_LISTS = ("segments", "tags")


def part_lines(doc: Document) -> list[list[dict[str, Any]]]:
    """A document's parts as lines, whether or not they were encoded already."""
    return doc.parts if doc.bodies is None else [decode_part(body) for body in doc.bodies]


class TraceSink:
    def __init__(self, index: TraceIndex, data: DataStore, *, compressed: bool = False):
        self.index = index
        self.data = data
        self.compressed = compressed
        self.prefix = data.prefix
        self._written: dict[str, list[int]] = {}  # reference -> hashes of parts written (live)
        self._paths: dict[str, str] = {}  # reference -> data path of its first live write

    def write(self, documents: Sequence[Document]) -> list[Document]:
        """Write documents: all their data in one batch, then one index batch for those whose
        data is in.  Returns the documents whose data could not be written (retried alone);
        raises StoreError when none could be, or when the index refused the batch."""
        items: list[tuple[str, bytes, str | None]] = []
        owners: list[int] = []  # items[i] belongs to documents[owners[i]]
        bases: list[tuple[str, list[int] | None]] = []
        paths, written_parts, prefix, bucket_for = self._paths, self._written, self.prefix, self.data.bucket_for
        for number, doc in enumerate(documents):
            record = doc.record
            reference = record["reference"]
            # A live record keeps the data path of its first write even if its key changes
            # (a job's name attribute set just after its span started).
            base = (paths and paths.get(reference)) or data_prefix(record, prefix)
            bucket = bucket_for(reference)
            record["data_path"] = base
            record["bucket_name"] = bucket
            # Parts unchanged since the previous live write are not written again.
            seen = written_parts.get(reference) if written_parts else None
            live = seen is not None or record["state"] == "running"
            digests: list[int] | None = [] if live else None
            bodies = encode_parts(doc, self.compressed).bodies or []
            for part, body in enumerate(bodies, start=1):
                if digests is not None:
                    digest = hash(body)
                    digests.append(digest)
                    if seen is not None and part <= len(seen) and seen[part - 1] == digest:
                        continue
                items.append((base + part_name(part, self.compressed), body, bucket))
                owners.append(number)
            for name, body in doc.artifacts:
                items.append((base + "artifacts/" + name, body, bucket))
                owners.append(number)
            bases.append((base, digests))
        failed_docs: set[int] = set()
        if items:
            failed_docs = {owners[i] for i in self.data.put_many(items)}
        written = [n for n in range(len(documents)) if n not in failed_docs]
        if written:
            self.index.upsert([documents[n].record for n in written])
        # Only once the index has them: a failed batch is retried as it was.  (Without live
        # records there is nothing to remember, and nothing to forget.)
        for n in written:
            record = documents[n].record
            if record["state"] == "running":
                base, digests = bases[n]
                written_parts[record["reference"]] = digests or []
                paths[record["reference"]] = base
            elif written_parts or paths:
                written_parts.pop(record["reference"], None)
                paths.pop(record["reference"], None)
        return [documents[n] for n in sorted(failed_docs)]

    def purge_expired(self, now: datetime, limit: int = 1000) -> int:
        """Delete records past their retention, and their data, where the stores do not
        expire them by themselves (MongoDB's TTL index and S3 lifecycle rules do)."""
        expired = getattr(self.index, "expired", None)
        if expired is None:
            return 0
        records = expired(now, limit)
        for record in records:
            base = record.get("data_path") or data_prefix(record, self.prefix)
            self.data.delete_prefix(base, record.get("bucket_name") or None)
        self.index.delete([r["reference"] for r in records])
        return len(records)

    def close(self) -> None:
        for store in (self.index, self.data):
            try:
                store.close()
            except Exception:
                pass

    def discard(self, documents: Sequence[Document]) -> None:
        """Remove what live mode wrote for executions that turned out to be ignored."""
        refs = [d.reference for d in documents]
        if not refs:
            return
        self.index.delete(refs)
        for doc in documents:
            self._written.pop(doc.reference, None)
            base = self._paths.pop(doc.reference, None) or data_prefix(doc.record, self.prefix)
            self.data.delete_prefix(base, self.data.bucket_for(doc.reference))


def load_lines(data: DataStore, record: dict[str, Any]) -> list[dict[str, Any]]:
    """All lines of a record, part after part (either part encoding is read)."""
    base = record.get("data_path") or data_prefix(record, data.prefix)
    bucket = record.get("bucket_name") or None
    lines: list[dict[str, Any]] = []
    for number in range(1, int(record.get("parts") or 0) + 1):
        body = data.get(base + part_name(number, True), bucket)
        if body is None:
            body = data.get(base + part_name(number, False), bucket)
        if body is None:
            lines.append({"at": None, "message": f"data part {number} is missing from {base}", "state": "error",
                          "type": "text", "level": 0})
            continue
        lines.extend(decode_part(body))
    return lines


def load_artifact(data: DataStore, record: dict[str, Any], name: str) -> bytes | None:
    base = record.get("data_path") or data_prefix(record, data.prefix)
    return data.get(base + "artifacts/" + name, record.get("bucket_name") or None)
