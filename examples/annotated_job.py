"""A plain Python job with the annotation API, written to the embedded store.

    python examples/annotated_job.py && trifle-otel traces list
"""

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from trifle_otel import TrifleSpanProcessor, fail, tag, trace, warn

provider = TracerProvider()
processor = TrifleSpanProcessor()  # TRIFLE_OTEL_HOME / TRIFLE_OTEL_CONFIG, or ./.trifle
provider.add_span_processor(processor)
otel_trace.set_tracer_provider(provider)
tracer = otel_trace.get_tracer("refresh")


@trace("Refreshing batch")
def refresh(batch: list[str]) -> dict:
    failed = [p for p in batch if p.endswith("7")]
    return {"products": len(batch), "failed": len(failed)}


def run(batches: list[list[str]]) -> None:
    with tracer.start_as_current_span("products/refresh", attributes={"trifle.key": "products/refresh"}) as root:
        tag("nightly")
        totals = [refresh(batch) for batch in batches]
        failures = sum(t["failed"] for t in totals)
        root.set_attribute("products.count", sum(t["products"] for t in totals))
        root.set_attribute("products.failure", failures)
        if failures == sum(t["products"] for t in totals):
            fail("every product failed")
        elif failures:
            warn(f"{failures} products failed to refresh")


if __name__ == "__main__":
    run([[f"P-{i}{j}" for j in range(10)] for i in range(3)])
    processor.force_flush()
    print("written:", processor.stats()["executions_written"])
