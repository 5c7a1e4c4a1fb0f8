"""``trifle-otel demo``: run a realistic job workload into the configured store."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from ..config import Config
from ..stores import redact
from .options import config_options
from . import output


@click.command()
@click.option("--jobs", type=click.IntRange(1, 100_000), default=120, show_default=True, help="How many jobs to run.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the workload's randomness.")
@config_options
def demo(config: Config, jobs: int, seed: int) -> None:
    """Run price-calculation and product-refresh jobs through the bridge, then say where to look."""
    from ..demo import demo_config, run_demo
    from ..ingest.processor import TrifleSpanProcessor

    config = demo_config(config)
    console = output.console()
    console.print(f"Running {jobs} jobs into {redact(config.resolved_index_url())} and {config.resolved_data_url()} ...")
    processor = TrifleSpanProcessor(config)
    try:
        summary = run_demo(processor, jobs=jobs, seed=seed)
    finally:
        processor.shutdown()
    stats = processor.stats()
    console.print(f"Ran {jobs} jobs in {summary.seconds:.1f}s:")
    for name, count in sorted(summary.jobs.items()):
        console.print(f"  {count:4d}  {name}")
    console.print(
        f"Wrote {stats['executions_written']} executions ({stats['executions_ignored']} ignored, "
        f"{stats['live_writes']} live updates, {stats['spans_dropped']} spans dropped, "
        f"{stats['write_errors']} write errors)."
    )
    console.print("One report job was still running when the demo stopped: its record stays 'running'"
                  f" and is reported stuck after {config.stuck_after:.0f}s.")
    if stats["write_errors"] and not stats["executions_written"]:
        raise SystemExit("error: nothing could be written: see the warnings above")
    console.print(
        f"Stats: {stats['stats_tracks']} tracks into {redact(config.resolved_stats_url())} "
        f"(rules: {config.stats_rules}; {stats['stats_write_errors']} write errors)."
    )
    opts = "" if config.source == "defaults" else f" --config {config.source}"
    prog = _program()
    console.print("\nLook at it:")
    for command in (
        f"{prog} traces list{opts}",
        f"{prog} traces list --state error{opts}",
        f"{prog} traces list --key prices --tag customer.id:acme --json{opts}",
        f"{prog} traces show {_example_reference(config)}{opts}",
        f"{prog} stats keys{opts}",
        f"{prog} stats values prices/calculations --granularity 1m --from 15m{opts}",
        f"{prog} rules check {config.stats_rules}",
    ):
        console.print(f"  {command}", soft_wrap=True)


def _program() -> str:
    """How to run this command from here: ``trifle-otel`` when it is on PATH, else its path."""
    installed = Path(sys.executable).parent / "trifle-otel"
    found = shutil.which("trifle-otel")
    if found and Path(found).resolve() == installed.resolve():
        return "trifle-otel"
    try:
        relative = os.path.relpath(installed)
    except ValueError:
        return str(installed)
    return relative if not relative.startswith("..") else str(installed)


def _example_reference(config: Config) -> str:
    """A calculation worth reading: nested steps, and the large payload if it is there."""
    from ..stores import TraceQuery, open_index

    try:
        index = open_index(config.resolved_index_url())
        try:
            records = index.search(TraceQuery(key="prices/calculate", limit=200)).records
        finally:
            index.close()
    except Exception:
        return "<reference>"
    if not records:
        return "<reference>"
    best = max(records, key=lambda r: (r["counters"]["types"]["media"], r["counters"]["max_level"], r["length"]))
    return best["reference"][:16]
