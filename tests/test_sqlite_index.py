"""Search on the SQLite trace index: filters, newest first, cursor paging, index use."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from trifle_otel.errors import ConfigError
from trifle_otel.stores.base import TraceQuery
from trifle_otel.stores.sqlite_index import SQLiteTraceIndex
from trifle_otel.translate import segments_of

BASE = datetime(2026, 11, 1, tzinfo=timezone.utc)


def record(n: int, key: str, state: str = "success", tags=(), duration: int = 10, minutes: int | None = None):
    first_at = BASE + timedelta(minutes=n if minutes is None else minutes)
    return {
        "reference": f"{n:016x}" + "0" * 32,
        "key": key,
        "segments": segments_of(key),
        "tags": list(tags),
        "state": state,
        "meta": {},
        "context": {},
        "duration": duration,
        "counters": {},
        "length": 1,
        "parts": 1,
        "first_at": first_at,
        "last_at": first_at,
        "retention": 30,
        "expires_at": first_at + timedelta(days=30),
        "trace_id": "0" * 32,
    }


def sample_records():
    """Five records the search tests of every index driver use."""
    return [
        record(1, "prices/calculate", "success", ["customer.id:acme"], 5),
        record(2, "prices/calculate", "error", ["customer.id:globex"], 50),
        record(3, "prices/import", "warning", ["customer.id:acme", "vip"], 500),
        record(4, "products/refresh", "success", ["vip"], 5000),
        record(5, "prices", "running", [], 1),
    ]


@pytest.fixture
def index(tmp_path):
    idx = SQLiteTraceIndex(tmp_path / "t.db")
    idx.upsert(sample_records())
    yield idx
    idx.close()


def keys(page):
    return [r["reference"][:16].lstrip("0") for r in page.records]


def test_filters(index):
    assert keys(index.search(TraceQuery())) == ["5", "4", "3", "2", "1"]
    assert keys(index.search(TraceQuery(key="prices"))) == ["5", "3", "2", "1"]
    assert keys(index.search(TraceQuery(key="prices/calculate"))) == ["2", "1"]
    assert keys(index.search(TraceQuery(key="price"))) == []  # segments, not string prefixes
    assert keys(index.search(TraceQuery(states=["error", "warning"]))) == ["3", "2"]
    assert keys(index.search(TraceQuery(tags_all=["customer.id:acme"]))) == ["3", "1"]
    assert keys(index.search(TraceQuery(tags_all=["customer.id:acme", "vip"]))) == ["3"]
    assert keys(index.search(TraceQuery(tags_any=["customer.id:globex", "vip"]))) == ["4", "3", "2"]
    assert keys(index.search(TraceQuery(min_duration=50))) == ["4", "3", "2"]
    assert keys(index.search(TraceQuery(since=BASE + timedelta(minutes=2), until=BASE + timedelta(minutes=4)))) == ["3", "2"]
    assert keys(index.search(TraceQuery(key="prices", states=["success"], tags_all=["customer.id:acme"]))) == ["1"]
    assert keys(index.search(TraceQuery(stuck_before=BASE + timedelta(minutes=6)))) == ["5"]
    assert keys(index.search(TraceQuery(stuck_before=BASE + timedelta(minutes=4)))) == []


def test_records_round_trip_with_times(index):
    r = index.search(TraceQuery(key="products")).records[0]
    assert r["first_at"] == BASE + timedelta(minutes=4) and r["segments"] == ["products", "products/refresh"]


def test_cursor_paging_visits_every_record_once(index):
    seen, cursor = [], None
    while True:
        page = index.search(TraceQuery(limit=2, cursor=cursor))
        seen += keys(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["5", "4", "3", "2", "1"]
    page = index.search(TraceQuery(key="prices", limit=3))
    assert keys(page) == ["5", "3", "2"] and keys(index.search(TraceQuery(key="prices", limit=3, cursor=page.next_cursor))) == ["1"]


def test_paging_is_stable_when_records_share_a_start_time(tmp_path):
    idx = SQLiteTraceIndex(tmp_path / "t.db")
    idx.upsert([record(n, "k", minutes=0) for n in range(1, 8)])
    seen, cursor = [], None
    while True:
        page = idx.search(TraceQuery(limit=3, cursor=cursor))
        seen += keys(page)
        if not (cursor := page.next_cursor):
            break
    assert sorted(seen) == [str(n) for n in range(1, 8)] and len(seen) == 7


def test_bad_cursor_is_a_clear_error(index):
    with pytest.raises(ConfigError, match="cursor"):
        index.search(TraceQuery(cursor="not-a-cursor"))


def test_get_by_reference_or_unique_prefix(index):
    ref = f"{3:016x}" + "0" * 32
    assert index.get(ref)["key"] == "prices/import"
    assert index.get(ref[:16])["key"] == "prices/import"
    assert index.get("0000") is None  # ambiguous
    assert index.get("ffff") is None


def test_upsert_replaces_tags_and_state(index):
    updated = record(3, "prices/import", "error", ["new-tag"], 600)
    index.upsert([updated])
    assert keys(index.search(TraceQuery(tags_all=["vip"]))) == ["4"]
    assert keys(index.search(TraceQuery(tags_all=["new-tag"]))) == ["3"]
    assert len(index.search(TraceQuery()).records) == 5


@pytest.mark.parametrize(
    "query",
    [
        TraceQuery(),
        TraceQuery(key="prices"),
        TraceQuery(states=["error"]),
        TraceQuery(tags_all=["vip"]),
        TraceQuery(tags_any=["vip", "x"]),
        TraceQuery(min_duration=100),
        TraceQuery(key="prices", tags_all=["vip", "y"], since=BASE, cursor=None),
        TraceQuery(stuck_before=BASE),
    ],
)
def test_every_filter_is_served_by_an_index(index, query):
    plan = " | ".join(index.query_plan(query))
    assert "USING" in plan
    for step in index.query_plan(query):
        if step.startswith("SCAN"):
            assert "USING" in step, plan  # walking an index, never the bare table
    assert "TEMP B-TREE" not in plan, plan  # newest-first order comes from the index


def _search_rows(idx):
    conn = idx._conn
    return (sorted(conn.execute("SELECT segment, first_at, reference FROM trifle_traces_segments")),
            sorted(conn.execute("SELECT tag, first_at, reference FROM trifle_traces_tags")))


def test_replacing_a_record_leaves_no_stale_search_rows(index):
    # A running record written again finished: another key, other tags, another start.
    moved = record(3, "jobs/import/prices", "success", ["customer.id:initech"], 700, minutes=30)
    index.upsert([moved, record(6, "new", tags=["t"])])
    segments, tags = _search_rows(index)
    ref3 = f"{3:016x}" + "0" * 32
    assert sorted(s for s, _, r in segments if r == ref3) == ["jobs", "jobs/import", "jobs/import/prices"]
    assert [t for t, _, r in tags if r == ref3] == ["customer.id:initech"]
    assert {at for _, at, r in segments + tags if r == ref3} == {(BASE + timedelta(minutes=30)).timestamp()}
    assert keys(index.search(TraceQuery(key="prices/import"))) == []
    assert keys(index.search(TraceQuery(key="jobs"))) == ["3"]
    index.delete([ref3, f"{6:016x}" + "0" * 32])
    segments, tags = _search_rows(index)
    assert all(r not in (ref3, f"{6:016x}" + "0" * 32) for _, _, r in segments + tags)
    assert len(segments) == 7 and len(tags) == 3  # the other four records' rows, untouched


def test_the_search_rows_of_a_replaced_record_are_deleted_by_their_keys(index):
    """No index by reference is needed (or kept): the deletes look rows up by primary key."""
    conn = index._conn
    for table, column in (("trifle_traces_segments", "segment"), ("trifle_traces_tags", "tag")):
        plan = " | ".join(row[-1] for row in conn.execute(
            f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE {column} = ? AND first_at = ? AND reference = ?", ("a", 1.0, "r")))
        assert "USING PRIMARY KEY" in plan, plan
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not names & {"trifle_traces_trace_id", "trifle_traces_segments_reference", "trifle_traces_tags_reference"}


def test_an_index_made_by_the_earlier_schema_opens_and_loses_its_unused_indexes(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    idx = SQLiteTraceIndex(path)
    idx.upsert(sample_records())
    idx.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE INDEX trifle_traces_trace_id ON trifle_traces (trace_id);"
        "CREATE INDEX trifle_traces_segments_reference ON trifle_traces_segments (reference);"
        "CREATE INDEX trifle_traces_tags_reference ON trifle_traces_tags (reference);"
    )
    # A record whose stored JSON is damaged: its rows are still found (by a scan).
    conn.execute("UPDATE trifle_traces SET record = '{not json' WHERE reference = ?", (f"{2:016x}" + "0" * 32,))
    conn.commit()
    conn.close()
    idx = SQLiteTraceIndex(path)
    try:
        names = {row[0] for row in idx._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "trifle_traces_trace_id" not in names and "trifle_traces_tags_reference" not in names
        assert keys(idx.search(TraceQuery(key="products"))) == ["4"]
        idx.upsert([record(2, "other", tags=["x"])])
        assert keys(idx.search(TraceQuery(key="prices"))) == ["5", "3", "1"]
        assert keys(idx.search(TraceQuery(tags_all=["customer.id:globex"]))) == []
        assert keys(idx.search(TraceQuery(tags_all=["x"]))) == ["2"]
    finally:
        idx.close()


def test_new_index_and_data_databases_use_16_kib_pages_and_older_ones_keep_theirs(tmp_path):
    import sqlite3

    from trifle_otel.stores.sqlite_data import SQLiteDataStore

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path, opened in ((tmp_path / "t.db", SQLiteTraceIndex(tmp_path / "t.db")),
                         (tmp_path / "d.db", SQLiteDataStore(tmp_path / "d.db")),
                         (old, SQLiteTraceIndex(old))):
        opened.close()
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA page_size").fetchone()[0] == (4096 if path == old else 16384)
    idx = SQLiteTraceIndex(old)  # the 4 KiB database still takes writes and searches
    idx.upsert(sample_records())
    assert keys(idx.search(TraceQuery(key="prices"))) == ["5", "3", "2", "1"]
    idx.close()
