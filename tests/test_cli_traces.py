"""``traces list|show`` as a user reads them: running and stuck jobs, ambiguous references,
stores that do not exist, narrow terminals, pipes, and the options before the command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_span

from trifle_otel.cli import main
from trifle_otel.config import Config
from trifle_otel.model import Execution
from trifle_otel.sinks import TraceSink
from trifle_otel.stores import open_data, open_index
from trifle_otel.translate import Document, Translator, counters_of

BIN = Path(sys.executable).parent / "trifle-otel"


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


def line(at: datetime, message: str, level: int, state: str = "success", kind: str = "text", **extra):
    return {"at": int(at.timestamp()), "message": message, "state": state, "type": kind, "level": level,
            "ns": ns(at), **extra}


def store(home: Path, *, reference: str, key: str, first_at: datetime, state: str = "success", duration: int = 24,
          lines: list | None = None, **fields) -> dict:
    """Write one execution into a real embedded store (index record + data part)."""
    config = Config(home=str(home))
    root = make_span("run/" + key, 0, 5, attributes={"trifle.key": key})
    record = Translator(config).translate(Execution(root), now_ns=root.end_ns).record
    lines = lines or []
    record.update(
        reference=reference, first_at=first_at, start_ns=fields.pop("start_ns", ns(first_at)),
        last_at=first_at + timedelta(milliseconds=duration),
        expires_at=first_at + timedelta(days=30), state=state, duration=duration, length=len(lines),
        parts=1 if lines else 0, counters=counters_of(lines), **fields,
    )
    sink = TraceSink(open_index(config.resolved_index_url()), open_data(config.resolved_data_url()))
    sink.write([Document(record, lines, [lines] if lines else [])])
    sink.index.close()
    return record


# -- item 3: a stuck job can be seen into ----------------------------------------------------


@pytest.fixture
def running_job(tmp_path):
    """A report job running for 9m12s, inside "Exporting orders" since 2m ago, whose last live
    write (duration 448 ms) was long before now."""
    home = tmp_path / "store"
    now = datetime.now(timezone.utc)
    started = now - timedelta(seconds=552)
    step_at = now - timedelta(seconds=120)
    lines = [
        line(started + timedelta(milliseconds=2), "Loading orders ↴", 0, span_id="aa01"),
        line(started + timedelta(milliseconds=300), "Loading orders ↵", 0, span_id="aa01", duration=298.0),
        line(step_at, "Exporting orders ↴", 0, span_id="aa02", open=True),
        line(step_at + timedelta(seconds=1), "Writing batch 1 ↴", 1, span_id="aa03"),
        line(step_at + timedelta(seconds=2), "Writing batch 1 ↵", 1, span_id="aa03", duration=1000.0),
    ]
    store(home, reference="c9c173345176525b" + "0" * 32, key="reports/nightly_export", first_at=started,
          state="running", duration=448, lines=lines,
          open_steps=[{"name": "Exporting orders", "span_id": "aa02", "at": step_at.timestamp(), "level": 0}])
    return home, step_at


def test_show_says_which_step_a_running_job_is_in_and_since_when(running_job):
    home, step_at = running_job
    result = run("traces", "show", "c9c1", "--home", str(home))
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    since = step_at.astimezone(timezone.utc).strftime("%H:%M:%S")
    assert re.search(rf'running for 9m1[23]s, in "Exporting orders" since {since} UTC$', header), header
    assert "(stuck)" not in header  # stuck_after is 900 s by default
    shown = result.output.splitlines()
    open_line = next(l for l in shown if "Exporting orders ↴" in l)
    assert re.search(r"… running for 2m0[01]s$", open_line)
    assert any("Writing batch 1 ↵" in l for l in shown)
    assert not any("Exporting orders ↵" in l for l in shown)


def test_a_running_job_past_stuck_after_is_marked_stuck(running_job, tmp_path):
    home, _ = running_job
    config = tmp_path / "trifle.yaml"
    config.write_text(f"store: {{home: {home}}}\ntraces: {{stuck_after: 300}}\n")
    header = run("traces", "show", "c9c1", "--config", str(config)).output.splitlines()[0]
    assert header.endswith(" UTC (stuck)")
    table = run("traces", "list", "--config", str(config)).output
    assert "running (stuck)" in table


def test_list_shows_how_long_a_running_job_has_run_not_its_last_write(running_job):
    home, _ = running_job
    row = next(l for l in run("traces", "list", "--home", str(home)).output.splitlines() if "nightly_export" in l)
    assert re.search(r"running\s+\S+ \S+\s+9m1[23]s\s", row), row
    assert "448ms" not in row


def test_a_running_job_without_open_steps(tmp_path):
    home = tmp_path / "store"
    store(home, reference="d" * 48, key="reports/x", first_at=datetime.now(timezone.utc) - timedelta(seconds=42),
          state="running", duration=3)
    header = run("traces", "show", "ddd", "--home", str(home)).output.splitlines()[0]
    assert re.search(r"running for 4[23]s$", header), header


# -- item 8: traces show reads the same piped ---------------------------------------------


def test_show_marks_states_in_text_and_measures_offsets_from_the_start(tmp_path):
    home = tmp_path / "store"
    started = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    start_ns = ns(started) + 987_000  # the root started 0.987 ms into the millisecond of first_at
    at = lambda ms: started + timedelta(microseconds=987 + ms * 1000)  # noqa: E731
    lines = [
        line(at(0.1), "Fetching offers ↴", 0, span_id="b1"),
        line(at(20), "SupplierTimeout: ingram did not answer", 1, "error",
             through=["Fetching offers from ingram", "Fetching offers"]),
        line(at(20), "Traceback (most recent call last):\n  File \"job.py\", line 3, in run", 1, "error", "raw"),
        line(at(23.9), "Fetching offers ↵", 0, "error", span_id="b1", duration=23.8),
        line(at(23.9), "No offers: price not updated", 0, "warning"),
    ]
    store(home, reference="e" * 48, key="prices/calculate", first_at=started, state="error", duration=24,
          lines=lines, start_ns=start_ns)
    out = run("traces", "show", "eee", "--home", str(home)).output.splitlines()
    assert out[0] == "prices/calculate  ✗ error  24ms"
    body = [l for l in out if l.strip().startswith("+")]
    assert body[0].startswith("     +0.1ms   Fetching offers ↴")
    assert body[1].startswith("    +20.0ms ✗   SupplierTimeout: ingram did not answer (passed up through \"Fetching offers\")")
    assert body[-2].startswith("    +23.9ms ✗ Fetching offers ↵")
    assert body[-1].startswith("    +23.9ms ! No offers: price not updated")
    # No line is later than the header's duration.
    assert all(float(re.match(r"\s*\+([\d.]+)ms", l).group(1)) <= 24 for l in body)


def test_a_demo_trace_shows_a_failure_once_and_names_the_step_of_a_media_line(demo_home):
    records = json.loads(run("traces", "list", "--json", "--limit", "1000", "--home", str(demo_home)).output)["records"]
    timeout = next(r for r in records if r["meta"].get("result.code") == "SUPPLIER_TIMEOUT")
    text = run("traces", "show", timeout["reference"], "--home", str(demo_home)).output
    assert text.count("SupplierTimeout: ") == 2  # the error line and the stack's last line, once
    assert text.count("Traceback (most recent call last)") == 1
    assert 'passed up through "Fetching offers", "run/pricing.calculate_price"' in text
    assert "opentelemetry" not in text
    assert re.search(r"✗\s+Fetching offers ↵", text)

    media = next(r for r in records if r["counters"]["types"]["media"])
    text = run("traces", "show", media["reference"], "--home", str(demo_home)).output
    assert re.search(r'\[media\] result of "Fetching offers": part_row_\d+\.txt \([\d,]+ bytes; --artifact', text)


# -- item 6: ambiguous references ---------------------------------------------------------


def test_an_ambiguous_reference_is_refused_listing_the_matches(tmp_path):
    home = tmp_path / "store"
    now = datetime.now(timezone.utc)
    store(home, reference="87aa" + "1" * 44, key="prices/calculate", first_at=now)
    store(home, reference="87bb" + "2" * 44, key="products/refresh", first_at=now)
    result = run("traces", "show", "87", "--home", str(home))
    assert result.exit_code == 1
    assert "reference '87' is ambiguous" in result.output
    assert "87aa111111111111 (prices/calculate" in result.output and "87bb222222222222 (products/refresh" in result.output
    assert run("traces", "show", "87b", "--home", str(home)).exit_code == 0
    missing = run("traces", "show", "99", "--home", str(home))
    assert missing.exit_code == 1 and "no execution with reference '99'" in missing.output


# -- item 7: reading never creates a store ------------------------------------------------


@pytest.mark.parametrize("args", [
    ["traces", "list"], ["traces", "show", "abc"], ["stats", "keys"], ["stats", "values", "prices/calculations"],
])
def test_read_only_commands_do_not_create_a_store(tmp_path, args):
    typo = tmp_path / "typo"
    result = run(*args, "--home", str(typo))
    assert result.exit_code == 1
    assert f"no {'stats store' if args[0] == 'stats' else 'trace index'} at {typo}" in result.output
    assert "no store exists there" in result.output and "--home DIR" in result.output
    assert not typo.exists()


def test_stats_commands_name_the_store_they_read(demo_home):
    for args in (["stats", "keys"], ["stats", "values", "prices/calculations", "-g", "1d", "--from", "2d"]):
        result = run(*args, "--home", str(demo_home))
        assert result.exit_code == 0, result.output
        assert str(demo_home / "stats.db") in result.output


# -- item 4: options before the command ----------------------------------------------------


def test_store_options_before_the_command(demo_home, tmp_path):
    before = run("--home", str(demo_home), "traces", "list", "--json")
    assert before.exit_code == 0, before.output
    assert len(json.loads(before.output)["records"]) > 0
    # After the command wins over before it.
    after = run("--home", str(tmp_path / "typo"), "traces", "list", "--home", str(demo_home))
    assert after.exit_code == 0 and "prices/calculate" in after.output
    config = tmp_path / "trifle.yaml"
    config.write_text(f"store: {{home: {demo_home}}}\n")
    assert run("--config", str(config), "stats", "keys").exit_code == 0


# -- item 5: usage errors -------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["traces", "list", "--frm", "2h"], "error: no such option '--frm'"),
    (["traces", "list", "--limit", "0"], "error: invalid value for '--limit'"),
    (["traces", "show"], "error: missing argument 'REFERENCE'"),
    (["tracs"], "error: no such command 'tracs'"),
])
def test_usage_errors_are_one_error_line_with_status_2(tmp_path, args, message):
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr
    assert "--help" in proc.stderr


def test_no_command_prints_the_help():
    result = run()
    assert result.exit_code == 0 and "Commands:" in result.output


# -- item 9: the list at 80 columns, its cursor, and a closed pipe --------------------------


def test_list_at_80_columns_keeps_the_main_columns_whole(demo_home):
    result = run("traces", "list", "--limit", "5", "--home", str(demo_home), env={"COLUMNS": "80"})
    lines = result.output.splitlines()
    assert all(len(l.rstrip()) <= 80 for l in lines[:-1]), lines  # the cursor, unbroken, is longer
    header = lines[0].split()
    assert header[:6] == ["reference", "key", "state", "started", "(UTC)", "duration"]
    row = lines[1].split()
    assert len(row[0]) == 16 and row[1] in ("prices/calculate", "products/refresh", "reports/nightly_export")
    assert re.match(r"\d\d-\d\d", row[3]) and re.match(r"\d\d:\d\d:\d\d", row[4]) and re.search(r"(ms|s)$", row[5])
    cursor = json.loads(run("traces", "list", "--limit", "5", "--json", "--home", str(demo_home)).output)["next_cursor"]
    assert lines[-1] == cursor and lines[-2] == "next page: --cursor"


def test_piping_into_head_ends_quietly(tmp_path):
    home = tmp_path / "store"
    now = datetime.now(timezone.utc)
    steps = [line(now + timedelta(milliseconds=i), f"step {i} ↴", 0) for i in range(3000)]
    first = store(home, reference="0" * 48, key="k/x", first_at=now, lines=steps)
    index = open_index(Config(home=str(home)).resolved_index_url())
    index.upsert([{**first, "reference": f"{i:04x}" + "a" * 44, "first_at": now - timedelta(seconds=i)}
                  for i in range(1, 1000)])
    index.close()
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(home)}
    # A reader that takes one line and goes away, as `| head -1` does, while much is still to come.
    for command in (["traces", "list", "--json", "--limit", "1000"], ["traces", "list", "--limit", "1000"],
                    ["traces", "show", "0000"]):
        proc = subprocess.Popen([str(BIN), *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line_one = proc.stdout.readline()
        proc.stdout.close()
        proc.wait(timeout=30)
        assert line_one.split()[0] in (b"{", b"reference", b"k/x"), line_one
        assert (proc.returncode, proc.stderr.read()) == (0, b""), command
        proc.stderr.close()


@pytest.mark.mongo
def test_an_ambiguous_reference_in_mongodb(mongo_url, tmp_path):
    home = tmp_path / "store"
    now = datetime.now(timezone.utc)
    first = store(home, reference="87aa" + "1" * 44, key="prices/calculate", first_at=now)
    index = open_index(mongo_url)
    index.upsert([first, {**first, "reference": "87bb" + "2" * 44, "key": "products/refresh"}])
    index.close()
    result = run("traces", "show", "87", "--index-url", mongo_url)
    assert result.exit_code == 1 and "reference '87' is ambiguous" in result.output
    assert "87aa111111111111 (prices/calculate" in result.output and "87bb222222222222 (products/refresh" in result.output
