"""Outages, shutdown and process life: nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest
from opentelemetry.sdk.trace import TracerProvider

from trifle_otel import TrifleSpanProcessor
from trifle_otel.assembly import Assembler
from trifle_otel.config import Config
from trifle_otel.stats.api import Stats
from trifle_otel.stores import open_index
from trifle_otel.stores.base import TraceQuery
from conftest import make_span

T = datetime(2026, 11, 23, 10, 17, tzinfo=timezone.utc)


def provider_with(processor):
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("t")


def test_outage_spills_to_disk_and_the_next_start_replays_exactly(tmp_path):
    store = tmp_path / "store"
    store.write_text("a file where the store directory should be: every store is down")
    config = Config(home=str(store), spill_dir=str(tmp_path / "spill"), retry_buffer=3, flush_interval=0.05)
    processor = TrifleSpanProcessor(config)
    provider, tracer = provider_with(processor)
    for i in range(10):
        with tracer.start_as_current_span(f"job-{i}", attributes={"trifle.key": "jobs"}):
            with tracer.start_as_current_span("step"):
                pass
    assert processor.force_flush() is False  # the stores refused: not written
    provider.shutdown()
    stats = processor.stats()
    assert stats["executions_written"] == 0 and stats["documents_dropped"] == 0
    assert stats["documents_spilled"] == 10 and stats["stats_spilled"] > 0
    assert list((tmp_path / "spill").glob("spill-*.jsonl"))

    # Another configuration (other stores) never replays these files.
    other = TrifleSpanProcessor(Config(home=str(tmp_path / "other"), spill_dir=str(tmp_path / "spill")))
    assert other.force_flush() and other.stats()["documents_replayed"] == 0
    other.shutdown()

    store.unlink()  # the stores are back
    processor = TrifleSpanProcessor(config)
    provider, tracer = provider_with(processor)
    assert processor.force_flush()
    provider.shutdown()
    assert processor.stats()["documents_replayed"] == 10
    assert not list((tmp_path / "spill").glob("spill-*"))
    index = open_index(config.resolved_index_url())
    records = index.search(TraceQuery(limit=100)).records
    index.close()
    assert sorted(r["name"] for r in records) == sorted(f"job-{i}" for i in range(10))
    assert all(r["length"] == 2 for r in records)
    stats = Stats(config, background=False)
    series = stats.values("jobs", T.replace(year=2000), datetime.now(timezone.utc), "1y")
    assert sum(v.get("count", 0) for v in series["values"]) == 10  # the default stats, replayed once
    stats.shutdown()


def test_a_replay_that_fails_gives_the_file_back(tmp_path):
    from trifle_otel.pipeline.spill import Spill
    from trifle_otel.translate import Translator
    from conftest import execution

    spill = Spill(tmp_path, 1 << 20, ["a"])
    doc = Translator(Config()).translate(execution(make_span("job", 0, 5)), 10**18)
    assert spill.save([doc], [("k", "1h", 0, {"count": 1})])
    claim = spill.claim()
    spilled = claim.documents[0].record
    assert dict(spilled, segments=tuple(spilled["segments"])) == doc.record  # (JSON has no tuples)
    assert claim.inc == [("k", "1h", 0, {"count": 1})]
    assert spill.claim() is None  # claimed: nobody else takes it
    claim.release()
    again = spill.claim()
    assert again is not None and again.documents[0].reference == doc.reference
    again.done()
    assert spill.pending() == 0


def test_unencodable_values_do_not_block_other_executions(tmp_path):
    processor = TrifleSpanProcessor(Config(home=str(tmp_path), flush_interval=0.05))
    provider, tracer = provider_with(processor)
    with tracer.start_as_current_span("big", attributes={"order.checksum": 2**64}):
        pass
    with tracer.start_as_current_span("normal"):
        pass
    assert processor.force_flush()
    provider.shutdown()
    assert processor.stats()["executions_written"] == 2


def test_force_flush_is_false_while_the_store_refuses(tmp_path):
    blocked = tmp_path / "f"
    blocked.write_text("x")
    processor = TrifleSpanProcessor(Config(home=str(blocked / "h"), flush_interval=0.05))
    provider, tracer = provider_with(processor)
    with tracer.start_as_current_span("job"):
        pass
    assert processor.force_flush() is False
    provider.shutdown()


def test_a_live_root_whose_end_was_dropped_is_finished_from_what_arrived():
    clock = Clock()
    a = Assembler(clock=clock)

    class Source:
        ended = False

    root = make_span("job", 0, None)
    a.start(root, Source)
    a.add(make_span("step", 1, 2, root))
    ended_root = make_span("job", 0, 10, span_id=root.span_id, trace_id=root.trace_id)

    def refresh(source):
        return ended_root if source.ended else root

    assert [e.root.name for e in a.running(refresh)] == ["job"]
    Source.ended = True  # the root ended; its end may still be on its way: wait
    assert a.running(refresh) == [] and a.collect() == []
    clock.now = 30
    assert a.running(refresh) == [] and a.collect() == []
    clock.now = 61  # a minute later it has not come: it was dropped
    assert a.running(refresh) == []
    [done] = a.collect()
    assert done.root.end_ns is not None and [s.name for s in done.spans] == ["step"]
    a.add(ended_root)  # if it comes after all, it is not a second execution
    assert a.collect() == [] and a.counters.late_spans == 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_stats_api_is_safe_across_fork(tmp_path):
    stats = Stats(Config(home=str(tmp_path)), flush_interval=60)
    stats.track("k", T, {"count": 1})
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            stats.track("k", T, {"count": 10})  # the child's own increment
            stats.flush()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert stats.values("k", T, T, "1h")["values"] == [{"count": 11}]
    stats.shutdown()


JOB = textwrap.dedent(
    """
    import signal, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from trifle_otel import TrifleSpanProcessor
    from trifle_otel.config import Config

    warm = sys.argv[2] == "warm"
    stopping = []
    if warm:  # like a Celery worker: on SIGTERM, finish the jobs at hand, then exit
        signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    # A long flush interval: only the SIGTERM flush or the exit can write in time.
    processor = TrifleSpanProcessor(Config(home=sys.argv[1], flush_interval=60))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("job")
    with tracer.start_as_current_span("before-signal"):
        pass
    print("ready", flush=True)
    deadline = time.time() + 10
    while not stopping and time.time() < deadline:
        time.sleep(0.01)
    if warm:
        with tracer.start_as_current_span("after-signal"):
            pass
    """
)


@pytest.mark.parametrize("mode", ["warm", "default"])
def test_sigterm_writes_what_has_ended_and_warm_shutdowns_keep_working(tmp_path, mode):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, str(script), str(home), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    if mode == "warm":
        assert proc.returncode == 0
    else:
        assert proc.returncode == -signal.SIGTERM
    index = open_index(f"sqlite://{home / 'traces.db'}")
    names = sorted(r["name"] for r in index.search(TraceQuery()).records)
    index.close()
    assert names == (["after-signal", "before-signal"] if mode == "warm" else ["before-signal"])
