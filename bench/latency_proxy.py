"""A small HTTP/1.1 proxy on 127.0.0.1 that adds a fixed latency to every request.

Used by the benchmarks to put a local S3-compatible server (moto) at the distance of a real
one: each request waits ``latency`` seconds, then goes to the upstream server over a
kept-alive connection of its own.  It counts requests and the most in flight at once, so
a benchmark can show how much concurrency the client used.

With no upstream it answers every request itself (``200`` and an ETag, after the latency):
an S3 whose server is never the limit, to measure what the client side can send.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class LatencyProxy:
    def __init__(self, upstream: tuple[str, int] | None, latency: float) -> None:
        self.upstream = upstream
        self.latency = latency
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _relay(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    time.sleep(proxy.latency)
                    if proxy.upstream is None:
                        self.send_response(200)
                        self.send_header("ETag", '"stub"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    conn = getattr(self, "_upstream", None)
                    if conn is None:
                        conn = self._upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="latency-proxy", daemon=True)

    def __enter__(self) -> "LatencyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
