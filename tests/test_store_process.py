"""The sidecar's trace stores written from a child process (``pipeline/store_process``), and
the writer's background writes that keep one batch with the child while the next is made."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import execution, make_span

from trifle_otel.config import Config
from trifle_otel.errors import StoreError
from trifle_otel.pipeline.counters import PipelineCounters
from trifle_otel.pipeline.spill import Spill
from trifle_otel.pipeline.store_process import ProcessSink, decode_documents, encode_documents, open_trace_sink
from trifle_otel.pipeline.writer import DocumentWriter
from trifle_otel.sinks import encode_parts, load_artifact, load_lines
from trifle_otel.stores.layout import data_prefix
from trifle_otel.translate import Translator


def documents(config: Config, n: int, *, artifact: bool = False) -> list:
    translator = Translator(config)
    out = []
    for i in range(n):
        root = make_span("job", 0, 5, attributes={"trifle.key": f"jobs/p{i % 3}", "customer.id": f"c{i}"})
        child = make_span("step", 1, 2, root, attributes={"trifle.result": "x" * 200_000} if artifact else {"n": i})
        out.append(encode_parts(translator.translate(execution(root, child), time.time_ns()), config.gzip))
    return out


@pytest.fixture
def sink_config(tmp_path) -> Config:
    return Config(home=str(tmp_path / "home"), tag_attributes=["customer.id"])


@pytest.fixture
def process_sink(sink_config):
    sink = ProcessSink(sink_config)
    yield sink
    sink.close()


def test_documents_cross_the_pipe_unchanged():
    config = Config(home="/nonexistent")
    docs = documents(config, 3, artifact=True)
    back = decode_documents(encode_documents(docs))
    for doc, copy in zip(docs, back):
        assert copy.record == {k: (list(v) if isinstance(v, tuple) else v) for k, v in doc.record.items()}
        assert isinstance(copy.record["first_at"], datetime) and copy.record["first_at"].tzinfo is not None
        assert copy.bodies == list(doc.bodies) and copy.artifacts == list(doc.artifacts)


def test_a_child_process_writes_what_the_sink_in_process_would(sink_config, process_sink, tmp_path):
    docs = documents(sink_config, 40, artifact=True)
    copies = decode_documents(encode_documents(docs))
    assert process_sink.write(docs) == []
    direct = open_trace_sink(Config(home=str(tmp_path / "direct"), tag_attributes=["customer.id"]))
    assert direct.write(copies) == []
    reader = open_trace_sink(sink_config)
    try:
        for doc in docs:
            record = process_sink.index.get(doc.reference)  # read in this process
            assert record == direct.index.get(doc.reference)
            assert record["tags"] == [f"customer.id:c{docs.index(doc)}"]
            lines = load_lines(reader.data, record)
            assert lines == load_lines(direct.data, record) and len(lines) >= 3
            media = [line["message"] for line in lines if line["type"] == "media"]
            assert media and load_artifact(reader.data, record, media[0]) == load_artifact(direct.data, record, media[0])
    finally:
        reader.close()
        direct.close()


def test_background_writes_keep_their_order_and_a_record_is_replaced_by_its_finished_document(sink_config, process_sink):
    docs = documents(sink_config, 5)
    running = decode_documents(encode_documents(docs))
    for doc in running:
        doc.record["state"] = "running"
    first = process_sink.begin(running)
    second = process_sink.begin(docs)  # sent after the first's answer, which it keeps
    assert first.done() and first.result() == []
    assert second.result() == []
    assert {process_sink.index.get(d.reference)["state"] for d in docs} == {"success"}


def test_discard_and_purge_go_through_the_child(sink_config, process_sink):
    docs = documents(sink_config, 4)
    process_sink.write(docs)
    process_sink.discard(docs[:1])
    assert process_sink.index.get(docs[0].reference) is None
    assert process_sink.index.get(docs[1].reference) is not None
    later = datetime.now(timezone.utc) + timedelta(days=sink_config.retention_days + 1)
    assert process_sink.purge_expired(later) == 3
    assert process_sink.index.get(docs[1].reference) is None


def test_stores_that_do_not_open_fail_each_write_with_their_message(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = Config(home=str(tmp_path / "home"), index_url=f"sqlite:///{blocker}/traces.db")
    sink = ProcessSink(config)
    try:
        for _ in range(2):  # a new child each time, the same answer
            with pytest.raises(StoreError, match="cannot open the trace index database .*not-a-directory"):
                sink.write(documents(config, 1))
    finally:
        sink.close()


def test_a_refused_part_fails_that_execution_alone(tmp_path):
    data = tmp_path / "data"
    config = Config(home=str(tmp_path / "home"), data_url=f"file://{data}")
    docs = documents(config, 3)
    in_the_way = data / data_prefix(docs[1].record).rstrip("/")  # a file where its directory goes
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("")
    sink = ProcessSink(config)
    try:
        failed = sink.write(docs)
        assert [d.reference for d in failed] == [docs[1].reference]
        assert sink.index.get(docs[0].reference) is not None and sink.index.get(docs[1].reference) is None
    finally:
        sink.close()


def test_a_dead_child_fails_the_write_in_flight_and_a_new_one_takes_the_next(sink_config, process_sink):
    process_sink.write(documents(sink_config, 1))
    os.kill(process_sink._process.pid, signal.SIGKILL)
    process_sink._process.wait(10)
    with pytest.raises(StoreError, match="store writer process.*started again"):
        process_sink.write(documents(sink_config, 1))
    docs = documents(sink_config, 2)
    assert process_sink.write(docs) == []
    assert all(process_sink.index.get(d.reference) for d in docs)


def test_the_child_stops_when_its_parent_goes(sink_config):
    sink = ProcessSink(sink_config)
    try:
        sink.write(documents(sink_config, 1))
        child, sink._process = sink._process, None
        child.stdin.close()  # what the parent's death does to the pipe
        assert child.wait(10) == 0
        child.stdout.close()
    finally:
        sink.close()


# -- the writer's background writes (a sink stand-in that answers when the test says) ----------


class Handle:
    def __init__(self, documents, answer):
        self.documents = documents
        self.answer = answer  # list of failed positions, or an exception; None: not answered yet
        self.waited = False

    def done(self) -> bool:
        return self.answer is not None

    def result(self):
        self.waited = True
        if isinstance(self.answer, Exception):
            raise self.answer
        return [self.documents[i] for i in (self.answer or [])]


class BackgroundSink:
    def __init__(self):
        self.handles: list[Handle] = []
        self.sync_writes: list[list] = []

    def begin(self, documents):
        self.handles.append(Handle(list(documents), None))
        return self.handles[-1]

    def write(self, documents):
        self.sync_writes.append(list(documents))
        return []


def background_writer(tmp_path, batch=10):
    sink = BackgroundSink()
    counters = PipelineCounters()
    writer = DocumentWriter(lambda: sink, Spill(tmp_path / "spill", 1 << 20, ("a", "b", "c", "full")), 1_000, counters,
                            interval=60.0, batch=batch, background=True)
    return writer, sink, counters


def test_a_background_batch_goes_at_once_and_the_next_waits_for_its_answer(tmp_path):
    config = Config(home=str(tmp_path / "home"))
    writer, sink, counters = background_writer(tmp_path)
    docs = documents(config, 6)
    writer.write(docs[:2], [])
    assert len(sink.handles) == 1 and writer.pending and writer.waiting == 2  # (the interval does not hold it)
    writer.write(docs[2:4], [])
    assert len(sink.handles) == 1 and not sink.handles[0].waited  # queued behind the batch in flight
    sink.handles[0].answer = []
    writer.write(docs[4:], [])
    assert counters.executions_written == 2
    assert [d.reference for d in sink.handles[1].documents] == [d.reference for d in docs[2:]]


def test_a_full_queue_or_a_checkpoint_waits_for_the_batch_in_flight(tmp_path):
    config = Config(home=str(tmp_path / "home"))
    writer, sink, counters = background_writer(tmp_path, batch=3)
    docs = documents(config, 7)
    writer.write(docs[:1], [])
    sink.handles[0].answer = []  # (answered; not yet taken)
    writer.write(docs[1:4], [])  # a full batch behind it: the answer is taken, the batch sent
    assert sink.handles[0].waited and len(sink.handles) == 2
    sink.handles[1].answer = []
    writer.write(docs[4:], [], force=True)  # a checkpoint: everything written before it returns
    assert sink.sync_writes and [d.reference for d in sink.sync_writes[-1]] == [d.reference for d in docs[4:]]
    assert counters.executions_written == 7 and writer.waiting == 0 and not writer.pending


def test_a_failed_background_batch_waits_for_retry(tmp_path):
    config = Config(home=str(tmp_path / "home"))
    writer, sink, counters = background_writer(tmp_path)
    docs = documents(config, 3)
    writer.write(docs, [])
    sink.handles[0].answer = StoreError("the index is down")
    writer.complete()
    assert writer.last_error == "the index is down" and len(writer.retry) == 3 and counters.write_errors == 1
    assert writer.waiting == 3 and writer.backing_off
    writer.write([], [], force=True)
    assert [d.reference for d in sink.sync_writes[-1]] == [d.reference for d in docs]
    assert not writer.retry and writer.last_error == "" and counters.executions_written == 3
