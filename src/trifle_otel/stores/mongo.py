"""MongoDB connections (pymongo), shared by the trace index and the stats driver."""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import ConfigError, StoreError
from . import redact

DEFAULT_DATABASE = "trifle"
MAX_BSON = 16 * 1024 * 1024


def _client(url: str) -> Any:
    try:
        import pymongo
    except ImportError:
        raise ConfigError("MongoDB stores need pymongo: pip install 'trifle-otel[mongo]'") from None
    kwargs: dict[str, Any] = {}
    if "serverSelectionTimeoutMS" not in url:
        kwargs["serverSelectionTimeoutMS"] = 5000
    try:
        return pymongo.MongoClient(url, **kwargs)
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError) as exc:
        raise ConfigError(f"MongoDB URL {redact(url)} is not valid: {exc}") from None


# The seam tests use to run the drivers on mongomock; production uses pymongo.MongoClient.
client_factory: Callable[[str], Any] = _client


def database(url: str) -> Any:
    """The database named in ``mongodb://host/<database>`` (default ``trifle``)."""
    name = urlsplit(url).path.strip("/") or DEFAULT_DATABASE
    if not re.match(r"^[A-Za-z0-9_-]+$", name):
        raise ConfigError(f"MongoDB URL {redact(url)}: database name {name!r} must be letters, digits, '_' or '-'")
    return client_factory(url)[name]


def store_error(what: str, url: str, exc: Exception) -> StoreError:
    return StoreError(f"cannot {what} MongoDB at {redact(url)}: {exc.__class__.__name__}: {exc}; "
                      "check that the server is reachable and the URL and credentials are right")


def bson_size(document: dict[str, Any]) -> int:
    import bson

    return len(bson.encode(document))
