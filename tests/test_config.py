"""Configuration: flags > environment > file > defaults, and clear errors for mistakes."""

from __future__ import annotations

import pytest

from trifle_otel.config import Config, load_config
from trifle_otel.errors import ConfigError


def test_defaults_put_the_embedded_store_under_dot_trifle(tmp_path):
    config = load_config(environ={})
    assert config.resolved_index_url() == f"sqlite://{tmp_path / '.trifle' / 'traces.db'}"
    assert config.resolved_data_url() == f"sqlite://{tmp_path / '.trifle' / 'data.db'}"
    assert config.resolved_stats_url() == f"sqlite://{tmp_path / '.trifle' / 'stats.db'}"


def test_precedence(tmp_path):
    file = tmp_path / "trifle.yaml"
    file.write_text("store:\n  home: from-file\n  index_url: sqlite:///file.db\ntraces:\n  retention_days: 9\n")
    env = {"TRIFLE_OTEL_CONFIG": str(file), "TRIFLE_OTEL_INDEX_URL": "sqlite:///env.db"}
    config = load_config(environ=env)
    assert config.home_path == tmp_path / "from-file"  # relative to the file
    assert config.index_url == "sqlite:///env.db"
    assert config.retention_days == 9
    config = load_config(environ=env, overrides={"index_url": "sqlite:///flag.db", "home": None})
    assert config.index_url == "sqlite:///flag.db"
    env["TRIFLE_OTEL_HOME"] = "/srv/trifle"
    assert load_config(environ=env).home == "/srv/trifle"


@pytest.mark.parametrize(
    "text, message",
    [
        ("traces:\n  retention_dayz: 3\n", "unknown setting 'traces.retention_dayz' (did you mean 'retention_days'?)"),
        ("tracez: {}\n", "unknown section 'tracez' (did you mean 'traces'?)"),
        ("traces:\n  retention_days: soon\n", "setting 'retention_days' must be a whole number (got 'soon')"),
        ("traces:\n  live: maybe\n", "setting 'live' must be true or false"),
        ("traces:\n  tag_attributes: 3\n", "setting 'tag_attributes' must be a list of strings"),
        ("traces: [1, 2\n", "is not valid YAML at line 2"),
        ("- 1\n", "must be a mapping of sections"),
        ("traces:\n  part_size: 0\n", "setting 'part_size' must be a positive number"),
        ("stats:\n  beginning_of_week: someday\n", "setting 'beginning_of_week' must be a weekday name"),
    ],
)
def test_bad_config_files_are_refused_with_the_setting_named(tmp_path, text, message):
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(file, environ={})
    assert message in str(err.value)


def test_env_lists_and_booleans(tmp_path):
    config = load_config(environ={}, overrides={"tag_attributes": "customer.id, reseller.id", "live": "false"})
    assert config.tag_attributes == ["customer.id", "reseller.id"] and config.live is False


def test_processor_keyword_settings_are_checked():
    from trifle_otel import TrifleSpanProcessor

    with pytest.raises(ConfigError, match="unknown setting 'retention'"):
        TrifleSpanProcessor(retention=3)
    assert Config().validate().retention_days == 30


def test_environment_variables_in_the_file(tmp_path, monkeypatch):
    file = tmp_path / "c.yaml"
    file.write_text("store:\n  index_url: mongodb://trifle:${MONGO_PASSWORD}@db/trifle\n")
    monkeypatch.setenv("MONGO_PASSWORD", "pw")
    assert load_config(file, environ={}).index_url == "mongodb://trifle:pw@db/trifle"
    monkeypatch.delenv("MONGO_PASSWORD")
    with pytest.raises(ConfigError, match=r"uses \$\{MONGO_PASSWORD\}, but the environment variable MONGO_PASSWORD is not set"):
        load_config(file, environ={})


def test_non_string_keys_in_the_file(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("1: {}\n")
    with pytest.raises(ConfigError, match="unknown section '1'"):
        load_config(file, environ={})
