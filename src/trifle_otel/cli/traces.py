"""``trifle-otel traces list|show``."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..config import Config
from ..errors import NotFoundError
from ..sinks import load_artifact, load_lines
from ..stores import TraceQuery, redact
from ..stores.base import decode_cursor
from ..timeutil import iso, jsonable, parse_time
from .options import config_options
from .output import (
    STATE_MARK,
    STATE_STYLE,
    console,
    dump,
    elapsed,
    milliseconds,
    state_label,
    styled,
    utc_clock,
)
from .reading import existing_data, existing_index, find_execution


@click.group()
def traces() -> None:
    """Search and read execution traces."""


# -- list ----------------------------------------------------------------------------------


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
    if cursor:
        decode_cursor(cursor)  # a bad cursor is named before the store is looked at
    index = existing_index(config)
    try:
        page = index.search(query)
    finally:
        index.close()
    if as_json:
        dump({"records": [jsonable(r) for r in page.records], "next_cursor": page.next_cursor})
        return
    out = console()
    if not page.records:
        out.print(f"No executions match in {escape(redact(config.resolved_index_url()))}.")
        return
    out.print(_list_table(page.records, now, config.stuck_after, out.width))
    if page.next_cursor:
        # On a line of its own, never wrapped, so that it copies whole.
        out.print("[dim]next page: --cursor[/]")
        click.echo(page.next_cursor)


def _list_table(records: list[dict[str, Any]], now: datetime, stuck_after: float, width: int) -> Table:
    """Reference, key, state, start and duration always; lines and tags when they fit."""
    rows = []
    for r in records:
        state = r["state"]
        running = state == "running"
        stuck = running and (now - r["first_at"]).total_seconds() > stuck_after
        started = r["first_at"].astimezone(timezone.utc)
        rows.append({
            "reference": r["reference"][:16],
            "key": r["key"],
            "state": (state + (" (stuck)" if stuck else ""), STATE_STYLE.get(state, "") if not stuck else "red"),
            "started": started.strftime("%Y-%m-%d %H:%M:%S"),
            "short_started": started.strftime("%m-%d %H:%M:%S"),
            # A running record's duration is the time of its last live write: show how long it has run.
            "duration": elapsed((now - r["first_at"]).total_seconds()) if running else milliseconds(r["duration"]),
            "lines": str(r["length"]),
            "tags": ", ".join(r["tags"]),
        })

    def size(name: str, header: str) -> int:
        return max([len(header)] + [len(row[name][0] if isinstance(row[name], tuple) else row[name]) for row in rows])

    started_key = "started"
    columns = ["reference", "key", "state", "started", "duration", "lines", "tags"]
    headers = {"reference": "reference", "key": "key", "state": "state", "started": "started (UTC)",
               "duration": "duration", "lines": "lines", "tags": "tags"}

    def needed(cols: list[str]) -> int:
        return sum(size(started_key if c == "started" else c, headers[c]) for c in cols) + len(cols) - 1

    if needed(columns) > width:
        started_key = "short_started"
    tags_width = None
    if needed(columns) > width:
        room = width - needed(columns[:-1]) - 1
        if room >= 12:
            tags_width = room
        else:
            columns.remove("tags")
    if needed(columns) > width:
        columns.remove("lines")

    table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    for c in columns:
        table.add_column(
            headers[c],
            justify="right" if c in ("duration", "lines") else "left",
            no_wrap=c != "key",
            overflow="fold" if c == "key" else "ellipsis",
            max_width=tags_width if c == "tags" else None,
            min_width=16 if c == "reference" else None,
        )
    for row in rows:
        cells = []
        for c in columns:
            if c == "state":
                text, style = row["state"]
                cells.append(styled(escape(text), style))
            else:
                cells.append(escape(row[started_key if c == "started" else c]))
        table.add_row(*cells)
    return table


# -- show ----------------------------------------------------------------------------------


@traces.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help='Print {"record": {...}, "lines": [...], "artifacts": [...]}.')
@click.option("--artifact", "artifact_name", help="Write this artifact's content to standard output.")
@config_options
def show_trace(config: Config, reference: str, as_json: bool, artifact_name: str | None) -> None:
    """Show one execution: its record and every line (REFERENCE or a unique prefix of it)."""
    index = existing_index(config)
    try:
        record = find_execution(config, index, reference)
    finally:
        index.close()
    lines: list[dict[str, Any]] = []
    if artifact_name or record.get("parts"):
        data = existing_data(config)
        try:
            if artifact_name:
                body = load_artifact(data, record, artifact_name)
                if body is None:
                    raise NotFoundError(f"execution {record['reference']} has no artifact {artifact_name!r}")
                sys.stdout.buffer.write(body)
                sys.stdout.flush()
                return
            lines = load_lines(data, record)
        finally:
            data.close()
    artifacts = [{"name": l["message"], "size": l.get("size")} for l in lines if l.get("type") == "media"]
    artifacts += [{"name": v["artifact"], "size": v["size"], "meta": k} for k, v in record.get("meta", {}).items()
                  if isinstance(v, dict) and "artifact" in v]
    if as_json:
        dump({"record": jsonable(record), "lines": lines, "artifacts": artifacts})
        return
    print_trace(record, lines, stuck_after=config.stuck_after)


def start_ns(record: dict[str, Any]) -> int | None:
    """When the execution started, in epoch ns: exact when the record carries ``start_ns``,
    else ``first_at`` (milliseconds)."""
    exact = record.get("start_ns")
    if isinstance(exact, int) and exact > 0:
        return exact
    first_at = record.get("first_at")
    if isinstance(first_at, datetime):
        return round(first_at.timestamp() * 1000) * 1_000_000
    return None


def running_summary(record: dict[str, Any], now: datetime, stuck_after: float) -> str:
    """``running for 9m12s, in "Exporting orders" since 16:02:11 UTC (stuck)``."""
    start = start_ns(record)
    seconds = (now.timestamp() - start / 1e9) if start is not None else 0.0
    text = f"running for {elapsed(seconds)}"
    open_steps = [s for s in record.get("open_steps") or () if isinstance(s, dict) and s.get("name")]
    if open_steps:
        step = open_steps[-1]
        text += f', in "{step["name"]}"'
        if isinstance(step.get("at"), (int, float)):
            text += f" since {utc_clock(float(step['at']), now)}"
    if seconds > stuck_after:
        text += " (stuck)"
    return text


def _offset(ns: int, start: int) -> str:
    ms = (ns - start) / 1e6
    if abs(ms) < 1000:
        return f"+{ms:.1f}ms"
    if abs(ms) < 60_000:
        return f"+{ms / 1000:.3f}s"
    minutes, rest = divmod(ms / 1000, 60)
    return f"+{int(minutes)}m{rest:06.3f}s"


def print_trace(record: dict[str, Any], lines: list[dict[str, Any]], *, stuck_after: float,
                now: datetime | None = None) -> None:
    out = console()
    now = now or datetime.now(timezone.utc)
    state = record["state"]
    if state == "running":
        summary = running_summary(record, now, stuck_after)
        style = "red" if summary.endswith("(stuck)") else STATE_STYLE["running"]
        status = styled(escape(f"{STATE_MARK['running']} {summary}"), style)
    else:
        status = f"{state_label(state)}  {milliseconds(record['duration'])}"
    out.print(f"[bold]{escape(record['key'])}[/]  {status}")
    out.print(f"reference  {record['reference']}")
    out.print(f"started    {iso(record['first_at'])}   trace {record.get('trace_id', '')}")
    for link in record.get("links", []):
        out.print(f"{link['type']:<10} trace {link['trace_id']} span {link['span_id']}")
    if record.get("tags"):
        out.print(f"tags       {escape(', '.join(record['tags']))}")
    for k, v in (record.get("meta") or {}).items():
        out.print(f"[dim]meta[/]       {escape(k)} = {escape(json.dumps(v, ensure_ascii=False, default=str))}")
    out.print()
    if not lines:
        out.print("[dim](no lines yet)[/]" if state == "running" else "[dim](no lines)[/]")
    start = start_ns(record)
    width = 11
    for line in lines:
        has_ns = start is not None and isinstance(line.get("ns"), int)
        offset = _offset(line["ns"], start).rjust(width) if has_ns else " " * width
        level = int(line.get("level") or 0)
        indent = "  " * level
        line_state = line.get("state") or "success"
        mark = STATE_MARK.get(line_state, " ") if line_state != "running" else " "
        message = _message(line)
        style = STATE_STYLE.get(line_state, "") if line_state != "success" else ""
        if line.get("type") == "raw":
            style = style or "dim"
        elif line.get("type") == "head":
            style = (style + " bold").strip()
        pad = " " * (width + 3) + indent
        text = styled(escape(message).replace("\n", "\n" + pad), style)
        suffix = ""
        if "duration" in line:
            suffix += f" [dim]({milliseconds(line['duration'])})[/]"
        if line.get("open"):
            running_for = f" for {elapsed(now.timestamp() - line['ns'] / 1e9)}" if isinstance(line.get("ns"), int) else ""
            suffix += f" [cyan]{STATE_MARK['running']} running{running_for}[/]"
        out.print(f"[dim]{offset}[/] {styled(mark, style if mark.strip() else '')} {indent}{text}{suffix}")


def _message(line: dict[str, Any]) -> str:
    message = str(line.get("message", ""))
    if line.get("type") == "media":
        size = line.get("size")
        sized = f"{size:,} bytes" if isinstance(size, int) else "size unknown"
        owner = f'result of "{line["step"]}": ' if line.get("step") else ""
        return f"[media] {owner}{message} ({sized}; --artifact {message})"
    through = line.get("through")
    if isinstance(through, list) and len(through) > 1:
        message += " (passed up through " + ", ".join(f'"{name}"' for name in through[1:]) + ")"
    return message.rstrip()
