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
