"""collector_config/: every OpenTelemetry Collector configuration there parses, uses only
components and keys that the Collector documents, wires its pipelines, and points at the
ports its comments say the trifle-otel sidecar listens on. Every trifle*.yaml there is a
trifle-otel configuration and must load as one.

The allowed keys are kept below, per component, with the file each list came from:

- core components: open-telemetry/opentelemetry-collector at tag v0.159.0 (the same files at
  commit 934999fbab274d10cbf18704b4594a6fb2049887), each component's `config.schema.yaml`
  (generated from its Go config structs) and the shared `config/*/config.schema.yaml` they
  reference; the component types from each `metadata.yaml` (`type`, `deprecated_type`).
- the loadbalancing exporter: open-telemetry/opentelemetry-collector-contrib,
  `exporter/loadbalancingexporter/config.schema.yaml` at commit
  0140961f9de290fdf809390d3153c1eb214a2300, its `README.md` at commit
  01c4f7c5312f0c8790e1c7cffafad99d5e693b24 (the default port 4317, `endpoint` not to be set
  under protocol.otlp), `resolver_static.go` at 1556b8a4aca764f4be2b798c5ccd7ada3ac8e687 and
  `loadbalancer.go` at 9cb3011738dafcb33a88a2f9aa1d84b6ad5a2629 (one resolver only;
  `endpointWithPort` adds 4317). Its protocol.otlp is the otlp exporter's config (above).

Commented-out YAML in the files (a line `# key:` followed by more deeply indented `#` lines,
such as the DNS resolver shown beside the static one) is checked too: the test uncomments
it in place and checks its keys like the rest.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from trifle_otel.config import Config, load_config, parse_listen
from trifle_otel.errors import ConfigError

DIRECTORY = Path(__file__).resolve().parent.parent / "collector_config"

# -- the documented keys --------------------------------------------------------------------

S = None  # a scalar value (or a list of scalars)


class FreeMap:
    """A mapping whose keys the user chooses (`headers`), values scalars; also accepted as
    the list of `{name, value}` pairs that configopaque.MapList stores (maplist.go)."""


HEADERS = FreeMap()

# config/configauth/config.schema.yaml, config/configmiddleware/config.schema.yaml
AUTH = {"authenticator": S}
MIDDLEWARES = [{"id": S}]
# config/configtls/config.schema.yaml: config (common), client_config, server_config
TLS_COMMON = {
    "ca_file": S, "ca_pem": S, "cert_file": S, "cert_pem": S, "cipher_suites": S, "curve_preferences": S,
    "include_system_ca_certs_pool": S, "key_file": S, "key_pem": S, "max_version": S, "min_version": S,
    "reload_interval": S, "tpm": {"auth": S, "enabled": S, "owner_auth": S, "path": S},
}
TLS_CLIENT = {**TLS_COMMON, "insecure": S, "insecure_skip_verify": S, "server_name_override": S}
TLS_SERVER = {**TLS_COMMON, "client_ca_file": S, "client_ca_file_reload": S}
# config/configgrpc/config.schema.yaml: client_config; server_config (with
# config/confignet/config.schema.yaml addr_config squashed in: endpoint, transport, dialer)
GRPC_CLIENT = {
    "auth": AUTH, "authority": S, "balancer_name": S, "compression": S, "endpoint": S, "headers": HEADERS,
    "keepalive": {"permit_without_stream": S, "time": S, "timeout": S}, "middlewares": MIDDLEWARES,
    "read_buffer_size": S, "tls": TLS_CLIENT, "user_agent": S, "wait_for_ready": S, "write_buffer_size": S,
}
GRPC_SERVER = {
    "auth": AUTH, "dialer": {"timeout": S}, "endpoint": S, "include_metadata": S,
    "keepalive": {
        "enforcement_policy": {"min_time": S, "permit_without_stream": S},
        "server_parameters": {"max_connection_age": S, "max_connection_age_grace": S, "max_connection_idle": S,
                              "time": S, "timeout": S},
    },
    "max_concurrent_streams": S, "max_recv_msg_size_mib": S, "middlewares": MIDDLEWARES, "read_buffer_size": S,
    "tls": TLS_SERVER, "transport": S, "write_buffer_size": S,
}
# config/confighttp/config.schema.yaml: client_config (cookies_config has no fields), server_config
HTTP_CLIENT = {
    "auth": AUTH, "compression": S, "compression_params": {"level": S}, "cookies": {}, "disable_keep_alives": S,
    "endpoint": S, "force_attempt_http2": S, "headers": HEADERS, "http2_ping_timeout": S,
    "http2_read_idle_timeout": S, "idle_conn_timeout": S, "max_conns_per_host": S, "max_idle_conns": S,
    "max_idle_conns_per_host": S, "middlewares": MIDDLEWARES, "proxy_url": S, "read_buffer_size": S, "timeout": S,
    "tls": TLS_CLIENT, "write_buffer_size": S,
}
HTTP_SERVER = {
    "auth": {**AUTH, "request_params": S}, "compression_algorithms": S,
    "cors": {"allowed_headers": S, "allowed_origins": S, "exposed_headers": S, "max_age": S}, "endpoint": S,
    "idle_timeout": S, "include_metadata": S, "keep_alives_enabled": S, "max_request_body_size": S,
    "middlewares": MIDDLEWARES, "read_header_timeout": S, "read_timeout": S, "response_headers": HEADERS,
    "tls": TLS_SERVER, "write_timeout": S,
}
# config/configretry/config.schema.yaml: back_off_config
RETRY = {"enabled": S, "initial_interval": S, "max_elapsed_time": S, "max_interval": S, "multiplier": S,
         "randomization_factor": S}
# exporter/exporterhelper/internal/queuebatch/config.schema.yaml: config, batch_config, partition_config
QUEUE = {
    "batch": {"flush_timeout": S, "max_size": S, "min_size": S, "partition": {"metadata_keys": S}, "sizer": S},
    "block_on_overflow": S, "enabled": S, "num_consumers": S, "queue_size": S, "sizer": S, "storage": S,
    "wait_for_result": S,
}
# exporter/exporterhelper/internal/config.schema.yaml: timeout_config
TIMEOUT = {"timeout": S}

# exporter/otlpexporter/config.schema.yaml: timeout_config + configgrpc client_config squashed
OTLP_GRPC_EXPORTER = {**TIMEOUT, **GRPC_CLIENT, "retry_on_failure": RETRY, "sending_queue": QUEUE}
# exporter/otlphttpexporter/config.schema.yaml: confighttp client_config squashed
OTLP_HTTP_EXPORTER = {
    **HTTP_CLIENT, "encoding": S, "logs_endpoint": S, "metrics_endpoint": S, "profiles_endpoint": S,
    "traces_endpoint": S, "retry_on_failure": RETRY, "sending_queue": QUEUE,
}
# contrib exporter/loadbalancingexporter/config.schema.yaml (0140961f): timeout_config squashed;
# configretry.BackOffConfig, listed there under allOf, is the embedded struct that contrib's
# config.go tags `mapstructure:"retry_on_failure"`.
LOADBALANCING_EXPORTER = {
    **TIMEOUT, "retry_on_failure": RETRY, "sending_queue": QUEUE,
    "protocol": {"otlp": OTLP_GRPC_EXPORTER},
    "resolver": {
        "static": {"hostnames": S},
        "dns": {"hostname": S, "port": S, "interval": S, "timeout": S},
        "k8s": {"service": S, "ports": S, "timeout": S, "return_hostnames": S},
        "aws_cloud_map": {"namespace": S, "service_name": S, "health_status": S, "interval": S, "timeout": S,
                          "port": S, "owner_account": S},
    },
    "routing_key": S, "routing_attributes": S,
}
# receiver/otlpreceiver/config.schema.yaml: protocols.grpc (configgrpc server_config),
# protocols.http (confighttp server_config + the *_url_path settings)
OTLP_RECEIVER = {
    "protocols": {
        "grpc": GRPC_SERVER,
        "http": {**HTTP_SERVER, "traces_url_path": S, "metrics_url_path": S, "logs_url_path": S},
    },
}
# processor/batchprocessor/config.schema.yaml
BATCH_PROCESSOR = {"metadata_cardinality_limit": S, "metadata_keys": S, "send_batch_max_size": S,
                   "send_batch_size": S, "timeout": S}
# processor/memorylimiterprocessor/config.schema.yaml -> internal/memorylimiter/config.schema.yaml
MEMORY_LIMITER_PROCESSOR = {
    "check_interval": S, "limit_mib": S, "limit_percentage": S, "spike_limit_mib": S, "spike_limit_percentage": S,
    "min_gc_interval_when_soft_limited": S, "min_gc_interval_when_hard_limited": S,
    "max_gc_interval_when_soft_limited": S, "max_gc_interval_when_hard_limited": S,
}

# Component types (metadata.yaml `type`, and `deprecated_type` where a type was renamed:
# otlp -> otlp_grpc and otlphttp -> otlp_http in v0.144.0; loadbalancing -> load_balancing
# per contrib's v0.154.0 README).
COMPONENTS: dict[str, dict[str, dict]] = {
    "receivers": {"otlp": OTLP_RECEIVER},
    "processors": {"batch": BATCH_PROCESSOR, "memory_limiter": MEMORY_LIMITER_PROCESSOR},
    "exporters": {
        "otlp": OTLP_GRPC_EXPORTER, "otlp_grpc": OTLP_GRPC_EXPORTER,
        "otlphttp": OTLP_HTTP_EXPORTER, "otlp_http": OTLP_HTTP_EXPORTER,
        "loadbalancing": LOADBALANCING_EXPORTER, "load_balancing": LOADBALANCING_EXPORTER,
    },
}
# otelcol/config.go (top level), service/config.go (service), service/pipelines/config.go (a pipeline)
TOP_LEVEL = ("receivers", "processors", "exporters", "connectors", "extensions", "service")
class Pipelines:
    """service.pipelines: pipeline ids of the user's choosing, each checked against PIPELINE."""


SERVICE = {"extensions": S, "pipelines": Pipelines()}
PIPELINE = ("receivers", "processors", "exporters")
GRPC_EXPORTERS = {"otlp", "otlp_grpc"}
HTTP_EXPORTERS = {"otlphttp", "otlp_http"}
LB_EXPORTERS = {"loadbalancing", "load_balancing"}
LB_DEFAULT_PORT = 4317  # loadbalancer.go: defaultPort, added by endpointWithPort


# -- reading the files ----------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a repeated key is refused instead."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is repeated", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse(text: str) -> dict:
    return yaml.load(text, Loader=_UniqueKeyLoader)


_BLOCK_START = re.compile(r"^(?P<indent>\s*)# (?P<key>[A-Za-z_][\w./-]*):\s*$")


def uncommented(text: str) -> tuple[str, list[str]]:
    """The text with its commented-out YAML blocks uncommented in place, and their keys."""
    lines, keys, i = text.splitlines(), [], 0
    while i < len(lines):
        start = _BLOCK_START.match(lines[i])
        if start:
            body = re.compile("^" + re.escape(start["indent"]) + r"#   +\S")
            j = i + 1
            while j < len(lines) and body.match(lines[j]):
                j += 1
            if j > i + 1:
                cut = len(start["indent"]) + 2
                for k in range(i, j):
                    lines[k] = start["indent"] + lines[k][cut:]
                keys.append(start["key"])
                i = j
                continue
        i += 1
    return "\n".join(lines) + "\n", keys


@dataclass
class Sidecar:
    """Where a file's comments say the trifle-otel sidecar listens (`trifle-otel serve ...`)."""

    grpc: tuple[str, int]
    http: tuple[str, int]
    says_default_ports: bool


def sidecars_in_comments(text: str) -> list[Sidecar]:
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    defaults = Config()
    found = []
    for match in re.finditer(r"trifle-otel serve(?P<args>(?:[ \t]+--[\w-]+[ \t]+[^\s#]+)+)", comments):
        args = match["args"].split()
        flags = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        grpc = parse_listen(flags.get("--grpc", defaults.grpc_listen), "--grpc")
        http = parse_listen(flags.get("--http", defaults.http_listen), "--http")
        assert grpc and http, f"the sidecar in {match[0]!r} must listen on both receivers here"
        found.append(Sidecar(grpc, http, "default ports" in comments))
    return found


def collector_files() -> list[Path]:
    return sorted(p for p in DIRECTORY.glob("*.y*ml") if not p.name.startswith("trifle"))


def trifle_files() -> list[Path]:
    return sorted(DIRECTORY.glob("trifle*.y*ml"))


# -- the checks -----------------------------------------------------------------------------


def _hint(key, allowed) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(value, schema, path: str) -> list[str]:
    """Every key of ``value`` (nested) is one ``schema`` documents."""
    if schema is S:
        return [f"{path}: a value is expected, not a mapping"] if isinstance(value, dict) else []
    if isinstance(schema, Pipelines):
        if not isinstance(value, dict):
            return [f"{path}: a mapping of pipelines is expected"]
        return [p for name, pipeline in value.items()
                for p in check_keys(pipeline, dict.fromkeys(PIPELINE, S), f"{path}.{name}")]
    if isinstance(schema, FreeMap):
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if isinstance(v, (dict, list))]
            return [f"{path}.{k}: a header value must be a string" for k in bad]
        if isinstance(value, list):
            return [p for i, item in enumerate(value) for p in check_keys(item, {"name": S, "value": S}, f"{path}[{i}]")]
        return [f"{path}: headers must be a mapping of names to values"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: a list is expected"]
        return [p for i, item in enumerate(value) for p in check_keys(item, schema[0], f"{path}[{i}]")]
    if value is None:  # `grpc:` alone: the component's defaults
        return []
    if not isinstance(value, dict):
        return [f"{path}: a mapping is expected (got {value!r})"]
    problems = []
    for key, item in value.items():
        if key not in schema:
            problems.append(f"{path}.{key}: not a documented setting{_hint(key, schema)}")
        else:
            problems += check_keys(item, schema[key], f"{path}.{key}")
    return problems


def component_type(component_id: str) -> str:
    return str(component_id).split("/", 1)[0]


def key_problems(doc) -> list[str]:
    if not isinstance(doc, dict):
        return ["the file must be a mapping of sections"]
    problems = [f"{k}: not a Collector config section{_hint(k, TOP_LEVEL)}" for k in doc if k not in TOP_LEVEL]
    for section, known in COMPONENTS.items():
        for component_id, body in (doc.get(section) or {}).items():
            kind = component_type(component_id)
            if kind not in known:
                problems.append(f"{section}.{component_id}: {kind!r} is not a component documented here{_hint(kind, known)}")
            else:
                problems += check_keys(body, known[kind], f"{section}.{component_id}")
    for section in ("connectors", "extensions"):
        for component_id in doc.get(section) or {}:
            problems.append(f"{section}.{component_id}: no {section[:-1]} is documented here")
    problems += check_keys(doc.get("service"), SERVICE, "service")
    return problems


def wiring_problems(doc) -> list[str]:
    """Traces pipelines only; every reference defined; every component used; the memory
    limiter first; a loadbalancing exporter routes by trace id and gets its endpoints from
    its resolver."""
    problems: list[str] = []
    pipelines = ((doc.get("service") or {}).get("pipelines")) or {}
    if not pipelines:
        return ["service.pipelines: no pipeline"]
    used: dict[str, set] = {section: set() for section in PIPELINE}
    for name, pipeline in pipelines.items():
        where = f"service.pipelines.{name}"
        if component_type(name) != "traces":
            problems.append(f"{where}: only traces pipelines belong here (trifle-otel takes spans)")
        pipeline = pipeline or {}
        for section in PIPELINE:
            refs = pipeline.get(section) or []
            if section != "processors" and not refs:
                problems.append(f"{where}.{section}: empty")
            for ref in refs:
                used[section].add(ref)
                if ref not in (doc.get(section) or {}):
                    problems.append(f"{where}.{section}: {ref!r} is not defined in {section}")
        processors = [component_type(p) for p in pipeline.get("processors") or []]
        if "memory_limiter" in processors and processors[0] != "memory_limiter":
            problems.append(f"{where}.processors: memory_limiter must come first")
    for section in PIPELINE:
        for component_id in doc.get(section) or {}:
            if component_id not in used[section]:
                problems.append(f"{section}.{component_id}: defined but used by no pipeline")
    for component_id, body in (doc.get("exporters") or {}).items():
        if component_type(component_id) in LB_EXPORTERS:
            body = body or {}
            if body.get("routing_key", "traceID") != "traceID":
                problems.append(f"exporters.{component_id}.routing_key: must be traceID (all spans of an execution to one sidecar)")
            if "endpoint" in ((body.get("protocol") or {}).get("otlp") or {}):
                problems.append(f"exporters.{component_id}.protocol.otlp.endpoint: set by the resolver, must not be set")
            resolvers = [r for r in (body.get("resolver") or {}) if (body["resolver"] or {}).get(r) is not None]
            if len(resolvers) != 1:
                problems.append(f"exporters.{component_id}.resolver: exactly one resolver (got {resolvers})")
    return problems


def _host_port(endpoint, default_port: int | None = None) -> tuple[str, int] | None:
    """(host, port) of `host:port` or a URL; None when there is no port to be had."""
    text = str(endpoint or "")
    try:
        if "://" in text:
            parts = urlsplit(text)
            return parts.hostname or "", parts.port or {"http": 80, "https": 443}[parts.scheme]
        host, sep, port = text.rpartition(":")
        if not sep:
            return (text, default_port) if text and default_port else None
        return host, int(port)
    except (KeyError, ValueError):
        return None


def _is_sidecar(component_id: str) -> bool:
    return "trifle" in str(component_id).partition("/")[2]


def endpoint_problems(doc, sidecars: list[Sidecar]) -> list[str]:
    """Exporters to the sidecar (named `<type>/trifle...`) use the ports the file's `trifle-otel
    serve` line gives it; a sidecar on loopback shares the host with this collector, whose
    receivers must then leave the sidecar's ports free."""
    exporters = {k: v or {} for k, v in (doc.get("exporters") or {}).items() if _is_sidecar(k)}
    if not exporters:
        return []
    if len(sidecars) != 1:
        return [f"exporters to the sidecar, but {len(sidecars)} `trifle-otel serve` lines in the comments (expected 1)"]
    sidecar = sidecars[0]
    defaults = Config()
    problems = []
    if sidecar.says_default_ports:
        for name, (listen, default) in {"grpc": (sidecar.grpc, defaults.grpc_listen),
                                        "http": (sidecar.http, defaults.http_listen)}.items():
            if listen[1] != parse_listen(default, name)[1]:
                problems.append(f"the comments say the sidecar uses its default ports, but --{name} gives port {listen[1]}")
    for component_id, body in exporters.items():
        kind, where = component_type(component_id), f"exporters.{component_id}"
        if kind in GRPC_EXPORTERS:
            targets = [(where + ".endpoint", _host_port(body.get("endpoint", "")), sidecar.grpc)]
        elif kind in HTTP_EXPORTERS:
            targets = [(where + "." + k, _host_port(body[k]), sidecar.http)
                       for k in ("endpoint", "traces_endpoint") if body.get(k)]
        elif kind in LB_EXPORTERS:
            resolver = body.get("resolver") or {}
            targets = [(f"{where}.resolver.static.hostnames", _host_port(h, LB_DEFAULT_PORT), sidecar.grpc)
                       for h in (resolver.get("static") or {}).get("hostnames") or []]
            if resolver.get("dns"):
                dns = resolver["dns"]
                port = str(dns.get("port", LB_DEFAULT_PORT))
                address = (dns.get("hostname"), int(port)) if port.isdigit() else None
                targets.append((f"{where}.resolver.dns", address, sidecar.grpc))
        else:
            problems.append(f"{where}: not an exporter that can send to the sidecar")
            continue
        if not targets:
            problems.append(f"{where}: no endpoint")
        for setting, address, (listen_host, listen_port) in targets:
            if address is None or not address[0]:
                problems.append(f"{setting}: not HOST:PORT or a URL")
                continue
            host, port = address
            if port != listen_port:
                problems.append(f"{setting}: port {port}, but the sidecar listens on {listen_port}")
            if listen_host in ("127.0.0.1", "localhost", "::1") and host not in ("127.0.0.1", "localhost", "::1"):
                problems.append(f"{setting}: {host} cannot reach a sidecar bound to {listen_host}")
    if sidecar.grpc[0] in ("127.0.0.1", "localhost", "::1"):
        for component_id, body in (doc.get("receivers") or {}).items():
            for protocol, settings in ((body or {}).get("protocols") or {}).items():
                default = "localhost:4317" if protocol == "grpc" else "localhost:4318"  # otlpreceiver factory.go
                address = _host_port((settings or {}).get("endpoint", default))
                if address and address[1] in (sidecar.grpc[1], sidecar.http[1]):
                    port = address[1]
                    problems.append(f"receivers.{component_id}.protocols.{protocol}: port {port} is the sidecar's on this host")
    return problems


def env_problems(text: str) -> list[str]:
    """Secrets come from the environment with the Collector's `${env:NAME}` syntax."""
    return [f"{ref}: write it as ${{env:NAME}}" for ref in re.findall(r"\$\{[^}]*\}", text)
            if not re.fullmatch(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*\}", ref)]


def all_problems(text: str) -> list[str]:
    doc = parse(text)
    full, _ = uncommented(text)
    full_doc = parse(full)
    return (key_problems(doc) + key_problems(full_doc) + wiring_problems(doc)
            + endpoint_problems(full_doc, sidecars_in_comments(text)) + env_problems(text))


# -- the tests ------------------------------------------------------------------------------


def test_the_directory_has_the_topologies():
    names = {p.name for p in collector_files()}
    assert {"agent.yaml", "gateway-loadbalancing.yaml"} <= names


@pytest.mark.parametrize("path", collector_files(), ids=lambda p: p.name)
def test_collector_config_is_documented_wired_and_points_at_the_sidecar(path):
    assert all_problems(path.read_text()) == []


def test_agent_fans_out_to_the_sidecar_and_honeycomb_with_the_sidecar_off_the_standard_ports():
    text = (DIRECTORY / "agent.yaml").read_text()
    doc = parse(text)
    (sidecar,) = sidecars_in_comments(text)
    assert sidecar.grpc[1] not in (4317, 4318) and sidecar.http[1] not in (4317, 4318)
    (pipeline,) = doc["service"]["pipelines"].values()
    assert pipeline["processors"] == ["memory_limiter", "batch"]
    targets = {component_type(e): doc["exporters"][e] for e in pipeline["exporters"]}
    assert any(_is_sidecar(e) for e in pipeline["exporters"])
    honeycomb = [doc["exporters"][e] for e in pipeline["exporters"] if "honeycomb" in e]
    assert honeycomb and honeycomb[0]["headers"] == {"x-honeycomb-team": "${env:HONEYCOMB_API_KEY}"}
    assert urlsplit(honeycomb[0]["endpoint"]).hostname == "api.honeycomb.io"
    assert doc["exporters"]["otlp/trifle"]["tls"] == {"insecure": True}
    for body in targets.values():
        assert body["retry_on_failure"]["enabled"] and body["sending_queue"]["enabled"]


def test_gateway_routes_by_trace_id_with_the_static_resolver_and_shows_the_dns_one():
    text = (DIRECTORY / "gateway-loadbalancing.yaml").read_text()
    doc = parse(text)
    (lb_id,) = [e for e in doc["exporters"] if component_type(e) in LB_EXPORTERS]
    lb = doc["exporters"][lb_id]
    assert lb["routing_key"] == "traceID"
    assert len(lb["resolver"]["static"]["hostnames"]) >= 2
    full, blocks = uncommented(text)
    assert "dns" in blocks  # the DNS resolver is shown, and checked above like the rest
    dns = parse(full)["exporters"][lb_id]["resolver"]["dns"]
    assert dns["hostname"] and int(dns["port"]) == sidecars_in_comments(text)[0].grpc[1]


def _mutations(value, path=()):
    """Every key path of a document, for renaming one key at a time (not the names chosen
    by the user inside a header mapping)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path + (key,)
            if key not in ("headers", "response_headers"):
                yield from _mutations(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _mutations(item, path + (i,))


def _rename(doc, path, suffix="x"):
    out = copy.deepcopy(doc)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    renamed = {}
    for key, item in parent.items():
        renamed[f"{key}{suffix}" if key == path[-1] else key] = item
    parent.clear()
    parent.update(renamed)
    return out


@pytest.mark.parametrize("path", collector_files(), ids=lambda p: p.name)
def test_a_typo_in_any_key_is_caught(path):
    """Each key of the file, commented-out blocks included, misspelled in turn: the checks
    must report something new for every one of them."""
    text = path.read_text()
    full_doc = parse(uncommented(text)[0])
    sidecars = sidecars_in_comments(text)

    def problems(doc) -> set[str]:
        return set(key_problems(doc) + wiring_problems(doc) + endpoint_problems(doc, sidecars))

    assert key_problems(full_doc) == []
    baseline = problems(full_doc)  # (with a commented-out resolver uncommented: two resolvers)
    paths = list(_mutations(full_doc))
    assert len(paths) > 30
    missed = [".".join(map(str, p)) for p in paths if not problems(_rename(full_doc, p)) - baseline]
    assert missed == []


def test_the_checks_catch_a_wrong_port_an_unused_component_and_a_missing_one():
    text = (DIRECTORY / "agent.yaml").read_text()
    doc = parse(text)
    sidecars = sidecars_in_comments(text)
    wrong_port = copy.deepcopy(doc)
    wrong_port["exporters"]["otlp/trifle"]["endpoint"] = "127.0.0.1:4317"
    assert any("sidecar listens on" in p for p in endpoint_problems(wrong_port, sidecars))
    unused = copy.deepcopy(doc)
    unused["processors"]["batch/extra"] = None
    assert any("used by no pipeline" in p for p in wiring_problems(unused))
    missing = copy.deepcopy(doc)
    del missing["processors"]["batch"]
    assert any("not defined" in p for p in wiring_problems(missing))
    metrics = copy.deepcopy(doc)
    metrics["service"]["pipelines"]["metrics"] = metrics["service"]["pipelines"].pop("traces")
    assert any("only traces pipelines" in p for p in wiring_problems(metrics))
    assert env_problems("key: ${HONEYCOMB_API_KEY}")


def _load_trifle(path: Path, monkeypatch) -> Config:
    """A trifle-otel config from this directory, with each ${NAME} it uses set."""
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()):
        monkeypatch.setenv(name, f"test-{name.lower()}")
    return load_config(path, environ={})


def test_trifle_configs_here_load(monkeypatch, tmp_path):
    for path in trifle_files():
        config = _load_trifle(path, monkeypatch)
        assert config.source == str(path)
    # The same loading refuses a mistyped copy, so a broken sample here cannot pass.
    sample = trifle_files()[0].read_text() if trifle_files() else "receivers:\n  grpc: 127.0.0.1:14317\n"
    broken = tmp_path / "trifle-broken.yaml"
    broken.write_text(sample + "\nreceivers_typo:\n  grace: 1\n")
    with pytest.raises(ConfigError, match="receivers_typo"):
        _load_trifle(broken, monkeypatch)


def test_the_readme_links_each_file_from_its_topology():
    readme = (DIRECTORY.parent / "README.md").read_text()
    section = readme.split("## Scale-out and collector topologies", 1)[1].split("\n## ", 1)[0]
    for path in collector_files():
        assert f"](collector_config/{path.name})" in section, path.name
