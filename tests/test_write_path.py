"""The write path at volume: batched stores, no spill while the stores work, per-execution
retry, concurrent writers, the embedded data store and what live records show."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import boto3
import pytest
from click.testing import CliRunner
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from trifle_otel import TrifleSpanProcessor
from trifle_otel.cli import main
from trifle_otel.config import Config
from trifle_otel.sinks import load_lines
from trifle_otel.stats.api import Stats
from trifle_otel.stores import open_data, open_index
from trifle_otel.stores.base import TraceQuery


def tracer_for(processor):
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("t")


def run_jobs(tracer, n: int, key: str = "jobs/batch", payload: str | None = None) -> None:
    for i in range(n):
        with tracer.start_as_current_span(f"job {i}", attributes={"trifle.key": key, "n": i}):
            with tracer.start_as_current_span("step", attributes={"trifle.result": payload or f"r{i}"}):
                pass


def all_records(config: Config, limit: int = 10_000):
    index = open_index(config.resolved_index_url())
    try:
        return index.search(TraceQuery(limit=limit)).records
    finally:
        index.close()


def test_a_cycle_larger_than_the_retry_buffer_is_written_not_spilled(tmp_path):
    config = Config(home=str(tmp_path / "home"), retry_buffer=5, live=False)
    processor = TrifleSpanProcessor(config)
    provider, tracer = tracer_for(processor)
    run_jobs(tracer, 200)
    assert processor.force_flush()
    stats = processor.stats()
    provider.shutdown()
    assert stats["executions_written"] == 200
    assert stats["documents_spilled"] == 0 and stats["write_errors"] == 0
    assert not list((tmp_path / "home" / "spill").glob("spill-*"))
    assert len(all_records(config)) == 200


def test_a_backlog_taken_in_one_cycle_goes_to_the_store_thread_a_chunk_at_a_time(tmp_path):
    """The store thread writes a long cycle's first documents while the worker translates
    the rest: they are not all held until the cycle ends."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from trifle_otel.ingest.sdk import from_readable_span
    from trifle_otel.pipeline import Pipeline
    from trifle_otel.pipeline.worker import WRITE_CHUNK

    ended: list = []

    class Collect(SpanExporter):
        def export(self, spans):
            ended.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    executions = 2 * WRITE_CHUNK + 500
    run_jobs(provider.get_tracer("t"), executions)
    config = Config(home=str(tmp_path / "home"), live=False, queue_size=len(ended) + 1)
    pipeline = Pipeline(config, convert=from_readable_span)
    handed: list[int] = []
    hand = pipeline.store.hand

    def counting_hand(finished, live, ignored):
        handed.append(len(finished))
        hand(finished, live, ignored)

    pipeline.store.hand = counting_hand
    pipeline.submit_many(ended)  # one append: the next cycle takes all of it
    assert pipeline.force_flush(60)
    written = pipeline.stats()["executions_written"]
    pipeline.shutdown()
    assert sum(handed) == executions and written == executions
    chunks = [n for n in handed if n]
    assert len(chunks) >= 3, handed
    assert max(chunks) < WRITE_CHUNK + 256, handed  # (a chunk of spans finishes at most its own executions)
    assert len(all_records(config)) == executions


def test_embedded_data_lives_in_sqlite_and_the_cli_reads_parts_and_artifacts(tmp_path):
    home = tmp_path / "home"
    config = Config(home=str(home), payload_size_limit=1000, part_size=2, live=False)
    processor = TrifleSpanProcessor(config)
    provider, tracer = tracer_for(processor)
    big = "x" * 5000
    with tracer.start_as_current_span("export", attributes={"trifle.key": "orders/export"}):
        for i in range(3):
            with tracer.start_as_current_span(f"step {i}", attributes={"trifle.result": big if i == 1 else "ok"}):
                pass
    assert processor.force_flush()
    provider.shutdown()
    assert not (home / "data").exists()  # no directory and file per execution
    rows = sqlite3.connect(home / "data.db").execute("SELECT path FROM trifle_data ORDER BY path").fetchall()
    [record] = all_records(config)
    assert record["parts"] >= 3
    assert [r[0] for r in rows if "/data_" in r[0]] == sorted(
        record["data_path"] + f"data_{n}.json" for n in range(1, record["parts"] + 1)
    )
    artifact = next(r[0] for r in rows if "/artifacts/" in r[0])
    name = artifact.rsplit("/", 1)[1]

    runner = CliRunner()
    shown = runner.invoke(main, ["traces", "show", record["reference"], "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    lines = json.loads(shown.output)["lines"]
    assert [l["message"] for l in lines if l["type"] == "media"] == [name]
    assert len(lines) == record["length"]
    got = runner.invoke(main, ["traces", "show", record["reference"], "--home", str(home), "--artifact", name])
    assert got.exit_code == 0 and got.output.strip() == "↳ " + big


def test_a_home_written_in_the_directory_layout_still_reads(tmp_path):
    home = tmp_path / "home"
    old = Config(home=str(home), data_url=f"file://{home / 'data'}", live=False)
    processor = TrifleSpanProcessor(old)
    provider, tracer = tracer_for(processor)
    run_jobs(tracer, 3, payload="from the old layout")
    assert processor.force_flush()
    provider.shutdown()
    assert list((home / "data").rglob("data_1.json"))

    new = Config(home=str(home))  # the default data store: <home>/data.db
    records = all_records(new)
    assert len(records) == 3
    runner = CliRunner()
    shown = runner.invoke(main, ["traces", "show", records[0]["reference"], "--home", str(home)])
    assert shown.exit_code == 0 and "from the old layout" in shown.output
    assert not (home / "data.db").exists()  # reading creates nothing

    data = open_data(new.resolved_data_url(), new)  # the next writer: new data in data.db, old still read
    try:
        for record in records:
            messages = [l["message"] for l in load_lines(data, record)]
            assert "↳ from the old layout" in messages
    finally:
        data.close()


WRITER = textwrap.dedent(
    """
    import sys
    from opentelemetry.sdk.trace import TracerProvider
    from trifle_otel import TrifleSpanProcessor
    from trifle_otel.config import Config

    home, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    processor = TrifleSpanProcessor(Config(home=home, flush_interval=0.05, live=False))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(n):
        with tracer.start_as_current_span(f"{name} {i}", attributes={"trifle.key": "shared/jobs"}):
            with tracer.start_as_current_span("step", attributes={"trifle.result": "x" * 300}):
                pass
    assert processor.force_flush(60_000)
    provider.shutdown()
    print(processor.stats()["executions_written"], processor.stats()["documents_spilled"])
    """
)


def test_two_processes_writing_one_embedded_store_lose_nothing(tmp_path):
    home = tmp_path / "home"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 1500
    procs = [
        subprocess.Popen([sys.executable, str(script), str(home), name, str(n)], stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [[str(n), "0"], [str(n), "0"]]
    config = Config(home=str(home))
    records = all_records(config, limit=2 * n + 10)
    assert len(records) == 2 * n
    data = open_data(config.resolved_data_url(), config)
    try:
        assert all(len(load_lines(data, r)) == r["length"] for r in records[::50])
    finally:
        data.close()
    stats = Stats(config)
    try:
        counts = stats.values("shared/jobs", records[-1]["first_at"].replace(minute=0, second=0, microsecond=0),
                              records[0]["first_at"], "1h")["values"]
    finally:
        stats.shutdown()
    assert sum(v.get("count", 0) for v in counts) == 2 * n


@pytest.mark.s3
def test_a_failing_s3_put_retries_that_execution_alone(tmp_path, s3_env):
    boto3.client("s3").create_bucket(Bucket="retry-one")
    config = Config(home=str(tmp_path / "home"), data_url="s3://retry-one/traces", live=False, flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    pipeline = processor.pipeline
    store = pipeline._open_sink().data
    real_put = store.client.put_object
    refs: dict[str, str] = {}
    failures: list[str] = []

    healed = threading.Event()

    def flaky_put(**kwargs):
        """Job 3's data is refused until the store heals; every other put goes through."""
        if not healed.is_set() and refs.get("job 3") and refs["job 3"] in kwargs["Key"]:
            failures.append(kwargs["Key"])
            raise RuntimeError("simulated S3 error")
        return real_put(**kwargs)

    store.client.put_object = flaky_put
    provider, tracer = tracer_for(processor)
    for i in range(8):
        with tracer.start_as_current_span(f"job {i}", attributes={"trifle.key": "jobs"}) as span:
            ctx = span.get_span_context()
            refs[f"job {i}"] = format(ctx.span_id, "016x") + format(ctx.trace_id, "032x")
            with tracer.start_as_current_span("step"):
                pass
    assert processor.force_flush() is False  # one execution's data was refused
    stats = processor.stats()
    assert set(failures) == {failures[0]} and stats["executions_written"] == 7 and stats["retry_buffer"] == 1
    assert stats["documents_spilled"] == 0
    stored = {r["reference"] for r in all_records(config)}
    assert refs["job 3"] not in stored and len(stored) == 7  # never an index record without its data

    healed.set()
    assert processor.force_flush(10_000)
    stats = processor.stats()
    provider.shutdown()
    assert stats["executions_written"] == 8 and stats["retry_buffer"] == 0
    assert {r["reference"] for r in all_records(config)} == set(refs.values())


def test_a_running_job_shows_its_open_steps(tmp_path):
    config = Config(home=str(tmp_path / "home"), live_interval=0.05, flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    provider, tracer = tracer_for(processor)
    root = tracer.start_span("reports/nightly")
    ctx = otel_trace.set_span_in_context(root)
    with tracer.start_as_current_span("Loading customers", context=ctx):
        pass
    exporting = tracer.start_span("Exporting orders", context=ctx)
    inner = tracer.start_span("Writing CSV", context=otel_trace.set_span_in_context(exporting))
    deadline = time.monotonic() + 5
    record = None
    while time.monotonic() < deadline:
        found = [r for r in all_records(config) if r["state"] == "running"]
        if found and len(found[0].get("open_steps") or []) == 2:
            record = found[0]
            break
        time.sleep(0.05)
    assert record is not None, "no running record with its open steps"
    assert [s["name"] for s in record["open_steps"]] == ["Exporting orders", "Writing CSV"]
    assert [s["level"] for s in record["open_steps"]] == [0, 1]
    assert record["open_steps"][0]["at"] == pytest.approx(exporting.start_time / 1e9)
    data = open_data(config.resolved_data_url(), config)
    lines = load_lines(data, record)
    assert [(l["message"], l.get("open", False)) for l in lines] == [
        ("Loading customers ↴", False),
        ("Loading customers ↵", False),
        ("Exporting orders ↴", True),
        ("Writing CSV ↴", True),
    ]
    inner.end()
    exporting.end()
    root.end()
    assert processor.force_flush()
    [done] = all_records(config)
    assert done["state"] == "success" and "open_steps" not in done
    finished = load_lines(data, done)
    assert [l["message"] for l in finished][-3:] == ["Writing CSV ↴", "Writing CSV ↵", "Exporting orders ↵"]
    assert not any(l.get("open") for l in finished)
    data.close()
    provider.shutdown()


def test_an_ignored_execution_leaves_no_running_record_even_one_not_written_yet(tmp_path):
    # Writes go out once an hour here (after the first): B's running record is still queued
    # when B turns out to be ignored, and must never reach the store.
    config = Config(home=str(tmp_path / "home"), flush_interval=3600, live_interval=3600)
    processor = TrifleSpanProcessor(config)
    provider, tracer = tracer_for(processor)
    first = tracer.start_span("jobs/first")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all_records(config):
        time.sleep(0.05)
    assert [r["state"] for r in all_records(config)] == ["running"]  # the first write went out
    second = tracer.start_span("jobs/second")
    time.sleep(0.3)  # its running record is made and queued
    with tracer.start_as_current_span("check", context=otel_trace.set_span_in_context(second)) as span:
        span.set_attribute("trifle.ignore", True)
    second.end()
    first.end()
    assert processor.force_flush()
    provider.shutdown()
    assert [(r["key"], r["state"]) for r in all_records(config)] == [("jobs/first", "success")]


def test_a_finished_document_is_never_overwritten_by_its_older_running_record(tmp_path):
    from trifle_otel.model import Execution
    from trifle_otel.pipeline.counters import PipelineCounters
    from trifle_otel.pipeline.spill import Spill
    from trifle_otel.pipeline.writer import DocumentWriter
    from trifle_otel.sinks import TraceSink
    from trifle_otel.translate import Translator
    from conftest import make_span

    config = Config(home=str(tmp_path / "home"))
    sink = TraceSink(open_index(config.resolved_index_url()), open_data(config.resolved_data_url(), config))
    writer = DocumentWriter(lambda: sink, Spill(tmp_path / "spill", 1 << 20), 100, PipelineCounters(), interval=3600)
    translator = Translator(config)
    running = make_span("jobs/x", 0, None)
    ended = make_span("jobs/x", 0, 20, trace_id=running.trace_id, span_id=running.span_id)
    live_doc = translator.translate(Execution(running), now_ns=running.start_ns + 10_000_000)
    final_doc = translator.translate(Execution(ended), now_ns=ended.end_ns)
    writer.queue([], [live_doc])  # a cycle's running record ...
    writer.queue([final_doc], [])  # ... then, a cycle later, the execution's end
    writer.write([], [], force=True)
    [record] = all_records(config)
    assert record["state"] == "success"


def test_a_lone_surrogate_in_span_data_is_stored_and_leaves_no_lock(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: by customer\n    where: [name == \"job\"]\n"
        "    keys: ['c/{attributes[\"customer.id\"]}']\n    values: {count: 1}\n"
    )
    config = Config(home=str(tmp_path / "home"), stats_rules=str(rules), tag_attributes=["customer.id"], live=False)
    processor = TrifleSpanProcessor(config)
    provider, tracer = tracer_for(processor)
    for customer in ("bad\ud800", "good"):
        with tracer.start_as_current_span("job", attributes={"trifle.key": f"jobs/{customer}", "customer.id": customer}):
            pass
    assert processor.force_flush()
    stats = processor.stats()
    provider.shutdown()
    assert stats["write_errors"] == 0 and stats["stats_write_errors"] == 0
    keys = sorted(r["key"] for r in all_records(config))
    assert keys == ["jobs/bad\ufffd", "jobs/good"]
    db = sqlite3.connect(tmp_path / "home" / "stats.db")
    rows = {k for (k,) in db.execute("SELECT key FROM trifle_stats WHERE key LIKE 'c/%::1h::%'")}
    assert {k.split("::")[0] for k in rows} == {"c/bad\ufffd", "c/good"}
    db.execute("BEGIN IMMEDIATE")  # no writer left its lock behind
    db.execute("COMMIT")


EXIT_WITH_S3 = textwrap.dedent(
    """
    import sys
    from opentelemetry.sdk.trace import TracerProvider
    from trifle_otel import TrifleSpanProcessor
    from trifle_otel.config import Config

    processor = TrifleSpanProcessor(Config(home=sys.argv[1], data_url="s3://exit-puts/traces", live=False))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(3):
        with tracer.start_as_current_span(f"job {i}", attributes={"trifle.key": "jobs/at-exit"}):
            with tracer.start_as_current_span("step", attributes={"trifle.result": "r"}):
                pass
    # no flush, no shutdown: the bridge writes at exit
    """
)


@pytest.mark.s3
def test_executions_still_held_at_exit_are_written_to_s3_not_spilled(tmp_path, s3_env):
    boto3.client("s3").create_bucket(Bucket="exit-puts")
    script = tmp_path / "exit.py"
    script.write_text(EXIT_WITH_S3)
    home = tmp_path / "home"
    result = subprocess.run([sys.executable, str(script), str(home)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not list((home / "spill").glob("spill-*"))
    config = Config(home=str(home), data_url="s3://exit-puts/traces")
    records = all_records(config)
    assert len(records) == 3
    data = open_data(config.resolved_data_url(), config)
    assert all("↳ r" in [l["message"] for l in load_lines(data, r)] for r in records)


def test_the_running_record_of_an_ignored_execution_is_removed_once_the_store_takes_it(tmp_path):
    from trifle_otel.model import Execution
    from trifle_otel.pipeline.counters import PipelineCounters
    from trifle_otel.pipeline.spill import Spill
    from trifle_otel.pipeline.writer import DocumentWriter
    from trifle_otel.sinks import TraceSink
    from trifle_otel.translate import Translator
    from conftest import make_span

    config = Config(home=str(tmp_path / "home"))
    sink = TraceSink(open_index(config.resolved_index_url()), open_data(config.resolved_data_url(), config))
    writer = DocumentWriter(lambda: sink, Spill(tmp_path / "spill", 1 << 20), 100, PipelineCounters())
    translator = Translator(config)
    running = make_span("jobs/maybe", 0, None)
    writer.write([], [translator.translate(Execution(running), now_ns=running.start_ns + 1)], force=True)
    assert [r["state"] for r in all_records(config)] == ["running"]
    real_discard = sink.discard
    sink.discard = lambda documents: (_ for _ in ()).throw(OSError("store down"))
    ignored = make_span("jobs/maybe", 0, 5, trace_id=running.trace_id, span_id=running.span_id,
                        attributes={"trifle.ignore": True})
    writer.discard(sink, translator.translate(Execution(ignored), now_ns=ignored.end_ns))
    assert [r["state"] for r in all_records(config)] == ["running"]  # the store refused: kept to retry
    sink.discard = real_discard
    other = make_span("jobs/other", 0, 5)
    writer.write([translator.translate(Execution(other), now_ns=other.end_ns)], [], force=True)
    assert [r["key"] for r in all_records(config)] == ["jobs/other"]
