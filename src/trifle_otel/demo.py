"""A realistic job workload run through the real pipeline (``trifle-otel demo``).

Price-calculation jobs with nested steps (main product, offers per supplier, classification,
price and margin), result codes, warnings, failures and an occasional large payload; a
batched product refresh job with item counts; jobs that ``ignore()`` themselves; and one
report job still running when the demo stops (live mode shows it as ``running``).
Jobs run on a small thread pool, as on a worker, each with a remote enqueue context.
"""

from __future__ import annotations

import random
from pathlib import Path
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from .annotate import fail, ignore, tag, trace, warn
from .config import Config

CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli"]
RESELLERS = {"acme": "north", "globex": "north", "initech": "south", "umbrella": "south", "hooli": "west"}
SUPPLIERS = ["ingram", "tech-data", "also", "exclusive"]


class SupplierTimeout(Exception):
    pass


@dataclass
class DemoSummary:
    jobs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)


def _sleep(rng: random.Random, low_ms: float, high_ms: float) -> None:
    time.sleep(rng.uniform(low_ms, high_ms) / 1000)


def _enqueued_by(rng: random.Random):
    """A remote parent context, as a job consumer span gets from its message headers."""
    ctx = SpanContext(
        trace_id=rng.getrandbits(128),
        span_id=rng.getrandbits(64),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return otel_trace.set_span_in_context(NonRecordingSpan(ctx))


def price_calculation(tracer, rng: random.Random, number: int, large_payload: bool) -> str:
    customer = rng.choice(CUSTOMERS)
    product_id = f"P-{rng.randint(10000, 99999)}"
    attrs = {
        "trifle.key": "prices/calculate",
        "celery.task_name": "pricing.calculate_price",
        "celery.task_id": f"task-{number:05d}",
        "messaging.system": "celery",
        "customer.id": customer,
        "reseller.id": RESELLERS[customer],
        "product.id": product_id,
    }
    with tracer.start_as_current_span(
        "run/pricing.calculate_price", kind=SpanKind.CONSUMER, attributes=attrs, context=_enqueued_by(rng)
    ) as root:
        tag(f"product:{product_id}")
        with trace("Fetching main product") as step:
            _sleep(rng, 2, 8)
            product = {"id": product_id, "name": f"Laptop {rng.randint(1, 9)}", "active": rng.random() > 0.05}
            step.result = product
        if not product["active"]:
            ignore()  # nothing to price: not stored
            root.set_attribute("result.code", "INACTIVE")
            return "ignored"
        offers = []
        with trace("Fetching offers", head=True) as step:
            for supplier in rng.sample(SUPPLIERS, rng.randint(1, 3)):
                with trace(f"Fetching offers from {supplier}") as sub:
                    _sleep(rng, 3, 15)
                    if rng.random() < 0.06:
                        root.set_attribute("result.code", "SUPPLIER_TIMEOUT")
                        raise SupplierTimeout(f"{supplier} did not answer within 10s")
                    found = [{"supplier": supplier, "cost": round(rng.uniform(400, 900), 2)} for _ in range(rng.randint(0, 2))]
                    sub.result = found
                    offers.extend(found)
            if large_payload:
                # A full supplier catalogue dump: far over the payload limit, stored as an artifact.
                catalogue = [{"sku": f"S{i:06d}", "cost": i % 997, "stock": i % 13} for i in range(4000)]
                otel_trace.get_current_span().add_event("Supplier catalogue received", {"rows": len(catalogue)})
                step.result = catalogue
            else:
                step.result = {"offers": len(offers)}
        if not offers:
            root.set_attribute("result.code", "NO_OFFERS")
            warn("No offers for this product: price not updated")
            return "warning"
        with trace("Classification") as step:
            _sleep(rng, 1, 4)
            step.result = rng.choice(["notebook", "ultrabook", "workstation"])
        with trace("Computing price") as step:
            best = min(offers, key=lambda o: o["cost"])
            with trace("Computing margin") as sub:
                margin = round(rng.uniform(-0.02, 0.25), 4)
                sub.result = margin
            price = round(best["cost"] * (1 + margin), 2)
            step.result = {"price": price, "supplier": best["supplier"]}
        root.set_attribute("price", price)
        root.set_attribute("margin", margin)
        root.set_attribute("offers.count", len(offers))
        if margin < 0:
            root.set_attribute("result.code", "PRICE_BELOW_COST")
            fail(f"Price {price} is below cost {best['cost']}")
            return "error"
        if margin < 0.03:
            root.set_attribute("result.code", "LOW_MARGIN")
            warn(f"Margin {margin:.1%} is under 3%")
            return "warning"
        root.set_attribute("result.code", "OK")
        root.set_attribute("trifle.result", f"price {price} from {best['supplier']}")
        return "success"


def products_refresh(tracer, rng: random.Random, number: int) -> str:
    reseller = rng.choice(sorted(set(RESELLERS.values())))
    attrs = {
        "trifle.key": "products/refresh",
        "celery.task_name": "catalog.refresh_products",
        "reseller.id": reseller,
    }
    with tracer.start_as_current_span(
        "run/catalog.refresh_products", kind=SpanKind.CONSUMER, attributes=attrs, context=_enqueued_by(rng)
    ) as root:
        total = success = failure = 0
        for batch in range(rng.randint(2, 4)):
            with trace(f"Refreshing batch {batch + 1}") as step:
                size = rng.randint(20, 50)
                failed = sum(1 for _ in range(size) if rng.random() < 0.006)
                _sleep(rng, 4, 12)
                step.result = {"products": size, "failed": failed}
                otel_trace.get_current_span().set_attributes({"products.count": size, "products.failure": failed})
            total += size
            failure += failed
            success += size - failed
        root.set_attributes({"products.count": total, "products.success": success, "products.failure": failure})
        root.set_attribute("result.code", "OK" if failure == 0 else "PARTIAL")
        if failure:
            warn(f"{failure} of {total} products failed to refresh")
            return "warning"
        return "success"


def nightly_report(tracer, started: threading.Event, stop: threading.Event) -> None:
    """A long job: live mode writes its record as ``running`` while it works."""
    with tracer.start_as_current_span("run/reports.nightly_export", kind=SpanKind.CONSUMER,
                                      attributes={"trifle.key": "reports/nightly_export"}):
        with trace("Loading orders") as step:
            step.result = {"orders": 18_240}
        with trace("Exporting orders") as step:
            with trace("Writing batch 1") as batch:
                batch.result = {"rows": 10_000}
            with trace("Writing batch 2"):  # the step it is in when the demo stops
                started.set()
                stop.wait(3600)
            step.result = "interrupted"


def run_demo(processor, *, jobs: int = 120, seed: int = 7, workers: int = 4) -> DemoSummary:
    """Run the workload through ``processor`` (a ``TrifleSpanProcessor``) and flush it."""
    rng = random.Random(seed)
    provider = TracerProvider(resource=Resource.create({"service.name": "pricing-worker", "deployment.environment": "demo"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("trifle_otel.demo")
    summary = DemoSummary()
    started_at = time.monotonic()
    # The annotation helpers use the global tracer provider.
    previous = otel_trace._TRACER_PROVIDER  # noqa: SLF001 - restore after the demo if one was set
    otel_trace._TRACER_PROVIDER = provider  # noqa: SLF001

    stop_report = threading.Event()
    report_started = threading.Event()
    report = threading.Thread(target=nightly_report, args=(tracer, report_started, stop_report), daemon=True)
    report.start()
    report_started.wait(5)

    plan = []
    for number in range(jobs):
        if number % 6 == 5:
            plan.append(("products/refresh", number, random.Random(rng.random())))
        else:
            plan.append(("prices/calculate", number, random.Random(rng.random())))

    def run(item):
        kind, number, job_rng = item
        token = otel_context.attach(otel_context.Context())
        try:
            if kind == "products/refresh":
                return kind, products_refresh(tracer, job_rng, number)
            return kind, price_calculation(tracer, job_rng, number, large_payload=number == 3)
        except SupplierTimeout:
            return kind, "error"
        finally:
            otel_context.detach(token)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-worker") as pool:
            for kind, outcome in pool.map(run, plan):
                name = f"{kind} {outcome}"
                summary.jobs[name] = summary.jobs.get(name, 0) + 1
        processor.force_flush()
        # Let live mode write the report's running record, then stop as a deploy would.
        time.sleep(min(processor.config.flush_interval * 1.5, 3))
        processor.force_flush()
    finally:
        otel_trace._TRACER_PROVIDER = previous  # noqa: SLF001
    summary.seconds = time.monotonic() - started_at
    summary.stats = processor.stats()
    return summary


DEMO_RULES = Path(__file__).parent / "examples" / "demo_rules.yaml"


def demo_config(config: Config) -> Config:
    """The demo's settings on top of the user's: tags a support engineer searches by, and
    the demo's stats rules unless the configuration names its own."""
    if not config.tag_attributes:
        config.tag_attributes = ["customer.id", "reseller.id"]
    if not config.stats_rules:
        config.stats_rules = str(DEMO_RULES)
    return config
