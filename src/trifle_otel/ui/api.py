"""JSON under ``/api/``, in the command line's shapes:

- ``/api/executions?<filters>``        → ``{"records": [...], "next_cursor": ...}``
- ``/api/executions/<reference>``      → ``{"record": {...}, "lines": [...], "artifacts": [...]}``
  (``?offset=&limit=`` for a slice of the lines; ``total_lines`` tells how many there are)
- ``/api/running``                     → ``{"records": [...], "stuck": [references], "more": bool}``
- ``/api/stats/keys?from=&to=``        → ``{"keys": {name: tracks}}``
- ``/api/stats/<key>?granularity=&from=&to=[&expr=...]`` → ``{"at": [ISO 8601], "values": [...]}``
  plus ``"expressions": [{"text", "points", "total", "error"}]`` when ``expr`` is given.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..jsonutil import dumps
from ..stats.api import keys_in_use
from ..timeutil import iso, jsonable
from .catalog import pick_granularity
from .charts import evaluate
from .context import UI
from .filters import BadInput, ListFilter, int_param
from .pages import MAX_EXPRESSIONS, artifacts_of, granularity_param, stats_range


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json")




def _ui(request: Request) -> UI:
    return request.app.state.ui


def executions(request: Request) -> Response:
    ui = _ui(request)
    f = ListFilter.parse(request.query_params)
    page = ui.sources.index().search(f.query(ui.clock(), ui.config.stuck_after))
    return json_response({"records": [jsonable(r) for r in page.records], "next_cursor": page.next_cursor})


def execution(request: Request) -> Response:
    ui = _ui(request)
    record = ui.record(request.path_params["reference"])
    structure = ui.sources.structure(record)
    lines = structure.lines
    params = request.query_params
    offset = int_param(params, "offset", 0, 0, 10_000_000)
    limit = int_param(params, "limit", len(lines) or 1, 1, 10_000_000)
    return json_response({
        "record": jsonable(record),
        "lines": list(lines[offset:offset + limit]),
        "artifacts": artifacts_of(record, lines),
        "total_lines": len(lines),
    })


def running(request: Request) -> Response:
    ui = _ui(request)
    records, more = ui.running()
    stuck_at = ui.stuck_before(ui.clock())
    return json_response({
        "records": [jsonable(r) for r in records],
        "stuck": [r["reference"] for r in records if r["first_at"] < stuck_at],
        "more": more,
    })


def stats_keys(request: Request) -> Response:
    ui = _ui(request)
    _, _, since, until = stats_range(ui, request.query_params, "7d")
    g = pick_granularity(ui.config.granularities, since, until, max_points=60)
    return json_response({"keys": keys_in_use(ui.sources.stats(), since, until, g)})


def stats_values(request: Request) -> Response:
    ui = _ui(request)
    key = request.path_params["key"].strip("/")
    if not key or len(key) > 255:
        raise BadInput("a stat key is 1 to 255 characters")
    params = request.query_params
    _, _, since, until = stats_range(ui, params, "1d")
    g = granularity_param(ui, params, since, until)
    series = ui.sources.stats().values(key, since, until, g)
    payload: dict[str, Any] = {"at": [iso(a) for a in series["at"]], "values": series["values"]}
    expressions = [e.strip() for e in params.getlist("expr") if e.strip()][:MAX_EXPRESSIONS]
    if expressions:
        payload["expressions"] = [
            {"text": e.text, "points": e.points, "total": e.total, "error": e.error}
            for e in (evaluate(series, text) for text in expressions)
        ]
    return json_response(payload)
