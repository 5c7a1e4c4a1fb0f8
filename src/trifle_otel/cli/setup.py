"""``trifle-otel setup``: create tables, collections, indexes, buckets and lifecycle rules."""

from __future__ import annotations

import click

from ..config import Config
from ..stats.drivers import open_stats_driver
from ..stores import check_urls, open_data, open_index
from ..stores import redact
from .options import config_options
from . import output


@click.command()
@click.option("--retention", "retentions", type=click.IntRange(1, 36500), multiple=True,
              help="Retention classes (days) to create S3 lifecycle rules for; default: the retention_days setting.")
@config_options
def setup(config: Config, retentions: tuple[int, ...]) -> None:
    """Prepare the configured stores (idempotent) and print what was done."""
    check_urls(config)
    console = output.console()
    days = retentions or (config.retention_days,)
    steps = [
        ("trace index", config.resolved_index_url(), lambda: open_index(config.resolved_index_url()), lambda s: s.setup()),
        ("trace data", config.resolved_data_url(), lambda: open_data(config.resolved_data_url(), config), lambda s: s.setup(days)),
        (
            f"stats ({config.stats_mode} identifiers)",
            config.resolved_stats_url(),
            lambda: open_stats_driver(config.resolved_stats_url(), mode=config.stats_mode, expire_after=config.stats_expire_after),
            lambda s: s.setup(),
        ),
    ]
    for label, url, open_store, prepare in steps:
        store = open_store()
        try:
            console.print(f"[bold]{label}[/] {redact(url)}")
            for line in prepare(store):
                console.print(f"  {line}")
        finally:
            store.close()
