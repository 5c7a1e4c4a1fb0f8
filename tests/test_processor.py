"""The span processor end to end with a real TracerProvider and the embedded store."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from trifle_otel import TrifleSpanProcessor, fail, ignore, tag, trace, warn
from trifle_otel.config import Config
from trifle_otel.sinks import load_lines
from trifle_otel.stores import open_data, open_index
from trifle_otel.stores.base import TraceQuery


@pytest.fixture
def setup(config):
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    previous = otel_trace._TRACER_PROVIDER
    otel_trace._TRACER_PROVIDER = provider  # the annotation helpers use the global provider
    yield provider.get_tracer("test"), processor, config
    otel_trace._TRACER_PROVIDER = previous
    provider.shutdown()


def records(config: Config, **query):
    index = open_index(config.resolved_index_url())
    try:
        return index.search(TraceQuery(**query)).records
    finally:
        index.close()


def lines_of(config: Config, record):
    return load_lines(open_data(config.resolved_data_url()), record)


def remote_parent():
    ctx = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return otel_trace.set_span_in_context(NonRecordingSpan(ctx))


def test_job_run_becomes_a_document_with_nested_lines(setup):
    tracer, processor, config = setup
    with tracer.start_as_current_span(
        "run/prices.calculate", kind=SpanKind.CONSUMER, context=remote_parent(),
        attributes={"trifle.key": "prices/calculate", "customer.id": "acme"},
    ):
        with trace("Fetching main product") as step:
            step.result = {"id": 7}
        with trace("Computing price"):
            with trace("Computing margin") as step:
                step.result = 0.12
        tag("vip")
        warn("Margin under 15%")
    assert processor.force_flush()
    [record] = records(config)
    assert record["key"] == "prices/calculate" and record["state"] == "warning"
    assert record["tags"] == ["vip"]
    assert record["links"] == [{"type": "parent", "trace_id": format(0xABC, "032x"), "span_id": format(0xDEF, "016x")}]
    lines = lines_of(config, record)
    assert [(l["level"], l["message"]) for l in lines] == [
        (0, "Fetching main product ↴"),
        (0, "Fetching main product ↵"),
        (0, '↳ {"id": 7}'),
        (0, "Computing price ↴"),
        (1, "Computing margin ↴"),
        (1, "Computing margin ↵"),
        (1, "↳ 0.12"),
        (0, "Computing price ↵"),
        (0, "Margin under 15%"),
    ]
    assert processor.stats()["executions_written"] == 1


def test_exception_in_a_job_is_an_error_execution(setup):
    tracer, processor, config = setup
    with pytest.raises(ValueError):
        with tracer.start_as_current_span("job"):
            with trace("step"):
                raise ValueError("bad input")
    processor.force_flush()
    [record] = records(config)
    assert record["state"] == "error"
    lines = lines_of(config, record)
    errors = [l for l in lines if l["state"] == "error"]
    assert [l["message"] for l in errors if l["type"] == "text"][:2] == ["ValueError: bad input", "step ↵"]
    assert any("Traceback" in l["message"] for l in errors if l["type"] == "raw")


def test_fail_and_ignore(setup):
    tracer, processor, config = setup
    with tracer.start_as_current_span("job-a"):
        fail("could not price")
    with tracer.start_as_current_span("job-b"):
        ignore()
    processor.force_flush()
    assert [(r["key"], r["state"]) for r in records(config)] == [("job-a", "error")]
    assert processor.stats()["executions_ignored"] == 1


def test_decorator_records_the_return_value(setup):
    tracer, processor, config = setup

    @trace("Classification")
    def classify(x):
        return {"class": x}

    with tracer.start_as_current_span("job"):
        assert classify("notebook") == {"class": "notebook"}
    processor.force_flush()
    [record] = records(config)
    assert '↳ {"class": "notebook"}' in [l["message"] for l in lines_of(config, record)]


def test_live_mode_writes_running_record_then_finishes_it(setup):
    tracer, processor, config = setup
    root = tracer.start_span("long/job")
    ctx = otel_trace.set_span_in_context(root)
    with tracer.start_as_current_span("first step", context=ctx):
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = records(config, states=["running"])
        if found and found[0]["length"] == 2:
            break
        time.sleep(0.05)
    assert found and found[0]["key"] == "long/job" and found[0]["length"] == 2
    assert [l["message"] for l in lines_of(config, found[0])] == ["first step ↴", "first step ↵"]
    root.end()
    processor.force_flush()
    [record] = records(config)
    assert record["state"] == "success" and record["reference"] == found[0]["reference"]
    assert processor.stats()["live_writes"] >= 1


def test_live_record_of_an_ignored_execution_is_removed(setup):
    tracer, processor, config = setup
    root = tracer.start_span("maybe/job")
    deadline = time.monotonic() + 5
    while not records(config, states=["running"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert records(config, states=["running"])
    with tracer.start_as_current_span("check", context=otel_trace.set_span_in_context(root)):
        ignore()
    root.end()
    processor.force_flush()
    assert records(config) == []
    data_dir = config.home_path / "data"
    assert not [p for p in data_dir.rglob("data_*.json*")]


def test_deferred_mode_writes_once(config):
    config.live = False
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("job")
    time.sleep(0.3)
    assert records(config) == []
    root.end()
    processor.force_flush()
    assert len(records(config)) == 1 and processor.stats()["live_writes"] == 0
    provider.shutdown()


def test_unwritable_store_never_blocks_or_raises_and_drops_are_counted(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store directory should be")
    config = Config(home=str(blocked / "store"), queue_size=50, retry_buffer=5, flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    started = time.perf_counter()
    for i in range(2000):
        with tracer.start_as_current_span(f"job {i}"):
            with tracer.start_as_current_span("step"):
                pass
    elapsed = time.perf_counter() - started
    assert elapsed < 5  # the app thread never waits on the store
    processor.force_flush()
    stats = processor.stats()
    assert stats["write_errors"] >= 1
    assert stats["executions_written"] == 0
    assert stats["spans_dropped"] + stats["documents_dropped"] > 0
    assert stats["retry_buffer"] <= 5
    provider.shutdown()


def test_writes_resume_after_the_store_comes_back(tmp_path):
    home = tmp_path / "store"
    home.write_text("not a directory yet")
    config = Config(home=str(home), flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(3):
        with tracer.start_as_current_span(f"job-{i}"):
            pass
    processor.force_flush()
    assert processor.stats()["write_errors"] >= 1
    home.unlink()
    deadline = time.monotonic() + 10
    while processor.stats()["executions_written"] < 3 and time.monotonic() < deadline:
        processor.force_flush()
        time.sleep(0.1)
    assert processor.stats()["executions_written"] == 3
    assert sorted(r["key"] for r in records(config)) == ["job-0", "job-1", "job-2"]
    provider.shutdown()


def test_processor_errors_are_contained(setup, monkeypatch):
    tracer, processor, config = setup
    import trifle_otel.translate as translate

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(translate.Translator, "translate", broken)
    with tracer.start_as_current_span("job"):
        pass
    processor.force_flush()
    assert processor.stats()["translation_errors"] == 1


def test_queue_overflow_drops_and_counts(config, monkeypatch):
    config.queue_size = 10
    processor = TrifleSpanProcessor(config)
    # The worker takes nothing until the jobs are done: the intake holds 10 spans, the
    # other 20 are dropped (on a busy machine the worker could otherwise take some).
    gate = threading.Event()
    cycle = processor.pipeline._cycle

    def gated_cycle(**kwargs):
        gate.wait(30)
        return cycle(**kwargs)

    monkeypatch.setattr(processor.pipeline, "_cycle", gated_cycle)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(30):
        with tracer.start_as_current_span(f"job {i}"):
            pass
    assert processor.stats()["spans_dropped"] == 20
    gate.set()
    assert processor.force_flush()
    assert processor.stats()["executions_written"] == 10
    provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_forked_child_writes_its_own_executions(config):
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent-job"):
        pass
    processor.force_flush()
    with tracer.start_as_current_span("queued-in-parent"):
        pass  # still in the intake when we fork: belongs to the parent only
    pid = os.fork()
    if pid == 0:  # child: a prefork job worker
        code = 1
        try:
            with tracer.start_as_current_span("child-job"):
                with tracer.start_as_current_span("step"):
                    pass
            code = 0 if processor.force_flush(10_000) else 2
            processor.shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    processor.force_flush()
    keys = sorted(r["key"] for r in records(config))
    assert keys == ["child-job", "parent-job", "queued-in-parent"]
    child = [r for r in records(config) if r["key"] == "child-job"][0]
    assert child["length"] == 2
    provider.shutdown()


def test_sqlite_table_is_readable_with_plain_sqlite(setup):
    tracer, processor, config = setup
    with tracer.start_as_current_span("job"):
        pass
    processor.force_flush()
    conn = sqlite3.connect(config.home_path / "traces.db")
    (key, state, record), = conn.execute("SELECT key, state, record FROM trifle_traces")
    assert (key, state) == ("job", "success")
    assert json.loads(record)["segments"] == ["job"]


def test_a_retried_final_write_replaces_the_live_records_search_rows(tmp_path):
    from trifle_otel.errors import StoreError
    from trifle_otel.sinks import TraceSink
    from trifle_otel.stores.directory import DirectoryDataStore
    from trifle_otel.stores.sqlite_index import SQLiteTraceIndex
    from trifle_otel.translate import Translator

    from conftest import execution, make_span

    index = SQLiteTraceIndex(tmp_path / "t.db")
    sink = TraceSink(index, DirectoryDataStore(tmp_path / "d"))
    translator = Translator(Config())
    running = make_span("run/x", 0, None, attributes={"trifle.key": "celery/run"})
    sink.write([translator.translate(execution(running), 10**18)])
    ended = make_span("run/x", 0, 5, span_id=running.span_id, trace_id=running.trace_id, attributes={"trifle.key": "prices/calc"})
    final = translator.translate(execution(ended), 10**18)
    real = index.upsert
    index.upsert = lambda *a, **k: (_ for _ in ()).throw(StoreError("down"))
    with pytest.raises(StoreError):
        sink.write([final])
    index.upsert = real
    sink.write([final])
    assert [r["key"] for r in index.search(TraceQuery(key="prices")).records] == ["prices/calc"]
    assert index.search(TraceQuery(key="celery")).records == []


def test_home_paths_with_url_characters(tmp_path):
    config = Config(home=str(tmp_path / "a#b?c%d"), flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("job"):
        pass
    assert processor.force_flush()
    provider.shutdown()
    assert (tmp_path / "a#b?c%d" / "traces.db").exists() and (tmp_path / "a#b?c%d" / "stats.db").exists()
    assert [r["key"] for r in records(config)] == ["job"]


def test_executions_past_their_retention_are_removed_with_their_data(config):
    from datetime import datetime, timezone

    from trifle_otel.sinks import TraceSink
    from trifle_otel.stores.directory import DirectoryDataStore
    from trifle_otel.stores.sqlite_index import SQLiteTraceIndex
    from trifle_otel.translate import Translator

    from conftest import execution, make_span

    def job(name, retention_days):  # started 2026-11-19 (conftest.T0)
        root = make_span(name, 0, 5)
        return Translator(Config(retention_days=retention_days)).translate(execution(root, make_span("step", 1, 2, root)), 10**18)

    index = SQLiteTraceIndex(config.home_path / "traces.db")
    data = config.home_path / "data"
    sink = TraceSink(index, DirectoryDataStore(data))
    old, kept = job("old", 1), job("kept", 3650)
    sink.write([old, kept])
    assert (data / old.record["data_path"] / "data_1.json").exists()
    assert sink.purge_expired(datetime.now(timezone.utc)) == 1
    assert [r["name"] for r in index.search(TraceQuery()).records] == ["kept"]
    assert not (data / old.record["data_path"]).exists()
    assert (data / kept.record["data_path"] / "data_1.json").exists()
    assert sink.purge_expired(datetime.now(timezone.utc)) == 0


def test_the_worker_purges_expired_executions(config):
    config.retention_days = 1
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    three_days_ago = time.time_ns() - 3 * 86400 * 10**9
    tracer.start_span("expired", start_time=three_days_ago).end(end_time=three_days_ago + 10**6)
    processor.force_flush()  # written, then found past its retention on the next cycle
    deadline = time.monotonic() + 5
    while processor.stats()["executions_expired"] < 1 and time.monotonic() < deadline:
        processor.force_flush()
    assert processor.stats()["executions_expired"] == 1 and records(config) == []
    provider.shutdown()


def test_a_trace_id_below_2_64_keeps_its_32_hex_characters(config):
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace import TracerProvider as Provider

    from trifle_otel.ingest.sdk import from_readable_span

    provider = Provider(shutdown_on_exit=False)
    spans = []

    class Keep(SpanProcessor):
        def on_end(self, span):
            spans.append(span)

    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("t")
    # A span id equal to the next span's trace id, both below 2**64 (64-bit tracers).
    ctx = SpanContext(0x5, 0xABC, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with tracer.start_as_current_span("a", context=otel_trace.set_span_in_context(NonRecordingSpan(ctx))):
        pass
    ctx2 = SpanContext(0xABC, 0x5, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with tracer.start_as_current_span("b", context=otel_trace.set_span_in_context(NonRecordingSpan(ctx2))):
        pass
    a, b = (from_readable_span(s) for s in spans)
    assert (a.trace_id, a.parent_span_id) == ("0" * 31 + "5", "0" * 13 + "abc")
    assert (b.trace_id, b.parent_span_id) == ("0" * 29 + "abc", "0" * 15 + "5")
