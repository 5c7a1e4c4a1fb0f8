"""Command group, shared options and error reporting (one clear line, never a traceback)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from ..config import load_config
from ..errors import TrifleError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrifleError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            sys.exit(0)


def config_options(func: Callable) -> Callable:
    """``--config``, ``--home`` and the store URL flags, turned into a ``config`` argument."""

    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file (env TRIFLE_OTEL_CONFIG).")
    @click.option("--home", help="Root of the embedded store (env TRIFLE_OTEL_HOME, default ./.trifle).")
    @click.option("--index-url", help="Trace index URL, e.g. sqlite:///path/traces.db.")
    @click.option("--data-url", help="Trace data URL, e.g. file:///dir or s3://bucket/prefix.")
    @click.option("--stats-url", help="Stats store URL, e.g. sqlite:///path/stats.db.")
    @functools.wraps(func)
    def wrapper(*args: Any, config_file: str | None, home: str | None, index_url: str | None,
                data_url: str | None, stats_url: str | None, **kwargs: Any) -> Any:
        config = load_config(
            config_file,
            overrides={"home": home, "index_url": index_url, "data_url": data_url, "stats_url": stats_url},
        )
        return func(*args, config=config, **kwargs)

    return wrapper


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trifle-otel")
def main() -> None:
    """trifle-otel: Trifle-style execution traces and stats from OpenTelemetry spans."""


def _register() -> None:
    from . import demo, setup, stats, traces, ui  # noqa: F401  (commands attach themselves to ``main``)


_register()
