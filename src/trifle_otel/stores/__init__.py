"""Store drivers, opened from URLs: ``sqlite:///path``, ``file:///dir`` (and, with extras,
``mongodb://...`` and ``s3://bucket/prefix``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import DataStore, Page, TraceIndex, TraceQuery

DATA_SCHEMES = ("sqlite", "file", "s3")

__all__ = ["DataStore", "Page", "TraceIndex", "TraceQuery", "check_urls", "redact", "open_data", "open_index", "sqlite_path"]


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


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
    scheme = _scheme(url, "trace index", ("sqlite", "mongodb", "mongodb+srv"))
    if scheme == "sqlite":
        from .sqlite_index import SQLiteTraceIndex

        return SQLiteTraceIndex(sqlite_path(url, "trace index"))
    from .mongo_index import MongoTraceIndex

    return MongoTraceIndex(url)


def open_data(url: str, config: Any = None, *, create: bool = True) -> DataStore:
    """The data store at ``url``; ``create=False`` (readers) makes no new embedded database."""
    scheme = _scheme(url, "data store", DATA_SCHEMES)
    if scheme == "sqlite":
        from .sqlite_data import SQLiteDataStore

        path = sqlite_path(url, "data store")
        # A home written before the data moved into SQLite keeps its files in <home>/data.
        return SQLiteDataStore(path, legacy_dir=path.parent / "data", create=create)
    if scheme == "file":
        from .directory import DirectoryDataStore

        return DirectoryDataStore(_local_path(url, "file", "data store"))
    from .s3 import S3DataStore

    return S3DataStore(
        url,
        endpoint_url=getattr(config, "s3_endpoint_url", None),
        region=getattr(config, "s3_region", None),
        concurrency=getattr(config, "s3_concurrency", 32),
    )


def check_urls(config: Any) -> None:
    """Refuse unsupported store URLs when the configuration loads, not at the first write."""
    _scheme(config.resolved_index_url(), "trace index", ("sqlite", "mongodb", "mongodb+srv"))
    _scheme(config.resolved_stats_url(), "stats store", ("sqlite", "mongodb", "mongodb+srv"))
    if _scheme(config.resolved_data_url(), "data store", DATA_SCHEMES) == "s3":
        from .s3 import parse_s3_url

        parse_s3_url(config.resolved_data_url())
