"""SQLite trace index: table ``trifle_traces`` plus segment and tag tables for search.

Every search filter is served by an index walked newest first, so a page costs the
page, not the table.  WAL mode lets the CLI and the UI read while a worker writes.

Writes are what a busy worker pays for, and their cost is the pages each transaction
dirties: an insert at a random place in a b-tree dirties a page of its own, which the
commit writes to the WAL and a checkpoint copies again.  So the schema keeps no index
that no query walks: the segment and tag rows of a record being replaced are found by
their full keys (the old record says which), not through an index by reference.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import StoreError
from ..jsonutil import dumps_text, loads
from .base import TIME_FIELDS, Page, TraceQuery, decode_cursor, encode_cursor

SCHEMA = """
CREATE TABLE IF NOT EXISTS trifle_traces (
    reference TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    duration INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    trace_id TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trifle_traces_first_at ON trifle_traces (first_at DESC, reference DESC);
CREATE INDEX IF NOT EXISTS trifle_traces_state ON trifle_traces (state, first_at DESC, reference DESC);
CREATE INDEX IF NOT EXISTS trifle_traces_duration ON trifle_traces (duration, first_at);
CREATE INDEX IF NOT EXISTS trifle_traces_expires_at ON trifle_traces (expires_at);
CREATE TABLE IF NOT EXISTS trifle_traces_segments (
    segment TEXT NOT NULL, first_at REAL NOT NULL, reference TEXT NOT NULL,
    PRIMARY KEY (segment, first_at, reference)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trifle_traces_tags (
    tag TEXT NOT NULL, first_at REAL NOT NULL, reference TEXT NOT NULL,
    PRIMARY KEY (tag, first_at, reference)
) WITHOUT ROWID;
"""
# Indexes of earlier versions that no query used (each cost a random insert per record).
DROPPED_INDEXES = ("trifle_traces_trace_id", "trifle_traces_segments_reference", "trifle_traces_tags_reference")


def _ts(value: datetime) -> float:
    return value.timestamp()


_encode = dumps_text


def decode_record(text: str) -> dict[str, Any]:
    record = loads(text)
    for name in TIME_FIELDS:
        if isinstance(record.get(name), str):
            record[name] = datetime.fromisoformat(record[name])
    return record


# The trace index and data use 16 KiB pages, not SQLite's 4 KiB: a commit writes each page it
# dirtied to the WAL and a checkpoint copies it again, a system call each, and records and
# parts of 1-3 KB fill 4 KiB pages in a few rows.  Store writes alone took 27-45% less time
# (bench/worker_stages.py, a store of 22,000 and of 122,000 executions).
PAGE_SIZE = 16_384


def connect_sqlite(path: Path, what: str, *, page_size: int | None = None) -> sqlite3.Connection:
    """Open (creating its directory) a SQLite database in WAL mode, or say clearly why not.
    ``page_size`` applies to a new database only: one that exists keeps its own."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        if page_size:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-32768")  # 32 MiB: batches insert at random places in big indexes
        return conn
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open the {what} database {path}: {exc}; "
            f"check that the directory exists and is writable, or set another URL"
        ) from None


@contextmanager
def write_transaction(conn: sqlite3.Connection, failure: str) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``.  Whatever fails inside (an SQLite error, a string
    SQLite cannot take) rolls back: a write lock left held would stop every other writer.
    SQLite's errors become ``StoreError("<failure>: <why>")``."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{failure}: {exc}") from None
        raise


MAX_STATEMENT_PARAMETERS = 2_304  # 256 rows of the index's 9 columns


def execute_rows(conn: sqlite3.Connection, sql: str, flat: list[Any], width: int, *, group: bool = True) -> None:
    """Run ``sql`` with its ``{}`` filled by as many rows of ``width`` parameters as
    ``MAX_STATEMENT_PARAMETERS`` allows (and SQLite's own limit), so a batch is a few calls,
    not one a row.  Not more: the driver keeps up to 128 prepared statements per connection,
    one per row count, and a statement of thousands of rows is megabytes (an application
    grew by ~50 MB of them in a benchmark, with no gain in speed)."""
    limit = min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), MAX_STATEMENT_PARAMETERS)
    step = max(limit // width, 1) * width
    row = "(" + ",".join("?" * width) + ")" if group else "?"
    for start in range(0, len(flat), step):
        chunk = flat[start : start + step]
        conn.execute(sql.format(",".join([row] * (len(chunk) // width))), chunk)


def _delete_search_rows(conn: sqlite3.Connection, references: list[str]) -> None:
    """Delete the segment and tag rows of those of ``references`` that are in the table,
    by their full keys (segment or tag, first_at, reference), read from the stored records.
    A new record costs one lookup in the reference index, which its insert reads next."""
    limit = min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), MAX_STATEMENT_PARAMETERS)
    segments: list[tuple[str, float, str]] = []
    tags: list[tuple[str, float, str]] = []
    unreadable: list[str] = []
    for start in range(0, len(references), limit):
        chunk = references[start : start + limit]
        found = conn.execute(
            f"SELECT reference, first_at, record FROM trifle_traces WHERE reference IN ({','.join('?' * len(chunk))})", chunk
        ).fetchall()
        for reference, first_at, text in found:
            try:
                old = loads(text)
                segments.extend((str(s), first_at, reference) for s in old.get("segments") or ())
                tags.extend((str(t), first_at, reference) for t in old.get("tags") or ())
            except Exception:
                unreadable.append(reference)
    if segments:
        conn.executemany("DELETE FROM trifle_traces_segments WHERE segment = ? AND first_at = ? AND reference = ?", segments)
    if tags:
        conn.executemany("DELETE FROM trifle_traces_tags WHERE tag = ? AND first_at = ? AND reference = ?", tags)
    for table in ("trifle_traces_segments", "trifle_traces_tags"):  # (a damaged record: a scan, rare)
        execute_rows(conn, f"DELETE FROM {table} WHERE reference IN ({{}})", unreadable, 1, group=False)


class SQLiteTraceIndex:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect_sqlite(self.path, "trace index", page_size=PAGE_SIZE)
        try:
            self._conn.executescript(SCHEMA)
            self._drop_unused_indexes()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the trace index tables in {self.path}: {exc}") from None

    def _drop_unused_indexes(self) -> None:
        present = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name in DROPPED_INDEXES:
            if name in present:
                self._conn.execute(f"DROP INDEX IF EXISTS {name}")

    def setup(self) -> list[str]:
        """The tables and indexes (created when the index opens; idempotent)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, name FROM sqlite_master WHERE name LIKE 'trifle_traces%' ORDER BY type DESC, name"
            ).fetchall()
        return [f"{kind} {name}" for kind, name in rows]

    def upsert(self, records: Sequence[dict[str, Any]]) -> None:
        """Insert or replace records (idempotent: a retried write replaces).

        One transaction of a few multi-row statements: each statement is one call into
        SQLite, so a batch releases the interpreter lock a handful of times, not per row.
        The segment and tag rows of records already there are deleted first (a running
        record's key, tags or start may have changed since it was written).
        """
        rows: list[Any] = []
        segments: list[Any] = []
        tags: list[Any] = []
        refs: list[str] = []
        for r in records:
            first_at = _ts(r["first_at"])
            reference = r["reference"]
            refs.append(reference)
            rows.extend(
                (reference, r["key"], r["state"], first_at, _ts(r["last_at"]), int(r["duration"]),
                 _ts(r["expires_at"]), r.get("trace_id"), _encode(r))
            )
            for s in r["segments"]:
                segments.extend((s, first_at, reference))
            for t in r["tags"]:
                tags.extend((t, first_at, reference))
        with self._lock, write_transaction(self._conn, f"cannot write to the trace index {self.path}") as c:
            _delete_search_rows(c, refs)  # (first: it reads the records being replaced)
            execute_rows(c, "INSERT INTO trifle_traces (reference, key, state, first_at, last_at, duration, expires_at,"
                         " trace_id, record) VALUES {} ON CONFLICT(reference) DO UPDATE SET"
                         " key=excluded.key, state=excluded.state, first_at=excluded.first_at,"
                         " last_at=excluded.last_at, duration=excluded.duration, expires_at=excluded.expires_at,"
                         " trace_id=excluded.trace_id, record=excluded.record", rows, 9)
            execute_rows(c, "INSERT OR IGNORE INTO trifle_traces_segments VALUES {}", segments, 3)
            execute_rows(c, "INSERT OR IGNORE INTO trifle_traces_tags VALUES {}", tags, 3)

    def delete(self, references: Sequence[str]) -> None:
        refs = list(references)
        with self._lock, write_transaction(self._conn, f"cannot delete from the trace index {self.path}") as c:
            _delete_search_rows(c, refs)
            execute_rows(c, "DELETE FROM trifle_traces WHERE reference IN ({})", refs, 1, group=False)

    def expired(self, before: datetime, limit: int = 1000) -> list[dict[str, Any]]:
        """Records whose ``expires_at`` has passed (SQLite has no TTL index: the worker purges)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM trifle_traces WHERE expires_at < ? ORDER BY expires_at LIMIT ?",
                (_ts(before), limit),
            ).fetchall()
        return [decode_record(r[0]) for r in rows]

    def get(self, reference: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM trifle_traces WHERE reference >= ? AND reference < ? LIMIT 2",
                (reference, reference + "\uffff"),
            ).fetchall()
        if len(rows) != 1:
            exact = [r for r in rows if loads(r[0])["reference"] == reference]
            rows = exact if len(exact) == 1 else []
        return decode_record(rows[0][0]) if rows else None

    def query_plan(self, query: TraceQuery) -> list[str]:
        sql, params = self._sql(query)
        with self._lock:
            return [row[-1] for row in self._conn.execute("EXPLAIN QUERY PLAN " + sql, params)]

    def search(self, query: TraceQuery) -> Page:
        sql, params = self._sql(query)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        records = [decode_record(r[0]) for r in rows[: query.limit]]
        cursor = None
        if len(rows) > query.limit:
            last = rows[query.limit - 1]
            cursor = encode_cursor(last[1], last[2])
        return Page(records, cursor)

    def _sql(self, q: TraceQuery) -> tuple[str, list[Any]]:
        params: list[Any] = []
        where: list[str] = []
        tags_all = list(q.tags_all)
        if q.key:
            drive = "s"
            src = "trifle_traces_segments s JOIN trifle_traces t ON t.reference = s.reference"
            where.append("s.segment = ?")
            params.append(q.key.strip("/"))
        elif tags_all or len(q.tags_any) == 1:
            drive = "g"
            src = "trifle_traces_tags g JOIN trifle_traces t ON t.reference = g.reference"
            where.append("g.tag = ?")
            params.append(tags_all.pop(0) if tags_all else q.tags_any[0])
        else:
            drive = "t"
            src = "trifle_traces t"
        if q.states:
            where.append(f"t.state IN ({','.join('?' * len(q.states))})")
            params.extend(q.states)
        for tag in tags_all:
            where.append(
                "EXISTS (SELECT 1 FROM trifle_traces_tags x WHERE x.tag = ? AND x.first_at = t.first_at"
                " AND x.reference = t.reference)"
            )
            params.append(tag)
        if q.tags_any and not (drive == "g" and len(q.tags_any) == 1 and not q.tags_all):
            where.append(
                f"EXISTS (SELECT 1 FROM trifle_traces_tags x WHERE x.tag IN ({','.join('?' * len(q.tags_any))})"
                " AND x.first_at = t.first_at AND x.reference = t.reference)"
            )
            params.extend(q.tags_any)
        if q.since is not None:
            where.append(f"{drive}.first_at >= ?")
            params.append(_ts(q.since))
        if q.until is not None:
            where.append(f"{drive}.first_at < ?")
            params.append(_ts(q.until))
        if q.min_duration is not None:
            where.append("t.duration >= ?")
            params.append(q.min_duration)
        if q.stuck_before is not None:
            where.append("t.state = 'running' AND t.first_at < ?")
            params.append(_ts(q.stuck_before))
        if q.cursor:
            first_at, reference = decode_cursor(q.cursor)
            where.append(f"({drive}.first_at, {drive}.reference) < (?, ?)")
            params.extend([first_at, reference])
        sql = f"SELECT t.record, {drive}.first_at, {drive}.reference FROM {src}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {drive}.first_at DESC, {drive}.reference DESC LIMIT ?"
        params.append(q.limit + 1)
        return sql, params

    def close(self) -> None:
        with self._lock:
            self._conn.close()
