"""App-thread cost per span: no processor vs BatchSpanProcessor (no-op exporter) vs TrifleSpanProcessor.

Each round runs the same job workload (one root span with nested child spans, attributes
and an event, like an instrumented job) under the three set-ups, interleaved, and takes
the median over rounds.  Two figures per set-up:

* cpu: CPU time of the application thread per span (``time.thread_time``): the work the
  processor does on the app thread itself.
* wall: elapsed time per span, which also includes waiting for the GIL while the
  processor's background worker runs (its assembly, translation and store writes).

Usage: python bench/processor_overhead.py [--jobs 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from trifle_otel import TrifleSpanProcessor
from trifle_otel.config import Config

CHILDREN = 9  # spans per job = 1 + CHILDREN


class NoopExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def workload(tracer, jobs: int, io_ms: float = 0.0) -> tuple[float, float]:
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    wait = io_ms / 1000 / CHILDREN
    for n in range(jobs):
        with tracer.start_as_current_span("run/pricing.calculate_price", attributes={"customer.id": "acme", "job": n}):
            for i in range(CHILDREN):
                with tracer.start_as_current_span(f"step {i}") as span:
                    if wait:
                        time.sleep(wait)  # the step's network / database call
                    span.set_attribute("trifle.result", "42")
                    if i == 4:
                        span.add_event("checkpoint", {"rows": 12})
    return time.thread_time() - cpu0, time.perf_counter() - wall0


def run(setup: str, jobs: int, home: str, io_ms: float = 0.0) -> tuple[float, float, dict]:
    provider = TracerProvider(shutdown_on_exit=False)
    processor = None
    if setup == "batch":
        processor = BatchSpanProcessor(NoopExporter())
    elif setup == "trifle":
        processor = TrifleSpanProcessor(Config(home=home))
    if processor is not None:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    cpu, wall = workload(tracer, jobs, io_ms)
    provider.shutdown()
    stats = processor.stats() if setup == "trifle" else {}
    spans = jobs * (1 + CHILDREN)
    return cpu / spans * 1e6, wall / spans * 1e6, stats


def measure(label: str, jobs: int, rounds: int, home: str, io_ms: float) -> float:
    results: dict[str, list[tuple[float, float]]] = {"none": [], "batch": [], "trifle": []}
    dropped = written = 0
    for _ in range(rounds):
        for setup in results:
            cpu, wall, stats = run(setup, jobs, home, io_ms)
            results[setup].append((cpu, wall))
            if stats:
                dropped += stats["spans_dropped"]
                written += stats["executions_written"]
    print(f"{label}: {jobs} jobs x {1 + CHILDREN} spans, median of {rounds} rounds")
    medians = {}
    for setup, values in results.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        medians[setup] = (cpu, wall)
        print(f"  {setup:<7} cpu {cpu:7.2f} us/span   wall {wall:8.2f} us/span")
    (bcpu, bwall), (tcpu, twall), (ncpu, _) = medians["batch"], medians["trifle"], medians["none"]
    print(f"  processor cost per span on the app thread (cpu minus none): batch {bcpu - ncpu:.2f} us, trifle {tcpu - ncpu:.2f} us")
    print(f"  ratio trifle/batch: cpu {tcpu / bcpu:.3f}   wall {twall / bwall:.3f}")
    print(f"  trifle: {written} executions written, {dropped} spans dropped (all rounds)")
    return tcpu / bcpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--io-ms", type=float, default=2.0, help="I/O wait per job in the I/O-bound run")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as home:
        run("trifle", 200, home)  # warm-up: imports, SQLite schema
        measure("CPU-bound jobs (no I/O: the worker competes for the GIL)", args.jobs, args.rounds, home, 0.0)
        measure(f"I/O-bound jobs ({args.io_ms:g} ms of I/O per job)", max(args.jobs // 4, 1), args.rounds, home, args.io_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
