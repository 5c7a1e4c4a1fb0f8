"""Configuration: command-line flags > environment > config file (YAML) > defaults.

The file has sections (``store``, ``traces``, ``processor``, ``stats``, ``receivers``, ``ui``); every setting has
one flat attribute on :class:`Config`.  ``forward`` is a list of targets the sidecar
forwards to (:mod:`trifle_otel.forward.target`).  Unknown or mistyped settings are refused at load,
naming the setting and what it expects.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from .errors import ConfigError
from .stats.granularity import DEFAULT_GRANULARITIES
from .yamlfile import parse_yaml, read_text

ENV_CONFIG = "TRIFLE_OTEL_CONFIG"
ENV_HOME = "TRIFLE_OTEL_HOME"
ENV_URLS = {
    "index_url": "TRIFLE_OTEL_INDEX_URL",
    "data_url": "TRIFLE_OTEL_DATA_URL",
    "stats_url": "TRIFLE_OTEL_STATS_URL",
}

DEFAULT_KEY_ATTRIBUTES = ("trifle.key", "celery.task_name", "rq.job.func_name", "job.class", "job.name")


@dataclass
class Config:
    # store
    home: str = ".trifle"
    index_url: str | None = None
    data_url: str | None = None
    stats_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_concurrency: int = 32
    # traces
    key_template: str | None = None
    key_attributes: list[str] = field(default_factory=lambda: list(DEFAULT_KEY_ATTRIBUTES))
    tag_attributes: list[str] = field(default_factory=list)
    meta_attributes: list[str] | None = None
    skip_bare_producers: bool = True
    retention_days: int = 30
    payload_size_limit: int = 102_400
    part_size: int = 1_000
    gzip: bool = False
    live: bool = True
    live_interval: float = 10.0
    stuck_after: float = 900.0
    # processor
    queue_size: int = 20_000
    flush_interval: float = 1.0
    grace: float = 0.0
    retry_buffer: int = 2_000
    spill_dir: str | None = None
    spill_max_bytes: int = 1 << 30
    # stats
    stats_rules: str | None = None
    default_stats: bool = True
    granularities: list[str] = field(default_factory=lambda: list(DEFAULT_GRANULARITIES))
    time_zone: str = "UTC"
    beginning_of_week: str = "monday"
    stats_mode: str = "full"
    stats_expire_after: int | None = None  # seconds; MongoDB TTL on stats buckets
    # receivers (trifle-otel serve): HOST:PORT or "off"
    grpc_listen: str = "127.0.0.1:4317"
    http_listen: str = "127.0.0.1:4318"
    auth_token: str | None = field(default=None, repr=False)  # a secret: never in reprs or logs
    max_request_bytes: int = 16 << 20
    wal_max_bytes: int = 1 << 30
    wal_segment_bytes: int = 64 << 20
    # assembly with no end signal (trifle-otel serve)
    sidecar_grace: float = 2.0  # seconds of quiet after a root arrived before its execution is written
    trace_timeout: float = 60.0  # seconds after which an execution is written even while spans still come
    max_pending_spans: int = 200_000  # spans held in memory; past it the oldest executions are written early
    checkpoint_interval: float = 5.0  # seconds between checkpoints (stats written, the log trimmed)
    store_process: bool = True  # write the trace stores from a child process (a second core)
    # ui
    ui_listen: str = "127.0.0.1:4320"
    ui_token: str | None = None  # bearer token (also accepted as the basic-auth password)
    ui_basic_auth: str | None = None  # "user:password"
    ui_trace_url: str | None = None  # link to the trace in a tracing backend: {trace_id}, {span_id}
    ui_dashboards: str | None = None  # YAML file of dashboards
    # forward (trifle-otel serve): OTLP backends every accepted request is passed on to
    forward: list = field(default_factory=list, repr=False)  # ForwardTarget; headers hold secrets

    source: str = field(default="defaults", repr=False, compare=False)

    # -- derived -----------------------------------------------------------------------

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    def resolved_index_url(self) -> str:
        return self.index_url or "sqlite://" + quote(str(self.home_path / "traces.db"))

    def resolved_data_url(self) -> str:
        return self.data_url or "sqlite://" + quote(str(self.home_path / "data.db"))

    def resolved_stats_url(self) -> str:
        return self.stats_url or "sqlite://" + quote(str(self.home_path / "stats.db"))

    def resolved_spill_dir(self) -> Path:
        return Path(self.spill_dir).expanduser().resolve() if self.spill_dir else self.home_path / "spill"

    def validate(self) -> "Config":
        for name in ("retention_days", "payload_size_limit", "part_size", "queue_size", "retry_buffer", "spill_max_bytes",
                     "s3_concurrency"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting '{name}' must be a positive number (got {getattr(self, name)!r})")
        for name in ("live_interval", "stuck_after", "flush_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting '{name}' must be a positive number of seconds (got {getattr(self, name)!r})")
        if self.grace < 0:
            raise ConfigError(f"setting 'grace' must be zero or more seconds (got {self.grace!r})")
        if self.stats_mode not in ("full", "partial", "separated"):
            raise ConfigError(f"setting 'stats.mode' must be full, partial or separated (got {self.stats_mode!r})")
        if self.stats_expire_after is not None and self.stats_expire_after <= 0:
            raise ConfigError(f"setting 'stats.expire_after' must be a positive number of seconds (got {self.stats_expire_after!r})")
        self._validate_receivers()
        if self.ui_basic_auth is not None and ":" not in self.ui_basic_auth:
            raise ConfigError("setting 'ui.basic_auth' must be 'user:password' (use ${NAME} to read it from the environment)")
        if self.ui_trace_url is not None and not self.ui_trace_url.startswith(("https://", "http://")):
            raise ConfigError(f"setting 'ui.trace_url' must be an http(s) URL with {{trace_id}} in it (got {self.ui_trace_url!r})")
        if self.beginning_of_week.lower() not in _WEEKDAYS:
            raise ConfigError(
                f"setting 'beginning_of_week' must be a weekday name such as 'monday' (got {self.beginning_of_week!r})"
            )
        return self


    def grpc_address(self) -> tuple[str, int] | None:
        """Where the OTLP/gRPC receiver listens, or None when it is off."""
        return parse_listen(self.grpc_listen, "receivers.grpc")

    def http_address(self) -> tuple[str, int] | None:
        """Where the OTLP/HTTP receiver listens, or None when it is off."""
        return parse_listen(self.http_listen, "receivers.http")

    def _validate_receivers(self) -> None:
        for name in ("max_request_bytes", "wal_max_bytes", "wal_segment_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting 'receivers.{name}' must be a positive number of bytes (got {getattr(self, name)!r})")
        if self.sidecar_grace < 0:
            raise ConfigError(f"setting 'receivers.grace' must be zero or more seconds (got {self.sidecar_grace!r})")
        for name in ("trace_timeout", "checkpoint_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting 'receivers.{name}' must be a positive number of seconds (got {getattr(self, name)!r})")
        if self.max_pending_spans <= 0:
            raise ConfigError(f"setting 'receivers.max_pending_spans' must be a positive number (got {self.max_pending_spans!r})")
        if self.wal_max_bytes < self.max_request_bytes:
            raise ConfigError(
                f"setting 'receivers.wal_max_bytes' ({self.wal_max_bytes:,}) must be at least "
                f"'receivers.max_request_bytes' ({self.max_request_bytes:,}): every request the receivers take must fit the log"
            )
        grpc, http = self.grpc_address(), self.http_address()
        if grpc is not None and grpc == http and grpc[1] != 0:
            raise ConfigError(f"settings 'receivers.grpc' and 'receivers.http' both listen on {self.grpc_listen}: give each its own port")
        if self.auth_token is not None and (not self.auth_token or any(c.isspace() or not c.isprintable() for c in self.auth_token)):
            raise ConfigError(
                "setting 'receivers.auth.token' must be a non-empty token without spaces "
                "(check the environment variable it reads, if any)"
            )


def parse_listen(value: str, setting: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:4317`` for IPv6) → (host, port); ``off`` → None (YAML reads a
    bare ``off`` as false, which arrives here as ``"False"``)."""
    text = str(value).strip()
    if text.lower() in ("off", "false"):
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535 or " " in host:
        raise ConfigError(
            f"setting '{setting}' must be HOST:PORT (such as 127.0.0.1:4317, 0.0.0.0:4317 for every interface, "
            f"[::1]:4317) or off (got {value!r})"
        )
    return host, int(port)


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Which section of the file each setting lives in.
SECTIONS: dict[str, tuple[str, ...]] = {
    "store": ("home", "index_url", "data_url", "stats_url", "s3_endpoint_url", "s3_region", "s3_concurrency"),
    "traces": (
        "key_template",
        "key_attributes",
        "tag_attributes",
        "meta_attributes",
        "skip_bare_producers",
        "retention_days",
        "payload_size_limit",
        "part_size",
        "gzip",
        "live",
        "live_interval",
        "stuck_after",
    ),
    "processor": ("queue_size", "flush_interval", "grace", "retry_buffer", "spill_dir", "spill_max_bytes"),
    "stats": ("stats_rules", "default_stats", "granularities", "time_zone", "beginning_of_week", "stats_mode",
              "stats_expire_after"),
    "receivers": ("grpc_listen", "http_listen", "auth_token", "max_request_bytes", "wal_max_bytes", "wal_segment_bytes",
                  "sidecar_grace", "trace_timeout", "max_pending_spans", "checkpoint_interval", "store_process"),
    "ui": ("ui_listen", "ui_token", "ui_basic_auth", "ui_trace_url", "ui_dashboards"),
}
_FILE_NAMES = {  # file name differs from attribute name; a dotted name is a nested mapping in the file
    "stats": {"stats_rules": "rules", "stats_mode": "mode", "stats_expire_after": "expire_after"},
    "receivers": {"grpc_listen": "grpc", "http_listen": "http", "auth_token": "auth.token", "sidecar_grace": "grace"},
}
_FILE_NAMES["ui"] = {name: name[len("ui_"):] for name in SECTIONS["ui"]}

_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(name: str, value: Any, where: str) -> Any:
    kind = _TYPES[name]
    if value is None and "None" in kind:
        return None
    kind = kind.replace(" | None", "")
    try:
        if kind.startswith("list"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise TypeError
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(value, (dict, list)):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        expected = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(
            kind, "a list of strings" if kind.startswith("list") else "a string"
        )
        raise ConfigError(f"{where}: setting '{name}' must be {expected} (got {value!r})") from None


def _from_file(path: Path) -> dict[str, Any]:
    text = read_text(path, "config file", missing_hint=f": check --config or {ENV_CONFIG}")
    data = parse_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections ({', '.join(SECTIONS)}, forward)")
    out: dict[str, Any] = {}
    for section, body in data.items():
        section = str(section)
        if section == "forward":
            from .forward.target import parse_targets

            out["forward"] = parse_targets(body, f"config file {path}", _expand)
            continue
        if section not in SECTIONS:
            raise ConfigError(f"config file {path}: unknown section '{section}'{_hint(section, (*SECTIONS, 'forward'))}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: section '{section}' must be a mapping of settings")
        renamed = {v: k for k, v in _FILE_NAMES.get(section, {}).items()}
        allowed = [_FILE_NAMES.get(section, {}).get(n, n) for n in SECTIONS[section]]
        for key, value in _nested(body, allowed):
            if key not in allowed:
                raise ConfigError(f"config file {path}: unknown setting '{section}.{key}'{_hint(key, allowed)}")
            name = renamed.get(key, key)
            if isinstance(value, str):
                value = _expand(value, f"config file {path}: setting '{section}.{key}'")
            out[name] = _coerce(name, value, f"config file {path}")
    # Relative paths in the file are relative to the file, not to where the command runs.
    for name in ("home", "stats_rules", "spill_dir", "ui_dashboards"):
        if out.get(name) and not Path(out[name]).expanduser().is_absolute():
            out[name] = str((path.parent / out[name]).resolve())
    return out


def _nested(body: dict, allowed: list[str]) -> list[tuple[str, Any]]:
    """Settings of a section, a nested mapping (``auth: {token: ...}``) as dotted names."""
    out = []
    for key, value in body.items():
        key = str(key)
        if any(name.startswith(key + ".") for name in allowed) and (value is None or isinstance(value, dict)):
            out.extend((f"{key}.{sub}", item) for sub, item in (value or {}).items())
        else:
            out.append((key, value))
    return out


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, where: str) -> str:
    """``${NAME}`` from the environment, so secrets stay out of the file."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where} uses ${{{name}}}, but the environment variable {name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(replace, value)


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(choices)})"


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, the config file, the environment and overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = path or env.get(ENV_CONFIG)
    source = "defaults"
    if file:
        values.update(_from_file(Path(file)))
        source = str(file)
    if env.get(ENV_HOME):
        values["home"] = env[ENV_HOME]
    for name, var in ENV_URLS.items():
        if env.get(var):
            values[name] = env[var]
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _TYPES or name == "source":
            raise ConfigError(f"unknown setting '{name}'{_hint(name, _TYPES)}")
        if name == "forward":
            from .forward.target import parse_targets

            values[name] = parse_targets(value, "option", _expand)
            continue
        values[name] = _coerce(name, value, "option")
    return Config(**values, source=source).validate()
