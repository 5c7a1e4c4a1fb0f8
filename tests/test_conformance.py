"""One conformance suite for every driver combination: SQLite + directory, MongoDB + S3.

MongoDB runs on mongomock unless TRIFLE_TEST_MONGODB_URI names a real server; S3 is moto's
server on 127.0.0.1, reached by boto3 over HTTP.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from test_sqlite_index import BASE, keys, record, sample_records

from trifle_otel import TrifleSpanProcessor
from trifle_otel.cli import main
from trifle_otel.sinks import load_lines
from trifle_otel.stats.api import Stats, keys_in_use
from trifle_otel.stats.drivers import open_stats_driver
from trifle_otel.stores import open_data, open_index
from trifle_otel.stores.base import TraceQuery

T = datetime(2026, 11, 23, 10, 17, 43, tzinfo=timezone.utc)
HOUR = int(datetime(2026, 11, 23, 10, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def index(backend):
    idx = open_index(backend.resolved_index_url())
    idx.setup()
    idx.upsert(sample_records())
    yield idx
    idx.close()


def test_index_search_filters(index):
    assert keys(index.search(TraceQuery())) == ["5", "4", "3", "2", "1"]
    assert keys(index.search(TraceQuery(key="prices"))) == ["5", "3", "2", "1"]
    assert keys(index.search(TraceQuery(key="price"))) == []
    assert keys(index.search(TraceQuery(states=["error", "warning"]))) == ["3", "2"]
    assert keys(index.search(TraceQuery(tags_all=["customer.id:acme", "vip"]))) == ["3"]
    assert keys(index.search(TraceQuery(tags_any=["customer.id:globex", "vip"]))) == ["4", "3", "2"]
    assert keys(index.search(TraceQuery(min_duration=50))) == ["4", "3", "2"]
    assert keys(index.search(TraceQuery(since=BASE + timedelta(minutes=2), until=BASE + timedelta(minutes=4)))) == ["3", "2"]
    assert keys(index.search(TraceQuery(stuck_before=BASE + timedelta(minutes=6)))) == ["5"]


def test_index_paging_get_delete_and_idempotent_upsert(index):
    page = index.search(TraceQuery(limit=2))
    second = index.search(TraceQuery(limit=2, cursor=page.next_cursor))
    third = index.search(TraceQuery(limit=2, cursor=second.next_cursor))
    assert keys(page) + keys(second) + keys(third) == ["5", "4", "3", "2", "1"] and third.next_cursor is None
    ref = f"{3:016x}" + "0" * 32
    got = index.get(ref[:16])
    assert got["key"] == "prices/import" and got["first_at"] == BASE + timedelta(minutes=3)
    assert got["meta"] == {} and got["context"] == {}
    index.upsert([record(3, "prices/import", "error", ["new"], 1)])  # a retried / live rewrite
    assert len(index.search(TraceQuery()).records) == 5
    assert keys(index.search(TraceQuery(tags_all=["vip"]))) == ["4"]
    index.delete([ref])
    assert index.get(ref) is None and len(index.search(TraceQuery()).records) == 4


def test_data_store_round_trip(backend):
    data = open_data(backend.resolved_data_url(), backend)
    bucket = data.bucket_for("ref1")
    data.put("30/traces/k/ref1/data_1.json", b"[1]", bucket)
    data.put("30/traces/k/ref1/artifacts/a.txt", b"x" * 10, bucket)
    assert data.get("30/traces/k/ref1/data_1.json", bucket) == b"[1]"
    assert data.get("30/traces/k/ref1/data_2.json", bucket) is None
    data.delete_prefix("30/traces/k/ref1/", bucket)
    assert data.get("30/traces/k/ref1/artifacts/a.txt", bucket) is None


@pytest.mark.parametrize("mode", ["full", "partial", "separated"])
def test_stats_driver_adds_and_sets_exactly(backend, mode):
    driver = open_stats_driver(backend.resolved_stats_url(), mode=mode)
    driver.setup()
    driver.inc([("k", "1h", HOUR, {"count": 1, "codes.OK": 1, "price": 0.5}), ("k", "1d", HOUR, {"count": 1})])
    driver.inc([("k", "1h", HOUR, {"count": 2, "codes.ERR": 1, "price": 0.25})])
    driver.set([("k", "1h", HOUR, {"gauge.level": 7})])
    assert driver.get([("k", "1h", HOUR), ("k", "1d", HOUR), ("k", "1h", HOUR + 3600)]) == [
        {"count": 3, "codes": {"OK": 1, "ERR": 1}, "price": 0.75, "gauge": {"level": 7}},
        {"count": 1},
        {},
    ]
    driver.close()


def test_stats_api_and_system_keys(backend):
    stats = Stats(backend, background=False)
    for i in range(10):
        stats.track("prices", T + timedelta(minutes=i), {"count": 1, "codes": {"OK.x": 1}})
    stats.track("other", T, {"count": 5})
    series = stats.values("prices", T, T + timedelta(hours=1), "1h")
    assert series["values"] == [{"count": 10, "codes": {"OK_x": 10}}, {}]
    assert keys_in_use(stats, T, T, "1d") == {"other": 1, "prices": 10}
    stats.shutdown()


def run_jobs(config, n=5, attributes=None):
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(n):
        with tracer.start_as_current_span("run/job", attributes={"trifle.key": "jobs/run", "customer.id": f"c{i % 2}",
                                                               **(attributes or {})}):
            with tracer.start_as_current_span("step") as step:
                step.set_attribute("trifle.result", f"r{i}")
    assert processor.force_flush()
    stats = processor.stats()
    provider.shutdown()
    return stats


def cli(config, *args):
    flags = ["--index-url", config.resolved_index_url(), "--data-url", config.resolved_data_url(),
             "--stats-url", config.resolved_stats_url()]
    result = CliRunner().invoke(main, [*args, *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_processor_end_to_end(backend):
    stats = run_jobs(backend)
    assert stats["executions_written"] == 5 and stats["write_errors"] == 0
    listed = json.loads(cli(backend, "traces", "list", "--json"))
    assert len(listed["records"]) == 5 and {r["key"] for r in listed["records"]} == {"jobs/run"}
    results = set()
    for r in listed["records"]:  # several jobs may start in the same millisecond: any order
        shown = json.loads(cli(backend, "traces", "show", r["reference"], "--json"))
        messages = [l["message"] for l in shown["lines"]]
        assert messages[:2] == ["step ↴", "step ↵"]
        results.add(messages[2])
        assert shown["record"]["meta"]["customer.id"] in ("c0", "c1")
    assert results == {f"↳ r{i}" for i in range(5)}
    values = json.loads(cli(backend, "stats", "values", "jobs/run", "-g", "1d", "--from", "1d", "--json"))
    assert sum(v.get("count", 0) for v in values["values"]) == 5


def test_huge_attribute_is_stored_whole_and_the_record_stays_small(backend):
    import bson

    payload = "p" * (20 * 1024 * 1024)
    stats = run_jobs(backend, n=1, attributes={"catalogue": payload})
    assert stats["executions_written"] == 1 and stats["write_errors"] == 0 and stats["processor_errors"] == 0
    index = open_index(backend.resolved_index_url())
    [rec] = index.search(TraceQuery()).records
    index.close()
    assert rec["meta"]["catalogue"] == {"artifact": "meta_1.txt", "size": len(payload)}
    stored = dict(rec)
    assert len(bson.encode({k: v for k, v in stored.items()})) < 64 * 1024
    body = json.loads(cli(backend, "traces", "show", rec["reference"], "--json"))
    assert {"name": "meta_1.txt", "size": len(payload), "meta": "catalogue"} in body["artifacts"]
    data = open_data(backend.resolved_data_url(), backend)
    from trifle_otel.sinks import load_artifact

    assert load_artifact(data, rec, "meta_1.txt") == payload.encode()


def test_live_running_record_then_final(backend):
    processor = TrifleSpanProcessor(backend)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    root = provider.get_tracer("t").start_span("long")
    index = open_index(backend.resolved_index_url())
    deadline = time.monotonic() + 5
    while not index.search(TraceQuery(states=["running"])).records and time.monotonic() < deadline:
        time.sleep(0.05)
    assert index.search(TraceQuery(states=["running"])).records
    root.end()
    processor.force_flush()
    [rec] = index.search(TraceQuery()).records
    assert rec["state"] == "success"
    assert load_lines(open_data(backend.resolved_data_url(), backend), rec) == []
    index.close()
    provider.shutdown()
