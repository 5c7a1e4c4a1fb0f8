"""Store drivers, opened from URLs: ``sqlite:///path``, ``file:///dir`` (and, with extras,
``mongodb://...`` and ``s3://bucket/prefix``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import DataStore, Page, TraceIndex, TraceQuery

__all__ = ["DataStore", "Page", "TraceIndex", "TraceQuery", "open_index", "open_data", "sqlite_path"]


def _local_path(url: str, scheme: str, what: str) -> Path:
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ConfigError(f"{what} URL {url!r} has no path: use {scheme}:///absolute/path or {scheme}:relative/path")
    return Path(path).expanduser()


def sqlite_path(url: str, what: str) -> Path:
    return _local_path(url, "sqlite", what)


def _scheme(url: str, what: str, known: tuple[str, ...]) -> str:
    scheme = urlsplit(url).scheme.lower() if "://" in url or ":" in url else ""
    if scheme not in known:
        raise ConfigError(
            f"{what} URL {url!r} is not supported: use one of "
            + ", ".join(f"{s}://..." for s in known)
        )
    return scheme


def open_index(url: str) -> TraceIndex:
    scheme = _scheme(url, "trace index", ("sqlite",))
    if scheme == "sqlite":
        from .sqlite_index import SQLiteTraceIndex

        return SQLiteTraceIndex(sqlite_path(url, "trace index"))
    raise AssertionError(scheme)


def open_data(url: str) -> DataStore:
    scheme = _scheme(url, "data store", ("file",))
    if scheme == "file":
        from .directory import DirectoryDataStore

        return DirectoryDataStore(_local_path(url, "file", "data store"))
    raise AssertionError(scheme)
