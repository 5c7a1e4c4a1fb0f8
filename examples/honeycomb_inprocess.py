"""Keep sending your spans to Honeycomb while trifle-otel writes each job run to its store.

    HONEYCOMB_API_KEY=... python examples/honeycomb_inprocess.py && trifle-otel traces list

The same spans go to both: the span processor writes the executions (the embedded store,
./.trifle or TRIFLE_OTEL_HOME), the SDK's OTLP exporter sends them to Honeycomb.
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT sends them elsewhere instead (a full URL, such as
http://127.0.0.1:4318/v1/traces for a local collector). Needs
`pip install opentelemetry-exporter-otlp-proto-http` (in the test venv already).
"""

import os
import sys

from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from trifle_otel import TrifleSpanProcessor, trace, warn

ENDPOINT = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://api.honeycomb.io/v1/traces")


@trace("Loading rows")
def load_rows(customer: str) -> int:
    return len(customer) * 100


@trace("Writing the file")
def write_file(customer: str, rows: int) -> str:
    return f"/exports/{customer}.csv"


def export_report(tracer, customer: str) -> None:
    with tracer.start_as_current_span("reports/export", attributes={"trifle.key": "reports/export", "customer.id": customer}):
        rows = load_rows(customer)
        write_file(customer, rows)
        if rows > 500:
            warn(f"{rows} rows: the export is getting large")


def main() -> int:
    api_key = os.environ.get("HONEYCOMB_API_KEY")
    if not api_key:
        print("error: set HONEYCOMB_API_KEY to your Honeycomb API key", file=sys.stderr)
        return 2
    provider = TracerProvider(resource=Resource.create({"service.name": "reports-worker"}))
    processor = TrifleSpanProcessor()  # TRIFLE_OTEL_HOME / TRIFLE_OTEL_CONFIG, or ./.trifle
    provider.add_span_processor(processor)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=ENDPOINT, headers={"x-honeycomb-team": api_key})))
    otel_trace.set_tracer_provider(provider)
    tracer = otel_trace.get_tracer("reports")
    for customer in ("acme", "globex", "initech"):
        export_report(tracer, customer)
    provider.shutdown()  # sends what the batch processor holds, writes what the processor holds
    print("written:", processor.stats()["executions_written"])
    print("OTLP endpoint:", ENDPOINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
