"""The UI's pure parts: lines into rows and a waterfall, charts from a series, expressions,
the URL filter, dashboards files, granularity choice, access checks."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from starlette.datastructures import QueryParams

from trifle_otel.config import Config, load_config
from trifle_otel.errors import ConfigError
from trifle_otel.ui.auth import Credentials
from trifle_otel.ui.catalog import pick_granularity, prefixes
from trifle_otel.ui.charts import bucket_label, charts_for, evaluate, parse_expression
from trifle_otel.ui.dashboards import fill_key, parse_dashboards, resolve_variables, widget_view
from trifle_otel.ui.filters import ListFilter
from trifle_otel.ui.lines import Structure, open_steps, waterfall
from trifle_otel.ui.server import parse_listen

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
NS = int(T0.timestamp()) * 1_000_000_000


def line(ms, message, level=0, state="success", kind="text", **extra):
    return {"at": int(T0.timestamp() + ms / 1000), "message": message, "state": state, "type": kind,
            "level": level, "ns": NS + int(ms * 1e6), **extra}


LINES = [
    line(1, "Fetching ↴", 0, span_id="a"),
    line(2, "Fetching from ingram ↴", 1, span_id="b"),
    line(9, "Fetching from ingram ↵", 1, span_id="b", duration=7.0),
    line(9, '↳ [{"cost": 10}]', 1, kind="raw"),
    line(10, "TimeoutError: no answer", 1, state="error"),
    line(10, "Traceback (most recent call last):\n  ...", 1, state="error", kind="raw"),
    line(12, "Fetching ↵", 0, state="error", span_id="a", duration=11.0),
    line(13, "part_row_8.txt", 0, kind="media", size=200_000),
    line(14, "Margin under 3%", 0, state="warning"),
]


def test_rows_mark_steps_results_exceptions_and_media():
    rows = Structure.of(LINES, T0).rows()
    kinds = [r.kind for r in rows]
    assert kinds == ["begin", "begin", "end", "raw", "exception", "end", "media", "text"]
    begin = rows[0]
    assert begin.duration == 11.0 and begin.state == "error" and not begin.open  # from its end line
    assert rows[1].level == 1 and rows[1].offset_ms == pytest.approx(2.0)
    raw = rows[3]
    assert raw.result and raw.body == '[\n  {\n    "cost": 10\n  }\n]'
    exception = rows[4]
    assert exception.message == "TimeoutError: no answer" and exception.body.startswith("Traceback")
    assert rows[6].size == 200_000 and rows[7].state == "warning"


def test_a_slice_starting_at_a_stack_does_not_show_it_twice():
    structure = Structure.of(LINES, T0)
    first = structure.rows(0, 5)  # ends on the exception line: its stack joins it
    assert first[-1].kind == "exception" and first[-1].body
    following = structure.rows(5, 10)
    assert [r.index for r in following] == [6, 7, 8]


def test_open_steps_come_from_the_record_or_from_begin_lines_without_an_end():
    lines = [line(1, "Exporting ↴", 0, span_id="x", open=True), line(2, "Writing batch 3 ↴", 1, span_id="y", open=True)]
    structure = Structure.of(lines, T0)
    now = T0.timestamp() + 125
    derived = open_steps({"state": "running"}, structure, now)
    assert [(s.name, s.level) for s in derived] == [("Exporting", 0), ("Writing batch 3", 1)]
    assert derived[1].elapsed == pytest.approx(125 - 0.002)
    listed = open_steps({"state": "running", "open_steps": [
        {"name": "Exporting", "span_id": "x", "at": T0.timestamp(), "level": 0}]}, structure, now)
    assert [(s.name, s.elapsed) for s in listed] == [("Exporting", 125)]
    rows = structure.rows()
    assert rows[0].open and rows[0].duration is None
    steps, more = waterfall(structure, total_ms=125_000, now_ns=int(now * 1e9))
    assert more == 0 and all(s.open for s in steps) and steps[0].duration_ms == pytest.approx(124_999, abs=1)


def test_waterfall_places_steps_and_caps_their_number():
    structure = Structure.of(LINES, T0)
    steps, more = waterfall(structure, total_ms=20.0, now_ns=NS)
    assert [(s.name, s.state) for s in steps] == [("Fetching", "error"), ("Fetching from ingram", "success")]
    assert steps[0].left == pytest.approx(5.0) and steps[0].width == pytest.approx(55.0)
    many = [line(i, f"step {i} ↴", 0, span_id=f"s{i}") for i in range(10)]
    steps, more = waterfall(Structure.of(many, T0), total_ms=10, now_ns=NS + 10_000_000, limit=4)
    assert len(steps) == 4 and more == 6


SERIES = {
    "at": [T0, T0 + timedelta(hours=1)],
    "values": [
        {"count": 3, "states": {"success": 2, "error": 1}, "duration": {"count": 3, "sum": 30, "square": 350},
         "margin": {"lt_0": 1, "0": 1, "0_05": 1}, "products": {"count": 40, "failure": 2},
         "codes": {"OK": 2, "NO_OFFERS": 1}},
        {"count": 1, "states": {"success": 1}, "duration": {"count": 1, "sum": 20, "square": 400},
         "margin": {"0_05": 1}, "products": {"count": 10, "failure": 0}, "codes": {"OK": 1}},
    ],
}


def test_charts_read_the_shape_of_the_values():
    charts = {c.title: c for c in charts_for(SERIES)}
    assert charts["count"].kind == "line"
    assert charts["states"].kind == "stacked" and charts["states"].table[0] == ("success", 3.0, 75.0)
    assert charts["duration: mean and p95"].kind == "triple"
    summary = charts["duration: mean and p95"].summary
    assert summary["count"] == 4 and summary["mean"] == pytest.approx(12.5)
    margin = charts["margin"]
    assert margin.kind == "distribution" and margin.paths == ["margin.lt_0", "margin.0", "margin.0_05"]
    assert [row[0] for row in margin.table] == ["< 0", "≥ 0", "≥ 0.05"]
    assert charts["products"].kind == "lines"  # a total among them: not stacked
    assert bucket_label("ge_1600") == "≥ 1600"


def test_expressions_over_paths_per_bucket_and_over_the_range():
    assert parse_expression("codes.OK / count * 100") == ("v0 / v1 * 100", ["codes.OK", "count"])
    assert parse_expression("`codes.tech-data` + sqrt(count)") == ("v0 + sqrt(v1)", ["codes.tech-data", "count"])
    result = evaluate(SERIES, "codes.OK / count * 100")
    assert result.error is None and result.points == [pytest.approx(66.666, 0.001), 100.0]
    assert result.total == 75.0
    assert evaluate(SERIES, "codes.MISSING / count").points == [None, None]
    broken = evaluate(SERIES, "count /")
    assert broken.error and "count /" in broken.error
    assert "__import__" in evaluate(SERIES, "__import__('os')").error  # refused, never run


def test_the_list_filter_round_trips_through_the_url_and_refuses_bad_values():
    params = QueryParams("key=prices/&state=error&state=warning&tags=customer.id:acme, vip&tags_mode=any"
                         "&since=2h&min_duration=500&stuck=1")
    f = ListFilter.parse(params)
    assert f.key == "prices" and f.states == ("error", "warning") and f.tags == ("customer.id:acme", "vip")
    assert ListFilter.parse(QueryParams(f.params())) == f
    now = datetime.now(timezone.utc)
    q = f.query(now, stuck_after=900)
    assert q.tags_any == ("customer.id:acme", "vip") and q.tags_all == () and q.min_duration == 500
    assert q.stuck_before == now - timedelta(seconds=900) and abs((now - q.since).total_seconds() - 7200) < 1
    for bad, field in [("state=done", "'state'"), ("since=yesterday", "'since'"), ("min_duration=-3", "min_duration"),
                       ("limit=100000", "'limit'"), ("key=" + "k" * 300, "'key'"), ("tags_mode=some", "tags_mode")]:
        with pytest.raises(ConfigError, match=field):  # BadInput is one: both answer 400
            ListFilter.parse(QueryParams(bad))


DASHBOARDS = {
    "dashboards": [{
        "name": "Price calculations",
        "variables": {"customer": {"from_keys": "prices/calculations/customer/{customer}"}},
        "widgets": [
            {"type": "kpi", "title": "Calculations", "key": "prices/calculations/customer/{customer}", "value": "count"},
            {"type": "kpi", "title": "OK rate", "key": "prices/calculations", "expression": "codes.OK / count * 100", "unit": "%"},
            {"type": "timeseries", "key": "prices/calculations", "paths": ["states.*"], "stacked": True},
            {"type": "timeseries", "key": "prices/calculations", "triple": "duration"},
            {"type": "category", "key": "prices/calculations", "path": "codes.*"},
        ],
    }]
}


def test_dashboards_load_resolve_variables_and_compute_widgets():
    (d,) = parse_dashboards(DASHBOARDS, "dashboards file x.yaml")
    assert d.id == "price-calculations" and [w.type for w in d.widgets] == ["kpi", "kpi", "timeseries", "timeseries", "category"]
    keys = ["prices/calculations", "prices/calculations/customer/acme", "prices/calculations/customer/globex"]
    variables = resolve_variables(d, keys, {"customer": "globex"})
    assert variables["customer"] == {"values": ["acme", "globex"], "value": "globex"}
    assert resolve_variables(d, keys, {"customer": "<evil>"})["customer"]["value"] == "acme"
    assert fill_key(d.widgets[0].key, variables) == "prices/calculations/customer/globex"
    views = [widget_view(w, "k", SERIES) for w in d.widgets]
    assert views[0]["text"] == "4" and views[1]["text"] == "75%"
    assert views[2]["chart"] == {"title": "prices/calculations", "kind": "stacked", "paths": ["states.success", "states.error"]}
    assert views[3]["chart"]["kind"] == "triple"
    assert views[4]["rows"][0] == ("OK", 3.0, 75.0)


@pytest.mark.parametrize("change, message", [
    ({"widgets": [{"type": "pie", "key": "k"}]}, "'type' must be one of timeseries, category, kpi"),
    ({"widgets": [{"type": "kpi", "key": "k", "expression": "count +"}]}, "widget #1: expression 'count +' is not valid"),
    ({"widgets": [{"type": "kpi", "key": "a/{reseller}", "value": "count"}]}, "uses {reseller}, which is not among"),
    ({"widgets": [{"type": "category", "key": "k", "path": "codes.*", "colour": "red"}]}, "unknown setting 'colour'"),
    ({"granularity": "1 hour"}, "granularity '1 hour' is not valid"),
    ({"refresh": 10}, "unknown setting 'refresh'"),
])
def test_dashboard_mistakes_name_the_dashboard_and_widget(change, message):
    data = {"dashboards": [{"name": "Ops", "widgets": [{"type": "kpi", "key": "k", "value": "count"}], **change}]}
    with pytest.raises(ConfigError, match="dashboard 'Ops'") as info:
        parse_dashboards(data, "dashboards file d.yaml")
    assert message in str(info.value)


def test_granularity_fits_the_range_from_the_configured_list():
    g = Config().granularities
    assert pick_granularity(g, T0, T0 + timedelta(hours=2), 200) == "1m"
    assert pick_granularity(g, T0, T0 + timedelta(days=3), 200) == "1h"
    assert pick_granularity(g, T0, T0 + timedelta(days=90), 200) == "1d"
    assert pick_granularity(["1h", "1d"], T0, T0 + timedelta(minutes=5), 200) == "1h"
    assert prefixes(["prices/calculate", "products/refresh"]) == ["prices", "prices/calculate", "products", "products/refresh"]


def test_credentials_accept_the_token_as_bearer_or_as_a_basic_password():
    token = Credentials("s3cret", None)
    basic = lambda text: "Basic " + base64.b64encode(text.encode()).decode()  # noqa: E731
    assert token.accepts("Bearer s3cret") and token.accepts(basic("anyone:s3cret"))
    assert not token.accepts("Bearer s3cre") and not token.accepts("") and not token.accepts("Basic %%%")
    both = Credentials(None, "ops:pa:ss")
    assert both.accepts(basic("ops:pa:ss")) and not both.accepts(basic("ops:pa")) and not both.accepts("Bearer pa:ss")
    assert not Credentials(None, None).required


def test_listen_addresses_and_the_ui_config_section(tmp_path, monkeypatch):
    assert parse_listen("127.0.0.1:4320") == ("127.0.0.1", 4320)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("4320", "localhost", "host:http", ":4320", "h:70000"):
        with pytest.raises(ConfigError, match="listen address"):
            parse_listen(bad)
    file = tmp_path / "trifle.yaml"
    file.write_text("ui:\n  listen: 0.0.0.0:9000\n  dashboards: dash.yaml\n  basic_auth: ops:${UI_PASSWORD}\n"
                    "  trace_url: https://ui.honeycomb.io/t/environments/e/trace?trace_id={trace_id}\n")
    monkeypatch.setenv("UI_PASSWORD", "pw")
    config = load_config(file, environ={})
    assert config.ui_listen == "0.0.0.0:9000" and config.ui_basic_auth == "ops:pw"
    assert config.ui_dashboards == str(tmp_path / "dash.yaml")  # relative to the file
    file.write_text("ui:\n  basic_auth: nocolon\n")
    with pytest.raises(ConfigError, match="'ui.basic_auth' must be 'user:password'"):
        load_config(file, environ={})
    file.write_text("ui:\n  trace_url: javascript:alert(1)\n")
    with pytest.raises(ConfigError, match="'ui.trace_url' must be an http"):
        load_config(file, environ={})
