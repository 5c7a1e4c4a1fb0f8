"""A Node.js program with the official OpenTelemetry JS SDK exports to the receivers.

The test setup installs the SDK from npm into tests/node/node_modules (``npm ci`` from the
committed package-lock.json, once: a stamp records which lock file it installed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from otlp_samples import RecordingIntake

from trifle_otel.ingest.otlp_grpc import GRPCServer
from trifle_otel.ingest.otlp_http import HTTPServer, create_http_app

NODE_DIR = Path(__file__).parent / "node"
TOKEN = "node-token"


@pytest.fixture(scope="session")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("the Node.js client tests need node (18.19 or newer) and npm on PATH: apt-get install nodejs npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    assert (major, minor) >= (18, 19), f"node {version} is too old for the OpenTelemetry JS SDK 2.x (18.19 or newer)"
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".installed-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            cwd=NODE_DIR, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{proc.stderr[-3000:]}"
        stamp.write_text(digest)
    return node


def run_node(node: str, protocol: str, url: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    args = [node, str(NODE_DIR / "export.js"), protocol, url] + ([token] if token else [])
    return subprocess.run(args, cwd=NODE_DIR, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("protocol", ["proto", "grpc"])
def test_node_sdk_exporter(node, protocol):
    intake = RecordingIntake()
    if protocol == "proto":
        server = HTTPServer(create_http_app(intake, token=TOKEN), "127.0.0.1", 0).start()
        url = f"{server.url}/v1/traces"
    else:
        server = GRPCServer(intake, "127.0.0.1", 0, token=TOKEN).start()
        url = f"http://{server.target}"
    try:
        proc = run_node(node, protocol, url)
        assert proc.returncode == 0, proc.stderr
        refused = run_node(node, protocol, url, token=None)
        assert refused.returncode == 1 and "export failed" in refused.stderr
    finally:
        server.stop()
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    (batch,) = intake.batches
    assert batch.transport == ("http" if protocol == "proto" else "grpc")
    if protocol == "proto":
        assert batch.content_encoding == "gzip"
    spans = {s.name: s for s in batch.spans}
    assert {(p["name"], p["traceId"], p["spanId"], p["parentSpanId"]) for p in printed} == {
        (s.name, s.trace_id, s.span_id, s.parent_span_id) for s in batch.spans
    }
    root = spans["run/checkout.send_receipt"]
    # the enqueuing web request is another process: the JS SDK says so in the span flags
    assert (root.parent_span_id, root.parent_remote, root.parent_remote_known) == ("b7ad6b7169203331", True, True)
    assert root.is_local_root and root.kind == "consumer"
    assert root.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert root.attributes == {
        "trifle.key": "checkout/receipts",
        "customer.id": "acme",
        "order.total": 129.5,
        "items.count": 3,
        "gift": False,
        "trifle.tags": ("vip", "eu"),
    }
    assert root.resource["service.name"] == "checkout-node" and root.resource["host.name"] == "web-7"
    assert root.scope == "checkout.jobs"
    render, send = spans["Rendering receipt"], spans["Sending e-mail"]
    assert (render.parent_span_id, render.parent_remote, render.parent_remote_known) == (root.span_id, False, True)
    assert render.attributes["trifle.result"] == "receipt.pdf (2 pages)"
    assert [(e.name, dict(e.attributes)) for e in render.events] == [("template loaded", {"bytes": 2048})]
    assert (send.kind, send.status, send.status_message) == ("client", "error", "SMTP 451")
    (exception,) = send.events
    assert exception.name == "exception"
    assert exception.attributes["exception.message"] == "SMTP 451: try again later"
    assert all(s.end_ns >= s.start_ns > 1_600_000_000 * 10**9 for s in batch.spans)
