"""The options every command takes: ``--config``, ``--home`` and the store URLs.

They are accepted before the command (``trifle-otel --home X traces list``) and after it
(``trifle-otel traces list --home X``); given in both places, the one after the command wins.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from ..config import Config, load_config

STORE_OPTIONS = ("config_file", "home", "index_url", "data_url", "stats_url")


def store_options(func: Callable) -> Callable:
    """The option declarations alone (used by the command group and by every command)."""
    for decorator in reversed((
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file (env TRIFLE_OTEL_CONFIG)."),
        click.option("--home", help="Root of the embedded store (env TRIFLE_OTEL_HOME, default ./.trifle)."),
        click.option("--index-url", help="Trace index URL, e.g. sqlite:///path/traces.db."),
        click.option("--data-url", help="Trace data URL, e.g. file:///dir or s3://bucket/prefix."),
        click.option("--stats-url", help="Stats store URL, e.g. sqlite:///path/stats.db."),
    )):
        func = decorator(func)
    return func


def given_before_command() -> dict[str, Any]:
    """The store options given before the command name, on the command group."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return {name: root.params.get(name) for name in STORE_OPTIONS} if root is not None else {}


def config_from(options: dict[str, Any]) -> Config:
    merged = given_before_command()
    merged.update({k: v for k, v in options.items() if v is not None})
    return load_config(
        merged.get("config_file"),
        overrides={name: merged.get(name) for name in ("home", "index_url", "data_url", "stats_url")},
    )


def config_options(func: Callable) -> Callable:
    """The store options, turned into a ``config`` argument of the command."""

    @store_options
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in STORE_OPTIONS}
        return func(*args, config=config_from(options), **kwargs)

    return wrapper
