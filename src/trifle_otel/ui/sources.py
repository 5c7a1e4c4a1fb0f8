"""The stores the UI reads, opened on first use and never created.

A read-only UI pointed at a place where nothing was written yet says so, rather than
making an empty database there: local stores (``sqlite:`` and ``file:`` URLs) are opened
only when they exist, and looked for again on the next request until they do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config import Config
from ..errors import StoreError, TrifleError
from ..sinks import load_artifact, load_lines
from ..stats.api import Stats
from ..stores import DataStore, TraceIndex, open_data, open_index, redact
from .lines import Structure


class StoreMissing(TrifleError):
    """A store the UI reads does not exist (yet)."""


def local_path(url: str) -> Path | None:
    """The file or directory behind a ``sqlite:`` or ``file:`` URL; None for remote stores."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("sqlite", "file"):
        return None
    path = unquote(parts.netloc + parts.path)
    return Path(path).expanduser() if path else None


class Sources:
    LINES_CACHED = 4  # executions whose lines stay in memory (paging through a long one)

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._index: TraceIndex | None = None
        self._data: DataStore | None = None
        self._stats: Stats | None = None
        self._lines: OrderedDict[tuple, Structure] = OrderedDict()

    # -- stores ------------------------------------------------------------------------

    def _check(self, url: str, what: str, hint: str) -> None:
        path = local_path(url)
        if path is not None and not path.exists():
            raise StoreMissing(f"there is no {what} at {path} yet: {hint}")

    def index(self) -> TraceIndex:
        with self._lock:
            if self._index is None:
                url = self.config.resolved_index_url()
                self._check(url, "trace index", "run the processor, the sidecar or `trifle-otel demo` to write"
                            " executions, or point the UI at the store with --config/--home/--index-url")
                self._index = open_index(url)
            return self._index

    def data(self) -> DataStore:
        with self._lock:
            if self._data is None:
                url = self.config.resolved_data_url()
                self._check(url, "trace data store", "check the data URL (--data-url) of the configuration")
                self._data = open_data(url, self.config)
            return self._data

    def stats(self) -> Stats:
        with self._lock:
            if self._stats is None:
                url = self.config.resolved_stats_url()
                self._check(url, "stats store", "stats appear once executions finish or rules track them;"
                            " check --stats-url otherwise")
                self._stats = Stats(self.config, buffered=False)
            return self._stats

    def describe(self) -> dict[str, str]:
        return {
            "index": redact(self.config.resolved_index_url()),
            "data": redact(self.config.resolved_data_url()),
            "stats": redact(self.config.resolved_stats_url()),
        }

    # -- reads -------------------------------------------------------------------------

    def structure(self, record: dict[str, Any]) -> Structure:
        """The execution's lines (kept for the next page of the same execution)."""
        key = (record["reference"], str(record.get("last_at")), record.get("length"), record.get("parts"),
               record.get("state"))
        with self._lock:
            found = self._lines.get(key)
            if found is not None:
                self._lines.move_to_end(key)
                return found
        lines = load_lines(self.data(), record)
        structure = Structure.of(lines, record.get("first_at"))
        with self._lock:
            self._lines[key] = structure
            while len(self._lines) > self.LINES_CACHED:
                self._lines.popitem(last=False)
        return structure

    def artifact(self, record: dict[str, Any], name: str) -> bytes | None:
        return load_artifact(self.data(), record, name)

    def close(self) -> None:
        with self._lock:
            for closing in (self._index, self._data):
                if closing is not None:
                    try:
                        closing.close()
                    except Exception:  # noqa: BLE001 - closing at shutdown must not raise
                        pass
            if self._stats is not None:
                try:
                    self._stats.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            self._index = self._data = self._stats = None


__all__ = ["Sources", "StoreMissing", "StoreError", "local_path"]
