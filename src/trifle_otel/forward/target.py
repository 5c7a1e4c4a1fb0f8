"""A forward target from the config's ``forward:`` list, checked and resolved.

Endpoints mean what they mean to the OpenTelemetry exporters, so a value copied from a
backend's OTLP instructions works here unchanged:

- ``protocol: http/protobuf`` (the default): an ``http://`` or ``https://`` URL.  As with
  the Collector's ``otlphttp`` exporter and ``OTEL_EXPORTER_OTLP_ENDPOINT``, it is a base:
  ``/v1/traces`` is appended to its path (``https://api.honeycomb.io`` →
  ``https://api.honeycomb.io/v1/traces``) unless the path already ends with it.
- ``protocol: grpc``: ``host:port`` (``api.honeycomb.io:443``), with TLS unless
  ``insecure: true``; or a URL, where ``http://`` means without TLS and ``https://`` with.

Header values and the endpoint may read the environment (``${HONEYCOMB_API_KEY}``) so
keys stay out of the file; they are never shown in reprs or logs.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["ForwardTarget", "parse_targets", "forwards_to_itself", "HTTP_PROTOBUF", "GRPC"]

HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
PROTOCOLS = (HTTP_PROTOBUF, GRPC)
COMPRESSIONS = ("gzip", "none")
TRACES_PATH = "/v1/traces"

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_QUEUE_BYTES = 256 << 20
DEFAULT_INITIAL_INTERVAL = 1.0
DEFAULT_MAX_INTERVAL = 30.0

KEYS = ("name", "endpoint", "protocol", "headers", "compression", "timeout", "insecure", "max_queue_bytes", "max_in_flight",
        "retry")
MAX_IN_FLIGHT = 64
RETRY_KEYS = ("initial_interval", "max_interval")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_RESERVED_HEADERS = {"content-type", "content-encoding", "content-length", "host", "transfer-encoding", "connection", "te"}


@dataclass(frozen=True)
class ForwardTarget:
    name: str
    endpoint: str  # as configured (after ${ENV}), shown to users
    protocol: str = HTTP_PROTOBUF
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never shown
    compression: str = "gzip"
    timeout: float = DEFAULT_TIMEOUT
    insecure: bool = False
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    initial_interval: float = DEFAULT_INITIAL_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    max_in_flight: int = 1  # requests sent at once; 1 keeps the backend's order strict

    @property
    def gzip(self) -> bool:
        return self.compression == "gzip"

    def url(self) -> str:
        """HTTP: the URL requests are POSTed to."""
        parts = urlsplit(self.endpoint)
        path = parts.path.rstrip("/")
        if not path.endswith(TRACES_PATH):
            path += TRACES_PATH
        return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")

    def grpc_target(self) -> tuple[str, bool]:
        """gRPC: (``host:port``, whether TLS is used)."""
        if "://" in self.endpoint:
            parts = urlsplit(self.endpoint)
            port = parts.port or (443 if parts.scheme == "https" else 4317)
            return f"{_host(parts.hostname or '')}:{port}", parts.scheme == "https"
        return self.endpoint, not self.insecure

    def describe(self) -> str:
        """Where and how, for the start banner (no header values)."""
        where = self.url() if self.protocol == HTTP_PROTOBUF else "%s%s" % (
            self.grpc_target()[0], "" if self.grpc_target()[1] else " (no TLS)")
        return f"{self.name} ({self.protocol} {where}, {self.compression})"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_targets(value: Any, where: str, expand: Callable[[str, str], str] = lambda v, _w: v) -> list[ForwardTarget]:
    """The ``forward:`` section: a list of targets.  Raises :class:`ConfigError` naming
    the entry and the setting (``forward[1].endpoint``) for every mistake."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        raise ConfigError(f"{where}: section 'forward' must be a list of targets (put '- ' before 'name:')")
    if not isinstance(value, list):
        raise ConfigError(f"{where}: section 'forward' must be a list of targets, each with an endpoint")
    targets = [_parse_one(entry, f"{where}: forward[{i}]", expand) for i, entry in enumerate(value)]
    seen: dict[str, int] = {}
    for i, target in enumerate(targets):
        if target.name.lower() in seen:
            raise ConfigError(
                f"{where}: forward[{i}] and forward[{seen[target.name.lower()]}] are both named '{target.name}': "
                "give each target its own name (it names its queue directory)"
            )
        seen[target.name.lower()] = i
    return targets


def _parse_one(entry: Any, where: str, expand: Callable[[str, str], str]) -> ForwardTarget:
    if isinstance(entry, ForwardTarget):
        return entry
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a mapping with at least 'endpoint' (and 'name', 'protocol', 'headers' ...)")
    for key in entry:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown setting '{key}'{_hint(str(key), KEYS)}")
    if "endpoint" not in entry or entry["endpoint"] in (None, ""):
        raise ConfigError(f"{where}: 'endpoint' is missing (such as https://api.honeycomb.io, or api.honeycomb.io:443 for grpc)")
    endpoint = expand(_string(entry["endpoint"], f"{where}.endpoint"), f"{where}.endpoint").strip()
    protocol = str(entry.get("protocol", HTTP_PROTOBUF)).strip().lower()
    if protocol in ("http", "http/proto"):
        protocol = HTTP_PROTOBUF
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be http/protobuf or grpc (got {entry.get('protocol')!r})")
    _check_endpoint(endpoint, protocol, where)
    name = entry.get("name")
    if name is None:  # the host, as a directory name
        host = _split(endpoint if "://" in endpoint else f"//{endpoint}", where).hostname or "target"
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-.")[:64] or "target"
    name = str(name)
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name must be letters, digits, '.', '_' or '-' (at most 64; it names a directory) (got {name!r})"
        )
    compression = str(entry.get("compression", "gzip")).strip().lower()
    if compression in ("false", "off"):  # YAML reads a bare 'off' as false
        compression = "none"
    if compression not in COMPRESSIONS:
        raise ConfigError(f"{where}.compression must be gzip or none (got {entry.get('compression')!r})")
    timeout = _positive(entry.get("timeout", DEFAULT_TIMEOUT), f"{where}.timeout", "seconds")
    max_queue_bytes = int(_positive(entry.get("max_queue_bytes", DEFAULT_MAX_QUEUE_BYTES), f"{where}.max_queue_bytes", "bytes"))
    if max_queue_bytes < 1 << 20:
        raise ConfigError(f"{where}.max_queue_bytes must be at least 1 MiB (1048576) (got {max_queue_bytes})")
    max_in_flight = entry.get("max_in_flight", 1)
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= MAX_IN_FLIGHT:
        raise ConfigError(f"{where}.max_in_flight must be a whole number from 1 to {MAX_IN_FLIGHT} (got {max_in_flight!r})")
    insecure = entry.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{where}.insecure must be true or false (got {insecure!r})")
    if insecure and protocol != GRPC:
        raise ConfigError(f"{where}.insecure applies to grpc only; over HTTP write the endpoint as http:// for no TLS")
    retry = entry.get("retry") or {}
    if not isinstance(retry, Mapping):
        raise ConfigError(f"{where}.retry must be a mapping (initial_interval, max_interval)")
    for key in retry:
        if key not in RETRY_KEYS:
            raise ConfigError(f"{where}.retry: unknown setting '{key}'{_hint(str(key), RETRY_KEYS)}")
    initial = _positive(retry.get("initial_interval", DEFAULT_INITIAL_INTERVAL), f"{where}.retry.initial_interval", "seconds")
    maximum = _positive(retry.get("max_interval", DEFAULT_MAX_INTERVAL), f"{where}.retry.max_interval", "seconds")
    if maximum < initial:
        raise ConfigError(f"{where}.retry.max_interval ({maximum}) must be at least retry.initial_interval ({initial})")
    return ForwardTarget(
        name=name, endpoint=endpoint, protocol=protocol, headers=_headers(entry.get("headers"), where, protocol, expand),
        compression=compression, timeout=timeout, insecure=insecure, max_queue_bytes=max_queue_bytes,
        initial_interval=initial, max_interval=maximum, max_in_flight=max_in_flight,
    )


def _split(endpoint: str, where: str) -> Any:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise ConfigError(f"{where}.endpoint cannot be read as a URL ({exc}) (got {endpoint!r})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where}.endpoint must not carry credentials (user:password@): put them in headers "
            "(such as Authorization: Basic ...), where they are kept out of logs"
        )
    return parts


def _check_endpoint(endpoint: str, protocol: str, where: str) -> None:
    if protocol == HTTP_PROTOBUF:
        parts = _split(endpoint, where)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{where}.endpoint must be an http:// or https:// URL for protocol http/protobuf, such as "
                f"https://api.honeycomb.io (got {endpoint!r}); for host:port use protocol: grpc"
            )
        return
    if "://" in endpoint:
        parts = _split(endpoint, where)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"{where}.endpoint for grpc must be host:port (api.honeycomb.io:443) or http(s)://host:port, "
                f"without a path (got {endpoint!r})"
            )
        return
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535 or "/" in endpoint or " " in endpoint:
        raise ConfigError(
            f"{where}.endpoint for grpc must be host:port, such as api.honeycomb.io:443 or 127.0.0.1:4317 "
            f"(got {endpoint!r})"
        )


def _headers(value: Any, where: str, protocol: str, expand: Callable[[str, str], str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.headers must be a mapping of header names to values (x-honeycomb-team: ${{HONEYCOMB_API_KEY}})")
    headers: dict[str, str] = {}
    for key, raw in value.items():
        name = str(key).strip()
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"{where}.headers: {name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS or (protocol == GRPC and name.lower().startswith("grpc-")):
            raise ConfigError(f"{where}.headers: '{name}' is set by the forwarder itself; leave it out")
        if protocol == GRPC and name.lower().endswith("-bin"):
            raise ConfigError(f"{where}.headers: '{name}': binary gRPC metadata (-bin) is not supported; use a text header")
        if raw is None or isinstance(raw, (Mapping, list)):
            raise ConfigError(f"{where}.headers.{name} must be a string")
        text = expand(str(raw), f"{where}.headers.{name}")
        if not text or not all(" " <= c <= "~" for c in text):
            raise ConfigError(
                f"{where}.headers.{name} must be printable ASCII, not empty and on one line "
                "(check the environment variable it reads, if any)"
            )
        headers[name.lower() if protocol == GRPC else name] = text  # gRPC metadata keys are lower-case
    return headers


def _string(value: Any, where: str) -> str:
    if isinstance(value, (Mapping, list, bool)) or value is None:
        raise ConfigError(f"{where} must be a string (got {value!r})")
    return str(value)


def _positive(value: Any, where: str, unit: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a positive number of {unit} (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a positive number of {unit} (got {value!r})") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{where} must be a positive number of {unit} (got {value!r})")
    return number


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(choices)})"



_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}


def forwards_to_itself(target: ForwardTarget, listens: list[tuple[str, int]]) -> bool:
    """Whether a target is one of the sidecar's own receivers (``listens``: host, port):
    every request would come back and be forwarded again, without end."""
    if target.protocol == GRPC:
        host, _, port_text = target.grpc_target()[0].rpartition(":")
        host = host.strip("[]")
        port = int(port_text)
    else:
        parts = urlsplit(target.url())
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    host = host.lower()
    for listen_host, listen_port in listens:
        if port != listen_port or listen_port == 0:
            continue
        listen_host = listen_host.lower()
        if host == listen_host or (host in _LOCAL_HOSTS and (listen_host in _LOCAL_HOSTS or listen_host.startswith("127."))):
            return True
        if listen_host in ("0.0.0.0", "::") and (host in _LOCAL_HOSTS or host.startswith("127.")):
            return True
    return False
