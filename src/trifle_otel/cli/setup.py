"""``trifle-otel setup``: create tables, collections, indexes, buckets and lifecycle rules."""

from __future__ import annotations

import click

from ..config import Config
from ..stats.drivers import open_stats_driver
from ..stores import check_urls, open_data, open_index
from ..stores import redact
from .main import config_options, main
from .traces import _console


@main.command()
@click.option("--retention", "retentions", type=click.IntRange(1, 36500), multiple=True,
              help="Retention classes (days) to create S3 lifecycle rules for; default: the retention_days setting.")
@config_options
def setup(config: Config, retentions: tuple[int, ...]) -> None:
    """Prepare the configured stores (idempotent) and print what was done."""
    check_urls(config)
    console = _console()
    index = open_index(config.resolved_index_url())
    try:
        console.print(f"[bold]trace index[/] {redact(config.resolved_index_url())}")
        for line in index.setup():
            console.print(f"  {line}")
    finally:
        index.close()
    data = open_data(config.resolved_data_url(), config)
    try:
        console.print(f"[bold]trace data[/] {config.resolved_data_url()}")
        for line in data.setup(retentions or (config.retention_days,)):
            console.print(f"  {line}")
    finally:
        data.close()
    stats = open_stats_driver(config.resolved_stats_url(), mode=config.stats_mode, expire_after=config.stats_expire_after)
    try:
        console.print(f"[bold]stats[/] {redact(config.resolved_stats_url())} ({config.stats_mode} identifiers)")
        for line in stats.setup():
            console.print(f"  {line}")
    finally:
        stats.close()
