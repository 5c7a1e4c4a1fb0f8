"""Assembly with no end signal (the OTLP sidecar): grace after the root, the trace timeout,
late spans, running jobs without their root, start markers, local roots across processes
when the exporter does not flag remote parents, bounded memory."""

from __future__ import annotations

from dataclasses import replace

from conftest import make_span, new_id

from trifle_otel.model import Execution
from trifle_otel.pipeline.carry import decode_spans, encode_spans
from trifle_otel.pipeline.open_assembly import LateExecution, OpenAssembler, Snapshot

WEB = {"service.name": "shop-web", "service.instance.id": "web-1"}
WORKER = {"service.name": "shop-worker", "service.instance.id": "worker-3"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def assembler(clock: Clock, **options) -> OpenAssembler:
    return OpenAssembler(clock=clock, **{"grace": 2.0, "trace_timeout": 60.0, **options})


def job(children: int = 2, **root_options):
    root = make_span("run/pricing.calculate_price", 0, 100, kind="consumer", resource=WORKER, **root_options)
    steps = [make_span(f"step {i}", 10 * i, 10 * i + 5, root, resource=WORKER) for i in range(children)]
    return root, steps


def names(execution: Execution) -> list[str]:
    return sorted(s.name for s in execution.spans)


def test_an_execution_is_finished_once_its_trace_is_quiet_for_grace():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(3)
    a.add(steps[0])
    clock.tick(1.5)
    a.add(steps[1])
    a.add(root)
    clock.tick(1.9)
    assert a.collect() == []
    a.add(steps[2])  # a child after its root: the wait starts again
    clock.tick(1.9)
    assert a.collect() == []
    clock.tick(0.2)
    (execution,) = a.collect()
    assert type(execution) is Execution and execution.root == root
    assert names(execution) == ["step 0", "step 1", "step 2"]
    assert a.pending_spans == 0 and a.counters.executions == 1


def test_a_trace_that_never_goes_quiet_is_finished_at_the_trace_timeout():
    clock = Clock()
    a = assembler(clock, trace_timeout=10.0)
    root, _ = job(0)
    a.add(root)
    other = make_span("other job", 0, 1, trace_id=root.trace_id, kind="consumer", resource=WEB)
    finished = []
    for _ in range(12):  # a span of the trace every second: never quiet for 2 s
        clock.tick(1.0)
        a.add(make_span("tick", 0, 1, other, resource=WEB))
        finished += a.collect()
    assert [e.root for e in finished] == [root]
    a.add(other)
    clock.tick(2.0)
    (execution,) = a.collect()
    assert execution.root == other and len(execution.spans) == 12


def test_late_spans_assemble_the_execution_again_under_its_reference():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(2)
    for span in (*steps, root):
        a.add(span)
    clock.tick(2.0)
    (first,) = a.collect()
    late = make_span("audit", 101, 150, root, resource=WORKER)
    late_child = make_span("audit write", 120, 140, late, resource=WORKER)
    a.add(late_child)
    a.add(late)
    clock.tick(2.0)
    (again,) = a.collect()
    assert type(again) is LateExecution and again.reference == first.reference
    assert names(again) == ["audit", "audit write", "step 0", "step 1"]
    assert sorted(s.name for s in again.late) == ["audit", "audit write"]
    assert a.counters.late_spans == 2 and a.counters.executions == 1
    a.add(late)  # the same span again (a retried export): dropped
    assert a.counters.duplicate_spans == 1 and a.pending_spans == 0


def test_finished_executions_are_kept_for_late_spans_up_to_the_trace_timeout():
    clock = Clock()
    a = assembler(clock, trace_timeout=30.0)
    root, steps = job(1)
    for span in (*steps, root):
        a.add(span)
    clock.tick(2.0)
    a.collect()
    assert a.retained_spans == 2
    clock.tick(30.0)
    a.collect()
    assert a.retained_spans == 0 and a._traces == {}


def test_a_running_job_is_snapshotted_then_finished_under_the_same_reference():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(3)
    a.add(steps[0])
    clock.tick(2.0)
    assert a.collect() == []
    (snapshot,) = a.running()
    assert type(snapshot) is Snapshot and snapshot.made_up_root and snapshot.running
    assert snapshot.reference == Execution(root).reference  # the missing parent of the first step
    assert snapshot.root.name == "shop-worker: root span not received yet"
    assert names(snapshot) == ["step 0"]
    clock.tick(5.0)
    a.collect()
    assert a.running() == []  # nothing new: no new snapshot
    a.add(steps[1])
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert names(snapshot) == ["step 0", "step 1"]
    a.add(steps[2])
    a.add(root)
    clock.tick(2.0)
    (execution,) = a.collect()
    assert execution.reference == snapshot.reference and names(execution) == ["step 0", "step 1", "step 2"]
    assert a.running() == [] and a.retracted() == []


def test_a_snapshot_made_under_a_step_is_retracted_when_the_step_shows_its_root():
    clock = Clock()
    a = assembler(clock)
    root, _ = job(0)
    step = make_span("Exporting orders", 10, 80, root, resource=WORKER)
    rows = make_span("rows", 11, 12, step, resource=WORKER)
    a.add(rows)  # the step is still running: its child's parent is missing
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert snapshot.root.span_id == step.span_id
    a.add(step)
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert snapshot.root.span_id == root.span_id and names(snapshot) == ["Exporting orders", "rows"]
    assert a.retracted() == [(root.trace_id, step.span_id)]


def test_a_start_marker_names_the_running_job_and_is_not_a_step():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(1, attributes={"trifle.key": "prices/calc", "customer.id": "acme"})
    marker = make_span(root.name, 0, 0, root, resource=WORKER,
                       attributes={"trifle.pending": True, "trifle.key": "prices/calc", "customer.id": "acme"})
    a.add(marker)
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert not snapshot.made_up_root and snapshot.spans == []
    assert (snapshot.root.span_id, snapshot.root.name, snapshot.root.end_ns) == (root.span_id, root.name, None)
    assert snapshot.root.attributes == {"trifle.key": "prices/calc", "customer.id": "acme"}
    a.add(steps[0])
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert names(snapshot) == ["step 0"]
    a.add(root)
    clock.tick(2.0)
    (execution,) = a.collect()
    assert execution.root == root and names(execution) == ["step 0"]
    assert a.carry() == [] and a.counters.markers == 1


def test_a_marker_that_is_the_root_itself():
    clock = Clock()
    a = assembler(clock)
    root, _ = job(0)
    a.add(replace(root, end_ns=root.start_ns, attributes={"trifle.pending": "true"}))
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert snapshot.root.span_id == root.span_id and snapshot.running
    a.add(root)
    clock.tick(2.0)
    assert [e.root for e in a.collect()] == [root]


def _web_request_enqueuing_a_job(known: bool):
    """A web request (one process) enqueues a job run by a worker (another process); the
    exporters did not say whether parents are remote when ``known`` is false."""
    request = make_span("POST /checkout", 0, 30, kind="server", resource=WEB, parent_span_id="00000000000000aa",
                        parent_remote=True, parent_remote_known=known)
    enqueue = make_span("send_receipt publish", 5, 6, request, kind="producer", resource=WEB, parent_remote_known=known)
    run = make_span("run/send_receipt", 50, 90, enqueue, kind="consumer", resource=WORKER, parent_remote=known,
                    parent_remote_known=known)
    render = make_span("Rendering", 55, 60, run, resource=WORKER, parent_remote_known=known)
    return request, enqueue, run, render


def test_one_execution_per_process_when_flags_say_nothing():
    for known in (True, False):
        clock = Clock()
        a = assembler(clock)
        request, enqueue, run, render = _web_request_enqueuing_a_job(known)
        for span in (render, run, enqueue, request):
            a.add(span)
        clock.tick(2.0)
        executions = {e.root.name: names(e) for e in a.collect()}
        assert executions == {"POST /checkout": ["send_receipt publish"], "run/send_receipt": ["Rendering"]}, known


def test_local_roots_from_kinds_resources_and_missing_callers():
    clock = Clock()
    a = assembler(clock)
    parent = make_span("enqueue", 0, 1, kind="producer", resource=WEB)
    same_process_job = make_span("job", 2, 3, parent, kind="consumer", resource=WEB, parent_remote_known=False)
    other_process_step = make_span("internal elsewhere", 2, 3, parent, resource=WORKER, parent_remote_known=False)
    same_process_step = make_span("internal here", 2, 3, parent, resource=dict(WEB), parent_remote_known=False)
    called = make_span("GET /prices", 0, 5, kind="server", resource=WORKER, parent_span_id="00000000000000bb",
                       parent_remote_known=False)
    for span in (parent, same_process_job, other_process_step, same_process_step, called):
        a.add(span)
    clock.tick(2.0)
    executions = {e.root.name: names(e) for e in a.collect()}
    assert executions == {"enqueue": ["internal here"], "job": [], "internal elsewhere": [], "GET /prices": []}


def test_a_trace_from_several_processes_whose_parts_come_apart():
    clock = Clock()
    a = assembler(clock)
    request, enqueue, run, render = _web_request_enqueuing_a_job(False)
    a.add(enqueue)
    a.add(request)
    clock.tick(2.0)
    (web,) = a.collect()
    a.add(render)
    a.add(run)  # its parent finished already, in another process: a new execution, not a late span
    clock.tick(2.0)
    (worker,) = a.collect()
    assert type(worker) is Execution and worker.root == run and names(worker) == ["Rendering"]
    assert a.counters.late_spans == 0


def test_memory_is_bounded_by_finishing_the_oldest_early():
    clock = Clock()
    a = assembler(clock, max_pending_spans=10)
    finished = []
    roots = []
    for _ in range(4):
        root, steps = job(3)
        roots.append(root)
        for span in (*steps, root):
            a.add(span)
        finished += a.collect()
    assert a.pending_spans + a.retained_spans <= 10
    assert [e.root for e in finished] == roots[:2]  # the oldest, before their grace was over
    assert a.counters.early_executions == 2
    running_root, running_steps = job(2)
    for span in running_steps:  # a running job, pushed out of memory: snapshotted, let go
        a.add(span)
    for _ in range(3):
        root, steps = job(3)
        for span in (*steps, root):
            a.add(span)
        a.collect()
    assert a.counters.evicted_spans == 2
    assert any(s.reference == Execution(running_root).reference for s in a.running())


def test_carried_spans_rebuild_the_same_state_after_a_restart():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(2)
    marker = make_span(root.name, 0, 0, root, resource=WORKER, attributes={"trifle.pending": True, "tags": ("a", "b")})
    a.add(marker)
    a.add(steps[0])
    done_root, done_steps = job(1)
    for span in (*done_steps, done_root):
        a.add(span)
    clock.tick(2.0)
    a.collect()
    carried = a.carry()
    assert sorted(s.name for s in carried) == ["run/pricing.calculate_price", "step 0"]
    _, restored = decode_spans(encode_spans(carried))
    assert restored == carried
    b = assembler(Clock())
    for span in restored:
        b.add(span)
    b.add(steps[1])
    b.add(root)
    b.clock.tick(2.0)
    (execution,) = b.collect()
    assert execution.root == root and names(execution) == ["step 0", "step 1"]


def test_quiet_running_jobs_are_let_go_after_release_after():
    clock = Clock()
    a = assembler(clock, release_after=100.0)
    _, steps = job(1)
    a.add(steps[0])
    clock.tick(2.0)
    a.collect()
    assert len(a.running()) == 1
    clock.tick(100.0)
    a.collect()
    assert a.pending_spans == 0 and a.counters.released_spans == 1 and a._traces == {}


def test_a_running_job_whose_execution_is_stored_already_is_dropped():
    clock = Clock()
    a = assembler(clock)
    root, steps = job(1)
    a.add(steps[0])
    clock.tick(2.0)
    a.collect()
    (snapshot,) = a.running()
    assert a.drop_running(root.trace_id, snapshot.root.span_id) == 1
    assert a.pending_spans == 0 and a.counters.late_dropped_spans == 1 and a._traces == {}


def test_spans_with_a_cycle_of_parents_do_not_hang():
    clock = Clock()
    a = assembler(clock)
    trace_id = new_id(32)
    first, second = new_id(), new_id()
    a.add(make_span("a", 0, 1, trace_id=trace_id, span_id=first, parent_span_id=second))
    a.add(make_span("b", 0, 1, trace_id=trace_id, span_id=second, parent_span_id=first))
    clock.tick(2.0)
    assert a.collect() == []
    (snapshot,) = a.running()
    assert names(snapshot) == ["a", "b"]
