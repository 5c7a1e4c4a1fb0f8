"""The UI in a real browser: Debian's Chromium driven by Playwright for Python.

Each page is screenshotted; with ``TRIFLE_UI_SCREENSHOTS=docs`` the screenshots are written
to ``docs/`` (the ones the README shows), else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from trifle_otel.config import Config
from ui_support import XSS, browser, hostile_jobs, run_jobs, serving, stats_history, stuck_export, tab  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def screenshot(page, name: str, tmp_path: Path, full_page: bool = False, readme: bool = True) -> Path:
    folder = DOCS if readme and os.environ.get("TRIFLE_UI_SCREENSHOTS") == "docs" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000  # a page, not a blank
    return path


@pytest.fixture(scope="module")
def demo_ui(demo_home, tmp_path_factory):
    """The demo's store (copied) plus a job stuck for two hours with two open steps."""
    home = tmp_path_factory.mktemp("browser-demo") / ".trifle"
    shutil.copytree(demo_home, home)
    # stuck after an hour: the export below (two hours) is stuck, the demo's job is not during the test run
    config = Config(home=str(home), ui_dashboards=str(ROOT / "examples" / "dashboards.yaml"), stuck_after=3600)
    now = datetime.now(timezone.utc)
    stuck = stuck_export(config, now)
    stats_history(config, now)
    with serving(config) as url:
        yield url, stuck


def api(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_the_list_shows_the_demo_and_filters_by_state(tab, demo_ui, tmp_path):
    url, _ = demo_ui
    page = tab.page
    page.goto(url + "/")
    rows = page.locator("table.executions tbody tr")
    assert rows.count() == 50
    keys = set(page.locator("td.key a").all_inner_texts())
    assert {"prices/calculate", "products/refresh"} <= keys
    screenshot(page, "ui-executions.png", tmp_path)

    page.check("input[name=state][value=error]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"state=error"))
    states = page.locator("table.executions tbody tr td:nth-child(2)").all_inner_texts()
    assert states and all(s.split() == ["✖", "error"] for s in states)  # an icon and the word
    # The count from the stats agrees with what the index lists (all of the demo is within a day).
    counted = page.locator(".summary a.count", has_text="error").first.locator("b").inner_text()
    assert int(counted) == len(states)


def test_an_execution_shows_nested_lines_a_result_a_download_and_a_waterfall(tab, demo_ui, tmp_path):
    url, _ = demo_ui
    records = api(url + "/api/executions?key=prices/calculate&limit=500")["records"]
    record = max(records, key=lambda r: (r["counters"]["types"]["media"], r["counters"]["max_level"]))
    assert record["counters"]["types"]["media"] and record["counters"]["max_level"] >= 1
    page = tab.page
    page.goto(f"{url}/executions/{record['reference']}")
    assert page.locator('.ln[data-level="0"]').count() and page.locator('.ln[data-level="1"]').count()
    assert page.locator(".ln.k-raw .msg").first.inner_text().startswith("↳ {")  # a result, as formatted JSON
    assert page.locator(".wf-row").count() >= 2
    screenshot(page, "ui-execution.png", tmp_path, full_page=True)

    link = page.locator("a.media").first
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == link.inner_text().replace("⬇", "").strip()
    assert Path(download.path()).stat().st_size > 102_400

    # Folding a step hides its content and its end line; unfolding shows them again.
    begin = page.locator(".ln.k-begin").filter(has=page.locator("button.fold")).first
    inside = page.locator(f'.ln[data-i="{int(begin.get_attribute("data-i")) + 1}"]')
    assert inside.is_visible()
    begin.locator("button.fold").click()
    assert inside.is_hidden() and begin.locator("button.fold").get_attribute("aria-expanded") == "false"
    page.click("button[data-fold=none]")
    assert inside.is_visible()


def test_the_stats_page_draws_charts(tab, demo_ui, tmp_path):
    url, _ = demo_ui
    page = tab.page
    page.goto(url + "/stats/prices/calculations?granularity=1m&from=90m&expr=" + quote("codes.OK / count * 100"))
    page.wait_for_selector(".plot[data-points] canvas")
    counts = [int(p.get_attribute("data-points") or 0) for p in page.locator(".plot[data-points]").all()]
    assert len(counts) >= 6 and counts[0] > 0 and sum(counts) > len(counts)
    assert page.locator(".plot canvas").count() == len(counts)
    page.goto(url + "/stats/prices/calculations?granularity=1h&from=1d&expr=" + quote("codes.OK / count * 100"))
    page.wait_for_selector(".plot[data-points] canvas")
    screenshot(page, "ui-stats.png", tmp_path)
    page.goto(url + "/stats")
    assert page.locator("a", has_text="prices/calculations/customer/acme").count() == 1
    page.goto(url + "/dashboards/customer")
    page.wait_for_selector(".plot[data-points] canvas")
    assert page.locator(".kpi").count() == 2
    screenshot(page, "ui-dashboard.png", tmp_path)


def test_the_running_page_lists_the_demos_job_and_the_stuck_one_first(tab, demo_ui, tmp_path):
    url, stuck = demo_ui
    page = tab.page
    page.goto(url + "/running")
    groups = page.locator("section.group")
    assert groups.count() == 1  # both are reports/nightly_export
    rows = groups.first.locator("tbody tr")
    assert rows.count() == 2 and "stuck" in rows.first.inner_text() and "Writing batch 7 of 12" in rows.first.inner_text()
    assert "stuck" not in rows.nth(1).inner_text()  # the demo's job has run for seconds only
    screenshot(page, "ui-running.png", tmp_path)
    page.click(f'a[href="/executions/{stuck["reference"]}"]')
    assert page.locator(".open-steps li").count() == 2
    assert page.locator(".wf-bar rect.open").count() == 2


def test_markup_from_spans_renders_as_text(tab, tmp_path):
    config = Config(home=str(tmp_path / "store"), tag_attributes=["customer.id"], skip_bare_producers=False,
                    flush_interval=0.05)
    run_jobs(config, hostile_jobs)
    page = tab.page
    with serving(config) as url:
        record = next(r for r in api(url + "/api/executions")["records"] if r["key"].startswith("xss/"))
        for path in ("/", f"/executions/{record['reference']}", "/stats", "/stats/" + quote(record["key"], safe="/"),
                     "/running", "/?tags=" + quote("<b>tag</b>")):
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            foreign = page.evaluate("[...document.scripts].filter(s => !s.src.includes('/static/')).length")
            assert foreign == 0, path
        page.goto(f"{url}/executions/{record['reference']}")
        page.click("details.exception summary")
        text = page.inner_text("body")
        for literal in (XSS, "<script>alert(4)</script>", "<img src=x onerror=alert(6)>", "<b>tag</b>",
                        '"html": "<script>alert(5)</script>"', "ValueError: <script>alert(8)</script>"):
            assert literal in text, literal
        assert page.locator("img").count() == 0 and page.locator("b", has_text="tag").count() == 0
        screenshot(page, "xss-execution.png", tmp_path, readme=False)
    assert tab.dialogs == []
