"""``trifle-otel rules check``: validate a rules file and explain each rule in words."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from ..config import Config
from ..errors import ConfigError
from ..model import Span
from ..stats.rules import Rule, RuleSet, collisions, describe, load_rules, value_paths
from ..stats.values import nest
from ..stores import TraceQuery, redact
from .options import config_options
from .output import console, warn
from .reading import existing_index, index_exists


@click.group()
def rules() -> None:
    """Validate and explain stats rules."""


def _span_from_json(data: dict[str, Any], where: str) -> tuple[Span, dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ConfigError(f"{where}: a span is an object with at least a \"name\"")
    for name in ("attributes", "resource", "execution"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ConfigError(f"{where}: \"{name}\" is an object of name: value")
    duration = data.get("duration", 0)
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        raise ConfigError(f"{where}: \"duration\" is a number of milliseconds")
    end = int(datetime.now(timezone.utc).timestamp() * 1e9)
    span = Span(
        trace_id="0" * 32,
        span_id="0" * 16,
        name=data["name"],
        start_ns=end - int(duration * 1e6),
        end_ns=end,
        kind=str(data.get("kind", "internal")),
        status=str(data.get("status", "unset")),
        attributes=dict(data.get("attributes") or {}),
        resource=dict(data.get("resource") or {}),
    )
    return span, dict(data.get("execution") or {})


def explain(rule: Rule) -> Table:
    """A rule in words: when it applies, the keys it tracks on, what each value adds."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("when", escape(" and ".join(describe(rule))))
    keys = "\n".join(escape(k) for k in rule.key_templates)
    if any("{" in key for key in rule.key_templates):
        keys += "\n[dim](a key whose {...} value a span does not have is skipped for that span)[/]"
    grid.add_row("keys", keys)
    values = Table.grid(padding=(0, 2))
    values.add_column(no_wrap=True)
    values.add_column()
    for p in value_paths(rule.spec.get("values") or {}):
        values.add_row(escape(p.shown), escape(p.meaning))
    grid.add_row("values", values)
    grid.add_row("at", f"the span's {'start' if rule.at_start else 'end'}")
    return grid


def _execution_keys(config: Config):
    """A test of whether executions with a key exist in the configured trace index (None when
    there is no index to ask)."""
    if not index_exists(config):
        return None, None
    index = existing_index(config)

    def exists(key: str) -> bool:
        page = index.search(TraceQuery(key=key, limit=50))
        return any(r["key"] == key for r in page.records)

    return index, exists


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option("--span", "span_file", type=click.Path(dir_okay=False, exists=True),
              help='JSON span (or list): {"name", "kind", "status", "duration", "attributes", "resource", "execution": {"state", "key"}}.')
@config_options
def check_command(config: Config, file: str | None, span_file: str | None) -> None:
    """Validate FILE (default: the configured stats.rules) and explain each rule; with --span,
    show what a span would track."""
    file = file or config.stats_rules
    if not file:
        raise ConfigError("no rules file: give FILE, or set stats.rules in the config file (--config)")
    ruleset = load_rules(file, default_stats=False)  # the warnings are printed below, with more facts
    out = console()
    out.print(f"{escape(str(file))}: {len(ruleset)} rule(s), all valid.")
    for rule in ruleset.rules:
        out.print(f"\n[bold]{escape(rule.name)}[/]")
        out.print(Padding(explain(rule), (0, 0, 0, 2)))
    if config.default_stats:
        _warn_collisions(config, ruleset)
    if span_file:
        _evaluate(out, ruleset, span_file)


def _warn_collisions(config: Config, ruleset: RuleSet) -> None:
    certain = collisions(ruleset.rules)
    for c in certain:
        warn(c.message("the key of the executions it matches"))
    index, exists = _execution_keys(config)
    if index is None:
        return
    try:
        seen = {(c.rule, c.key) for c in certain}
        for c in collisions(ruleset.rules, exists):
            if (c.rule, c.key) not in seen:
                warn(c.message(f"which is the key of executions in {redact(config.resolved_index_url())}"))
    finally:
        index.close()


def _evaluate(out, ruleset: RuleSet, span_file: str) -> None:
    try:
        data = json.loads(Path(span_file).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{span_file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    spans = data if isinstance(data, list) else [data]
    out.print()
    for i, item in enumerate(spans):
        span, ctx = _span_from_json(item, f"{span_file} span #{i + 1}")
        tracks = ruleset.evaluate(span, ctx)
        if not tracks:
            out.print(f"span {escape(span.name)}: no rule matches")
        for t in tracks:
            out.print(f"span {escape(span.name)} → rule {escape(t.rule)}: track({escape(t.key)}, "
                      f"{escape(json.dumps(nest(t.values), ensure_ascii=False))})", soft_wrap=True)
