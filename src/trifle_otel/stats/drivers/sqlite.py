"""SQLite stats driver in the Trifle::Stats 2.6 layout.

``full`` mode: ``CREATE TABLE trifle_stats (key varchar(255), data json)`` with a unique
index on ``key``.  A flush is one write transaction (read the touched rows, add, write
back) under SQLite's write lock, so any number of processes can write the same rows
exactly.  We write nested values only; we read both nested and flat dotted keys, and keep
flat keys another writer left.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ...errors import ConfigError, StoreError
from ...jsonutil import dumps_text, loads, storable
from ...stores.sqlite_index import connect_sqlite, execute_rows, write_transaction
from ..identifier import check_mode
from ..values import add_path, read_data
from . import Op, Ref

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _at_text(at: int) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SQLiteStatsDriver:
    def __init__(self, path: str | Path, *, mode: str = "full", table: str = "trifle_stats") -> None:
        self.path = Path(path)
        self.mode = check_mode(mode)
        if not _TABLE.match(table):
            raise ConfigError(f"stats table name {table!r} must be letters, digits and underscores")
        self.table = table
        self._lock = threading.Lock()
        self._conn = connect_sqlite(self.path, "stats")
        self._columns = {"full": ("key",), "partial": ("key", "at"), "separated": ("key", "granularity", "at")}[mode]
        try:
            self._conn.executescript(self.schema())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the stats table in {self.path}: {exc}") from None

    def schema(self) -> str:
        t = self.table
        if self.mode == "full":
            return f"CREATE TABLE IF NOT EXISTS {t} (key varchar(255), data json);\n" \
                   f"CREATE UNIQUE INDEX IF NOT EXISTS idx_{t}_key ON {t} (key);"
        if self.mode == "partial":
            return f"CREATE TABLE IF NOT EXISTS {t} (key varchar(255) NOT NULL, at datetime NOT NULL, data json, PRIMARY KEY (key, at));"
        return (f"CREATE TABLE IF NOT EXISTS {t} (key varchar(255) NOT NULL, granularity varchar(255) NOT NULL, "
                f"at datetime NOT NULL, data json, PRIMARY KEY (key, granularity, at));")

    def setup(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, name FROM sqlite_master WHERE tbl_name = ? ORDER BY type DESC, name", (self.table,)
            ).fetchall()
        return [f"{kind} {name}" for kind, name in rows]

    def _ident(self, key: str, granularity: str, at: int) -> tuple[Any, ...]:
        key = storable(key)
        if self.mode == "full":
            return (f"{key}::{granularity}::{at}",)
        if self.mode == "partial":
            return (f"{key}::{granularity}", _at_text(at))
        return (key, granularity, _at_text(at))

    def _upsert(self, ops: Sequence[Op], add: bool) -> None:
        """Apply a flush in one write transaction: read the rows it touches, add (or set)
        the values in Python, write them back.  ``BEGIN IMMEDIATE`` holds the database's
        write lock from the read on, so concurrent writers (other processes, Trifle's own)
        never interleave and increments stay exact.  A few statements a flush, whatever its
        size: each is one call into SQLite (the worker gives up the interpreter lock on each)."""
        width = len(self._columns)
        idents = [self._ident(key, granularity, at) for key, granularity, at, _ in ops]
        with self._lock, write_transaction(self._conn, f"cannot write stats to {self.path}") as c:
            stored = self._read(idents)
            rows: list[Any] = []
            for ident, (_, _, _, flat) in zip(idents, ops):
                data = stored.get(ident)
                if not isinstance(data, dict):
                    data = {}
                for dotted, value in flat.items():
                    add_path(data, dotted.split("."), value, add=add)
                rows.extend(ident)
                rows.append(dumps_text(data))
            cols = ", ".join(self._columns)
            execute_rows(
                c,
                f"INSERT INTO {self.table} ({cols}, data) VALUES {{}} "
                f"ON CONFLICT ({cols}) DO UPDATE SET data = excluded.data",
                rows,
                width + 1,
            )

    def _read(self, idents: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """The stored ``data`` of these rows as written (flat keys kept), in one aggregate
        row per statement rather than a row (and a step into SQLite) each."""
        width = len(self._columns)
        cols = ", ".join(self._columns)
        match = f"({cols}) IN (VALUES {{}})" if width > 1 else "key IN ({})"
        row = "(" + ",".join("?" * width) + ")" if width > 1 else "?"
        step = max(min(self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), 30_000) // width, 1)
        found: dict[tuple[Any, ...], Any] = {}
        for start in range(0, len(idents), step):
            chunk = idents[start : start + step]
            sql = (f"SELECT json_group_array(json_array({cols}, json(data))) FROM {self.table} WHERE "
                   + match.format(",".join([row] * len(chunk))))
            (text,) = self._conn.execute(sql, [v for ident in chunk for v in ident]).fetchone()
            for item in loads(text or "[]"):
                found[tuple(item[:width])] = item[width]
        return found

    def inc(self, ops: Sequence[Op]) -> None:
        self._upsert(ops, add=True)

    def set(self, ops: Sequence[Op]) -> None:
        self._upsert(ops, add=False)

    def get(self, refs: Sequence[Ref]) -> list[dict[str, Any]]:
        idents = [self._ident(*ref) for ref in refs]
        found: dict[tuple, dict[str, Any]] = {}
        cols = ", ".join(self._columns)
        where = " AND ".join(f"{c} = ?" for c in self._columns)
        with self._lock:
            try:
                for start in range(0, len(idents), 300):
                    chunk = idents[start : start + 300]
                    sql = f"SELECT {cols}, data FROM {self.table} WHERE " + " OR ".join(f"({where})" for _ in chunk)
                    for row in self._conn.execute(sql, [v for ident in chunk for v in ident]):
                        found[tuple(row[:-1])] = read_data(json.loads(row[-1] or "{}"))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read stats from {self.path}: {exc}") from None
        return [found.get(ident, {}) for ident in idents]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
