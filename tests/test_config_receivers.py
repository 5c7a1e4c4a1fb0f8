"""The ``receivers`` section of the configuration (trifle-otel serve)."""

from __future__ import annotations

import pytest

from trifle_otel.config import Config, load_config, parse_listen
from trifle_otel.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "trifle.yaml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback():
    config = load_config(environ={})
    assert config.grpc_address() == ("127.0.0.1", 4317)
    assert config.http_address() == ("127.0.0.1", 4318)
    assert config.auth_token is None
    assert (config.max_request_bytes, config.wal_max_bytes) == (16 << 20, 1 << 30)


def test_file_section_with_a_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIFLE_TOKEN", "abc123")
    path = write(
        tmp_path,
        """
receivers:
  grpc: 0.0.0.0:14317
  http: off
  auth:
    token: ${TRIFLE_TOKEN}
  max_request_bytes: 33554432
  wal_max_bytes: 268435456
  wal_segment_bytes: 8388608
""",
    )
    config = load_config(path, environ={})
    assert config.grpc_address() == ("0.0.0.0", 14317)
    assert config.http_address() is None
    assert config.auth_token == "abc123"
    assert (config.max_request_bytes, config.wal_max_bytes, config.wal_segment_bytes) == (32 << 20, 256 << 20, 8 << 20)
    assert "abc123" not in repr(config)


def test_the_token_variable_must_be_set(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIFLE_TOKEN", raising=False)
    path = write(tmp_path, "receivers:\n  auth:\n    token: ${TRIFLE_TOKEN}\n")
    with pytest.raises(ConfigError, match=r"'receivers.auth.token' uses \$\{TRIFLE_TOKEN\}, but the environment variable"):
        load_config(path)


@pytest.mark.parametrize("token", ["", "two words", "tab\there"])
def test_unusable_tokens_are_refused(token):
    with pytest.raises(ConfigError, match="'receivers.auth.token' must be a non-empty token without spaces"):
        load_config(overrides={"auth_token": token}, environ={})


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:4317", ("127.0.0.1", 4317)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:4318", ("::1", 4318)),
        ("OFF", None),
        (False, None),  # YAML's reading of a bare off
    ],
)
def test_listen_addresses(value, expected):
    assert parse_listen(value, "receivers.grpc") == expected


@pytest.mark.parametrize("value", ["4317", ":4317", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "no port"])
def test_bad_listen_addresses_name_the_setting(value):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"grpc_listen": value}, environ={})
    assert str(caught.value) == (
        "setting 'receivers.grpc' must be HOST:PORT (such as 127.0.0.1:4317, 0.0.0.0:4317 for every interface, "
        f"[::1]:4317) or off (got {value!r})"
    )


def test_mistyped_settings_are_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting 'receivers.auth.tokn' \(did you mean 'auth.token'\?\)"):
        load_config(write(tmp_path, "receivers:\n  auth:\n    tokn: x\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown setting 'receivers.grpc_listen' \(known: grpc, http, auth.token, max_request_bytes"):
        load_config(write(tmp_path, "receivers:\n  grpc_listen: 127.0.0.1:1\n"), environ={})
    with pytest.raises(ConfigError, match="setting 'max_request_bytes' must be a whole number"):
        load_config(write(tmp_path, "receivers:\n  max_request_bytes: lots\n"), environ={})


def test_the_log_must_hold_a_largest_request():
    with pytest.raises(ConfigError, match=r"'receivers.wal_max_bytes' \(1,000\) must be at least 'receivers.max_request_bytes'"):
        Config(wal_max_bytes=1000).validate()
    with pytest.raises(ConfigError, match="'receivers.max_request_bytes' must be a positive number of bytes"):
        Config(max_request_bytes=0).validate()


def test_both_receivers_on_one_port_is_refused():
    with pytest.raises(ConfigError, match="both listen on 127.0.0.1:4317"):
        Config(http_listen="127.0.0.1:4317").validate()
