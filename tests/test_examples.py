"""The files in examples/ work as their comments say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trifle_otel.config import load_config
from trifle_otel.stats.rules import load_rules

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


def test_celery_example_defines_its_task():
    # In its own interpreter: Celery keeps task names per process.
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('celery_app', sys.argv[1]);"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print('pricing.calculate_price' in m.app.tasks)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "celery_app.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_every_source_folder_is_a_package_that_installs():
    from setuptools import find_packages

    src = EXAMPLES.parent / "src"
    found = {p.replace(".", "/") for p in find_packages(str(src))}
    with_code = {str(p.parent.relative_to(src)) for p in src.rglob("*.py")}
    assert with_code <= found, f"folders without __init__.py are left out of the wheel: {with_code - found}"
