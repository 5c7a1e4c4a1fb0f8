"""Translation of executions into Trifle documents: pure functions, no stores."""

from __future__ import annotations

from datetime import timedelta

from conftest import T0, execution, make_span

from trifle_otel.config import Config
from trifle_otel.translate import Translator, counters_of, segments_of


def translate(ex, **settings):
    return Translator(Config(**settings)).translate(ex, now_ns=T0 + 10**12)


def messages(doc):
    return [(l["level"], l["message"], l["state"], l["type"]) for l in doc.lines]


def test_nested_spans_become_begin_content_end_and_result_lines():
    root = make_span("run/job", 0, 100)
    fetch = make_span("Fetching main product", 10, 20, root, attributes={"trifle.result": '{"id": 1}'})
    offers = make_span("Fetching offers", 30, 80, root)
    supplier = make_span("Fetching offers from ingram", 35, 60, offers, attributes={"trifle.result": "[]"})
    doc = translate(execution(root, supplier, offers, fetch))  # arrival order does not matter
    assert messages(doc) == [
        (0, "Fetching main product ↴", "success", "text"),
        (0, "Fetching main product ↵", "success", "text"),
        (0, '↳ {"id": 1}', "success", "raw"),
        (0, "Fetching offers ↴", "success", "text"),
        (1, "Fetching offers from ingram ↴", "success", "text"),
        (1, "Fetching offers from ingram ↵", "success", "text"),
        (1, "↳ []", "success", "raw"),
        (0, "Fetching offers ↵", "success", "text"),
    ]
    assert doc.record["counters"] == {
        "states": {"success": 8, "warning": 0, "error": 0, "debug": 0},
        "types": {"text": 6, "head": 0, "raw": 2, "media": 0},
        "max_level": 1,
    }
    assert doc.record["length"] == 8 and doc.record["parts"] == 1
    assert doc.record["duration"] == 100
    begin, end = doc.lines[0], doc.lines[1]
    assert begin["span_id"] == end["span_id"] == fetch.span_id
    assert end["duration"] == 10.0
    assert begin["at"] == T0 // 10**9 + 0 and begin["ns"] == T0 + 10_000_000


def test_events_are_text_lines_with_their_attributes_as_raw_lines_in_time_order():
    root = make_span("job", 0, 50, events=[("started", 1), ("done", 45, {"rows": 3, "trifle.state": "warning"})])
    child = make_span("step", 10, 20, root, events=[("inside", 15)])
    doc = translate(execution(root, child))
    assert messages(doc) == [
        (0, "started", "success", "text"),
        (0, "step ↴", "success", "text"),
        (1, "inside", "success", "text"),
        (0, "step ↵", "success", "text"),
        (0, "done", "warning", "text"),
        (0, '{"rows": 3}', "success", "raw"),
    ]


def test_exception_event_is_an_error_line_with_the_stack_as_raw_and_marks_the_end_line():
    root = make_span("job", 0, 50, status="error")
    child = make_span(
        "Fetching offers",
        5,
        20,
        root,
        status="error",
        status_message="TimeoutError: late",
        events=[("exception", 19, {"exception.type": "TimeoutError", "exception.message": "late",
                                     "exception.stacktrace": "Traceback...\n  line 1"})],
    )
    doc = translate(execution(root, child))
    assert messages(doc) == [
        (0, "Fetching offers ↴", "success", "text"),
        (1, "TimeoutError: late", "error", "text"),
        (1, "Traceback...\n  line 1", "error", "raw"),
        (0, "Fetching offers ↵", "error", "text"),
    ]
    assert doc.record["state"] == "error"


def test_failed_span_without_exception_event_shows_its_status_message():
    root = make_span("job", 0, 50)
    child = make_span("call", 5, 20, root, status="error", status_message="HTTP 503")
    doc = translate(execution(root, child))
    assert (0, "HTTP 503", "error", "text") in messages(doc)
    # A handled failure in a step marks its lines, not the whole execution (Trifle semantics).
    assert doc.record["state"] == "success"


def test_state_follows_the_last_explicit_state_and_a_failed_root():
    root = make_span("job", 0, 50, events=[("trifle.warn", 10, {"message": "low margin"})])
    assert translate(execution(root)).record["state"] == "warning"
    assert messages(translate(execution(root))) == [(0, "low margin", "warning", "text")]
    root = make_span("job", 0, 50, events=[("trifle.fail", 10), ("trifle.success", 20)])
    assert translate(execution(root)).record["state"] == "success"
    root = make_span("job", 0, 50, events=[("trifle.warn", 10)])
    child = make_span("step", 20, 30, root, attributes={"trifle.state": "error"})
    assert translate(execution(root, child)).record["state"] == "error"
    root = make_span("job", 0, 50, status="error", events=[("trifle.success", 10)])
    assert translate(execution(root)).record["state"] == "error"
    assert translate(execution(make_span("job", 0, None))).record["state"] == "running"


def test_ignore_by_event_or_attribute():
    root = make_span("job", 0, 50)
    assert not translate(execution(root)).ignored
    assert translate(execution(root, make_span("s", 1, 2, root, events=[("trifle.ignore", 1)]))).ignored
    assert translate(execution(make_span("job", 0, 5, attributes={"trifle.ignore": True}))).ignored


def test_key_template_default_attributes_and_span_name():
    root = make_span("run/pricing.calculate_price", 0, 5, attributes={"celery.task_name": "pricing.calculate_price"})
    assert translate(execution(root)).record["key"] == "pricing.calculate_price"
    root = make_span("run/x", 0, 5, attributes={"trifle.key": "/prices//calculate/", "celery.task_name": "x"})
    doc = translate(execution(root))
    assert doc.record["key"] == "prices/calculate"
    assert list(doc.record["segments"]) == ["prices", "prices/calculate"]
    root = make_span("GET /health", 0, 5, attributes={"customer.id": "acme"})
    assert translate(execution(root)).record["key"] == "GET /health"
    doc = translate(execution(root), key_template="jobs/{attributes[customer.id]}/{name}")
    assert doc.record["key"] == "jobs/acme/GET /health"
    # A template whose attribute is missing falls back to the default key.
    doc = translate(execution(root), key_template='jobs/{attributes["reseller.id"]}')
    assert doc.record["key"] == "GET /health"


def test_segments():
    assert segments_of("a/b/c") == ["a", "a/b", "a/b/c"]
    assert segments_of("a") == ["a"]


def test_tags_meta_context_links_and_retention():
    root = make_span(
        "job",
        0,
        5,
        attributes={"customer.id": "acme", "price": 12.5, "trifle.tags": ["vip"], "trifle.key": "k"},
        events=[("trifle.tag", 1, {"tags": ["b", "a"]})],
        parent_span_id="00000000000000aa",
        parent_remote=True,
        resource={"service.name": "worker", "telemetry.sdk.name": "opentelemetry", "host.name": "h1"},
    )
    child = make_span("s", 1, 2, root, attributes={"reseller.id": "north"})
    doc = translate(execution(root, child), tag_attributes=["customer.id", "reseller.id"], retention_days=7)
    r = doc.record
    assert r["tags"] == ["a", "b", "customer.id:acme", "reseller.id:north", "vip"]
    assert r["meta"] == {"customer.id": "acme", "price": 12.5}
    assert r["context"] == {"service.name": "worker", "host.name": "h1"}
    assert r["links"] == [{"type": "parent", "trace_id": root.trace_id, "span_id": "00000000000000aa"}]
    assert r["retention"] == 7
    assert r["expires_at"] - r["first_at"] == timedelta(days=7)
    assert r["reference"] == root.span_id + root.trace_id
    assert r["service"] == "worker"


def test_large_line_goes_to_an_artifact_and_a_media_line_keeps_its_place():
    big = "x" * 200_000
    root = make_span("job", 0, 5)
    child = make_span("dump", 1, 2, root, attributes={"trifle.result": big})
    doc = translate(execution(root, child))
    media = doc.lines[2]
    assert media["type"] == "media" and media["size"] == len("↳ ".encode()) + 200_000
    assert media["message"] == "part_row_3.txt" and media["level"] == 0
    assert doc.artifacts == [("part_row_3.txt", ("↳ " + big).encode())]
    assert doc.record["counters"]["types"]["media"] == 1


def test_large_and_many_meta_values_stay_out_of_the_record():
    attrs = {"payload": "y" * 50_000}
    attrs.update({f"a{i}": i for i in range(300)})
    doc = translate(execution(make_span("job", 0, 5, attributes=attrs)))
    meta = doc.record["meta"]
    assert meta["payload"] == {"artifact": "meta_1.txt", "size": 50_000}
    assert ("meta_1.txt", b"y" * 50_000) in doc.artifacts
    assert len(meta) == 201 and meta["trifle.dropped_meta"] == 101


def test_parts_are_split_by_part_size():
    root = make_span("job", 0, 100)
    children = [make_span(f"s{i}", i, i + 0.5, root) for i in range(10)]
    doc = translate(execution(root, *children), part_size=6)
    assert [len(p) for p in doc.parts] == [6, 6, 6, 2]
    assert doc.record["parts"] == 4


def test_span_whose_parent_is_missing_is_placed_under_the_root():
    root = make_span("job", 0, 100)
    orphan = make_span("late", 10, 20, parent_span_id="ffffffffffffffff", trace_id=root.trace_id)
    doc = translate(execution(root, orphan))
    assert messages(doc)[0] == (0, "late ↴", "success", "text")


def test_head_attribute_makes_a_head_line():
    root = make_span("job", 0, 100)
    doc = translate(execution(root, make_span("Section", 1, 2, root, attributes={"trifle.head": True})))
    assert doc.lines[0]["type"] == "head"


def test_counters_ignore_unknown_states():
    assert counters_of([{"state": "odd", "type": "x", "level": 3}])["max_level"] == 3


def test_bare_producer_roots_are_not_job_runs():
    enqueue = make_span("apply_async/pricing.calculate_price", 0, 1, kind="producer",
                        attributes={"celery.task_name": "pricing.calculate_price"})
    doc = translate(execution(enqueue))
    assert doc.ignored and doc.record["key"] == "apply_async/pricing.calculate_price"
    assert not translate(execution(enqueue), skip_bare_producers=False).ignored
    with_work = make_span("publish", 0, 5, kind="producer")
    assert not translate(execution(with_work, make_span("serialize", 1, 2, with_work))).ignored


# -- exceptions through nested spans, results that name their step ---------------------------

STACK_HEAD = "Traceback (most recent call last):\n"
SDK_FRAMES = (
    '  File "/venv/lib/python3.11/site-packages/opentelemetry/trace/__init__.py", line 589, in use_span\n    yield span\n'
    '  File "/venv/lib/python3.11/site-packages/opentelemetry/sdk/trace/__init__.py", line 1104, in start_as_current_span\n'
    "    yield span\n"
)
JOB = '  File "/app/job.py", line 40, in run\n    export(orders)\n'
EXPORT = '  File "/app/job.py", line 30, in export\n    write(batch)\n'
WRITE = '  File "/app/job.py", line 20, in write\n    raise TimeoutError("late")\n    ^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
TAIL = "TimeoutError: late\n"


def exception(at_ms, *frames):
    return ("exception", at_ms, {"exception.type": "TimeoutError", "exception.message": "late",
                                 "exception.stacktrace": STACK_HEAD + SDK_FRAMES + "".join(frames) + TAIL})


def test_an_exception_through_three_nested_spans_is_shown_once_with_the_steps_it_passed():
    root = make_span("run/export", 0, 100, status="error", events=[exception(90, JOB, EXPORT, WRITE)])
    export = make_span("Exporting orders", 10, 80, root, status="error", events=[exception(79, EXPORT, WRITE)])
    write = make_span("Writing batch", 20, 70, export, status="error", events=[exception(69, WRITE)])
    doc = translate(execution(root, export, write))
    assert messages(doc) == [
        (0, "Exporting orders ↴", "success", "text"),
        (1, "Writing batch ↴", "success", "text"),
        (2, "TimeoutError: late", "error", "text"),
        (2, STACK_HEAD + JOB + EXPORT + WRITE + "TimeoutError: late", "error", "raw"),  # the longest, no SDK frames
        (1, "Writing batch ↵", "error", "text"),
        (0, "Exporting orders ↵", "error", "text"),
    ]
    assert doc.lines[2]["through"] == ["Writing batch", "Exporting orders", "run/export"]
    assert doc.record["counters"]["states"]["error"] == 4


def test_the_same_failure_in_two_sibling_steps_is_two_failures():
    root = make_span("job", 0, 100, status="error", events=[exception(90, JOB, WRITE)])
    first = make_span("Writing batch 1", 10, 20, root, status="error", events=[exception(19, WRITE)])
    second = make_span("Writing batch 2", 30, 40, root, status="error", events=[exception(39, WRITE)])
    doc = translate(execution(root, first, second))
    errors = [l for l in doc.lines if l["message"] == "TimeoutError: late"]
    assert [l["through"] for l in errors] == [["Writing batch 1"], ["Writing batch 2", "job"]]
    other = make_span("job", 0, 100, status="error", events=[
        ("exception", 90, {"exception.type": "ValueError", "exception.message": "late"})])
    doc = translate(execution(other, make_span("step", 10, 20, other, status="error", events=[exception(19, WRITE)])))
    assert [l["message"] for l in doc.lines if l["type"] == "text" and l["state"] == "error" and "↵" not in l["message"]] == [
        "TimeoutError: late", "ValueError: late"]


def test_an_exception_recorded_twice_on_one_span_is_shown_once():
    root = make_span("job", 0, 100)
    step = make_span("step", 10, 20, root, status="error", events=[exception(18, WRITE), exception(19, WRITE)])
    doc = translate(execution(root, step))
    assert sum(l["message"] == "TimeoutError: late" for l in doc.lines) == 1


def test_an_exception_from_the_sdk_through_nested_spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from trifle_otel.ingest.sdk import from_readable_span
    from trifle_otel.model import Execution

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    def write():
        with tracer.start_as_current_span("Writing batch"):
            raise TimeoutError("late")

    def export():
        with tracer.start_as_current_span("Exporting orders"):
            write()

    try:
        with tracer.start_as_current_span("run/export"):
            export()
    except TimeoutError:
        pass
    spans = [from_readable_span(s) for s in exporter.get_finished_spans()]
    root = next(s for s in spans if s.parent_span_id is None)
    doc = Translator(Config()).translate(Execution(root, [s for s in spans if s is not root]), now_ns=root.end_ns)
    text = "\n".join(l["message"] for l in doc.lines)
    assert text.count("TimeoutError: late") == 2  # the error line and the stack's last line
    assert "opentelemetry" not in text
    stack = next(l["message"] for l in doc.lines if l["type"] == "raw")
    assert "in export" in stack and "in write" in stack  # the outermost recording: the whole way up
    assert next(l for l in doc.lines if l["message"] == "TimeoutError: late")["through"] == [
        "Writing batch", "Exporting orders", "run/export"]


def test_result_lines_and_their_media_lines_name_their_step():
    root = make_span("job", 0, 5, attributes={"trifle.result": "done"})
    child = make_span("dump", 1, 2, root, attributes={"trifle.result": "x" * 200_000})
    doc = translate(execution(root, child))
    media = next(l for l in doc.lines if l["type"] == "media")
    assert (media["span_id"], media["step"]) == (child.span_id, "dump")
    last = doc.lines[-1]
    assert last["message"] == "↳ done" and (last["span_id"], last["step"]) == (root.span_id, "job")


def test_an_encoded_document_waits_for_its_write_as_few_collector_objects():
    import gc

    from trifle_otel.sinks import encode_parts, part_lines

    root = make_span("run/job", 0, 100, kind="consumer", parent_span_id="ab" * 8, attributes={"customer.id": "acme"})
    steps = [make_span(f"step {n}", 10 + n, 20 + n, root) for n in range(5)]
    doc = translate(execution(root, *steps), tag_attributes=["customer.id"])
    lines = [dict(line) for line in doc.lines]
    encode_parts(doc)
    gc.collect()  # tuples of untracked items are untracked by a collection
    for value in (doc.bodies, doc.lines, doc.parts, doc.artifacts, doc.record["segments"], doc.record["tags"]):
        assert not gc.is_tracked(value), value
    assert part_lines(doc) == [lines]  # nothing lost
    assert list(doc.record["tags"]) == ["customer.id:acme"] and doc.record["segments"] == ("run", "run/job")


def test_times_keep_exact_milliseconds_across_the_range():
    import random
    from datetime import datetime, timedelta, timezone

    from trifle_otel.translate import to_datetime

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(7)
    edges = [0, 1, 999_999, 1_000_000, 1_763_900_000_123_456_789, 4 * 10**18 - 1, 4 * 10**18, 10**19, -5_000_000]
    for ns in edges + [rng.randrange(0, 4 * 10**18) for _ in range(20_000)]:
        assert to_datetime(ns) == epoch + timedelta(milliseconds=ns // 1_000_000), ns
