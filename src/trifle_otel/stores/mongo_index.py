"""MongoDB trace index: collection ``trifle_traces`` with the Trifle::Traces 2.x fields.

``_id`` is the reference, so a retried write replaces the record instead of adding one.
``meta`` is stored as a JSON string (as Trifle::Traces does) and ``context`` too: field
names that come from data (``customer.id``) never become MongoDB field names.  Every
search filter has an index walked newest first; ``expires_at`` has a TTL index.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Sequence

from ..errors import StoreError
from .base import Page, TraceQuery, decode_cursor, encode_cursor
from . import redact
from .mongo import MAX_BSON, bson_size, database, store_error

COLLECTION = "trifle_traces"

INDEXES = [
    ("segments_first_at", [("segments", 1), ("first_at", -1), ("_id", -1)]),
    ("tags_first_at", [("tags", 1), ("first_at", -1), ("_id", -1)]),
    ("state_first_at", [("state", 1), ("first_at", -1), ("_id", -1)]),
    ("first_at", [("first_at", -1), ("_id", -1)]),
    ("duration_first_at", [("duration", 1), ("first_at", -1)]),
    ("trace_id", [("trace_id", 1)]),
]
TTL_INDEX = ("expires_at_ttl", [("expires_at", 1)])


def _to_document(record: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in record.items() if k != "reference"}
    doc["_id"] = record["reference"]
    for name in ("segments", "tags"):  # arrays, whatever sequence the record holds
        if isinstance(doc.get(name), tuple):
            doc[name] = list(doc[name])
    doc["meta"] = json.dumps(record.get("meta") or {}, ensure_ascii=False, default=str)
    doc["context"] = json.dumps(record.get("context") or {}, ensure_ascii=False, default=str)
    size = bson_size(doc)
    if size > MAX_BSON - 64 * 1024:  # never reachable from span input: a last guard
        doc["meta"] = json.dumps({"trifle.meta_dropped": f"record was {size} bytes"})
        doc["context"] = "{}"
        doc["links"] = doc.get("links", [])[:10]
        doc["tags"] = doc.get("tags", [])[:10]
    return doc


def _to_record(doc: dict[str, Any]) -> dict[str, Any]:
    record = dict(doc)
    record["reference"] = record.pop("_id")
    for name in ("meta", "context"):
        if isinstance(record.get(name), str):
            record[name] = json.loads(record[name])
    for name in ("first_at", "last_at", "expires_at"):
        value = record.get(name)
        if isinstance(value, datetime) and value.tzinfo is None:  # BSON dates come back naive UTC
            record[name] = value.replace(tzinfo=timezone.utc)
    return record


class MongoTraceIndex:
    def __init__(self, url: str, collection: str = COLLECTION) -> None:
        self.url = url
        self.collection = database(url)[collection]

    def setup(self) -> list[str]:
        """Create the indexes (idempotent); returns what exists."""
        names = [f"collection {self.collection.name}"]
        try:
            for name, keys in INDEXES:
                names.append("index " + self.collection.create_index(keys, name=name))
            name, keys = TTL_INDEX
            names.append("TTL index " + self.collection.create_index(keys, name=name, expireAfterSeconds=0))
        except Exception as exc:
            raise store_error("create indexes in", self.url, exc) from None
        return names

    def upsert(self, records: Sequence[dict[str, Any]]) -> None:
        from pymongo import ReplaceOne
        from pymongo.errors import BulkWriteError, PyMongoError

        ops = [ReplaceOne({"_id": r["reference"]}, _to_document(r), upsert=True) for r in records]
        if not ops:
            return
        try:
            self.collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # Replacements are idempotent: retry the whole batch once, then give up loudly.
            try:
                self.collection.bulk_write(ops, ordered=False)
            except PyMongoError:
                raise store_error("write to", self.url, exc) from None
        except PyMongoError as exc:
            raise store_error("write to", self.url, exc) from None

    def delete(self, references: Sequence[str]) -> None:
        try:
            self.collection.delete_many({"_id": {"$in": list(references)}})
        except Exception as exc:
            raise store_error("delete from", self.url, exc) from None

    def get(self, reference: str) -> dict[str, Any] | None:
        try:
            exact = self.collection.find_one({"_id": reference})
            if exact is not None:
                return _to_record(exact)
            docs = list(self.collection.find({"_id": {"$gte": reference, "$lt": reference + "\uffff"}}).limit(2))
        except Exception as exc:
            raise store_error("read from", self.url, exc) from None
        return _to_record(docs[0]) if len(docs) == 1 else None

    def _filter(self, q: TraceQuery) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = []
        if q.key:
            clauses.append({"segments": q.key.strip("/")})
        if q.states:
            clauses.append({"state": {"$in": list(q.states)}})
        if q.tags_all:
            clauses.append({"tags": {"$all": list(q.tags_all)}})
        if q.tags_any:
            clauses.append({"tags": {"$in": list(q.tags_any)}})
        time: dict[str, Any] = {}
        if q.since is not None:
            time["$gte"] = q.since
        if q.until is not None:
            time["$lt"] = q.until
        if time:
            clauses.append({"first_at": time})
        if q.min_duration is not None:
            clauses.append({"duration": {"$gte": q.min_duration}})
        if q.stuck_before is not None:
            clauses.append({"state": "running", "first_at": {"$lt": q.stuck_before}})
        if q.cursor:
            first_at, reference = decode_cursor(q.cursor)
            at = datetime.fromtimestamp(first_at, timezone.utc)
            clauses.append({"$or": [{"first_at": {"$lt": at}}, {"first_at": at, "_id": {"$lt": reference}}]})
        if not clauses:
            return {}
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def search(self, query: TraceQuery) -> Page:
        try:
            docs = list(
                self.collection.find(self._filter(query)).sort([("first_at", -1), ("_id", -1)]).limit(query.limit + 1)
            )
        except StoreError:
            raise
        except Exception as exc:
            raise store_error("search", self.url, exc) from None
        records = [_to_record(d) for d in docs[: query.limit]]
        cursor = None
        if len(docs) > query.limit:
            last = records[-1]
            cursor = encode_cursor(last["first_at"].timestamp(), last["reference"])
        return Page(records, cursor)

    def close(self) -> None:
        try:
            self.collection.database.client.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"MongoTraceIndex({redact(self.url)})"
