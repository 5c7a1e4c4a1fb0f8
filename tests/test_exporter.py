"""Zero-code use: OTEL_TRACES_EXPORTER=trifle under opentelemetry-instrument."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from trifle_otel import TrifleSpanExporter
from trifle_otel.config import Config
from trifle_otel.stores import open_index
from trifle_otel.stores.base import TraceQuery

BIN = Path(sys.executable).parent

JOB = textwrap.dedent(
    """
    from opentelemetry import trace
    from trifle_otel import trace as step, warn

    tracer = trace.get_tracer("job")
    for n in range(3):
        with tracer.start_as_current_span("run/reports.export", attributes={"job.class": "reports/export", "n": n}):
            with step("Loading rows") as s:
                s.result = n * 10
            if n == 2:
                warn("slow")
    print("job done")
    """
)


def test_entry_point_through_opentelemetry_instrument(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    home = tmp_path / "store"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRIFLE_OTEL_"))},
        "OTEL_TRACES_EXPORTER": "trifle",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "reports-worker",
        "TRIFLE_OTEL_HOME": str(home),
    }
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(job)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "job done" in proc.stdout
    index = open_index(f"sqlite://{home / 'traces.db'}")
    records = index.search(TraceQuery()).records
    index.close()
    assert [r["key"] for r in records] == ["reports/export"] * 3
    assert sorted(r["state"] for r in records) == ["success", "success", "warning"]
    assert {r["service"] for r in records} == {"reports-worker"}
    assert sorted(r["length"] for r in records) == [3, 3, 4]  # begin, end, result (+ the warning)


def test_exporter_in_code_writes_each_execution_once(tmp_path):
    exporter = TrifleSpanExporter(Config(home=str(tmp_path), flush_interval=0.05))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("job"):
        with tracer.start_as_current_span("step"):
            pass
    assert exporter.force_flush()
    provider.shutdown()
    stats = exporter.stats()
    assert stats["executions_written"] == 1 and stats["live_writes"] == 0
