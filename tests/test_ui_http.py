"""The UI over HTTP, served by uvicorn on 127.0.0.1: pages, the JSON API in the command
line's shapes, downloads, escaping, access, read-only, missing stores, `trifle-otel ui`."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from trifle_otel import trace
from trifle_otel.config import Config
from trifle_otel.errors import ConfigError
from trifle_otel.stores import open_data, open_index
from trifle_otel.ui.app import create_app
from ui_support import fetch, hostile_jobs, run_jobs, serving, stuck_export

BIN = Path(sys.executable).parent / "trifle-otel"


@pytest.fixture(scope="module")
def demo(demo_home, tmp_path_factory):
    """A copy of the demo's store (the demo itself is shared) and the UI over it."""
    home = tmp_path_factory.mktemp("ui-demo") / ".trifle"
    shutil.copytree(demo_home, home)
    config = Config(home=str(home), stuck_after=3600)  # the demo's running job stays unstuck during the test run
    with serving(config) as url:
        yield url, config


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-hostile") / ".trifle"
    config = Config(home=str(home), tag_attributes=["customer.id"], skip_bare_producers=False, flush_interval=0.05)
    run_jobs(config, hostile_jobs)
    with serving(config) as url:
        yield url, config


def get_json(url: str):
    status, headers, body = fetch(url)
    assert status == 200, body[:500]
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


def test_api_answers_in_the_command_lines_shapes(demo):
    url, _ = demo
    page = get_json(url + "/api/executions?limit=5")
    assert set(page) == {"records", "next_cursor"} and len(page["records"]) == 5 and page["next_cursor"]
    assert page["records"][0]["first_at"].endswith("Z")
    following = get_json(url + "/api/executions?limit=5&cursor=" + page["next_cursor"])["records"]
    assert not {r["reference"] for r in following} & {r["reference"] for r in page["records"]}
    errors = get_json(url + "/api/executions?state=error&limit=500")["records"]
    assert errors and {r["state"] for r in errors} == {"error"}
    acme = get_json(url + "/api/executions?tags=customer.id:acme&key=prices&limit=500")["records"]
    assert acme and all("customer.id:acme" in r["tags"] and r["key"].startswith("prices/") for r in acme)

    shown = get_json(url + "/api/executions/" + errors[0]["reference"][:16])
    assert {"record", "lines", "artifacts"} <= set(shown) and shown["record"]["reference"] == errors[0]["reference"]
    assert len(shown["lines"]) == shown["record"]["length"] == shown["total_lines"]
    sliced = get_json(url + "/api/executions/" + errors[0]["reference"] + "?offset=2&limit=3")
    assert sliced["lines"] == shown["lines"][2:5]

    values = get_json(url + "/api/stats/prices/calculations?granularity=1h&from=1d")
    assert set(values) == {"at", "values"} and values["at"][0].endswith("Z")
    assert sum(v.get("count", 0) for v in values["values"]) > 0
    with_expr = get_json(url + "/api/stats/prices/calculations?granularity=1h&from=1d&expr=" + quote("codes.OK / count * 100"))
    (expression,) = with_expr["expressions"]
    assert expression["error"] is None and 0 < expression["total"] <= 100
    assert "prices/calculate" in get_json(url + "/api/stats/keys")["keys"]
    running = get_json(url + "/api/running")
    assert [r["key"] for r in running["records"]] == ["reports/nightly_export"] and running["stuck"] == []


def test_pages_render_the_demo(demo):
    url, _ = demo
    status, headers, body = fetch(url + "/")
    html = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "prices/calculate" in html and "products/refresh" in html and 'rel="next"' in html
    assert re.search(r'<a class="count" href="/\?state=error">.*?<b>\d+</b>', html, re.S)  # counts from the stats
    status, _, body = fetch(url + "/?state=error&key=prices")
    table = body.decode().split("<table", 1)[1]
    assert status == 200 and table.count('class="state st-error"') >= 2 and "st-success" not in table
    for path in ("/running", "/stats", "/stats/prices/calculations?granularity=1m&from=2h", "/stats/prices/calculate"):
        status, _, body = fetch(url + path)
        assert status == 200, (path, body[:300])
    assert b"reports/nightly_export" in fetch(url + "/running")[2]
    stats_page = fetch(url + "/stats/prices/calculations?granularity=1h&expr=codes.OK+%2F+count+*+100")[2].decode()
    assert "codes.OK / count * 100" in stats_page and 'data-chart=' in stats_page and "p95" in stats_page


def test_an_execution_page_has_nested_lines_results_downloads_and_a_waterfall(demo):
    url, _ = demo
    records = get_json(url + "/api/executions?key=prices/calculate&limit=500")["records"]
    record = next(r for r in records if r["counters"]["types"]["media"])
    status, headers, body = fetch(f"{url}/executions/{record['reference'][:16]}")
    assert status == 200  # the prefix redirects to the full reference
    html = body.decode()
    assert 'data-level="1"' in html and 'class="ln l0 k-begin' in html and "wf-row" in html
    assert "↳ {" in html or "↳ [" in html
    name = re.search(r'<a class="media" download href="/executions/\w+/artifacts/([^"]+)"', html).group(1)
    status, headers, body = fetch(f"{url}/executions/{record['reference']}/artifacts/{name}")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == f'attachment; filename="{name}"'
    assert headers["x-content-type-options"] == "nosniff" and len(body) > 102_400
    for bad in ("data_1.json", "..%2F..%2Ftraces.db", "part_row_999.txt"):
        assert fetch(f"{url}/executions/{record['reference']}/artifacts/{bad}")[0] == 404
    assert fetch(url + "/executions/ffffffffffffffff")[0] == 404
    assert fetch(url + "/executions/not-a-reference!")[0] in (400, 404)


def test_span_strings_are_text_everywhere(hostile):
    url, config = hostile
    records = get_json(url + "/api/executions")["records"]
    consumer = next(r for r in records if r["key"].startswith("xss/"))
    producer = next(r for r in records if r["key"].startswith("scheduler/"))
    pages = ["/", f"/executions/{consumer['reference']}", f"/executions/{producer['reference']}", "/running", "/stats",
             "/stats/" + quote(consumer["key"], safe="/") + "?from=1h", "/?" + "tags=" + quote("<b>tag</b>")]
    for path in pages:
        status, _, body = fetch(url + path)
        html = body.decode()
        assert status == 200, (path, html[:300])
        for marker in ("<script>alert", "<img src=x", "<b>tag</b>", "<i>nightly</i>", "</pre><script>"):
            assert marker not in html, (path, marker)
    page = fetch(f"{url}/executions/{consumer['reference']}")[2].decode()
    for escaped in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;script&gt;alert(4)&lt;/script&gt;",
                    "&lt;img src=x onerror=alert(6)&gt;", "&lt;/pre&gt;&lt;script&gt;alert(7)&lt;/script&gt;",
                    "&lt;script&gt;alert(8)&lt;/script&gt;", "&lt;b&gt;tag&lt;/b&gt;", "&lt;script&gt;alert(3)&lt;/script&gt;"):
        assert escaped in page, escaped
    # The enqueue link leads to the producing execution, which is stored (skip_bare_producers: false).
    assert f'href="/executions/{producer["reference"]}"' in page
    assert "<script" not in fetch(url + "/stats/" + quote(consumer["key"], safe="/"))[2].decode().replace(
        '<script src="/static/', "")


def test_a_running_execution_shows_its_open_steps_and_is_stuck(tmp_path):
    config = Config(home=str(tmp_path / "store"), stuck_after=900)
    record = stuck_export(config, datetime.now(timezone.utc))
    with serving(config) as url:
        html = fetch(f"{url}/executions/{record['reference']}")[2].decode()
        assert "Open steps" in html and "Exporting orders" in html and "Writing batch 7 of 12" in html
        assert "st-stuck" in html and "so far" in html and "wf-bar" in html and 'class="bar open"' in html
        assert html.count("</span> open</span>") == 2  # both begin lines marked open
        running = fetch(url + "/running")[2].decode()
        assert "reports/nightly_export" in running and "Writing batch 7 of 12" in running and "stuck" in running
        assert get_json(url + "/api/running")["stuck"] == [record["reference"]]
        assert get_json(url + "/api/executions?stuck=1")["records"][0]["reference"] == record["reference"]


def test_access_is_checked_and_nothing_is_written(tmp_path):
    config = Config(home=str(tmp_path / "store"), ui_token="t0ken", ui_basic_auth="ops:pw")
    stuck_export(config, datetime.now(timezone.utc))
    with serving(config) as url:
        status, headers, _ = fetch(url + "/")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert fetch(url + "/static/app.js")[0] == 401
        assert fetch(url + "/", headers={"Authorization": "Bearer t0ken"})[0] == 200
        assert fetch(url + "/", headers={"Authorization": "Bearer wrong"})[0] == 401
        for user in ("ops:pw", "anyone:t0ken"):
            auth = "Basic " + base64.b64encode(user.encode()).decode()
            assert fetch(url + "/api/running", headers={"Authorization": auth})[0] == 200
        ok = {"Authorization": "Bearer t0ken"}
        for method in ("POST", "PUT", "DELETE"):
            assert fetch(url + "/api/executions", method=method, headers=ok)[0] == 405
        status, headers, _ = fetch(url + "/", headers=ok)
        assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
        # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) is refused.
        assert fetch(url + "/", headers={**ok, "Host": "attacker.example"})[0] == 421


def test_bad_input_is_answered_with_the_reason(demo):
    url, _ = demo
    status, _, body = fetch(url + "/?since=yesterday")
    assert status == 400 and b"&#39;since&#39; &#39;yesterday&#39; is not a time" in body
    status, _, body = fetch(url + "/api/executions?state=finished")
    assert status == 400 and "'state' must be one of" in json.loads(body)["error"]
    status, _, body = fetch(url + "/api/executions?cursor=garbage")
    assert status == 400 and "cursor" in json.loads(body)["error"]
    status, _, body = fetch(url + "/stats/prices/calculations?granularity=5m")
    assert status == 400 and b"1m, 1h, 1d" in body
    status, _, body = fetch(url + "/stats/prices/calculations?granularity=1m&from=30d")
    assert status == 400 and b"coarser granularity" in body
    assert fetch(url + "/nowhere")[0] == 404


def test_a_store_that_does_not_exist_is_reported_not_created(tmp_path):
    home = tmp_path / "nothing-here"
    with serving(Config(home=str(home))) as url:
        status, _, body = fetch(url + "/")
        assert status == 503 and b"there is no trace index at" in body and b"trifle-otel demo" in body
        status, _, body = fetch(url + "/api/stats/keys")
        assert status == 503 and "no stats store" in json.loads(body)["error"]
        assert fetch(url + "/running")[0] == 503
    assert not home.exists()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_dashboards_from_yaml(demo, tmp_path):
    """The example dashboards (the demo's price-calculation page: global, per customer, per reseller)."""
    _, base = demo
    example = Config(home=base.home, ui_dashboards=str(EXAMPLES / "dashboards.yaml"))
    with serving(example) as url:
        assert 'href="/dashboards/customer"' in fetch(url + "/stats")[2].decode()
        html = fetch(url + "/dashboards/price-calculations")[2].decode()
        calculations, ok_rate, revenue = re.findall(r'<p class="kpi">([^<]+)</p>', html)
        assert int(calculations) > 0 and ok_rate.endswith("%") and float(revenue.replace(",", "")) > 0
        assert html.count('class="plot"') == 2 and "LOW_MARGIN" in html
        acme = fetch(url + "/dashboards/customer?customer=acme")[2].decode()
        assert '<option value="acme" selected>' in acme and '<option value="globex">' in acme
        assert 0 < int(re.findall(r'<p class="kpi">([^<]+)</p>', acme)[0]) < int(calculations)
        assert '<option value="north"' in fetch(url + "/dashboards/reseller")[2].decode()
    file = tmp_path / "dashboards.yaml"
    file.write_text((EXAMPLES / "dashboards.yaml").read_text())
    config = Config(home=base.home, ui_dashboards=str(file))
    with serving(config) as url:
        file.write_text("dashboards:\n  - name: Broken\n    widgets: [{type: pie, key: k}]\n")
        status, _, body = fetch(url + "/dashboards/price-calculations")
        assert status == 400 and b"dashboard &#39;Broken&#39;: widget #1" in body
    with pytest.raises(ConfigError, match="dashboard 'Broken'"):
        create_app(config)  # refused when the UI starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ui_command_serves_and_reports_mistakes(demo):
    _, config = demo
    port = _free_port()
    proc = subprocess.Popen([str(BIN), "ui", "--home", config.home, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"trifle-otel UI on http://127.0.0.1:{port}/"), first + proc.stderr.read()
        deadline = time.monotonic() + 10
        while True:
            try:
                status, _, body = fetch(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert status == 200 and b"prices/calculate" in body
        busy = subprocess.run([str(BIN), "ui", "--home", config.home, "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1 and busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([str(BIN), "ui", "--listen", "4320"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: listen address '4320' is not HOST:PORT")


def _job_with_a_large_result(tracer):
    with tracer.start_as_current_span("run/catalog.export", attributes={"trifle.key": "catalog/export"}):
        with trace("Dumping catalogue") as step:
            step.result = [{"sku": f"S{i:06d}", "stock": i % 13} for i in range(5000)]


def test_the_ui_reads_every_backend_through_the_store_drivers(backend):
    run_jobs(backend, _job_with_a_large_result)
    config = Config(**{**backend.__dict__, "ui_trace_url": "https://ui.honeycomb.io/acme/environments/prod/trace?trace_id={trace_id}&span={span_id}"})
    with serving(config) as url:
        (record,) = get_json(url + "/api/executions")["records"]
        html = fetch(f"{url}/executions/{record['reference']}")[2].decode()
        assert "Dumping catalogue ↴" in html
        link = f"https://ui.honeycomb.io/acme/environments/prod/trace?trace_id={record['trace_id']}&amp;span={record['span_id']}"
        assert f'href="{link}" rel="noopener noreferrer"' in html
        name = re.search(r'<a class="media" download href="/executions/\w+/artifacts/([^"]+)"', html).group(1)
        status, headers, body = fetch(f"{url}/executions/{record['reference']}/artifacts/{name}")
        assert status == 200 and headers["content-disposition"].startswith("attachment") and json.loads(body.decode().removeprefix("↳ "))[4999]["sku"] == "S004999"
        values = get_json(url + "/api/stats/catalog/export?granularity=1h&from=1h")
        assert sum(v.get("count", 0) for v in values["values"]) == 1
        assert fetch(url + "/stats")[0] == 200 and b"catalog/export" in fetch(url + "/stats")[2]


def test_a_record_with_only_the_index_fields_still_shows(tmp_path):
    """Another writer (Trifle::Traces itself) leaves out what this one adds: ids, counters, links."""
    config = Config(home=str(tmp_path / "store"))
    now = datetime.now(timezone.utc)
    index, data = open_index(config.resolved_index_url()), open_data(config.resolved_data_url())
    index.upsert([{"reference": "legacy0001", "key": "legacy/job", "segments": ["legacy", "legacy/job"], "tags": [],
                   "state": "warning", "first_at": now, "last_at": now, "duration": 5, "parts": 1, "retention": 30,
                   "expires_at": now + timedelta(days=30)}])
    index.close()
    data.close()
    with serving(config) as url:
        assert b"legacy/job" in fetch(url + "/")[2]
        status, _, body = fetch(url + "/executions/legacy0001")
        assert status == 200 and b"data part 1 is missing" in body and b"st-warning" in body
        assert get_json(url + "/api/executions/legacy0001")["record"]["key"] == "legacy/job"
