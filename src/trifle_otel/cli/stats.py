"""``trifle-otel stats values|keys``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import click
from rich.markup import escape
from rich.table import Table

from ..config import Config
from ..errors import ConfigError
from ..stats.api import Stats, keys_in_use
from ..stats.granularity import parse_granularity
from ..stats.series import mean, percentile, summarize
from ..stats.values import add_path, flatten
from ..stores import redact
from ..timeutil import iso, parse_time
from .options import config_options
from .output import console, dump, number
from .reading import require_store

SPARK = " ▁▂▃▄▅▆▇█"
MAX_SPARKLINES = 4


def _range(since: str, until: str) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    start, end = parse_time(since, now=now, what="--from"), parse_time(until, now=now, what="--to")
    if start > end:
        raise ConfigError(f"--from ({iso(start)}) is after --to ({iso(end)})")
    return start, end


def _open(config: Config) -> Stats:
    require_store(config.resolved_stats_url(), "stats store", "stats-url URL")
    return Stats(config, buffered=False)


@click.group()
def stats() -> None:
    """Read time-bucketed stats (Trifle::Stats layout)."""


# -- picking values ------------------------------------------------------------------------


def matches(path: str, pattern: str) -> bool:
    """``codes.*`` matches ``codes.OK``; a group (``duration``) matches what is inside it."""
    parts, wanted = path.split("."), pattern.split(".")
    return len(wanted) <= len(parts) and all(w in ("*", p) for w, p in zip(wanted, parts))


def select(paths: Sequence[str], patterns: Sequence[str]) -> list[str]:
    if not patterns:
        return list(paths)
    chosen = [p for p in paths if any(matches(p, pattern) for pattern in patterns)]
    missing = [pattern for pattern in patterns if not any(matches(p, pattern) for p in paths)]
    if missing:
        tops = sorted({p.split(".")[0] for p in paths})
        raise ConfigError(
            f"--path {missing[0]!r} names no value in this range: values here are under {', '.join(tops)}"
            " (a '*' stands for one name: codes.*)"
        )
    return chosen


@dataclass
class Column:
    name: str
    cells: list[Any]  # one number (or None) per bucket


def columns_of(flats: list[dict[str, Any]], paths: list[str]) -> list[Column]:
    """One column per value; a ``count/sum/square`` triple becomes count, mean and p95."""
    chosen = set(paths)
    triples = {p.rsplit(".", 1)[0] for p in paths if p.endswith(".square")}
    triples = {t for t in triples if {f"{t}.count", f"{t}.sum", f"{t}.square"} <= chosen}
    out: list[Column] = []
    done: set[str] = set()
    for path in paths:
        group = path.rsplit(".", 1)[0] if "." in path else None
        if group in triples:
            if group in done:
                continue
            done.add(group)
            counts = [f.get(f"{group}.count") for f in flats]
            sums = [f.get(f"{group}.sum") for f in flats]
            squares = [f.get(f"{group}.square") for f in flats]
            out.append(Column(f"{group} count", counts))
            out.append(Column(f"{group} mean", [mean(c, s) if c else None for c, s in zip(counts, sums)]))
            out.append(Column(f"{group} p95", [percentile(c, s, q or 0) if c else None
                                               for c, s, q in zip(counts, sums, squares)]))
            continue
        out.append(Column(path, [f.get(path) for f in flats]))
    return out


def bucket_label(at: datetime, granularity: str, same_day: bool, same_year: bool) -> str:
    unit = parse_granularity(granularity).unit
    if unit in ("s", "m", "h"):
        return at.strftime("%H:%M" if same_day else "%m-%d %H:%M") if unit != "s" else at.strftime("%H:%M:%S")
    if unit in ("d", "w"):
        return at.strftime("%m-%d" if same_year else "%Y-%m-%d")
    if unit in ("mo", "q"):
        return at.strftime("%Y-%m")
    return at.strftime("%Y")


def sparkline(points: list[Any]) -> tuple[str, float] | None:
    numbers = [p for p in points if isinstance(p, (int, float))]
    if not numbers:
        return None
    top = max(numbers) or 1
    line = "".join(SPARK[max(0, round(p / top * 8))] if isinstance(p, (int, float)) and p > 0 else SPARK[0] for p in points)
    return line, max(numbers)


def nest_selected(value: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flatten(value).items():
        if path in paths:
            add_path(out, path.split("."), v)
    return out


def _span(start: datetime, end: datetime, tz) -> str:
    """``2026-11-23 16:35 to 16:50 (UTC)``: minutes, in the stats time zone."""
    start, end = start.astimezone(tz), end.astimezone(tz)
    until = f"{end:%H:%M}" if start.date() == end.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M} to {until} ({tz})"


# -- values --------------------------------------------------------------------------------


@stats.command("values")
@click.argument("key")
@click.option("--granularity", "-g", default="1h", show_default=True, help="e.g. 1m, 15m, 1h, 1d, 1w, 1mo.")
@click.option("--from", "since", default="1d", show_default=True, help="ISO 8601 or an age (2h, 7d).")
@click.option("--to", "until", default="now", show_default=True, help="ISO 8601, an age, or now.")
@click.option("--path", "patterns", multiple=True,
              help="Values to show (dotted path, '*' for any one name: codes.*, duration); repeat for several. Default: all.")
@click.option("--skip-blanks", is_flag=True, help="Leave out buckets with no values.")
@click.option("--json", "as_json", is_flag=True, help='Print {"at": [ISO 8601 ...], "values": [...]}.')
@config_options
def values_command(config: Config, key: str, granularity: str, since: str, until: str, patterns: tuple[str, ...],
                   skip_blanks: bool, as_json: bool) -> None:
    """Values of KEY in each bucket between --from and --to."""
    start, end = _range(since, until)
    parse_granularity(granularity)  # named before the store is looked at
    store = _open(config)
    try:
        series = store.values(key, start, end, granularity, skip_blanks=skip_blanks)
        tz = store.floor.tz
    finally:
        store.shutdown()
    flats = [flatten(v) for v in series["values"]]
    all_paths = sorted({p for f in flats for p in f})
    where = escape(redact(config.resolved_stats_url()))
    if not all_paths:
        if as_json:
            dump({"at": [iso(a) for a in series["at"]], "values": series["values"]})
            return
        console().print(f"No values for {escape(key)} at {granularity} from {_span(start, end, tz)} in {where}."
                        " Keys in use: trifle-otel stats keys", soft_wrap=True)
        return
    paths = select(all_paths, patterns)
    if as_json:
        values = [nest_selected(v, set(paths)) for v in series["values"]] if patterns else series["values"]
        dump({"at": [iso(a) for a in series["at"]], "values": values})
        return
    out = console()
    local = [a.astimezone(tz) for a in series["at"]]
    out.print(f"[bold]{escape(key)}[/], {granularity} buckets from {_span(local[0], local[-1], tz)}", soft_wrap=True)
    out.print(f"[dim]read from {where}[/]", soft_wrap=True)
    columns = columns_of(flats, paths)
    same_day = len({a.date() for a in local}) <= 1
    same_year = len({a.year for a in local}) <= 1
    labels = [bucket_label(a, granularity, same_day, same_year) for a in local]
    _print_values(out, labels, columns)
    shown = [p for p in paths if not p.endswith((".sum", ".square"))] if patterns else (["count"] if "count" in paths else [])
    for path in shown[:MAX_SPARKLINES]:
        spark = sparkline([f.get(path) for f in flats])
        if spark:
            out.print(f"{escape(path)}: [cyan]{spark[0]}[/] max {number(spark[1])}")
    triples = sorted({c.name.rsplit(" ", 1)[0] for c in columns if c.name.endswith(" p95")})
    for triple in triples:
        s = summarize(series, triple)
        if s["count"]:
            out.print(f"{escape(triple)} over the range: count {number(s['count'])}  mean {number(s['mean'])}  "
                      f"stddev {number(s['stddev'])}  p95≈{number(s['p95'])}")


def _print_values(out, labels: list[str], columns: list[Column]) -> None:
    """Buckets as rows when the values fit across; else one row per value and one column per
    bucket (the latest buckets that fit), so that no header is cut."""
    cells = [[number(v) for v in c.cells] for c in columns]
    widths = [max([len(c.name)] + [len(x) for x in cs]) for c, cs in zip(columns, cells)]
    label_width = max(len(x) for x in labels)
    if label_width + sum(w + 2 for w in widths) <= out.width:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("at", no_wrap=True)
        for c in columns:
            table.add_column(escape(c.name), justify="right", no_wrap=True)
        for i, label in enumerate(labels):
            table.add_row(label, *[cs[i] for cs in cells])
        out.print(table)
        return
    name_width = max(len(c.name) for c in columns)
    room = out.width - name_width
    keep = 0
    for i in range(len(labels) - 1, -1, -1):
        need = max([len(labels[i])] + [len(cs[i]) for cs in cells]) + 2
        if room - need < 0 and keep:
            break
        room -= need
        keep += 1
    first = len(labels) - keep
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("value", no_wrap=True)
    for label in labels[first:]:
        table.add_column(label, justify="right", no_wrap=True)
    for c, cs in zip(columns, cells):
        table.add_row(escape(c.name), *cs[first:])
    out.print(table)
    if first:
        out.print(f"[dim]the {keep} latest of {len(labels)} buckets: use --from/--to, --skip-blanks, --path or --json for the rest[/]")


# -- keys ----------------------------------------------------------------------------------


@stats.command("keys")
@click.option("--granularity", "-g", default="1d", show_default=True, help="Buckets to read the key list from.")
@click.option("--from", "since", default="7d", show_default=True, help="ISO 8601 or an age (2h, 7d).")
@click.option("--to", "until", default="now", show_default=True, help="ISO 8601, an age, or now.")
@click.option("--json", "as_json", is_flag=True, help='Print {"keys": {name: tracks}}.')
@config_options
def keys_command(config: Config, granularity: str, since: str, until: str, as_json: bool) -> None:
    """Stat keys written in the range (from the __system__key__ tracking)."""
    start, end = _range(since, until)
    parse_granularity(granularity)
    store = _open(config)
    try:
        keys = keys_in_use(store, start, end, granularity)
    finally:
        store.shutdown()
    if as_json:
        dump({"keys": keys})
        return
    out = console()
    where = escape(redact(config.resolved_stats_url()))
    tz = store.floor.tz
    span = f"in {granularity} buckets from {_span(start, end, tz)}"
    if not keys:
        out.print(f"No stats written {span} in {where}.", soft_wrap=True)
        return
    out.print(f"Stat keys written {span}", soft_wrap=True)
    out.print(f"[dim]read from {where}[/]", soft_wrap=True)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("tracks", justify="right", no_wrap=True)
    table.add_column("key", overflow="fold")
    for name, count in keys.items():
        table.add_row(number(count), escape(name))
    out.print(table)
