"""Real Celery jobs (memory broker, a worker thread) instrumented by
opentelemetry-instrumentation-celery, through the span processor."""

from __future__ import annotations

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from trifle_otel import TrifleSpanProcessor, trace, warn
from trifle_otel.sinks import load_lines
from trifle_otel.stores import open_data, open_index
from trifle_otel.stores.base import TraceQuery

celery = pytest.importorskip("celery")
from celery.contrib.testing.worker import start_worker  # noqa: E402
from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: E402


@pytest.fixture
def app_and_processor(config):
    config.tag_attributes = ["customer.id"]
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    previous = otel_trace._TRACER_PROVIDER
    otel_trace._TRACER_PROVIDER = provider
    CeleryInstrumentor().instrument(tracer_provider=provider)
    app = celery.Celery("pricing", broker="memory://", backend="cache+memory://")
    app.conf.update(task_always_eager=False, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

    @app.task(name="pricing.calculate_price")
    def calculate_price(product_id, customer):
        otel_trace.get_current_span().set_attribute("customer.id", customer)
        with trace("Fetching main product") as step:
            step.result = {"id": product_id}
        with trace("Computing price") as step:
            if product_id == "broken":
                raise ValueError("no offers for broken")
            step.result = 42.0
        if customer == "cheap":
            warn("margin under 3%")
        return 42.0

    yield app, calculate_price, processor, config
    CeleryInstrumentor().uninstrument()
    otel_trace._TRACER_PROVIDER = previous
    provider.shutdown()


def test_celery_task_runs_become_executions(app_and_processor):
    app, calculate_price, processor, config = app_and_processor
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        results = [
            calculate_price.delay("P-1", "acme"),
            calculate_price.delay("P-2", "cheap"),
            calculate_price.delay("broken", "acme"),
        ]
        assert results[0].get(timeout=20) == 42.0
        assert results[1].get(timeout=20) == 42.0
        with pytest.raises(ValueError):
            results[2].get(timeout=20, propagate=True)
    assert processor.force_flush()
    index = open_index(config.resolved_index_url())
    records = index.search(TraceQuery(key="pricing.calculate_price")).records
    index.close()
    assert len(records) == 3
    assert sorted(r["state"] for r in records) == ["error", "success", "warning"]
    for r in records:
        assert r["name"] == "run/pricing.calculate_price"
        # The enqueuing (producer) span is another process's in real life: kept as the parent link.
        assert [l["type"] for l in r["links"]] == ["parent"]
        assert r["meta"]["celery.task_name"] == "pricing.calculate_price"
    assert {t for r in records for t in r["tags"]} == {"customer.id:acme", "customer.id:cheap"}
    failed = [r for r in records if r["state"] == "error"][0]
    lines = load_lines(open_data(config.resolved_data_url()), failed)
    assert ("Computing price ↵", "error") in [(l["message"], l["state"]) for l in lines]
    assert any(l["message"] == "ValueError: no offers for broken" for l in lines)
