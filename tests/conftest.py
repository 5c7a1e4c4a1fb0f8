from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trifle_otel.config import Config
from trifle_otel.model import Event, Execution, Span

_ids = itertools.count(1)
T0 = 1_795_000_000_000_000_000  # 2026-11-19T...Z in ns


def new_id(width: int = 16) -> str:
    return format(next(_ids), f"0{width}x")


def make_span(name: str, start_ms: float, end_ms: float | None, parent: Span | None = None, **kw) -> Span:
    trace_id = parent.trace_id if parent is not None else kw.pop("trace_id", new_id(32))
    events = tuple(
        Event(e[0], T0 + int(e[1] * 1e6), e[2] if len(e) > 2 else {}) for e in kw.pop("events", ())
    )
    return Span(
        trace_id=trace_id,
        span_id=kw.pop("span_id", new_id()),
        name=name,
        start_ns=T0 + int(start_ms * 1e6),
        end_ns=T0 + int(end_ms * 1e6) if end_ms is not None else None,
        parent_span_id=parent.span_id if parent is not None else kw.pop("parent_span_id", None),
        events=events,
        **kw,
    )


def execution(root: Span, *spans: Span) -> Execution:
    return Execution(root, list(spans))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def config(home: Path) -> Config:
    return Config(home=str(home), flush_interval=0.05, live_interval=0.2)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("TRIFLE_OTEL_") or var.startswith("OTEL_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# -- MongoDB and S3 backends ----------------------------------------------------------------

MONGODB_URI = os.environ.get("TRIFLE_TEST_MONGODB_URI")


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible HTTP server (moto) on 127.0.0.1, reached by boto3 over HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


_dbs = itertools.count(1)


@pytest.fixture
def mongo_url(monkeypatch):
    """A MongoDB URL: a real server when TRIFLE_TEST_MONGODB_URI is set, else mongomock."""
    name = f"trifle_test_{os.getpid()}_{next(_dbs)}"
    if MONGODB_URI:
        import pymongo

        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(MONGODB_URI)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        pymongo.MongoClient(MONGODB_URI).drop_database(name)
        return
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    from trifle_otel.stores import mongo

    # pymongo >= 4.11 passes `sort` to bulk operations; mongomock 4.3 predates it.
    for name in ("add_update", "add_replace"):
        original = getattr(BulkOperationBuilder, name)
        if not getattr(original, "_accepts_sort", False):
            def accepting_sort(self, *args, _original=original, sort=None, **kwargs):
                if sort is not None:
                    raise NotImplementedError("mongomock: sort in bulk operations")
                return _original(self, *args, **kwargs)

            accepting_sort._accepts_sort = True
            monkeypatch.setattr(BulkOperationBuilder, name, accepting_sort)
    server = mongomock.MongoClient()
    monkeypatch.setattr(mongo, "client_factory", lambda url: server)
    yield f"mongodb://127.0.0.1:27017/{name}"


_buckets = itertools.count(1)


@pytest.fixture(params=["embedded", pytest.param("mongo_s3", marks=[pytest.mark.mongo, pytest.mark.s3])])
def backend(request, tmp_path):
    """A Config for each driver combination: SQLite + directory, MongoDB + S3."""
    if request.param == "embedded":
        return Config(home=str(tmp_path / "store"), flush_interval=0.05, live_interval=0.2)
    url = request.getfixturevalue("mongo_url")
    request.getfixturevalue("s3_env")
    bucket = f"trifle-test-{os.getpid()}-{next(_buckets)}"
    config = Config(
        home=str(tmp_path / "store"),
        index_url=url,
        stats_url=url,
        data_url=f"s3://{bucket}/traces",
        flush_interval=0.05,
        live_interval=0.2,
    )
    from trifle_otel.stores import open_data

    open_data(config.resolved_data_url(), config).setup([config.retention_days])
    return config


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory):
    """The README's first command, as a user runs it: the installed console script."""
    home = tmp_path_factory.mktemp("demo") / ".trifle"
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(home)}
    proc = subprocess.run([str(Path(sys.executable).parent / "trifle-otel"), "demo", "--jobs", "60"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "trifle-otel traces list" in proc.stdout
    return home
