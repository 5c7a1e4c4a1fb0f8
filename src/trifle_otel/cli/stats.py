"""``trifle-otel stats values|keys`` and ``trifle-otel rules check``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..config import Config
from ..errors import ConfigError
from ..model import Span
from ..stats.api import Stats, keys_in_use
from ..stats.rules import describe, load_rules
from ..stats.series import summarize
from ..stats.values import dig, flatten, nest
from ..timeutil import iso, parse_time
from .main import config_options, main
from .traces import _console, _dump

SPARK = " ▁▂▃▄▅▆▇█"


def _range(since: str, until: str) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    start, end = parse_time(since, now=now, what="--from"), parse_time(until, now=now, what="--to")
    if start > end:
        raise ConfigError(f"--from ({iso(start)}) is after --to ({iso(end)})")
    return start, end


def _open(config: Config) -> Stats:
    return Stats(config, buffered=False)


@main.group()
def stats() -> None:
    """Read time-bucketed stats (Trifle::Stats layout)."""


@stats.command("values")
@click.argument("key")
@click.option("--granularity", "-g", default="1h", show_default=True, help="e.g. 1m, 15m, 1h, 1d, 1w, 1mo.")
@click.option("--from", "since", default="1d", show_default=True, help="ISO 8601 or an age (2h, 7d).")
@click.option("--to", "until", default="now", show_default=True, help="ISO 8601, an age, or now.")
@click.option("--path", default="count", show_default=True, help="Value drawn as a chart (dotted path).")
@click.option("--skip-blanks", is_flag=True, help="Leave out buckets with no values.")
@click.option("--json", "as_json", is_flag=True, help='Print {"at": [ISO 8601 ...], "values": [...]}.')
@config_options
def values_command(config: Config, key: str, granularity: str, since: str, until: str, path: str, skip_blanks: bool, as_json: bool) -> None:
    """Values of KEY in each bucket between --from and --to."""
    start, end = _range(since, until)
    store = _open(config)
    try:
        series = store.values(key, start, end, granularity, skip_blanks=skip_blanks)
    finally:
        store.shutdown()
    if as_json:
        _dump({"at": [iso(a) for a in series["at"]], "values": series["values"]})
        return
    console = _console()
    if not any(series["values"]):
        console.print(f"No values for {escape(key)!s} at {granularity} between {iso(start)} and {iso(end)}."
                      " Keys in use: trifle-otel stats keys")
        return
    columns = sorted({p for v in series["values"] for p in flatten(v)})
    shown = columns[:12]
    table = Table(box=None, header_style="bold")
    table.add_column("at")
    for name in shown:
        table.add_column(name, justify="right")
    for at, value in zip(series["at"], series["values"]):
        flat = flatten(value)
        table.add_row(at.astimezone(store.floor.tz).strftime("%Y-%m-%d %H:%M"), *[_num(flat.get(c)) for c in shown])
    console.print(table)
    if len(columns) > len(shown):
        console.print(f"[dim]{len(columns) - len(shown)} more values: use --json[/]")
    points = [dig(v, path) for v in series["values"]]
    numbers = [p for p in points if isinstance(p, (int, float))]
    if numbers:
        top = max(numbers) or 1
        line = "".join(SPARK[round(p / top * 8)] if isinstance(p, (int, float)) and p > 0 else SPARK[0] for p in points)
        console.print(f"{escape(path)}: [cyan]{line}[/] max {_num(max(numbers))}")
    triple_paths = sorted({c.rsplit(".", 1)[0] for c in columns if c.endswith(".square")})
    for triple in triple_paths[:4]:
        s = summarize(series, triple)
        if s["count"]:
            console.print(f"{escape(triple)}: count {_num(s['count'])}  mean {_num(s['mean'])}  "
                          f"stddev {_num(s['stddev'])}  p95≈{_num(s['p95'])}")


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


@stats.command("keys")
@click.option("--granularity", "-g", default="1d", show_default=True)
@click.option("--from", "since", default="7d", show_default=True)
@click.option("--to", "until", default="now", show_default=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"keys": {name: tracks}}.')
@config_options
def keys_command(config: Config, granularity: str, since: str, until: str, as_json: bool) -> None:
    """Stat keys written in the range (from the __system__key__ tracking)."""
    start, end = _range(since, until)
    store = _open(config)
    try:
        keys = keys_in_use(store, start, end, granularity)
    finally:
        store.shutdown()
    if as_json:
        _dump({"keys": keys})
        return
    console = _console()
    if not keys:
        console.print("No stats written in that range.")
    for name, count in keys.items():
        console.print(f"{count:>10,}  {escape(name)}")


@main.group()
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


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--span", "span_file", type=click.Path(dir_okay=False, exists=True),
              help='JSON span (or list): {"name", "kind", "status", "duration", "attributes", "resource", "execution": {"state"}}.')
def check_command(file: str, span_file: str | None) -> None:
    """Validate FILE and explain each rule; with --span, show what a span would track."""
    ruleset = load_rules(file)
    console = _console()
    console.print(f"{file}: {len(ruleset)} rule(s), all valid.")
    for rule in ruleset.rules:
        spec = rule.spec
        console.print(f"\n[bold]{escape(rule.name)}[/]")
        console.print("  when:   " + escape(" and ".join(describe(rule))))
        console.print("  keys:   " + escape(", ".join(map(str, spec.get("keys") if isinstance(spec.get("keys"), list) else [spec.get("keys")]))))
        console.print("  values: " + escape(json.dumps(spec.get("values"), ensure_ascii=False)))
        console.print(f"  at:     span {'start' if rule.at_start else 'end'}")
    if not span_file:
        return
    try:
        data = json.loads(Path(span_file).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{span_file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    spans = data if isinstance(data, list) else [data]
    console.print()
    for i, item in enumerate(spans):
        span, ctx = _span_from_json(item, f"{span_file} span #{i + 1}")
        tracks = ruleset.evaluate(span, ctx)
        if not tracks:
            console.print(f"span {escape(span.name)!s}: no rule matches")
        for t in tracks:
            console.print(f"span {escape(span.name)} → rule {escape(t.rule)!s}: track({escape(t.key)}, "
                          f"{escape(json.dumps(nest(t.values), ensure_ascii=False))})")
