"""The files in examples/ work as their comments say."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from trifle_otel.config import load_config
from trifle_otel.stats.rules import load_rules
from trifle_otel.stores import TraceQuery, open_index

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_annotated_job_writes_its_execution(tmp_path):
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "annotated_job.py")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "written: 1" in proc.stdout


def test_config_examples_load(monkeypatch):
    config = load_config(EXAMPLES / "trifle.yaml", environ={})
    assert config.home_path == EXAMPLES.parent / ".trifle"
    assert len(load_rules(config.stats_rules)) == 5
    monkeypatch.setenv("TRIFLE_MONGO_PASSWORD", "pw")
    production = load_config(EXAMPLES / "production.yaml", environ={})
    assert production.index_url.startswith("mongodb://trifle:pw@") and production.data_url.startswith("s3://")


def test_celery_example_runs_as_documented_without_a_broker_server(tmp_path):
    """The docstring's commands: a worker (`celery -A examples.celery_app worker`), a job sent
    with `python examples/celery_app.py P-1 acme`, and its trace in the store."""
    root = EXAMPLES.parent
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(tmp_path / "store"), "CELERY_BROKER_DIR": str(tmp_path / "broker")}
    env.pop("CELERY_BROKER_URL", None)
    celery = Path(sys.executable).parent / "celery"
    log = open(tmp_path / "worker.log", "w+")
    worker = subprocess.Popen([str(celery), "-A", "examples.celery_app", "worker", "--loglevel=info", "--concurrency", "1"],
                              cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in (tmp_path / "worker.log").read_text():
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        sent = subprocess.run([sys.executable, "examples/celery_app.py", "P-1", "acme"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert "sent pricing.calculate_price('P-1', 'acme')" in sent.stdout
        records = []
        while not records:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.3)
            if (tmp_path / "store" / "traces.db").exists():
                index = open_index(load_config(environ={"TRIFLE_OTEL_HOME": str(tmp_path / "store")}).resolved_index_url())
                records = index.search(TraceQuery(key="pricing.calculate_price")).records
                index.close()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    assert len(records) == 1 and records[0]["state"] == "warning"
    assert "customer.id:acme" in records[0]["tags"] and "product:P-1" in records[0]["tags"]
    assert not (root / "control").exists()  # the broker's files stay in CELERY_BROKER_DIR


def test_dev_demo_installs_no_mongodb_or_s3_client(tmp_path):
    """`./dev demo` sets up a venv with only what the demo needs: pip is asked for the package
    without the mongo and s3 extras (a stand-in venv records what pip was asked)."""
    import shutil

    shutil.copy(EXAMPLES.parent / "dev", tmp_path / "dev")
    shutil.copy(EXAMPLES.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/pip-calls\n')
    (bin_dir / "trifle-otel").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/demo-calls\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "dev"), "demo", "--jobs", "3"], cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pip = (tmp_path / "pip-calls").read_text()
    assert "-m pip install" in pip and "-e ." in pip
    assert "mongo" not in pip and "s3" not in pip and "[" not in pip
    assert (tmp_path / "demo-calls").read_text().strip() == "demo --jobs 3"


def test_the_demo_does_not_import_the_mongodb_or_s3_clients(tmp_path):
    code = (
        "import sys; from trifle_otel.cli import main; main(['demo', '--jobs', '3', '--home', sys.argv[1]],"
        " standalone_mode=False); print(sorted(m for m in ('pymongo', 'boto3', 'botocore') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_every_source_folder_is_a_package_that_installs():
    from setuptools import find_packages

    src = EXAMPLES.parent / "src"
    found = {p.replace(".", "/") for p in find_packages(str(src))}
    with_code = {str(p.parent.relative_to(src)) for p in src.rglob("*.py")}
    assert with_code <= found, f"folders without __init__.py are left out of the wheel: {with_code - found}"


def test_honeycomb_example_sends_every_span_and_writes_every_execution(tmp_path):
    """`examples/honeycomb_inprocess.py` against a local OTLP/HTTP server standing in for
    Honeycomb (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, as its docstring says)."""
    from otlp_recorder import RecordingOTLPServer

    script = str(EXAMPLES / "honeycomb_inprocess.py")
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(tmp_path / "store")}
    env.pop("HONEYCOMB_API_KEY", None)
    missing = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: set HONEYCOMB_API_KEY to your Honeycomb API key"
    with RecordingOTLPServer("http") as honeycomb:
        env.update(HONEYCOMB_API_KEY="test-key", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=honeycomb.traces_url)
        proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "written: 3" in proc.stdout
        assert {r.headers["x-honeycomb-team"] for r in honeycomb.attempts} == {"test-key"}
        spans = honeycomb.spans()
    assert sorted(name for _, _, name in spans) == ["Loading rows"] * 3 + ["Writing the file"] * 3 + ["reports/export"] * 3
    index = open_index(load_config(environ={"TRIFLE_OTEL_HOME": str(tmp_path / "store")}).resolved_index_url())
    records = index.search(TraceQuery(key="reports/export")).records
    index.close()
    assert {(r["trace_id"], r["span_id"]) for r in records} == {(t, s) for t, s, name in spans if name == "reports/export"}
    assert sorted(r["state"] for r in records) == ["success", "warning", "warning"]
