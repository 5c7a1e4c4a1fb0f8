"""``trifle-otel serve``: the OTLP sidecar.

Prints where it listens and where it writes, then runs until SIGTERM or SIGINT (Ctrl-C):
the receivers stop, what the pipeline holds is written, and it exits 0.  A port in use, a
bad address or an unreachable store is one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import sys
import threading
import click

from ..config import Config, parse_listen
from ..errors import ConfigError
from ..stores import redact
from . import output
from .options import config_options


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_listen(value, f"--{param.name.split('_')[0]}")  # type: ignore[union-attr]
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (such as 127.0.0.1:4317, 0.0.0.0:4317, [::1]:4317) or off")
    return value


def _ui_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value.strip().lower() == "off":
        return None if value is None else "off"
    from ..ui.server import parse_listen as parse_ui_listen

    try:
        parse_ui_listen(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (such as 127.0.0.1:4320) or off")
    return value


@click.command()
@click.option("--grpc", "grpc_listen", metavar="HOST:PORT|off", callback=_listen,
              help="OTLP/gRPC address (receivers.grpc, default 127.0.0.1:4317).")
@click.option("--http", "http_listen", metavar="HOST:PORT|off", callback=_listen,
              help="OTLP/HTTP address, with /health and /metrics (receivers.http, default 127.0.0.1:4318).")
@click.option("--ui", "ui_listen", metavar="HOST:PORT|off", callback=_ui_listen,
              help="Web UI address (ui.listen, default 127.0.0.1:4320).")
@config_options
def serve(config: Config, grpc_listen: str | None, http_listen: str | None, ui_listen: str | None) -> None:
    """Receive OTLP traces from apps in any language (or an OTel Collector) and write
    executions and stats, like the in-process processor.

    Point an app at it with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 (or
    OTEL_EXPORTER_OTLP_PROTOCOL=grpc and :4317).  Requests are on disk in a write-ahead log
    (<home>/wal) before they are acknowledged.
    """
    from ..sidecar import Sidecar

    overrides = {k: v for k, v in (("grpc_listen", grpc_listen), ("http_listen", http_listen), ("ui_listen", ui_listen))
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides).validate()
    _log_to_stderr()
    # This process is the sidecar's own: fewer, larger garbage collections.  Spans held for
    # assembly are many long-lived objects that every collection of the older generations
    # walks again; the young generation's threshold decides how often that happens
    # (measured: ~15-20% less CPU per span with it raised from 700 to 50,000).
    gc.set_threshold(50_000, 20, 20)
    sidecar = Sidecar(config)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    console = output.console()
    try:
        sidecar.start()
        gc.freeze()  # what start-up made (modules, compiled rules) is never walked again
        for sig in previous:  # ours, not the library's drain-on-SIGTERM: stopping drains
            signal.signal(sig, on_signal)
        replayed = sidecar.replayed
        endpoints = sidecar.endpoints
        listening = []
        if endpoints.grpc:
            listening.append(f"OTLP/gRPC on {endpoints.grpc}")
        if endpoints.http:
            listening.append(f"OTLP/HTTP on {endpoints.http}/v1/traces (health {endpoints.http}/health, "
                             f"metrics {endpoints.http}/metrics)")
        if endpoints.ui:
            listening.append(f"web UI on {endpoints.ui}/")
        console.print("trifle-otel serve: " + "; ".join(listening), soft_wrap=True)
        console.print(
            f"Writing traces to {redact(config.resolved_index_url())} and {redact(config.resolved_data_url())}"
            f"{' (from a store writer process)' if config.store_process else ''}, "
            f"stats to {redact(config.resolved_stats_url())}; write-ahead log {sidecar.wal_dir}", soft_wrap=True,
        )
        if sidecar.forwarding:
            queued = [f"{name}: {n} queued" for name, n in sidecar.forwarding.queued_at_start.items() if n]
            console.print("Forwarding to " + ", ".join(f.target.describe() for f in sidecar.forwarding.forwarders)
                          + (f" ({'; '.join(queued)} from before)" if queued else ""), soft_wrap=True)
        if replayed.requests or replayed.carried_spans:
            console.print(f"Replayed {replayed.requests} requests ({replayed.spans} spans) and "
                          f"{replayed.carried_spans} spans of open executions from the log.", soft_wrap=True)
        console.print("Stop with Ctrl-C or SIGTERM.")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        console.print("Stopping: receivers closed, writing what is held ...")
        sys.stdout.flush()
        committed = sidecar.stop()
        summary = sidecar.summary()
        console.print(
            f"Stopped. Took {summary['requests']} requests ({summary['spans']} spans), wrote "
            f"{summary['executions_written']} executions and {summary['running_records']} running records "
            f"({summary['late_spans']} late spans, {summary['write_errors']} write errors).", soft_wrap=True,
        )
        for m in sidecar.forwarding.metrics() if sidecar.forwarding else []:
            if m["queued_requests"]:
                console.print(f"Forwarding to {m['target']}: {m['queued_requests']} requests ({m['queued_spans']} spans) "
                              "wait in its queue for the next start.", soft_wrap=True)
        if not committed:
            output.warn(f"the last checkpoint did not complete: the write-ahead log {sidecar.wal_dir} "
                        "keeps what was not stored, and the next start replays it")
        elif summary["pending_spans"]:
            console.print(f"{summary['pending_spans']} spans of running jobs are carried in the log to the next start.")
    finally:
        if sidecar.pipeline is not None and not sidecar.pipeline.intake.closed:
            sidecar.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_to_stderr() -> None:
    """Warnings of the library (a store that refuses writes, a failed checkpoint) on stderr."""
    logger = logging.getLogger("trifle_otel")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


__all__ = ["serve"]
