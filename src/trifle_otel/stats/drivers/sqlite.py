"""SQLite stats driver in the Trifle::Stats 2.6 layout.

``full`` mode: ``CREATE TABLE trifle_stats (key varchar(255), data json)`` with a unique
index on ``key``; increments are single upserts that add to the JSON values in place
(``json_set(data, path, IFNULL(json_extract(data, path), 0) + ?)``), so any number of
processes can write the same rows exactly.  We write nested values only; we read both
nested and flat dotted keys.
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
from ...stores.sqlite_index import connect_sqlite
from ..identifier import check_mode
from ..values import nest, read_data
from . import Op, Ref

CHUNK = 50  # paths per statement (SQLite's expression depth and argument limits)
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_path(dotted: str) -> str:
    return "$" + "".join('."' + part + '"' for part in dotted.split("."))


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
        if self.mode == "full":
            return (f"{key}::{granularity}::{at}",)
        if self.mode == "partial":
            return (f"{key}::{granularity}", _at_text(at))
        return (key, granularity, _at_text(at))

    def _upsert(self, ops: Sequence[Op], value_sql: str, encode) -> None:
        cols = ", ".join(self._columns)
        marks = ", ".join("?" * len(self._columns))
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                for key, granularity, at, flat in ops:
                    ident = self._ident(key, granularity, at)
                    items = list(flat.items())
                    for start in range(0, len(items), CHUNK):
                        chunk = items[start : start + CHUNK]
                        sets, params = [], []
                        for dotted, value in chunk:
                            path = _json_path(dotted)
                            sets.append(value_sql)
                            params.extend(encode(path, value))
                        initial = nest(dict(chunk))
                        sql = (
                            f"INSERT INTO {self.table} ({cols}, data) VALUES ({marks}, json(?)) "
                            f"ON CONFLICT ({cols}) DO UPDATE SET data = json_set(data, {', '.join(sets)})"
                        )
                        c.execute(sql, (*ident, json.dumps(initial), *params))
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise StoreError(f"cannot write stats to {self.path}: {exc}") from None

    def inc(self, ops: Sequence[Op]) -> None:
        self._upsert(ops, "?, IFNULL(json_extract(data, ?), 0) + ?", lambda path, v: (path, path, v))

    def set(self, ops: Sequence[Op]) -> None:
        self._upsert(ops, "?, json(?)", lambda path, v: (path, json.dumps(v)))

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
