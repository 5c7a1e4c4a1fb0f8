"""The HTML pages: executions, one execution, running, stats, dashboards.

Handlers are plain functions (Starlette runs them in its thread pool: the stores block).
Errors are raised as the project's exceptions and turned into pages by ``app.py``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import NotFoundError
from ..stores import TraceQuery
from ..timeutil import parse_time
from ..stats.api import keys_in_use
from .catalog import bucket_count, matches_prefix, pick_granularity, prefixes, state_counts
from .charts import charts_for, evaluate
from .context import UI
from .dashboards import fill_key, resolve_variables, widget_view
from .filters import BadInput, ListFilter, int_param, text_param
from .lines import open_steps, waterfall
from .sources import StoreMissing

LINES_PAGE = 500  # lines in the first screen of an execution, and per "more" request
MAX_BUCKETS = 2000
MAX_EXPRESSIONS = 10
RUNNING_COUNTED = 500  # running executions read to count those under the filtered key


def _ui(request: Request) -> UI:
    return request.app.state.ui


# -- executions ----------------------------------------------------------------------------


def executions(request: Request) -> HTMLResponse:
    ui = _ui(request)
    now = ui.clock()
    f = ListFilter.parse(request.query_params)
    page = ui.sources.index().search(f.query(now, ui.config.stuck_after))
    stuck_at = ui.stuck_before(now)
    rows = [_list_row(r, now, stuck_at) for r in page.records]
    summary = _state_summary(ui, f, now)
    try:
        trace_keys = ui.catalog.trace_keys()
    except StoreMissing:
        trace_keys = []
    suggestions = prefixes([*trace_keys, *(r["key"] for r in page.records)])
    return ui.render(request, "executions.html", filter=f, rows=rows, next_cursor=page.next_cursor,
                     summary=summary, suggestions=suggestions, states=("running", "success", "warning", "error"))


def _list_row(record: dict[str, Any], now: datetime, stuck_at: datetime) -> dict[str, Any]:
    running = record["state"] == "running"
    return {
        "record": record,
        "running": running,
        "stuck": running and record["first_at"] < stuck_at,
        "elapsed": (now - record["first_at"]).total_seconds() if running else None,
    }


def _state_summary(ui: UI, f: ListFilter, now: datetime) -> dict[str, Any]:
    """Executions per state in the filter's range, from the default execution stats."""
    since, until = f.range(now)
    label = None if since else "last 24 hours"
    since = since or now - timedelta(days=1)
    until = until or now
    summary: dict[str, Any] = {"since": since, "until": until, "label": label,
                               "partial": bool(f.tags or f.min_duration or f.stuck), "counts": None}
    try:
        stats = ui.sources.stats()
        g = pick_granularity(ui.config.granularities, since, until, max_points=400)
        keys = [k for k in ui.catalog.trace_keys() if matches_prefix(k, f.key)]
        summary["counts"] = state_counts(stats, keys, since, until, g)
        summary["granularity"] = g
    except StoreMissing as exc:
        summary["missing"] = str(exc)
    # The newest running executions by the state index (few by nature), matched to the key
    # here: a key-driven walk would read every execution of a big key to count none.
    running = ui.sources.index().search(TraceQuery(states=("running",), limit=RUNNING_COUNTED))
    summary["running"] = sum(1 for r in running.records if matches_prefix(r["key"], f.key))
    summary["running_more"] = running.next_cursor is not None
    return summary


# -- one execution -------------------------------------------------------------------------


def execution(request: Request) -> Response:
    ui = _ui(request)
    reference = request.path_params["reference"]
    record = ui.record(reference)
    if record["reference"] != reference:
        return RedirectResponse(request.url_for("execution", reference=record["reference"]), status_code=307)
    now = ui.clock()
    data_error, structure, rows, steps, more_steps, artifacts = None, None, [], [], 0, []
    running = record["state"] == "running"
    total_ms = (now - record["first_at"]).total_seconds() * 1000 if running else float(record.get("duration") or 0)
    try:
        structure = ui.sources.structure(record)
        rows = structure.rows(0, LINES_PAGE)
        steps, more_steps = waterfall(structure, total_ms, int(now.timestamp() * 1e9))
        artifacts = artifacts_of(record, structure.lines)
    except StoreMissing as exc:
        data_error = str(exc)
    opened = open_steps(record, structure, now.timestamp()) if structure is not None else []
    return ui.render(
        request, "execution.html",
        record=record, rows=rows, total_lines=len(structure.lines) if structure else 0,
        next_offset=LINES_PAGE, page_size=LINES_PAGE, steps=steps, more_steps=more_steps, total_ms=total_ms,
        open_steps=opened, artifacts=artifacts, links=ui.producer(record), data_error=data_error,
        trace_url=ui.trace_url(str(record.get("trace_id") or ""), str(record.get("span_id") or "")),
        running=running, stuck=running and record["first_at"] < ui.stuck_before(now),
        elapsed=(now - record["first_at"]).total_seconds() if running else None,
    )


def execution_lines(request: Request) -> HTMLResponse:
    """The next lines of an execution, as rows for the page to append."""
    ui = _ui(request)
    record = ui.record(request.path_params["reference"])
    offset = int_param(request.query_params, "offset", 0, 0, 10_000_000)
    limit = int_param(request.query_params, "limit", LINES_PAGE, 1, 5000)
    structure = ui.sources.structure(record)
    rows = structure.rows(offset, limit)
    following = offset + limit if offset + limit < len(structure.lines) else None
    return ui.render(request, "_lines.html", record=record, rows=rows, next_offset=following,
                     total_lines=len(structure.lines))


def artifacts_of(record: dict[str, Any], lines) -> list[dict[str, Any]]:
    out = [{"name": str(l["message"]), "size": l.get("size"), "where": f"line {i + 1}"}
           for i, l in enumerate(lines) if l.get("type") == "media"]
    for name, value in (record.get("meta") or {}).items():
        if isinstance(value, dict) and isinstance(value.get("artifact"), str):
            out.append({"name": value["artifact"], "size": value.get("size"), "where": f"meta {name}"})
    return out


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def artifact(request: Request) -> Response:
    """An artifact as a download: only names the execution refers to, never shown inline."""
    ui = _ui(request)
    record = ui.record(request.path_params["reference"])
    name = request.path_params["name"]
    known = {a["name"] for a in artifacts_of(record, ui.sources.structure(record).lines)}
    if name not in known:
        raise NotFoundError(f"execution {record['reference'][:16]} has no artifact {name[:80]!r}")
    body = ui.sources.artifact(record, name)
    if body is None:
        raise NotFoundError(f"artifact {name[:80]!r} is missing from the data store")
    filename = _SAFE_NAME.sub("_", name)[:120] or "artifact"
    return Response(body, media_type="application/octet-stream", headers={
        "content-disposition": f'attachment; filename="{filename}"',
        "x-content-type-options": "nosniff",
    })


# -- running -------------------------------------------------------------------------------


def running(request: Request) -> HTMLResponse:
    ui = _ui(request)
    now = ui.clock()
    stuck_at = ui.stuck_before(now)
    records, more = ui.running()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        steps = r.get("open_steps") if isinstance(r.get("open_steps"), list) else []
        innermost = steps[-1] if steps and isinstance(steps[-1], dict) else None
        at = innermost.get("at") if innermost else None
        groups.setdefault(r["key"], []).append({
            "record": r,
            "stuck": r["first_at"] < stuck_at,
            "elapsed": (now - r["first_at"]).total_seconds(),
            "step": str(innermost.get("name", "")) if innermost else None,
            "step_elapsed": now.timestamp() - at if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
            "depth": len(steps),
        })
    ordered = []
    for key, items in groups.items():
        items.sort(key=lambda i: (not i["stuck"], i["record"]["first_at"]))
        ordered.append({"key": key, "rows": items, "stuck": sum(1 for i in items if i["stuck"])})
    ordered.sort(key=lambda g: (g["stuck"] == 0, g["key"]))
    return ui.render(request, "running.html", groups=ordered, total=len(records), more=more,
                     stuck_total=sum(g["stuck"] for g in ordered))


# -- stats ---------------------------------------------------------------------------------


def stats_range(ui: UI, params, default_from: str) -> tuple[str, str, datetime, datetime]:
    now = ui.clock()
    since_text = text_param(params, "from", 40) or default_from
    until_text = text_param(params, "to", 40) or "now"
    since = parse_time(since_text, now=now, what="'from'")
    until = parse_time(until_text, now=now, what="'to'")
    if since > until:
        raise BadInput("'from' is after 'to'")
    return since_text, until_text, since, until


def granularity_param(ui: UI, params, since: datetime, until: datetime, default: str | None = None) -> str:
    g = text_param(params, "granularity", 10) or default or pick_granularity(ui.config.granularities, since, until, 120)
    if g not in ui.config.granularities:
        raise BadInput(f"'granularity' must be one the stats are kept in: {', '.join(ui.config.granularities)} (got {g!r})")
    if bucket_count(g, since, until) > MAX_BUCKETS:
        raise BadInput(f"{g} buckets over that range are more than {MAX_BUCKETS}: choose a coarser granularity or a shorter range")
    return g


def stats_index(request: Request) -> HTMLResponse:
    ui = _ui(request)
    since_text, until_text, since, until = stats_range(ui, request.query_params, "7d")
    stats = ui.sources.stats()
    g = pick_granularity(ui.config.granularities, since, until, max_points=60)
    keys = keys_in_use(stats, since, until, g)
    trace = set(ui.catalog.trace_keys())
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, count in keys.items():
        groups.setdefault(name.split("/", 1)[0], []).append({"name": name, "tracks": count, "trace": name in trace})
    return ui.render(request, "stats_index.html", groups=sorted(groups.items()), since_text=since_text,
                     until_text=until_text, since=since, until=until, granularity=g, total=len(keys))


def stats_key(request: Request) -> HTMLResponse:
    ui = _ui(request)
    key = request.path_params["key"].strip("/")
    if not key or len(key) > 255:
        raise BadInput("a stat key is 1 to 255 characters")
    params = request.query_params
    since_text, until_text, since, until = stats_range(ui, params, "1d")
    g = granularity_param(ui, params, since, until)
    expressions = [e.strip() for e in params.getlist("expr") if e.strip()][:MAX_EXPRESSIONS]
    series = ui.sources.stats().values(key, since, until, g)
    charts = charts_for(series)
    evaluated = [evaluate(series, e) for e in expressions]
    query = [("granularity", g), ("from", since_text), ("to", until_text)] + [("expr", e) for e in expressions]
    removals = [urlencode([(k, v) for k, v in query if (k, v) != ("expr", e)]) for e in expressions]
    return ui.render(
        request, "stats_key.html", key=key, charts=charts, expressions=evaluated, granularity=g,
        since_text=since_text, until_text=until_text, since=since, until=until,
        empty=not any(series["values"]), buckets=len(series["at"]),
        data_src=f"/api/stats/{_quote_key(key)}?{urlencode(query)}",
        removals=removals, time_zone=ui.config.time_zone,
        is_trace_key=key in set(ui.catalog.trace_keys()),
    )


def _quote_key(key: str) -> str:
    return quote(key, safe="/")


def dashboard(request: Request) -> HTMLResponse:
    ui = _ui(request)
    found = [d for d in ui.dashboards.get() if d.id == request.path_params["id"]]
    if not found:
        raise NotFoundError(f"no dashboard {request.path_params['id'][:64]!r}: the dashboards are listed on /stats")
    d = found[0]
    params = request.query_params
    since_text, until_text, since, until = stats_range(ui, params, d.range)
    g = granularity_param(ui, params, since, until, default=d.granularity if "granularity" not in params else None)
    chosen = {v.name: text_param(params, v.name) for v in d.variables}
    keys = [k.name for k in ui.catalog.keys()] if any(v.from_keys for v in d.variables) else []
    variables = resolve_variables(d, keys, chosen)
    stats = ui.sources.stats()
    cache: dict[str, dict[str, list]] = {}
    widgets = []
    base = [("granularity", g), ("from", since_text), ("to", until_text)]
    for w in d.widgets:
        key = fill_key(w.key, variables)
        if key is None:
            widgets.append({"type": w.type, "title": w.title, "key": w.key, "error": "no value for its variables"})
            continue
        if key not in cache:
            cache[key] = stats.values(key, since, until, g)
        view = widget_view(w, key, cache[key])
        view["data_src"] = f"/api/stats/{_quote_key(key)}?{urlencode(base)}"
        view["link"] = f"/stats/{_quote_key(key)}?{urlencode(base)}"
        widgets.append(view)
    return ui.render(request, "dashboard.html", dashboard=d, widgets=widgets, variables=variables, granularity=g,
                     since_text=since_text, until_text=until_text, since=since, until=until,
                     time_zone=ui.config.time_zone)
