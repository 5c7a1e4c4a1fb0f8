"""The trifle-otel command: demo, traces list/show, JSON shapes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trifle_otel.cli import main

BIN = Path(sys.executable).parent / "trifle-otel"


def run(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def list_json(home, *args):
    result = run("traces", "list", "--json", "--home", str(home), *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_demo_writes_success_warning_error_and_running_executions(demo_home):
    out = list_json(demo_home, "--limit", "1000")
    assert set(out) == {"records", "next_cursor"} and out["next_cursor"] is None
    states = {r["state"] for r in out["records"]}
    assert {"success", "warning", "error", "running"} <= states
    keys = {r["key"] for r in out["records"]}
    assert keys == {"prices/calculate", "products/refresh", "reports/nightly_export"}
    r = out["records"][0]
    assert r["first_at"].endswith("Z") and isinstance(r["duration"], int)


def test_show_a_calculation_with_nested_lines_raw_results_and_a_media_line(demo_home):
    records = list_json(demo_home, "--key", "prices/calculate", "--limit", "1000")["records"]
    with_media = [r for r in records if r["counters"]["types"]["media"]]
    assert with_media, "the demo stores one large payload as an artifact"
    result = run("traces", "show", with_media[0]["reference"][:16], "--json", "--home", str(demo_home))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert set(shown) >= {"record", "lines"}
    lines = shown["lines"]
    assert max(l["level"] for l in lines) >= 1
    assert any(l["type"] == "raw" and l["message"].startswith("↳ ") for l in lines)
    media = [l for l in lines if l["type"] == "media"]
    assert media and media[0]["size"] > 102_400
    body = run("traces", "show", shown["record"]["reference"], "--artifact", media[0]["message"], "--home", str(demo_home))
    assert body.exit_code == 0 and len(body.output.encode()) == media[0]["size"]

    deep = max(records, key=lambda r: r["counters"]["max_level"])
    assert deep["counters"]["max_level"] >= 1
    text = run("traces", "show", deep["reference"], "--home", str(demo_home)).output
    assert "Computing margin ↴" in text or "Fetching offers from" in text
    assert "↳" in text


def test_list_filters_and_table(demo_home):
    errors = list_json(demo_home, "--state", "error", "--limit", "1000")["records"]
    assert errors and all(r["state"] == "error" for r in errors)
    acme = list_json(demo_home, "--tag", "customer.id:acme", "--limit", "1000")["records"]
    assert acme and all("customer.id:acme" in r["tags"] for r in acme)
    page = list_json(demo_home, "--limit", "5")
    assert len(page["records"]) == 5 and page["next_cursor"]
    following = list_json(demo_home, "--limit", "5", "--cursor", page["next_cursor"])["records"]
    assert not {r["reference"] for r in following} & {r["reference"] for r in page["records"]}
    table = run("traces", "list", "--home", str(demo_home), "--key", "products")
    assert table.exit_code == 0 and "products/refresh" in table.output
    slow = list_json(demo_home, "--min-duration", "20", "--limit", "1000")["records"]
    assert all(r["duration"] >= 20 for r in slow)
    assert list_json(demo_home, "--since", "2000-01-01T00:00:00Z", "--until", "1h")["records"] == []


def test_unknown_reference(tmp_path):
    assert run("setup", "--home", str(tmp_path)).exit_code == 0
    result = run("traces", "show", "deadbeef", "--home", str(tmp_path))
    assert result.exit_code == 1
    assert "no execution with reference 'deadbeef'" in result.output and "traces list" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--index-url", "postgres://x/y"], "trace index URL 'postgres://x/y' is not supported"),
        (["--since", "yesterday-ish"], "--since 'yesterday-ish' is not a time"),
        (["--cursor", "%%%"], "cursor '%%%' is not valid"),
        (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = run("traces", "list", "--home", str(tmp_path), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_unwritable_store_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("setup", "--home", str(blocker / "store"))
    assert result.exit_code == 1
    assert "cannot open the trace index database" in result.output and "writable" in result.output


def test_console_script_reports_errors_without_traceback(tmp_path):
    assert run("setup", "--home", str(tmp_path)).exit_code == 0
    proc = subprocess.run([str(BIN), "traces", "show", "nope", "--home", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no execution with reference 'nope'")


@pytest.mark.parametrize("args, message", [
    (["traces", "list", "--since", "99999999999d"], "is too far back"),
    (["stats", "values", "k", "--from", "2000000000d"], "is too far back"),
])
def test_absurd_times_are_clear_errors(tmp_path, args, message):
    result = run(*args, "--home", str(tmp_path))
    assert result.exit_code == 1 and message in result.output


def test_rules_check_span_file_errors(tmp_path):
    from trifle_otel.demo import DEMO_RULES

    span = tmp_path / "span.json"
    span.write_text(json.dumps({"name": "x", "attributes": [1, 2]}))
    result = run("rules", "check", str(DEMO_RULES), "--span", str(span))
    assert result.exit_code == 1 and '"attributes" is an object' in result.output
    span.write_text("{not json")
    result = run("rules", "check", str(DEMO_RULES), "--span", str(span))
    assert result.exit_code == 1 and "is not valid JSON" in result.output


def test_setup_prepares_the_embedded_store_and_says_what_it_did(tmp_path):
    result = run("setup", "--home", str(tmp_path))
    assert result.exit_code == 0, result.output
    for expected in ("trace index", "table trifle_traces", "index trifle_traces_first_at", "trace data",
                     "stats (full identifiers)", "index idx_trifle_stats_key"):
        assert expected in result.output
    assert run("setup", "--home", str(tmp_path)).exit_code == 0  # idempotent


def test_command_modules_use_the_output_module_not_each_other():
    """No import circle: command modules import options, output and reading, never another
    command module or a private helper; only main.py gathers the commands."""
    import ast

    import trifle_otel.cli as cli

    commands = {"main", "traces", "stats", "rules", "demo", "setup"}
    folder = Path(cli.__file__).parent
    for module in folder.glob("*.py"):
        if module.name in ("__init__.py", "main.py"):
            continue
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = {node.module} if node.module else {a.name for a in node.names}
                assert not names & commands, f"{module.name} imports {names & commands}"
                assert not [a.name for a in node.names if a.name.startswith("_")], f"{module.name} imports a private name"
    output = (folder / "output.py").read_text()
    assert "def console(" in output and "def dump(" in output
