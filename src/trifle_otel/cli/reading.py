"""Opening stores for the read-only commands: they never create one.

``traces list --home /tmp/typo`` must say that no store is there, not create an empty
database and report that nothing matches.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config import Config
from ..errors import NotFoundError
from ..stores import TraceIndex, open_index, redact, sqlite_path
from ..stores.base import DataStore

_HOW = ("point at a store with --home DIR (or TRIFLE_OTEL_HOME), --config FILE (or TRIFLE_OTEL_CONFIG) "
        "or --{flag}; the default is ./.trifle, where `trifle-otel demo` writes")


def _missing_file(url: str, what: str) -> Path | None:
    """The path of a local store that does not exist (None when it exists or is remote)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = sqlite_path(url, what)
    elif scheme == "file":
        parts = urlsplit(url)
        path = Path(unquote(parts.netloc + parts.path)).expanduser()
    else:
        return None
    return None if path.exists() else path


def require_store(url: str, what: str, flag: str) -> None:
    """Refuse to read a local store that is not there, saying how to point at one."""
    path = _missing_file(url, what)
    if path is not None:
        raise NotFoundError(f"no {what} at {path}: no store exists there; {_HOW.format(flag=flag)}")


def existing_index(config: Config) -> TraceIndex:
    url = config.resolved_index_url()
    require_store(url, "trace index", "index-url URL")
    return open_index(url)


def index_exists(config: Config) -> bool:
    return _missing_file(config.resolved_index_url(), "trace index") is None


def existing_data(config: Config) -> DataStore:
    from ..stores import open_data

    url = config.resolved_data_url()
    if urlsplit(url).scheme.lower() == "sqlite":
        data = open_data(url, config, create=False)
        if not getattr(data, "exists", True):
            require_store(url, "trace data", "data-url URL")
        return data
    require_store(url, "trace data directory", "data-url URL")
    return open_data(url, config)


def references_starting(index: TraceIndex, prefix: str, limit: int = 10) -> list[dict[str, Any]]:
    """Up to ``limit`` executions whose reference starts with ``prefix`` (reference, key,
    first_at, state), to tell the user which ones an ambiguous prefix names."""
    from ..stores.sqlite_index import SQLiteTraceIndex

    if isinstance(index, SQLiteTraceIndex):
        uri = index.path.resolve().as_uri() + "?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            rows = conn.execute(
                "SELECT reference, key, first_at, state FROM trifle_traces WHERE reference >= ? AND reference < ?"
                " ORDER BY reference LIMIT ?",
                (prefix, prefix + "\uffff", limit),
            ).fetchall()
        return [{"reference": r, "key": k, "first_at": datetime.fromtimestamp(t, timezone.utc), "state": s}
                for r, k, t, s in rows]
    collection = getattr(index, "collection", None)
    if collection is not None:  # MongoDB: _id is the reference
        docs = collection.find({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}},
                               {"_id": 1, "key": 1, "first_at": 1, "state": 1}).sort("_id", 1).limit(limit)
        out = []
        for doc in docs:
            first_at = doc.get("first_at")
            if isinstance(first_at, datetime) and first_at.tzinfo is None:
                first_at = first_at.replace(tzinfo=timezone.utc)
            out.append({"reference": doc["_id"], "key": doc.get("key", ""), "first_at": first_at,
                        "state": doc.get("state", "")})
        return out
    return []


def find_execution(config: Config, index: TraceIndex, reference: str) -> dict[str, Any]:
    """The record a reference (or a unique prefix of one) names; says so when the prefix is
    ambiguous or names nothing."""
    wanted = reference.strip()
    record = index.get(wanted) if wanted else None
    if record is None and wanted.lower() != wanted:
        record = index.get(wanted.lower())
        wanted = wanted.lower() if record is not None else wanted
    if record is not None:
        return record
    where = redact(config.resolved_index_url())
    matches = references_starting(index, wanted, limit=10) if wanted else []
    if len(matches) > 1:
        shown = ", ".join(
            f"{m['reference'][:16]} ({m['key']}, {m['state']}, "
            f"{m['first_at'].astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC') if m['first_at'] else '?'})"
            for m in matches
        )
        more = " and more" if len(matches) >= 10 else ""
        raise NotFoundError(f"reference {reference!r} is ambiguous: it starts {shown}{more}; give more of it")
    raise NotFoundError(
        f"no execution with reference {reference!r} in {where}: "
        "list references with `trifle-otel traces list` (a unique prefix is enough)"
    )
