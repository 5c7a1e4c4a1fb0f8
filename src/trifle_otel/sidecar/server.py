"""``trifle-otel serve`` as an object: receivers → write-ahead log → pipeline → stores.

Start order: the ports are checked (a port in use is one clear error before anything
else), the log under ``<home>/wal`` is opened (one sidecar per home: it is locked), the
pipeline is built with open-ended assembly and the log as its durability, the log is
replayed into it from the last checkpoint, and only then do the receivers open.  Stop
order: the receivers stop taking requests (those in progress finish), the pipeline
settles everything it holds (finished executions written, running ones carried forward
by a last checkpoint), the forward targets get a few seconds to send what is queued (the
rest stays in their queues on disk), the log is closed.

Forwarding (``forward:`` in the config) starts before the receivers: each request taken
is appended to every target's queue just before the log (a crash in between forwards it
and the client's retry again: at least once), and sent on by that target's threads.
Requests replayed from the log at start are not forwarded again: the queues kept them.

The web UI, served by the same process, is one more entry in :attr:`Sidecar.servers`
(anything with ``start()``/``stop()``), started after the receivers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Config
from ..errors import ConfigError, StoreError
from ..forward import Forwarding
from ..forward.target import forwards_to_itself
from ..ingest.metrics import ReceiverMetrics
from ..ingest.otlp_grpc import GRPCServer
from ..ingest.otlp_http import HTTPServer, create_http_app, listen_socket
from ..pipeline import Pipeline
from ..stores import redact
from ..wal import WAL
from .checkpoint import Checkpointer, ReplayCounts, log_id, plan_replay, read_mark, replay_batches
from .gate import Gate
from .intake import SidecarIntake

logger = logging.getLogger("trifle_otel")


class Server(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...


@dataclass
class Endpoints:
    grpc: str | None = None  # host:port
    http: str | None = None  # http://host:port
    ui: str | None = None  # http://host:port


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.grpc_address = config.grpc_address()
        self.http_address = config.http_address()
        if self.grpc_address is None and self.http_address is None:
            raise ConfigError("both receivers are off: give --grpc HOST:PORT or --http HOST:PORT (receivers.grpc / receivers.http)")
        listens = [a for a in (self.grpc_address, self.http_address) if a is not None]
        for number, target in enumerate(config.forward):
            if forwards_to_itself(target, listens):
                raise ConfigError(
                    f"forward[{number}] ({target.name}) points at this sidecar's own receivers ({target.endpoint}): "
                    "every request would be forwarded back to it without end; forward to your tracing backend"
                )
        ui = (config.ui_listen or "off").strip()
        self.ui_listen = None if ui.lower() == "off" else ui  # the web UI, served by this process too
        self.wal_dir = config.home_path / "wal"
        self.servers: list[Server] = []
        self.endpoints = Endpoints()
        self.replayed = ReplayCounts()
        self.wal: WAL | None = None
        self.pipeline: Pipeline | None = None
        self.intake: SidecarIntake | None = None
        self.checkpointer: Checkpointer | None = None
        self.forwarding: Forwarding | None = None
        self.started_at = 0.0

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> "Sidecar":
        self._check_ports()
        config = self.config
        self.wal = WAL(self.wal_dir, max_bytes=config.wal_max_bytes, segment_bytes=config.wal_segment_bytes)
        try:
            ident = log_id(self.wal_dir)
            mark = self._read_mark(ident)
            gate = Gate()
            self.checkpointer = Checkpointer(
                self.wal, gate, ident, interval=config.checkpoint_interval, count=mark,
                recount=lambda: read_mark(config, ident),
            )
            self.pipeline = Pipeline(config, open_ended=True, durability=self.checkpointer, store_process=config.store_process)
            buffer = self.pipeline.execution_stats.buffer
            self.checkpointer.stats_waiting = lambda: buffer.pending
            self._replay(mark or 0)
            self.checkpointer.enabled = True
            self.forwarding = Forwarding(config.forward, config.home_path / "forward").start()
            self.intake = SidecarIntake(config, self.pipeline, self.wal, gate, self.checkpointer, self.forwarding)
            self._start_receivers()
        except BaseException:
            self._close()
            raise
        self.started_at = time.monotonic()
        return self

    def _check_ports(self) -> None:
        """Fail on a port in use before the log is opened or replayed."""
        for address, what in ((self.grpc_address, "OTLP/gRPC"), (self.http_address, "OTLP/HTTP")):
            if address is not None and address[1] != 0:
                listen_socket(address[0], address[1], what).close()
        if self.ui_listen is not None:
            from ..ui.server import bind, parse_listen

            host, port = parse_listen(self.ui_listen)
            if port != 0:
                bind(host, port).close()

    def _read_mark(self, ident: str) -> int | None:
        try:
            return read_mark(self.config, ident)
        except Exception as exc:
            if not self.wal or not self.wal.segments():
                logger.warning("trifle-otel cannot read the stats store yet (%s); its first checkpoint will", exc)
                return None
            raise StoreError(
                f"cannot read the stats store {redact(self.config.resolved_stats_url())} to recover the write-ahead log "
                f"{self.wal_dir}: {exc}; the log is kept: start again once the stats store is reachable"
            ) from None

    def _replay(self, mark: int) -> None:
        assert self.wal is not None and self.pipeline is not None
        plan = plan_replay(self.wal, mark)
        for warning in plan.warnings:
            logger.warning("trifle-otel: %s", warning)
        queue = self.pipeline.intake
        for spans in replay_batches(self.wal, plan, self.replayed):
            while len(queue) and len(queue) + len(spans) > queue.max_items:
                time.sleep(0.005)  # the worker is assembling what came before
            queue.put_many(spans)

    def _start_receivers(self) -> None:
        config, intake = self.config, self.intake
        assert intake is not None
        metrics = ReceiverMetrics(intake.metrics, self.forwarding.metrics if self.forwarding else None)
        if self.grpc_address is not None:
            grpc_server = GRPCServer(intake, *self.grpc_address, max_request_bytes=config.max_request_bytes,
                                     token=config.auth_token, metrics=metrics)
            grpc_server.start()
            self.servers.append(grpc_server)
            self.endpoints.grpc = grpc_server.target
        if self.http_address is not None:
            app = create_http_app(intake, max_request_bytes=config.max_request_bytes, token=config.auth_token, metrics=metrics)
            http_server = HTTPServer(app, *self.http_address)
            http_server.start()
            self.servers.append(http_server)
            self.endpoints.http = http_server.url
        if self.ui_listen is not None:
            from ..ui.app import create_app
            from ..ui.server import BackgroundServer

            ui_server = BackgroundServer(create_app(config, listen=self.ui_listen), self.ui_listen)
            self.servers.append(ui_server.start())
            self.endpoints.ui = ui_server.url

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, timeout: float = 120.0) -> bool:
        """Stop taking requests, write what is held, close the log.  True when the last
        checkpoint went through (else the log keeps it for the next start)."""
        if self.intake is not None:
            self.intake.stopping = True
        committed = self.checkpointer.committed if self.checkpointer is not None else 0
        self._close(timeout)
        return self.checkpointer is not None and self.checkpointer.committed > committed

    def _close(self, timeout: float = 120.0) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception:
                logger.exception("trifle-otel: stopping %r failed", server)
        self.servers = []
        if self.pipeline is not None:
            self.pipeline.shutdown(timeout)
        if self.forwarding is not None:
            self.forwarding.stop()  # what is not sent yet waits in its queue for the next start
        if self.wal is not None:
            self.wal.close()

    def __enter__(self) -> "Sidecar":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reporting -------------------------------------------------------------------------------

    def summary(self) -> dict[str, int]:
        assert self.pipeline is not None
        stats = self.pipeline.stats()
        intake = self.intake
        return {
            "requests": intake.accepted_requests if intake else 0,
            "spans": intake.accepted_spans if intake else 0,
            "executions_written": stats["executions_written"],
            "late_spans": stats["assembly_late_spans"],
            "running_records": stats["live_writes"],
            "write_errors": stats["write_errors"],
            "pending_spans": self.pipeline.assembler.pending_spans,
        }
