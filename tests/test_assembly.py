"""Assembly of spans into executions under their local roots."""

from __future__ import annotations

from conftest import make_span

from trifle_otel.assembly import Assembler


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_children_then_root_make_one_execution():
    a = Assembler()
    root = make_span("job", 0, 10)
    child = make_span("step", 1, 2, root)
    grandchild = make_span("sub", 1.2, 1.5, child)
    for span in (grandchild, child, root):
        a.add(span)
    [ex] = a.collect()
    assert ex.root is root and {s.span_id for s in ex.spans} == {child.span_id, grandchild.span_id}
    assert a.pending_spans == 0 and a.collect() == []


def test_remote_parent_starts_a_new_execution_in_the_same_trace():
    a = Assembler()
    producer = make_span("enqueue", 0, 1)
    consumer = make_span("run/job", 5, 10, producer, parent_remote=True, kind="consumer")
    step = make_span("step", 6, 7, consumer)
    for span in (step, consumer, producer):
        a.add(span)
    executions = {ex.root.name: ex for ex in a.collect()}
    assert set(executions) == {"enqueue", "run/job"}
    assert [s.name for s in executions["run/job"].spans] == ["step"]
    assert executions["enqueue"].spans == []


def test_grace_period_waits_for_late_children():
    clock = Clock()
    a = Assembler(grace=2.0, clock=clock)
    root = make_span("job", 0, 10)
    a.add(root)
    assert a.collect() == []
    clock.now = 1.0
    a.add(make_span("late", 9, 11, root))
    clock.now = 2.5
    [ex] = a.collect()
    assert [s.name for s in ex.spans] == ["late"]


def test_flush_ignores_grace_and_final_drops_orphans():
    clock = Clock()
    a = Assembler(grace=60, clock=clock)
    root = make_span("job", 0, 10)
    a.add(root)
    orphan = make_span("lost", 0, 1, parent_span_id="ffffffffffffffff")
    a.add(orphan)
    assert len(a.collect(ignore_grace=True)) == 1
    assert a.pending_spans == 1 and a.counters.orphan_spans == 0
    a.collect(final=True)
    assert a.pending_spans == 0 and a.counters.orphan_spans == 1


def test_orphans_time_out_and_pending_spans_are_bounded():
    clock = Clock()
    a = Assembler(orphan_timeout=10, max_pending_spans=3, clock=clock)
    parent = make_span("never-ends", 0, None)
    for i in range(5):
        a.add(make_span(f"c{i}", i, i + 1, parent))
    assert a.pending_spans == 3 and a.counters.overflow_spans == 2
    clock.now = 11
    a.collect()
    assert a.pending_spans == 0 and a.counters.orphan_spans == 3


def test_running_roots_are_visible_with_what_has_ended_so_far():
    a = Assembler()
    root = make_span("job", 0, None)
    a.start(root)
    a.add(make_span("done step", 1, 2, root))
    [running] = a.running()
    assert running.running and [s.name for s in running.spans] == ["done step"]
    ended = make_span("job", 0, 10, span_id=root.span_id, trace_id=root.trace_id)
    a.add(ended)
    assert a.running() == []
    [ex] = a.collect()
    assert not ex.running and [s.name for s in ex.spans] == ["done step"]


def test_huge_executions_are_truncated_and_counted():
    a = Assembler(max_spans_per_execution=5)
    root = make_span("job", 0, 100)
    for i in range(8):
        a.add(make_span(f"s{i}", i, i + 1, root))
    a.add(root)
    [ex] = a.collect()
    assert [s.name for s in ex.spans] == ["s0", "s1", "s2", "s3", "s4"]
    assert a.counters.truncated_spans == 3
