"""Write-path throughput: does the pipeline carry a CPU-bound application's spans?

Three measurements, each in its own subprocess (so peak RSS is its own):

1. **App + processor**, one CPU-bound application thread making executions (1 root + 5
   child spans, 4 attributes each) for ``--seconds``, then a flush:
   (a) OTel's ``BatchSpanProcessor`` with an exporter that runs the OTLP encoding
       (``encode_spans(...).SerializeToString()``) into a no-op sink;
   (b) ``TrifleSpanProcessor`` with the demo rules on the embedded store.
   Printed: spans/s made by the app, spans lost (made − exported or stored), drain time
   (the flush after the run), peak RSS, and the ratio of app spans/s (b)/(a); (a) and (b)
   alternate for ``--rounds`` pairs, and the median of the ratios is printed.
2. **Worker alone**: the spans of ``--executions`` executions are made first, then handed
   to the pipeline at once and flushed: executions/s and worker CPU µs per span, for
   ``--worker-runs`` runs, and their median.
3. **S3 under latency** (``--s3``): the same worker run into moto's S3 server behind a
   local proxy that adds ``--latency-ms`` to every request: executions/s and the most
   requests in flight at once.  Then the same run against the proxy answering every put
   itself (no moto behind it): what the client side (boto3 on the pool) can send when the
   server is not the limit.  Each moto run also prints the server side's CPU a request.

Usage: python bench/pipeline_throughput.py [--seconds 5] [--rounds 3] [--executions 20000]
       [--worker-runs 3] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILDREN = 5
HERE = Path(__file__).resolve().parent


def _rules_file() -> str:
    from importlib import resources

    return str(resources.files("trifle_otel") / "examples" / "demo_rules.yaml")


def make_execution(tracer, n: int) -> None:
    customer = f"c{n % 50}"
    with tracer.start_as_current_span(
        "run/pricing.calculate_price",
        attributes={"customer.id": customer, "reseller.id": f"r{n % 7}", "result.code": "OK", "price": 120.5 + n % 300},
    ):
        for i in range(CHILDREN):
            with tracer.start_as_current_span(
                f"Fetching offers from supplier-{i}",
                attributes={"supplier.id": i, "offers.count": 3, "http.status_code": 200, "customer.id": customer},
            ):
                pass


def stored_spans(home: str) -> tuple[int, int]:
    """(executions, spans) in the embedded index: a child span is a begin and an end line."""
    db = sqlite3.connect(os.path.join(home, "traces.db"))
    try:
        count, text_lines = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(record, '$.counters.types.text')), 0) FROM trifle_traces"
        ).fetchone()
    finally:
        db.close()
    return count, count + text_lines // 2


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children -------------------------------------------------------------------------------


def child_app(setup: str, seconds: float, home: str) -> dict:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    provider = TracerProvider(shutdown_on_exit=False)
    exported = [0]
    if setup == "batch":
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        class EncodingExporter(SpanExporter):
            def export(self, spans):
                encode_spans(spans).SerializeToString()
                exported[0] += len(spans)
                return SpanExportResult.SUCCESS

            def shutdown(self):
                pass

        processor = BatchSpanProcessor(EncodingExporter())
    else:
        from trifle_otel import TrifleSpanProcessor

        processor = TrifleSpanProcessor(home=home, stats_rules=_rules_file())
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    made = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            make_execution(tracer, made)
            made += 1
    elapsed = time.perf_counter() - start
    app_cpu = time.thread_time()
    helper = next((t for t in threading.enumerate() if t.name == "trifle-otel-worker" or t.name.startswith("OtelBatch")), None)
    helper_cpu = time.clock_gettime(time.pthread_getcpuclockid(helper.ident)) if helper else 0.0
    t0 = time.perf_counter()
    ok = processor.force_flush(120_000)
    drain = time.perf_counter() - t0
    out = {"setup": setup, "spans_made": made * (1 + CHILDREN), "elapsed": elapsed, "drain": drain, "flush_ok": ok,
           "app_cpu": app_cpu, "helper_cpu": helper_cpu}
    if setup == "batch":
        out["spans_stored"] = exported[0]
    else:
        stats = processor.stats()
        out["executions_stored"], out["spans_stored"] = stored_spans(home)
        out["dropped"] = stats["spans_dropped"]
        out["spilled"] = stats["documents_spilled"]
    out["peak_rss_mb"] = peak_rss_mb()
    provider.shutdown()
    return out


def made_spans(executions: int) -> list:
    """The ended SDK spans of ``executions`` executions, made first and held."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    spans: list = []

    class Collect(SpanExporter):
        def export(self, batch):
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    tracer = provider.get_tracer("bench")
    for n in range(executions):
        make_execution(tracer, n)
    return spans


def child_worker(executions: int, home: str, data_url: str | None = None, s3_concurrency: int | None = None) -> dict:
    from trifle_otel.config import load_config
    from trifle_otel.ingest.sdk import from_readable_span
    from trifle_otel.pipeline import Pipeline

    spans = made_spans(executions)
    overrides = {"home": home, "stats_rules": _rules_file(), "queue_size": len(spans) + 1, "live": False}
    if data_url:
        overrides["data_url"] = data_url
    if s3_concurrency:
        overrides["s3_concurrency"] = s3_concurrency
    pipeline = Pipeline(load_config(overrides=overrides), convert=from_readable_span)
    pipeline.force_flush(60)  # opens the stores: not part of the measurement
    count = len(spans)
    cpu0, t0 = time.process_time(), time.perf_counter()
    pipeline.submit_many(spans)
    spans.clear()  # the pipeline holds them now, as it would an application's
    ok = pipeline.force_flush(600)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = pipeline.stats()
    pipeline.shutdown()
    return {
        "executions": executions,
        "spans": count,
        "elapsed": elapsed,
        "cpu": cpu,
        "flush_ok": ok,
        "written": stats["executions_written"],
        "dropped": stats["spans_dropped"],
        "spilled": stats["documents_spilled"],
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {args} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- S3 with latency ----------------------------------------------------------------------


def s3_run(executions: int, latency_ms: float, concurrency: int, *, stub: bool = False) -> dict:
    sys.path.insert(0, str(HERE))
    from latency_proxy import LatencyProxy  # noqa: E402
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = None if stub else ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    if server is not None:
        server.start()
    try:
        upstream = ("127.0.0.1", server.get_host_and_port()[1]) if server is not None else None
        with LatencyProxy(upstream, latency_ms / 1000) as proxy:
            env = {
                **os.environ,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": proxy.url,
            }
            import boto3

            boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                         aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
            with tempfile.TemporaryDirectory() as home:
                server_cpu0 = time.process_time()  # (this process runs the server and the proxy)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", "worker", str(executions), home, "s3://bench/traces",
                     str(concurrency)],
                    capture_output=True, text=True, env=env,
                )
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit("S3 child failed")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["server_cpu"] = time.process_time() - server_cpu0
            result["requests"] = proxy.requests
            result["max_in_flight"] = proxy.max_in_flight
            return result
    finally:
        if server is not None:
            server.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind = sys.argv[2]
        if kind == "app":
            print(json.dumps(child_app(sys.argv[3], float(sys.argv[4]), sys.argv[5])))
        else:
            data_url = sys.argv[5] if len(sys.argv) > 5 else None
            concurrency = int(sys.argv[6]) if len(sys.argv) > 6 else None
            print(json.dumps(child_worker(int(sys.argv[3]), sys.argv[4], data_url, concurrency)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--s3", action="store_true", help="also measure S3 behind a latency proxy")
    parser.add_argument("--s3-executions", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--s3-concurrency", type=int, default=64)
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--worker-runs", type=int, default=3, help="runs of the worker alone (the median is printed)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of (a) and (b) runs, alternating")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, executions of 1 root + {CHILDREN} children, demo rules, embedded store")
    if not args.skip_app:
        # (a) and (b) alternate, round after round: one pair on a shared machine can be
        # off by 25%; the median of the rounds' ratios is the figure to quote.
        ratios = []
        for round_number in range(1, args.rounds + 1):
            results = {}
            if args.rounds > 1:
                print(f"  round {round_number} of {args.rounds}")
            for setup in ("batch", "trifle"):
                with tempfile.TemporaryDirectory() as home:
                    results[setup] = r = run_child("app", setup, str(args.seconds), home)
                label = "(a) BatchSpanProcessor + OTLP encoding" if setup == "batch" else "(b) TrifleSpanProcessor, demo rules"
                rate = r["spans_made"] / r["elapsed"]
                lost = r["spans_made"] - r["spans_stored"]
                extra = f", {r['dropped']} dropped, {r['spilled']} spilled" if setup == "trifle" else ""
                print(f"  {label:<40} app {rate:9,.0f} spans/s   lost {lost:7,d} of {r['spans_made']:,}{extra}   "
                      f"drain {r['drain']:5.2f} s   peak RSS {r['peak_rss_mb']:6.0f} MB")
                print(f"  {'':<40} CPU in {r['elapsed']:.1f} s: app thread {r['app_cpu']:.2f} s, "
                      f"{'export' if setup == 'batch' else 'worker'} thread {r['helper_cpu']:.2f} s")
            a, b = results["batch"], results["trifle"]
            ratios.append((b["spans_made"] / b["elapsed"]) / (a["spans_made"] / a["elapsed"]))
            print(f"  ratio app spans/s (b)/(a): {ratios[-1]:.3f}")
        if len(ratios) > 1:
            print(f"  ratio app spans/s (b)/(a), median of {len(ratios)} rounds: {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
    # One run on a shared machine can be off by a quarter: several runs, and their median.
    worker_rates = []
    for _ in range(args.worker_runs):
        with tempfile.TemporaryDirectory() as home:
            w = run_child("worker", str(args.executions), home)
        worker_rates.append(w["executions"] / w["elapsed"])
        print(f"  worker alone: {w['executions']:,} executions ({w['spans']:,} spans) in {w['elapsed']:.2f} s: "
              f"{worker_rates[-1]:,.0f} executions/s, {w['spans'] / w['elapsed']:,.0f} spans/s, "
              f"CPU {w['cpu'] / w['spans'] * 1e6:.1f} us/span; written {w['written']:,}, spilled {w['spilled']}, "
              f"peak RSS {w['peak_rss_mb']:.0f} MB")
    if len(worker_rates) > 1:
        print(f"  worker alone, median of {len(worker_rates)} runs: {statistics.median(worker_rates):,.0f} executions/s")
    if args.s3:
        # The same run with no added latency shows what the local S3 server itself allows:
        # the ratio says how much of the added latency the concurrent puts hide.
        rates = {}
        for latency in (0.0, args.latency_ms):
            s = s3_run(args.s3_executions, latency, args.s3_concurrency)
            rates[latency] = s["executions"] / s["elapsed"]
            print(f"  S3 (moto) at +{latency:g} ms per request: {s['executions']:,} executions in {s['elapsed']:.2f} s: "
                  f"{rates[latency]:,.0f} executions/s; {s['requests']:,} requests, at most {s['max_in_flight']} in "
                  f"flight (s3_concurrency {args.s3_concurrency}); written {s['written']:,}")
            # What one put costs the server side decides how many puts a second this
            # machine's cores can take, whatever the client does.
            per_put = max(s["server_cpu"] / max(s["requests"], 1), 1e-9)
            print(f"  {'':<4}moto and the proxy: {per_put * 1e6:,.0f} us of CPU a request, so at most "
                  f"~{1 / per_put:,.0f} requests/s a core")
        print(f"  ratio executions/s at +{args.latency_ms:g} ms / at +0 ms: {rates[args.latency_ms] / rates[0.0]:.2f}")
        s = s3_run(args.s3_executions, args.latency_ms, args.s3_concurrency, stub=True)
        stub_rate = s["executions"] / s["elapsed"]
        print(f"  S3 stub (the proxy answers every put; no server limit) at +{args.latency_ms:g} ms: "
              f"{s['executions']:,} executions in {s['elapsed']:.2f} s: {stub_rate:,.0f} executions/s, "
              f"worker process CPU {s['cpu'] / s['executions'] * 1e6:,.0f} us an execution; {s['requests']:,} requests, "
              f"at most {s['max_in_flight']} in flight; written {s['written']:,}")
        print(f"  ratio executions/s, stub / moto at +{args.latency_ms:g} ms: {stub_rate / rates[args.latency_ms]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
