"""``stats values``, ``stats keys`` and ``rules check`` after a real demo run."""

from __future__ import annotations

import json
import re
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


def test_the_default_stat_and_the_rules_count_each_refresh_once(demo_home):
    records = list_json(demo_home, "--key", "products/refresh", "--limit", "1000")["records"]
    runs = len(records)
    assert runs > 0
    refresh = values(demo_home, "products/refresh")
    assert total(refresh, "count") == runs  # the default execution stat alone
    keys = json.loads(run("stats", "keys", "--home", str(demo_home), "--json").output)["keys"]
    per_reseller = [k for k in keys if k.startswith("products/refresh/reseller/")]
    assert sum(total(values(demo_home, k), "count") for k in per_reseller) == runs


def test_rules_check_warns_when_a_rule_counts_on_an_execution_key(demo_home, tmp_path):
    old = tmp_path / "rules.yaml"
    old.write_text(
        "rules:\n  - name: product refresh\n    where: ['name == \"run/catalog.refresh_products\"']\n"
        "    keys: [products/refresh]\n    values: {count: 1, products: {count: 'attributes[\"products.count\"]'}}\n"
    )
    result = run("rules", "check", str(old), "--home", str(demo_home))
    assert result.exit_code == 0
    assert ("warning: rule 'product refresh' tracks count on products/refresh, which is the key of executions in"
            in result.output)
    assert "count twice" in result.output
    # Not with the demo's own rules, nor without default stats.
    assert "warning" not in run("rules", "check", str(DEMO_RULES), "--home", str(demo_home)).output
    config = tmp_path / "trifle.yaml"
    config.write_text(f"store: {{home: {demo_home}}}\nstats: {{default_stats: false, rules: {old}}}\n")
    quiet = run("rules", "check", "--config", str(config))  # FILE defaults to the configured rules
    assert quiet.exit_code == 0 and "1 rule(s), all valid" in quiet.output and "warning" not in quiet.output


def test_rules_check_takes_the_store_options_and_needs_a_file(tmp_path):
    result = run("rules", "check", "--home", str(tmp_path))
    assert result.exit_code == 1 and "no rules file: give FILE, or set stats.rules" in result.output


def test_rules_check_shows_nil_conditions_with_and_without_the_attribute(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: with customer\n    where: ['attributes[\"customer.id\"] != nil']\n    keys: [with]\n    values: {count: 1}\n"
        "  - name: without customer\n    where: ['attributes[\"customer.id\"] == nil']\n    keys: [without]\n    values: {count: 1}\n"
    )
    span = tmp_path / "spans.json"
    span.write_text(json.dumps([{"name": "a", "attributes": {"customer.id": "acme"}}, {"name": "b", "attributes": {}}]))
    result = run("rules", "check", str(rules), "--span", str(span))
    assert result.exit_code == 0, result.output
    assert 'attributes["customer.id"] is set' in result.output and 'attributes["customer.id"] is not set' in result.output
    tracked = [l for l in result.output.splitlines() if l.startswith("span ")]
    assert tracked == ['span a → rule with customer: track(with, {"count": 1})',
                       'span b → rule without customer: track(without, {"count": 1})']
    rules.write_text("rules:\n  - name: typo\n    where: ['attributes[\"customer.id\"] != nill']\n    keys: [k]\n    values: {count: 1}\n")
    refused = run("rules", "check", str(rules))
    assert refused.exit_code == 1 and "unknown word 'nill'" in refused.output


def test_rules_check_explains_values_in_words():
    out = run("rules", "check", str(DEMO_RULES)).output
    assert '{"map"' not in out and '{"triple"' not in out  # no JSON dump of the spec
    lines = [" ".join(l.split()) for l in out.splitlines()]
    assert "values count +1" in lines
    assert 'codes.<attributes["result.code"]> +1' in lines
    assert "duration.sum + duration" in lines and "duration.square + duration squared" in lines
    assert any(l.startswith('margin.<bucket> +1 in the bucket of attributes["margin"]: lt_0, 0, 0_05') for l in lines)
    assert "at the span's end" in lines


# -- stats values at 100 columns --------------------------------------------------------------


def show(home, *args, columns="100"):
    result = CliRunner().invoke(main, ["stats", "values", "prices/calculations", "--home", str(home), *args],
                                env={"COLUMNS": columns}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_path_selects_the_values_of_the_table(demo_home):
    lines = show(demo_home, "-g", "1d", "--from", "2d", "--path", "codes.*")
    table = lines[2:lines.index(next(l for l in lines if l.startswith("codes.") and ":" in l))]
    header = table[0].split()
    assert header[0] in ("at", "value")
    names = header[1:] if header[0] == "at" else [l.split()[0] for l in table[1:]]
    assert names and all(n.startswith("codes.") for n in names)
    assert not any(l.split()[0] in ("count", "margin.0") for l in table)
    bad = CliRunner().invoke(main, ["stats", "values", "prices/calculations", "--path", "code.*", "--home", str(demo_home)])
    assert bad.exit_code == 1 and "--path 'code.*' names no value" in bad.output


def test_triples_show_as_count_mean_and_p95(demo_home):
    lines = show(demo_home, "-g", "1d", "--from", "2d", "--path", "duration", "--path", "count")
    text = "\n".join(lines)
    assert "duration count" in text and "duration mean" in text and "duration p95" in text
    assert "duration.square" not in text and "duration.sum" not in text
    assert "duration over the range: count" in text


def test_many_values_become_one_row_per_value_and_fit_100_columns(demo_home):
    lines = show(demo_home, "-g", "1h", "--from", "1d")
    assert all(len(l.rstrip()) <= 100 for l in lines), lines
    header = lines[2].split()
    assert header[0] == "value" and re.fullmatch(r"(\d\d-\d\d \d\d:\d\d ?)+", " ".join(header[1:])), header
    names = [l.split()[0] for l in lines[3:] if l and not l.startswith(("the ", "count:", "duration ", "offers "))]
    assert "price.distribution.400" in names and "codes.SUPPLIER_TIMEOUT" in names  # whole names
    assert any(l.startswith("the ") and "latest of 25 buckets" in l for l in lines)


def test_skip_blanks_leaves_out_empty_buckets(demo_home):
    full = show(demo_home, "-g", "1h", "--from", "1d", "--path", "count", "--json")
    skipped = show(demo_home, "-g", "1h", "--from", "1d", "--path", "count", "--json", "--skip-blanks")
    full, skipped = json.loads("\n".join(full)), json.loads("\n".join(skipped))
    assert len(full["at"]) == 25 and 1 <= len(skipped["at"]) <= 2
    assert all(v == {"count": v["count"]} for v in skipped["values"])  # --path picks the JSON values too


def test_stats_keys_has_a_header_and_says_granularity_and_range(demo_home):
    lines = run("stats", "keys", "--home", str(demo_home), "-g", "1h", "--from", "2h").output.splitlines()
    assert lines[0].startswith("Stat keys written in 1h buckets from ") and lines[0].endswith("(UTC)")
    assert lines[1] == f"read from sqlite://{demo_home / 'stats.db'}"
    assert lines[2].split() == ["tracks", "key"]
    assert any(l.split()[1:] == ["prices/calculations"] for l in lines[3:])
