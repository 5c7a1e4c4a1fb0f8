"""The sidecar's durability pieces on their own: carrying spans forward in the log, where
replay starts, checkpoints that write stats with their mark in one write, the gate
between receivers and cuts, and the intake's refusals."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from conftest import make_span

from trifle_otel.config import Config
from trifle_otel.errors import StoreError
from trifle_otel.ingest.otlp_intake import ReceivedBatch
from trifle_otel.model import Event, Link
from trifle_otel.pipeline.carry import decode_spans, encode_spans
from trifle_otel.pipeline.intake import Intake
from trifle_otel.sidecar.checkpoint import (
    CARRY_MAGIC,
    Checkpointer,
    ReplayCounts,
    carry_record,
    log_id,
    plan_replay,
    read_mark,
    replay_batches,
)
from trifle_otel.sidecar.gate import Gate
from trifle_otel.sidecar.intake import SidecarIntake
from trifle_otel.stats.sink import ExecutionStats
from trifle_otel.wal import WAL


def test_carried_spans_come_back_exactly():
    resource = {"service.name": "w", "k8s.labels": {"app": "x", "ids": (1, 2)}}
    root = make_span("root", 0, 10, resource=resource, attributes={
        "blob": b"\x00\xffbytes", "tags": ("a", "b"), "nested": {"list": (1, (2, 3)), "b": b"x"}, "none": None,
        "pi": 3.25, "big": 2**62, "flag": True, "text": "caf\u00e9 \u21b4",
    }, events=[("exception", 5, {"exception.stacktrace": "Traceback"})])
    child = make_span("child", 1, 2, root, resource=resource, kind="client", status="error", status_message="boom",
                      links=(Link("ab" * 16, "cd" * 8, {"x": (True,)}),), parent_remote=True, parent_remote_known=False)
    header, spans = decode_spans(encode_spans([root, child], {"n": 1}))
    assert header == {"n": 1} and spans == [root, child]
    assert spans[0].resource is spans[1].resource  # shared again, as decoding a request makes it
    assert type(spans[0].attributes["tags"]) is tuple and type(spans[0].events[0]) is Event


def _request_record(spans) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as otlp_encode

    return ReceivedBatch([], otlp_encode(spans).SerializeToString()).to_record()


@pytest.fixture
def sdk_records():
    from otlp_samples import sdk_spans

    return [_request_record(sdk_spans(jobs=1, steps=1)) for _ in range(6)]


def _fill(wal: WAL, sdk_records, carries: list[tuple[int, int]]):
    """Records in segments 1..6 (one request each), checkpoint records (number, cut) after
    the request of segment ``cut + 1``."""
    positions = {}
    for n, record in enumerate(sdk_records, start=1):
        wal.append(record)
        for number, cut in carries:
            if cut + 1 == n:
                positions[(number, cut)] = wal.append(carry_record(number, cut, [make_span(f"open {number}", 0, 1)]))
        wal.rotate()
    return positions


def _replayed(wal: WAL, mark: int):
    plan = plan_replay(wal, mark)
    counts = ReplayCounts()
    names = [s.name for spans in replay_batches(wal, plan, counts) for s in spans]
    return plan, counts, names


def test_without_a_checkpoint_every_request_is_replayed(tmp_path, sdk_records):
    with WAL(tmp_path / "wal") as wal:
        _fill(wal, sdk_records, [(1, 2), (1, 4)])  # two attempts at checkpoint 1, neither written
        plan, counts, names = _replayed(wal, 0)
    assert plan.carry_at is None and not plan.warnings
    assert (counts.requests, counts.carried_spans, counts.skipped_records) == (6, 0, 2)
    assert "open 1" not in names and len(names) == 12


def test_replay_starts_at_the_latest_record_of_the_written_checkpoint(tmp_path, sdk_records):
    with WAL(tmp_path / "wal") as wal:
        positions = _fill(wal, sdk_records, [(1, 1), (2, 2), (2, 3), (3, 4)])
        plan, counts, names = _replayed(wal, 2)
    assert plan.carry_at == tuple(positions[(2, 3)]) and plan.cut == 3
    # the spans it carried, then the requests after its cut (segments 4, 5, 6); checkpoint 3's
    # stats were never written, so its record is not used
    assert (counts.carried_spans, counts.requests, counts.skipped_records) == (1, 3, 3 + 3)
    assert names.count("open 2") == 1 and len(names) == 1 + 6


def test_a_mark_the_log_does_not_know_replays_from_the_latest_with_a_warning(tmp_path, sdk_records):
    with WAL(tmp_path / "wal") as wal:
        _fill(wal, sdk_records, [(7, 2), (8, 4)])
        plan, counts, names = _replayed(wal, 3)
    assert plan.cut == 4 and "matches no checkpoint in the write-ahead log (found [7, 8])" in plan.warnings[0]
    assert counts.requests == 2 and names.count("open 8") == 1 and "open 7" not in names


class _Spans:
    """A stand-in for the pipeline's assembler state: what a checkpoint carries."""

    def __init__(self, *names: str) -> None:
        self.spans = [make_span(n, 0, 1) for n in names]


@pytest.fixture
def stats(tmp_path):
    config = Config(home=str(tmp_path / "store"))
    stats = ExecutionStats(config)
    yield config, stats
    stats.close()


def test_a_checkpoint_writes_stats_with_its_mark_then_trims_the_log(tmp_path, stats, sdk_records):
    config, execution_stats = stats
    wal = WAL(tmp_path / "wal")
    ident = log_id(tmp_path / "wal")
    assert log_id(tmp_path / "wal") == ident  # made once
    checkpointer = Checkpointer(wal, Gate(), ident, interval=60, count=read_mark(config, ident))
    checkpointer.enabled = True
    queue = Intake(1000, 10)
    wal.append(sdk_records[0])
    queue.put_many(["a", "b"])
    assert checkpointer.cut(queue) == (["a", "b"], []) and len(queue) == 0
    wal.append(sdk_records[1])  # after the cut: a segment of its own
    execution_stats.buffer.track("jobs/x", time.time(), {"count": 1})
    assert checkpointer.commit(_Spans("still open").spans, execution_stats)
    assert read_mark(config, ident) == 1 and execution_stats.buffer.pending == 0
    assert [s.segment for s in wal.segments()] == [2]  # the request after the cut, and the checkpoint's record
    records = [r.payload for r in wal.replay()]
    assert records[0] == sdk_records[1] and records[1].startswith(CARRY_MAGIC)
    wal.close()


def test_a_failed_stats_write_abandons_the_checkpoint_and_keeps_everything(tmp_path, stats, sdk_records, monkeypatch):
    config, execution_stats = stats
    wal = WAL(tmp_path / "wal")
    ident = log_id(tmp_path / "wal")
    checkpointer = Checkpointer(wal, Gate(), ident, interval=60, count=0)
    checkpointer.enabled = True
    wal.append(sdk_records[0])
    execution_stats.buffer.track("jobs/x", time.time(), {"count": 1})
    assert execution_stats._ready()
    driver = execution_stats.buffer.driver
    real_inc = driver.inc

    def down(ops):
        raise StoreError("stats store is down")

    monkeypatch.setattr(driver, "inc", down)
    checkpointer.cut(Intake(10, 1))
    assert not checkpointer.commit([], execution_stats)
    assert checkpointer.last_error == "stats store unavailable: stats store is down" and not checkpointer.due()
    assert execution_stats.buffer.pending and read_mark(config, ident) == 0
    assert [s.segment for s in wal.segments()] == [1, 2]  # nothing trimmed
    monkeypatch.setattr(driver, "inc", real_inc)
    checkpointer.cut(Intake(10, 1))
    assert checkpointer.commit([], execution_stats)
    assert read_mark(config, ident) == 1 and checkpointer.count == 1 and checkpointer.last_error == ""
    from trifle_otel.stats.api import Stats

    reader = Stats(config, buffered=False)
    try:
        assert reader.driver.get([("jobs/x", "1y", reader.floor.bucket(int(time.time()), reader.granularities[-1]))])[0] == {"count": 1}
    finally:
        reader.shutdown()
    wal.close()


def test_a_cut_waits_for_appends_in_progress_and_holds_new_ones():
    gate = Gate()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def receiver():
        with gate.shared():
            inside.set()
            release.wait(5)
            events.append("append done")

    def cut():
        with gate.alone():
            events.append("cut")

    first = threading.Thread(target=receiver)
    first.start()
    inside.wait(5)
    cutter = threading.Thread(target=cut)
    cutter.start()
    time.sleep(0.05)
    late = threading.Thread(target=lambda: (gate.shared().__enter__(), events.append("late append")))
    late.start()
    time.sleep(0.05)
    assert events == []
    release.set()
    for thread in (first, cutter, late):
        thread.join(5)
    assert events == ["append done", "cut", "late append"]


class _Writer:
    waiting = 0
    last_error = ""
    retry: dict = {}


def _intake(tmp_path, queue_size=100, retry_buffer=10, wal_max_bytes=1 << 20):
    config = Config(home=str(tmp_path), queue_size=queue_size, retry_buffer=retry_buffer)
    wal = WAL(tmp_path / "wal", max_bytes=wal_max_bytes)
    pipeline = SimpleNamespace(intake=Intake(queue_size, 10), writer=_Writer())
    checkpointer = SimpleNamespace(last_error="")
    return SidecarIntake(config, pipeline, wal, Gate(), checkpointer), pipeline, wal  # type: ignore[arg-type]


def _batch(n: int) -> ReceivedBatch:
    return ReceivedBatch([make_span(f"s{i}", 0, 1) for i in range(n)], b"x" * 100)


def test_the_intake_logs_then_queues_and_refuses_what_does_not_fit(tmp_path):
    intake, pipeline, wal = _intake(tmp_path, queue_size=100)
    assert intake.accept(_batch(60)).accepted
    assert [r.payload for r in wal.replay()] == [_batch(0).to_record()] and len(pipeline.intake) == 60
    refused = intake.accept(_batch(60))
    assert (refused.accepted, refused.status, refused.reason) == (False, 503, "overloaded")
    assert intake.health().startswith("the sidecar's queue is full (60 spans waiting")
    pipeline.intake.take()
    assert intake.accept(_batch(250)).accepted  # larger than the queue, taken whole when it is empty
    assert len(pipeline.intake) == 250 and len(list(wal.replay())) == 2
    wal.close()


def test_the_intake_refuses_while_the_stores_are_down_and_when_the_log_is_full(tmp_path):
    intake, pipeline, wal = _intake(tmp_path, retry_buffer=10, wal_max_bytes=400)  # two requests
    pipeline.writer.waiting, pipeline.writer.last_error = 10, "cannot write s3://b/x: Could not connect"
    refused = intake.accept(_batch(1))
    assert (refused.accepted, refused.reason, refused.retry_after) == (False, "stores_unavailable", 5.0)
    assert intake.health() == "stores unavailable: cannot write s3://b/x: Could not connect (10 executions wait for retry)"
    pipeline.writer.waiting = 0
    assert intake.accept(_batch(1)).accepted
    assert intake.accept(_batch(1)).accepted
    refused = intake.accept(_batch(1))
    assert (refused.accepted, refused.reason) == (False, "wal_full")
    assert refused.message.startswith("write-ahead log full (") and "receivers.wal_max_bytes" in refused.message
    intake.checkpointer.last_error = "stats store unavailable: locked"
    assert intake.health().endswith("; trimming is failing: stats store unavailable: locked")
    intake.stopping = True
    assert intake.accept(_batch(1)).reason == "shutting_down" and intake.health() == "shutting down"
    wal.close()


def test_a_large_write_under_way_is_not_taken_for_failing_stores(tmp_path):
    """Executions in a store call under way count as waiting; while no write has failed
    they are the worker's work, not an outage: no refusal (and no 5 s Retry-After)."""
    intake, pipeline, wal = _intake(tmp_path, retry_buffer=10)
    pipeline.writer.waiting = 5_000
    assert intake.accept(_batch(1)).accepted and intake.health() is None
    pipeline.writer.last_error = "cannot write the trace index: database is locked"
    refused = intake.accept(_batch(1))
    assert (refused.accepted, refused.status, refused.reason, refused.retry_after) == (False, 503, "stores_unavailable", 5.0)
    assert refused.message == "stores unavailable: cannot write the trace index: database is locked (5,000 executions wait for retry)"
    wal.close()
