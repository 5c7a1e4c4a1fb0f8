"""``trifle-otel traces list|show``."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import Config
from ..errors import NotFoundError
from ..sinks import load_artifact, load_lines
from ..stores import TraceQuery, open_data, open_index
from ..stores.base import TIME_FIELDS
from ..timeutil import iso, parse_time
from ..stores import redact
from .main import config_options, main

STATE_STYLE = {"success": "green", "warning": "yellow", "error": "red", "running": "cyan", "debug": "dim"}


def jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for name in TIME_FIELDS:
        if isinstance(out.get(name), datetime):
            out[name] = iso(out[name])
    return out


def _dump(payload: Any) -> None:
    click.echo(json.dumps(payload, ensure_ascii=False, indent=2, default=str))


@main.group()
def traces() -> None:
    """Search and read execution traces."""


@traces.command("list")
@click.option("--key", help="Key or key prefix on '/' boundaries (prices matches prices/calculate).")
@click.option("--state", "states", multiple=True, type=click.Choice(["running", "success", "warning", "error"]), help="Repeat for several.")
@click.option("--tag", "tags_all", multiple=True, help="Executions with this tag (repeat: all of them).")
@click.option("--any-tag", "tags_any", multiple=True, help="Executions with any of these tags.")
@click.option("--since", help="Started at or after: ISO 8601 or an age (15m, 2h, 7d).")
@click.option("--until", help="Started before: ISO 8601 or an age.")
@click.option("--min-duration", type=float, help="At least this many milliseconds.")
@click.option("--stuck", is_flag=True, help="Running for longer than the stuck_after setting.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@click.option("--json", "as_json", is_flag=True, help='Print {"records": [...], "next_cursor": ...}.')
@config_options
def list_traces(config: Config, states, tags_all, tags_any, since, until, min_duration, stuck, limit, cursor, key, as_json) -> None:
    """List executions, newest first."""
    now = datetime.now(timezone.utc)
    query = TraceQuery(
        key=key,
        states=states,
        tags_all=tags_all,
        tags_any=tags_any,
        since=parse_time(since, now=now, what="--since") if since else None,
        until=parse_time(until, now=now, what="--until") if until else None,
        min_duration=min_duration,
        stuck_before=now - timedelta(seconds=config.stuck_after) if stuck else None,
        limit=limit,
        cursor=cursor,
    )
    index = open_index(config.resolved_index_url())
    try:
        page = index.search(query)
    finally:
        index.close()
    if as_json:
        _dump({"records": [jsonable(r) for r in page.records], "next_cursor": page.next_cursor})
        return
    console = _console()
    if not page.records:
        console.print(f"No executions match in {redact(config.resolved_index_url())}.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("reference", "key", "state", "started", "duration", "lines", "tags"):
        table.add_column(column, no_wrap=column != "tags", justify="right" if column in ("duration", "lines") else "left")
    stuck_at = now - timedelta(seconds=config.stuck_after)
    for r in page.records:
        state = r["state"]
        label = f"[{STATE_STYLE.get(state, '')}]{state}[/]"
        if state == "running" and r["first_at"] < stuck_at:
            label += " [red](stuck)[/]"
        table.add_row(
            r["reference"][:16],
            escape(r["key"]),
            label,
            r["first_at"].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            _ms(r["duration"]),
            str(r["length"]),
            escape(", ".join(r["tags"])),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"[dim]more: --cursor {page.next_cursor}[/]")


def _console() -> Console:
    # Piped output is not cut to 80 columns: whole lines are easier to grep.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _ms(value: float) -> str:
    if value >= 60_000:
        return f"{value / 60_000:.1f}m"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value < 10:
        return f"{value:.1f}ms"
    return f"{value:.0f}ms"


@traces.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help='Print {"record": {...}, "lines": [...], "artifacts": [...]}.')
@click.option("--artifact", "artifact_name", help="Write this artifact's content to standard output.")
@config_options
def show_trace(config: Config, reference: str, as_json: bool, artifact_name: str | None) -> None:
    """Show one execution: its record and every line (REFERENCE or a unique prefix of it)."""
    index = open_index(config.resolved_index_url())
    try:
        record = index.get(reference.strip())
    finally:
        index.close()
    if record is None:
        raise NotFoundError(
            f"no execution with reference {reference!r} in {redact(config.resolved_index_url())}: "
            "list references with `trifle-otel traces list` (a unique prefix is enough)"
        )
    data = open_data(config.resolved_data_url())
    try:
        if artifact_name:
            body = load_artifact(data, record, artifact_name)
            if body is None:
                raise NotFoundError(f"execution {record['reference']} has no artifact {artifact_name!r}")
            sys.stdout.buffer.write(body)
            return
        lines = load_lines(data, record)
    finally:
        data.close()
    artifacts = [{"name": l["message"], "size": l.get("size")} for l in lines if l.get("type") == "media"]
    artifacts += [{"name": v["artifact"], "size": v["size"], "meta": k} for k, v in record.get("meta", {}).items()
                  if isinstance(v, dict) and "artifact" in v]
    if as_json:
        _dump({"record": jsonable(record), "lines": lines, "artifacts": artifacts})
        return
    _print_trace(record, lines)


def _print_trace(record: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    console = _console()
    state = record["state"]
    console.print(f"[bold]{escape(record['key'])}[/]  [{STATE_STYLE.get(state, '')}]{state}[/]  {_ms(record['duration'])}")
    console.print(f"reference  {record['reference']}")
    console.print(f"started    {iso(record['first_at'])}   trace {record.get('trace_id', '')}")
    for link in record.get("links", []):
        console.print(f"{link['type']:<10} trace {link['trace_id']} span {link['span_id']}")
    if record.get("tags"):
        console.print(f"tags       {escape(', '.join(record['tags']))}")
    for k, v in (record.get("meta") or {}).items():
        console.print(f"[dim]meta[/]       {escape(k)} = {escape(json.dumps(v, ensure_ascii=False, default=str))}")
    console.print()
    start = int(record["first_at"].timestamp() * 1_000_000) * 1000 if record.get("first_at") else None
    for line in lines:
        offset = f"+{(line['ns'] - start) / 1e6:9.1f}ms" if start is not None and "ns" in line else " " * 12
        indent = "  " * int(line.get("level", 0))
        style = STATE_STYLE.get(line["state"], "") if line["state"] != "success" else ""
        message = str(line["message"])
        if line["type"] == "media":
            message = f"[media] {message} ({line.get('size', '?')} bytes; --artifact {message})"
        elif line["type"] == "raw":
            style = style or "dim"
        elif line["type"] == "head":
            style = (style + " bold").strip()
        text = escape(message).replace("\n", "\n" + " " * 13 + indent)
        took = f" [dim]({_ms(line['duration'])})[/]" if "duration" in line else ""
        console.print(f"[dim]{offset}[/] {indent}" + (f"[{style}]{text}[/]" if style else text) + took)
