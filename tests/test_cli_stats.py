"""``stats values``, ``stats keys`` and ``rules check`` after a real demo run."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from test_cli import list_json

from trifle_otel.cli import main
from trifle_otel.demo import DEMO_RULES


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def values(home, key, *extra):
    result = run("stats", "values", key, "--granularity", "1d", "--from", "2d", "--home", str(home), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def total(series, path):
    out = 0
    for v in series["values"]:
        node = v
        for part in path.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        out += node if isinstance(node, (int, float)) else 0
    return out


def test_stats_match_the_executions_the_demo_wrote(demo_home):
    records = list_json(demo_home, "--limit", "1000")["records"]
    calc = [r for r in records if r["key"] == "prices/calculate"]
    series = values(demo_home, "prices/calculations")
    assert set(series) == {"at", "values"} and series["at"][-1].endswith("Z")
    # Every run counts, including ignored ones (whose traces are not stored).
    assert total(series, "count") == len(calc) + total(series, "states.ignored")
    assert total(series, "states.error") == sum(1 for r in calc if r["state"] == "error")
    assert total(series, "states.warning") == sum(1 for r in calc if r["state"] == "warning")
    assert total(series, "codes.INACTIVE") == total(series, "states.ignored") == total(values(demo_home, "prices/skipped"), "count")
    # The global key is the sum over the per-customer keys and over the per-reseller keys.
    keys = json.loads(run("stats", "keys", "--home", str(demo_home), "--json").output)["keys"]
    customers = [k for k in keys if k.startswith("prices/calculations/customer/")]
    resellers = [k for k in keys if k.startswith("prices/calculations/reseller/")]
    assert len(customers) == 5 and len(resellers) == 3
    assert sum(total(values(demo_home, k), "count") for k in customers) == total(series, "count")
    assert sum(total(values(demo_home, k), "count") for k in resellers) == total(series, "count")
    # The default execution stat on the trace key counts stored executions.
    default = values(demo_home, "prices/calculate")
    assert total(default, "count") == len(calc)
    assert total(default, "duration.count") == len(calc)
    assert total(default, "entries.count") == sum(r["length"] for r in calc)
    refresh = values(demo_home, "products/refresh")
    assert total(refresh, "products.count") == total(refresh, "products.success") + total(refresh, "products.failure") > 0


def test_stats_table_and_chart(demo_home):
    result = run("stats", "values", "prices/calculations", "-g", "1h", "--from", "2h", "--home", str(demo_home))
    assert result.exit_code == 0
    assert "codes.OK" in result.output and "count:" in result.output and "p95" in result.output


def test_stats_sqlite_rows_are_plain_trifle_rows(demo_home):
    conn = sqlite3.connect(demo_home / "stats.db")
    keys = [k for (k,) in conn.execute("SELECT key FROM trifle_stats")]
    assert all(len(k.split("::")) == 3 for k in keys)
    assert any(k.startswith("__system__key__::1mo::") for k in keys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["k", "--granularity", "5x"], "granularity '5x' is not valid"),
        (["k", "--from", "now", "--to", "1d"], "--from"),
        (["k", "--stats-url", "redis://x"], "stats store URL 'redis://x' is not supported"),
    ],
)
def test_stats_bad_input(tmp_path, args, message):
    result = run("stats", "values", *args, "--home", str(tmp_path))
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_rules_check_explains_and_evaluates_a_span(tmp_path):
    span = tmp_path / "span.json"
    span.write_text(json.dumps({
        "name": "run/pricing.calculate_price", "duration": 120, "status": "ok",
        "attributes": {"customer.id": "acme", "reseller.id": "north", "result.code": "OK", "price": 300, "margin": 0.07},
        "execution": {"state": "success"},
    }))
    result = run("rules", "check", str(DEMO_RULES), "--span", str(span))
    assert result.exit_code == 0, result.output
    assert "5 rule(s), all valid" in result.output
    assert "price calculations" in result.output and 'name == "run/pricing.calculate_price"' in result.output
    assert "track(prices/calculations/customer/acme" in result.output
    assert '"codes": {"OK": 1}' in result.output and '"margin": {"0_05": 1}' in result.output


def test_rules_check_refuses_a_broken_file(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: totals\n    keys: [t]\n    values: {count: 'attributes[\"x\"'}\n")
    result = run("rules", "check", str(bad))
    assert result.exit_code == 1
    assert "rule 'totals'" in result.output and "Traceback" not in result.output
