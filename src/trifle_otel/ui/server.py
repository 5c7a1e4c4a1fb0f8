"""Serving the UI with uvicorn: on the calling thread (``trifle-otel ui``) or on a
background thread (tests, and a process that serves the UI beside other work)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from ..errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:4320"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4320`` for IPv6) → (host, port)."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"listen address {text!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN}, or [::1]:4320)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"listen address {text!r}: the port must be between 0 and 65535")
    return host, number


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a message that says what is wrong with the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another address with --listen "
                          "or ui.listen") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            limit_concurrency=200, timeout_keep_alive=5, h11_max_incomplete_event_size=65536)
    return uvicorn.Server(config)


def serve(app: Any, listen: str) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    serve_socket(app, bind(*parse_listen(listen)))


def serve_socket(app: Any, sock: socket.socket) -> None:
    _server(app).run(sockets=[sock])


class BackgroundServer:
    """The UI on a thread; ``url`` once started; ``stop()`` ends it."""

    def __init__(self, app: Any, listen: str = "127.0.0.1:0") -> None:
        host, port = parse_listen(listen)
        self.socket = bind(host, port)
        self.host, self.port = self.socket.getsockname()[:2]
        self.server = _server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="trifle-ui", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "BackgroundServer":
        self.thread.start()
        waiting = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.server.started:
                return self
            waiting.wait(0.02)
        raise RuntimeError(f"the UI did not start on {self.url} within {timeout}s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
