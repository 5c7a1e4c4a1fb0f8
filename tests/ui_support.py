"""Helpers of the UI tests: a served UI, plain HTTP, documents written through the real
writers, and Debian's Chromium for the browser tests."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from trifle_otel import TrifleSpanProcessor, trace
from trifle_otel.config import Config
from trifle_otel.demo import RESELLERS
from trifle_otel.model import Execution, Span
from trifle_otel.sinks import TraceSink
from trifle_otel.stats.api import Stats
from trifle_otel.stores import open_data, open_index
from trifle_otel.translate import Document, Translator, counters_of
from trifle_otel.ui.app import create_app
from trifle_otel.ui.server import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps calling home, and this machine refuses it.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def serving(config: Config, **options: Any) -> Iterator[str]:
    """The UI over ``config`` on a free port of 127.0.0.1; its base URL."""
    server = BackgroundServer(create_app(config, listen="127.0.0.1:0", **options)).start()
    try:
        yield server.url
    finally:
        server.stop()


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def run_jobs(config: Config, jobs: Callable[[Any], None], resource: dict[str, Any] | None = None) -> None:
    """Run ``jobs(tracer)`` through the span processor into the configured stores."""
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(resource=Resource.create(resource or {"service.name": "ui-test"}), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    previous = otel_trace._TRACER_PROVIDER  # noqa: SLF001 - the annotation helpers use the global provider
    otel_trace._TRACER_PROVIDER = provider  # noqa: SLF001
    try:
        jobs(provider.get_tracer("ui-test"))
        assert processor.force_flush(), processor.stats()
    finally:
        otel_trace._TRACER_PROVIDER = previous  # noqa: SLF001
        provider.shutdown()


def translate(config: Config, execution: Execution, now: datetime | None = None) -> Document:
    now_ns = int((now or datetime.now(timezone.utc)).timestamp() * 1e9)
    return Translator(config).translate(execution, now_ns)


def store(config: Config, doc: Document) -> dict[str, Any]:
    """Write a document (lines possibly changed by the test) with the pipeline's writer."""
    size = config.part_size
    doc.parts = [doc.lines[i:i + size] for i in range(0, len(doc.lines), size)]
    doc.record.update(length=len(doc.lines), parts=len(doc.parts), counters=counters_of(doc.lines))
    index, data = open_index(config.resolved_index_url()), open_data(config.resolved_data_url(), config)
    try:
        TraceSink(index, data).write([doc])
    finally:
        index.close()
        data.close()
    return doc.record


def ensure_chromium() -> str:
    """Debian's Chromium, installed with apt when missing (CI runs as root, without a terminal)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get is not available: install Debian's chromium package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"the chromium package was installed but {CHROMIUM} is not there")
    return CHROMIUM


# -- stores the UI tests read ------------------------------------------------------------

XSS = "<script>alert(1)</script>"


def hostile_jobs(tracer) -> None:
    """An enqueue and the job it enqueued, every string of which is markup."""
    with tracer.start_as_current_span("enqueue <b>job</b>", kind=SpanKind.PRODUCER,
                                      attributes={"trifle.key": "scheduler/<i>nightly</i>"}) as producer:
        ctx = producer.get_span_context()
    parent = otel_trace.set_span_in_context(NonRecordingSpan(
        SpanContext(ctx.trace_id, ctx.span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    token = otel_context.attach(otel_context.Context())
    try:
        with tracer.start_as_current_span(XSS, kind=SpanKind.CONSUMER, context=parent, attributes={
            "trifle.key": "xss/" + XSS, "customer.id": "<img src=x onerror=alert(2)>",
            "trifle.tags": ["<b>tag</b>"], "note": "<script>alert(3)</script>",
        }) as root:
            with trace("<script>alert(4)</script>") as step:
                otel_trace.get_current_span().add_event("<img src=x onerror=alert(6)>", {"x": "</pre><script>alert(7)</script>"})
                step.result = {"html": "<script>alert(5)</script>"}
            try:
                with trace("Failing <u>step</u>"):
                    raise ValueError("<script>alert(8)</script>")
            except ValueError:
                pass
            root.set_status(Status(StatusCode.ERROR, "<script>alert(9)</script>"))
    finally:
        otel_context.detach(token)


def stuck_export(config: Config, now: datetime, started_ago: float = 7200.0) -> dict[str, Any]:
    """A running record as live mode writes it, with two steps still open (outermost first)."""
    start = int((now.timestamp() - started_ago) * 1e9)
    trace_id, root_id = "ab" * 16, "cd" * 8
    root = Span(trace_id, root_id, "run/reports.nightly_export", start, None, kind="consumer",
                attributes={"trifle.key": "reports/nightly_export", "celery.task_name": "reports.nightly_export"})
    loading = Span(trace_id, "01" * 8, "Loading orders", start + 1_000_000_000, start + 61_000_000_000,
                   parent_span_id=root_id, attributes={"trifle.result": '{"orders": 120000}'})
    doc = translate(config, Execution(root, [loading]), now)
    steps = [("Exporting orders", "02" * 8, 62.0, 0), ("Writing batch 7 of 12", "03" * 8, 3000.0, 1)]
    for name, span_id, after, level in steps:
        ns = start + int(after * 1e9)
        doc.lines.append({"at": ns // 1_000_000_000, "message": f"{name} \u21b4", "state": "success", "type": "text",
                          "level": level, "ns": ns, "span_id": span_id, "open": True})
    doc.record["open_steps"] = [{"name": name, "span_id": span_id, "at": start / 1e9 + after, "level": level}
                                for name, span_id, after, level in steps]
    return store(config, doc)


def stats_history(config: Config, now: datetime, hours: int = 24, seed: int = 3) -> None:
    """A day of price-calculation stats before the demo's minute, in the shape of the demo's
    rules (global, per customer, per reseller), so that charts over a day have a day to draw."""
    rng = random.Random(seed)
    stats = Stats(config, buffered=False)
    try:
        for back in range(hours, 0, -1):
            at = now - timedelta(hours=back)
            busy = 1.5 if 8 <= at.hour < 18 else 0.6
            for customer, reseller in RESELLERS.items():
                n = max(4, int(rng.randint(15, 40) * busy))
                codes = {"OK": 0, "LOW_MARGIN": 0, "NO_OFFERS": 0, "SUPPLIER_TIMEOUT": 0, "PRICE_BELOW_COST": 0}
                for _ in range(n):
                    codes[rng.choices(list(codes), weights=[70, 12, 9, 6, 3])[0]] += 1
                mean, spread = rng.uniform(22, 34), rng.uniform(6, 12)
                priced = n - codes["NO_OFFERS"] - codes["SUPPLIER_TIMEOUT"]
                values = {
                    "count": n,
                    "states": {"success": codes["OK"], "warning": codes["LOW_MARGIN"] + codes["NO_OFFERS"],
                               "error": codes["SUPPLIER_TIMEOUT"] + codes["PRICE_BELOW_COST"]},
                    "codes": {k: v for k, v in codes.items() if v},
                    "duration": {"count": n, "sum": n * mean, "square": n * (spread ** 2 + mean ** 2)},
                    "price": {"sum": round(priced * rng.uniform(500, 800), 2),
                              "distribution": {"400": priced // 2, "800": priced - priced // 2}},
                    "margin": {"lt_0": codes["PRICE_BELOW_COST"], "0": codes["LOW_MARGIN"], "0_05": codes["OK"] // 3,
                               "0_1": codes["OK"] // 3, "0_15": codes["OK"] - 2 * (codes["OK"] // 3)},
                }
                for key in ("prices/calculations", f"prices/calculations/customer/{customer}",
                            f"prices/calculations/reseller/{reseller}"):
                    stats.track(key, at, values)
    finally:
        stats.shutdown()


# -- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page and what it reported: script errors and dialogs (an alert would be one)."""

    page: object
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    found = Tab(page)
    page.on("pageerror", lambda error: found.errors.append(str(error)))
    page.on("console", lambda message: found.errors.append(message.text) if message.type == "error" else None)

    def on_dialog(dialog):
        found.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield found
    context.close()
    assert found.errors == []
