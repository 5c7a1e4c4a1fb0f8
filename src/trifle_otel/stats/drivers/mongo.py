"""MongoDB stats driver in the Trifle::Stats layout.

Collection ``trifle_stats``; identifier fields per mode with a unique index; increments
are ``$inc`` on dotted ``data.`` paths (sets are ``$set``), upserted in one unordered
``bulk_write`` per flush.  Upserts of ``$inc`` commute, so any number of writers add up
exactly.  When part of a bulk write fails, only the failed operations are retried (and,
if they still fail, reported back as not applied), so nothing is counted twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from ...errors import PartialWriteError
from ...stores import redact
from ...stores.mongo import database, store_error
from ..identifier import check_mode, identifier
from ..values import read_data
from . import Op, Ref

COLLECTION = "trifle_stats"
RETRIES = 3
# Write errors worth retrying: duplicate key from two upserts racing, and transient ones.
_RETRYABLE = {11000, 11600, 11602, 10107, 13435, 13436, 189, 91, 7, 6, 89, 9001, 262, 50}


class MongoStatsDriver:
    def __init__(self, url: str, *, mode: str = "full", collection: str = COLLECTION, expire_after: int | None = None) -> None:
        self.url = url
        self.mode = check_mode(mode)
        self.expire_after = expire_after
        self.collection = database(url)[collection]

    def setup(self) -> list[str]:
        keys = {
            "full": [("key", 1)],
            "partial": [("key", 1), ("at", -1)],
            "separated": [("key", 1), ("granularity", 1), ("at", -1)],
        }[self.mode]
        try:
            names = [f"collection {self.collection.name}", "unique index " + self.collection.create_index(keys, unique=True)]
            if self.expire_after:
                names.append("TTL index " + self.collection.create_index([("expire_at", 1)], expireAfterSeconds=0))
        except Exception as exc:
            raise store_error("create indexes in", self.url, exc) from None
        return names

    def _operation(self, op: Op, verb: str) -> Any:
        from pymongo import UpdateOne

        key, granularity, at, flat = op
        update: dict[str, Any] = {verb: {f"data.{path}": value for path, value in flat.items()}}
        if self.expire_after:
            expire = datetime.fromtimestamp(at, timezone.utc) + timedelta(seconds=self.expire_after)
            update.setdefault("$set", {})["expire_at"] = expire
        return UpdateOne(identifier(self.mode, key, granularity, at), update, upsert=True)

    def _write(self, ops: Sequence[Op], verb: str) -> None:
        from pymongo.errors import BulkWriteError, PyMongoError

        pending = list(ops)
        for attempt in range(RETRIES):
            if not pending:
                return
            try:
                self.collection.bulk_write([self._operation(op, verb) for op in pending], ordered=False)
                return
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                failed_at = {e["index"] for e in errors}
                fatal = [e for e in errors if e.get("code") not in _RETRYABLE]
                pending = [op for i, op in enumerate(pending) if i in failed_at]
                if fatal or attempt == RETRIES - 1:
                    first = (fatal or errors)[0] if (fatal or errors) else {}
                    raise PartialWriteError(
                        f"MongoDB at {redact(self.url)} refused {len(pending)} of {len(ops)} stats writes: "
                        f"{first.get('errmsg', exc)}",
                        pending,
                    ) from None
            except PyMongoError as exc:
                if attempt > 0:
                    # An earlier attempt applied part of the batch: only the rest goes back.
                    raise PartialWriteError(
                        f"MongoDB at {redact(self.url)} failed on a retry ({exc}); {len(pending)} of {len(ops)} "
                        "stats writes were not applied",
                        pending,
                    ) from None
                # Nothing is known to be applied (e.g. the server was unreachable): all go back.
                raise store_error("write stats to", self.url, exc) from None

    def inc(self, ops: Sequence[Op]) -> None:
        self._write(ops, "$inc")

    def set(self, ops: Sequence[Op]) -> None:
        self._write(ops, "$set")

    def get(self, refs: Sequence[Ref]) -> list[dict[str, Any]]:
        idents = [identifier(self.mode, *ref) for ref in refs]
        found: dict[tuple, dict[str, Any]] = {}
        try:
            for start in range(0, len(idents), 500):
                chunk = idents[start : start + 500]
                for doc in self.collection.find({"$or": chunk}):
                    found[self._ident_key(doc)] = read_data(doc.get("data") or {})
        except Exception as exc:
            raise store_error("read stats from", self.url, exc) from None
        return [found.get(self._ident_key(ident), {}) for ident in idents]

    def _ident_key(self, doc: dict[str, Any]) -> tuple:
        out = []
        for name in ("key", "granularity", "at"):
            if name in doc and (self.mode != "full" or name == "key"):
                value = doc[name]
                if isinstance(value, datetime):
                    value = int(value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp())
                out.append(value)
        return tuple(out)

    def close(self) -> None:
        try:
            self.collection.database.client.close()
        except Exception:
            pass
