"""A Celery app traced by trifle-otel: every task run becomes one execution trace.

Runs as is, with no broker server: the broker is Kombu's filesystem transport, messages
are files under ./.celery-broker (set CELERY_BROKER_URL, e.g. redis://127.0.0.1:6379/0,
to use a real broker). From the repository's root:

    pip install trifle-otel celery opentelemetry-instrumentation-celery
    celery -A examples.celery_app worker --loglevel=info      # a worker, in one terminal
    python examples/celery_app.py P-1 acme                    # send a job, from another
    trifle-otel traces list --key pricing                     # its execution trace

With the prefork pool, set tracing up in each worker process (after the fork), as
OpenTelemetry's Celery instrumentation recommends, and shut it down when the process
ends (pool processes exit without running ``atexit``).  Zero-code alternative:
    OTEL_TRACES_EXPORTER=otlp,trifle opentelemetry-instrument celery -A examples.celery_app worker
"""

import os
import sys
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from trifle_otel import TrifleSpanProcessor, tag, trace, warn

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
BROKER_DIR = Path(os.environ.get("CELERY_BROKER_DIR", ".celery-broker")).resolve()

app = Celery("pricing", broker=BROKER_URL)
if BROKER_URL.startswith("filesystem:"):
    # The sender writes messages as files into the folder the worker reads them from.
    BROKER_DIR.mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = {
        "data_folder_in": str(BROKER_DIR), "data_folder_out": str(BROKER_DIR), "control_folder": str(BROKER_DIR / "control"),
    }
app.conf.broker_connection_retry_on_startup = True


@worker_process_init.connect(weak=False)
def init_tracing(*args, **kwargs):
    provider = TracerProvider(resource=Resource.create({"service.name": "pricing-worker"}))
    provider.add_span_processor(TrifleSpanProcessor(tag_attributes="customer.id"))
    # provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # and your backend
    otel_trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)


@worker_process_shutdown.connect(weak=False)
def stop_tracing(*args, **kwargs):
    # Pool processes end with os._exit (no atexit): write what is buffered before that.
    provider = otel_trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


@app.task(name="pricing.calculate_price")
def calculate_price(product_id: str, customer_id: str) -> float:
    otel_trace.get_current_span().set_attribute("customer.id", customer_id)
    tag(f"product:{product_id}")
    with trace("Fetching main product") as step:
        step.result = product = {"id": product_id, "cost": 100.0}
    with trace("Computing price") as step:
        step.result = price = round(product["cost"] * 1.12, 2)
    if price - product["cost"] < 15:
        warn("Margin under 15%")
    return price


if __name__ == "__main__":
    # python examples/celery_app.py PRODUCT CUSTOMER: send one job to the worker.
    args = sys.argv[1:]
    product, customer = (args[0] if args else "P-1"), (args[1] if len(args) > 1 else "acme")
    result = calculate_price.delay(product, customer)
    print(f"sent pricing.calculate_price({product!r}, {customer!r}) as task {result.id}")
