"""``trifle-otel serve`` as a real subprocess for the sidecar tests: its own home, free
127.0.0.1 ports (port 0, read back from what it prints), always stopped."""

from __future__ import annotations

import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import yaml

from trifle_otel.config import load_config
from trifle_otel.stats.api import Stats
from trifle_otel.stores import open_index
from trifle_otel.stores.base import TraceQuery

TRIFLE = str(Path(sys.executable).parent / "trifle-otel")
_READY = "Stop with Ctrl-C or SIGTERM."  # serve's last start-up line
_LISTEN = re.compile(r"OTLP/gRPC on (?P<grpc>\S+);|OTLP/HTTP on http://(?P<http>[^/\s]+)/v1/traces")


def write_config(directory: Path, **sections) -> Path:
    """A config file with a ``receivers`` section suited to tests (short grace and
    checkpoints), merged with ``sections``."""
    data = {
        "receivers": {"grace": 0.3, "checkpoint_interval": 0.5},
        "processor": {"flush_interval": 0.1},
        "traces": {"retention_days": 36500},  # some requests are made with old times: not purged at once
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = directory / "trifle.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Serve:
    def __init__(self, home: Path, config: Path | None = None, *args: str, env: dict | None = None) -> None:
        self.home = Path(home)
        self.config = config
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers: list[threading.Thread] = []
        self.http = ""
        self.grpc = ""

    def command(self) -> list[str]:
        cmd = [TRIFLE, "serve", "--home", str(self.home)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        if "--grpc" not in self.args:
            cmd += ["--grpc", "127.0.0.1:0"]
        if "--http" not in self.args:
            cmd += ["--http", "127.0.0.1:0"]
        if "--ui" not in self.args:
            cmd += ["--ui", "off"]  # (4320 is the default: tests bind free ports only)
        return cmd + self.args

    def start(self, timeout: float = 60) -> "Serve":
        self.out, self.err = [], []
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=self.env, stdin=subprocess.DEVNULL)
        self._readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out):
                for match in _LISTEN.finditer(line):
                    self.grpc = match.group("grpc") or self.grpc
                    self.http = match.group("http") or self.http
            # Started once the last start-up line is out: the lines before it (what was
            # replayed, where it writes) are then all in ``out``, not still in the pipe.
            ready = any(_READY in line for line in list(self.out))
            if ready and (self.http or (self.grpc and "--http" in self.args)):
                if self.http:
                    self.wait_healthy()
                return self
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"serve exited with {self.proc.returncode}: {''.join(self.err)}")
            time.sleep(0.05)
        raise AssertionError(f"serve did not start: {''.join(self.out)} {''.join(self.err)}")

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _drain(self) -> None:
        """Wait for the readers to reach the pipes' end: an exited process's last lines
        (its stop summary) can still be in the pipe when ``wait`` returns."""
        for reader in self._readers:
            reader.join(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc is None or self.proc.poll() is not None:
            self._drain()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._drain()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def children(self) -> list[int]:
        """serve's child processes (its store writer)."""
        assert self.proc is not None
        out: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        host, port = self.http.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def post(self, body: bytes, content_type: str = "application/x-protobuf", headers: dict | None = None):
        return self.request("POST", "/v1/traces", body, {"Content-Type": content_type, **(headers or {})})

    def health(self) -> tuple[int, dict]:
        code, _, body = self.request("GET", "/health")
        return code, orjson.loads(body)

    def metrics(self) -> dict[str, float]:
        _, _, body = self.request("GET", "/metrics")
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.health()[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("serve never became healthy")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    # -- the stores --------------------------------------------------------------------------

    def store_config(self):
        return load_config(self.config, overrides={"home": str(self.home)}, environ={})

    def records(self, **query) -> list[dict]:
        index = open_index(self.store_config().resolved_index_url())
        try:
            out, cursor = [], None
            while True:
                page = index.search(TraceQuery(limit=500, cursor=cursor, **query))
                out += page.records
                cursor = page.next_cursor
                if not cursor:
                    return out
        finally:
            index.close()

    def count(self, key: str) -> tuple[int, set[int]]:
        """(records with this key, the distinct line counts they have), straight from the
        embedded index: cheaper than reading pages of records while the sidecar writes."""
        path = self.store_config().resolved_index_url()[len("sqlite://"):]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            (n,) = conn.execute("SELECT count(*) FROM trifle_traces WHERE key = ?", (key,)).fetchone()
            lengths = {row[0] for row in conn.execute(
                "SELECT DISTINCT json_extract(record, '$.length') FROM trifle_traces WHERE key = ?", (key,))}
        return n, lengths

    def wait_count(self, key: str, count: int, timeout: float = 120) -> set[int]:
        deadline = time.monotonic() + timeout
        n, lengths = 0, set()
        while time.monotonic() < deadline:
            try:
                n, lengths = self.count(key)
            except sqlite3.OperationalError as exc:
                # After a kill -9, a read-only reader cannot open the index until serve has
                # (its first write recovers the log SQLite left): not yet, then.
                if "unable to open" not in str(exc):
                    raise
                n, lengths = 0, set()
            if n >= count:
                return lengths
            time.sleep(0.3)
        raise AssertionError(f"{n} records of {key}, expected {count}; serve said: {''.join(self.err)[-2000:]}")

    def wait_records(self, count: int, timeout: float = 60, **query) -> list[dict]:
        deadline = time.monotonic() + timeout
        records: list[dict] = []
        while time.monotonic() < deadline:
            records = self.records(**query)
            if len(records) >= count:
                return records
            time.sleep(0.1)
        raise AssertionError(f"{len(records)} records, expected {count}; serve said: {''.join(self.err)[-2000:]}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [TRIFLE, *args, "--home", str(self.home)] + (["--config", str(self.config)] if self.config else [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def cli_json(self, *args: str):
        proc = self.cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return orjson.loads(proc.stdout)

    def stat(self, key: str, path: str = "count") -> float:
        """A stat value on ``key`` summed over all time (1y buckets since 2000), read from
        the stats store directly; ``path`` is dotted (``states.success``)."""
        stats = Stats(self.store_config(), buffered=False)
        try:
            series = stats.values(key, datetime(2000, 1, 1, tzinfo=timezone.utc),
                                  datetime.now(timezone.utc) + timedelta(days=1), "1y")
        finally:
            stats.shutdown()
        total = 0.0
        for values in series["values"]:
            for name in path.split("."):
                values = values.get(name, {}) if isinstance(values, dict) else {}
            total += values if isinstance(values, (int, float)) else 0
        return total

    def __enter__(self) -> "Serve":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
