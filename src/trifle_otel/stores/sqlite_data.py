"""Embedded data store: line parts and artifacts as rows of a SQLite database.

A cycle's documents are one transaction of a few multi-row statements, not a directory and
a file per execution: each statement runs in one call into SQLite, so the worker gives up
the interpreter lock a handful of times per cycle rather than once per file (a busy
application thread would otherwise hold it for a whole switch interval every time).
Rows are keyed by the same paths as the S3 layout (``<retention>/<prefix>/<key>/<ref>/...``),
bodies over ``COMPRESS_OVER`` bytes are stored zlib-compressed.  A home written by the
directory layout still reads: paths missing here are looked up in that directory.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from pathlib import Path
from typing import Sequence

from ..errors import StoreError
from .directory import DirectoryDataStore
from .layout import DEFAULT_PREFIX
from .sqlite_index import PAGE_SIZE, connect_sqlite, execute_rows, write_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS trifle_data (
    path TEXT PRIMARY KEY,
    codec INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""
COMPRESS_OVER = 16 * 1024

Put = tuple[str, bytes, "str | None"]  # (path, body, bucket)


class SQLiteDataStore:
    def __init__(self, path: str | Path, *, legacy_dir: str | Path | None = None, create: bool = True) -> None:
        self.path = Path(path)
        self.bucket_name = ""
        self.prefix = DEFAULT_PREFIX
        self._lock = threading.Lock()
        legacy = Path(legacy_dir) if legacy_dir is not None else None
        self._legacy = DirectoryDataStore(legacy, create=False) if legacy is not None and legacy.is_dir() else None
        self._conn: sqlite3.Connection | None = None
        if not create and not self.path.exists():
            return  # a reader of a home that only has the directory layout: nothing to create
        self._conn = connect_sqlite(self.path, "trace data", page_size=PAGE_SIZE)
        try:
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the trace data table in {self.path}: {exc}") from None

    @property
    def exists(self) -> bool:
        """Whether there is anything to read: the database, or an older data directory."""
        return self._conn is not None or self._legacy is not None

    def _writable(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the trace data database {self.path} was opened read-only")
        return self._conn

    def bucket_for(self, reference: str) -> str:
        return ""

    def put(self, path: str, body: bytes, bucket: str | None = None) -> None:
        self.put_many([(path, body, bucket)])

    def put_many(self, items: Sequence[Put]) -> list[int]:
        """Write every item in one transaction; returns the indexes that failed (none, or
        all of them with StoreError raised)."""
        rows: list[object] = []
        for path, body, _ in items:
            if len(body) > COMPRESS_OVER:
                rows.extend((path, 1, zlib.compress(body, 1)))
            else:
                rows.extend((path, 0, body))
        with self._lock, write_transaction(self._writable(), f"cannot write trace data to {self.path}") as c:
            execute_rows(c, "INSERT OR REPLACE INTO trifle_data (path, codec, body) VALUES {}", rows, 3)
        return []

    def get(self, path: str, bucket: str | None = None) -> bytes | None:
        with self._lock:
            try:
                row = (
                    self._conn.execute("SELECT codec, body FROM trifle_data WHERE path = ?", (path,)).fetchone()
                    if self._conn is not None
                    else None
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read trace data from {self.path}: {exc}") from None
        if row is None:
            return self._legacy.get(path) if self._legacy is not None else None
        codec, body = row
        return zlib.decompress(body) if codec == 1 else bytes(body)

    def delete_prefix(self, prefix: str, bucket: str | None = None) -> None:
        with self._lock:
            try:
                self._writable().execute(
                    "DELETE FROM trifle_data WHERE path >= ? AND path < ?", (prefix, prefix + "\U0010ffff")
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot delete trace data from {self.path}: {exc}") from None
        if self._legacy is not None:
            self._legacy.delete_prefix(prefix)

    def setup(self, retention_days=()) -> list[str]:
        out = [f"trace data table trifle_data in {self.path}"]
        if self._legacy is not None:
            out.append(f"older trace data read from {self._legacy.root}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
