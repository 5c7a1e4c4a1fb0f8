"""What the MongoDB and S3 drivers must do beyond the shared conformance suite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from test_sqlite_index import record

from trifle_otel.cli import main
from trifle_otel.errors import ConfigError, PartialWriteError, StoreError
from trifle_otel.stats.buffer import StatsBuffer
from trifle_otel.stats.drivers.mongo import MongoStatsDriver
from trifle_otel.stats.granularity import Floor, parse_granularity
from trifle_otel.stores import mongo, open_data
from trifle_otel.stores.mongo_index import MongoTraceIndex, _to_document
from trifle_otel.stores.s3 import S3DataStore, parse_s3_url

pytestmark = [pytest.mark.mongo, pytest.mark.s3]
HOUR = int(datetime(2026, 11, 23, 10, tzinfo=timezone.utc).timestamp())
BIN = Path(sys.executable).parent / "trifle-otel"


def field_names(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from field_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from field_names(v)


def test_field_names_from_data_never_reach_mongodb(mongo_url):
    index = MongoTraceIndex(mongo_url)
    r = record(1, "k")
    r["meta"] = {"customer.id": "acme", "$where": "x", "nested": {"a.b": 1}}
    r["context"] = {"service.name": "w"}
    index.upsert([r])
    raw = index.collection.find_one({})
    names = list(field_names(raw))
    assert not [n for n in names if "." in n or n.startswith("$")], names
    assert index.get(r["reference"])["meta"] == r["meta"]
    assert index.get(r["reference"])["context"] == {"service.name": "w"}


def test_no_record_can_exceed_the_bson_limit():
    import bson

    r = record(1, "k")
    r["meta"] = {f"k{i}": "v" * 100_000 for i in range(200)}  # 20 MB, more than any translation makes
    doc = _to_document(r)
    assert len(bson.encode(doc)) < 16 * 1024 * 1024
    assert "trifle.meta_dropped" in doc["meta"]


def test_indexes_for_every_filter_and_ttl(mongo_url):
    index = MongoTraceIndex(mongo_url)
    index.setup()
    index.setup()  # idempotent
    info = index.collection.index_information()
    keys = {tuple(k for k, _ in v["key"]) for v in info.values()}
    for expected in [("segments", "first_at", "_id"), ("tags", "first_at", "_id"), ("state", "first_at", "_id"),
                     ("first_at", "_id"), ("duration", "first_at"), ("expires_at",)]:
        assert expected in keys
    ttl = [v for v in info.values() if v["key"] == [("expires_at", 1)]][0]
    assert ttl["expireAfterSeconds"] == 0


def test_stats_layout_in_mongodb(mongo_url):
    driver = MongoStatsDriver(mongo_url, expire_after=86400)
    driver.setup()
    driver.inc([("prices", "1h", HOUR, {"count": 1, "codes.OK": 2})])
    doc = driver.collection.find_one({"key": f"prices::1h::{HOUR}"})
    assert doc["data"] == {"count": 1, "codes": {"OK": 2}}
    assert doc["expire_at"].replace(tzinfo=timezone.utc) == datetime.fromtimestamp(HOUR, timezone.utc) + timedelta(days=1)
    unique = [v for v in driver.collection.index_information().values() if v.get("unique")]
    assert unique and unique[0]["key"] == [("key", 1)]


def failing_second_operation(driver, then):
    """Wrap bulk_write: the first call applies every operation but the second and reports
    that one as failed (a duplicate key from a racing upsert); later calls go to ``then``."""
    from pymongo.errors import BulkWriteError

    real = driver.collection.bulk_write
    calls = []

    def bulk_write(ops, ordered=True):
        calls.append(len(ops))
        if len(calls) == 1:
            real([op for i, op in enumerate(ops) if i != 1], ordered=False)
            raise BulkWriteError({"writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"}]})
        return then(real, ops, ordered)

    driver.collection.bulk_write = bulk_write
    return calls, real


def test_partial_bulk_failure_retries_only_the_failed_operations(mongo_url):
    driver = MongoStatsDriver(mongo_url)
    calls, _ = failing_second_operation(driver, lambda real, ops, ordered: real(ops, ordered=ordered))
    driver.inc([("a", "1h", HOUR, {"count": 1}), ("b", "1h", HOUR, {"count": 1}), ("c", "1h", HOUR, {"count": 1})])
    assert calls == [3, 1]
    assert driver.get([("a", "1h", HOUR), ("b", "1h", HOUR), ("c", "1h", HOUR)]) == [{"count": 1}] * 3


def three_tracks_partly_refused(driver):
    """A buffer holding one increment each for keys a, b, c, after a flush the store partly refused."""
    buffer = StatsBuffer(driver, [parse_granularity("1h")], Floor(), system_tracking=False)
    at = datetime.fromtimestamp(HOUR, timezone.utc)
    for key in ("a", "b", "c"):
        buffer.track(key, at, {"count": 1})
    with pytest.raises(PartialWriteError):
        buffer.flush()
    return buffer


def test_buffer_puts_back_only_what_was_not_applied(mongo_url):
    from pymongo.errors import BulkWriteError

    driver = MongoStatsDriver(mongo_url)
    real = driver.collection.bulk_write
    state = {"fail": True}

    def refusing(ops, ordered=True):
        if state["fail"]:
            real(ops[:1], ordered=False)
            raise BulkWriteError({"writeErrors": [{"index": i, "code": 2, "errmsg": "bad value"} for i in range(1, len(ops))]})
        return real(ops, ordered=ordered)

    driver.collection.bulk_write = refusing
    buffer = three_tracks_partly_refused(driver)
    assert buffer.pending == 2
    state["fail"] = False
    buffer.flush()
    assert driver.get([("a", "1h", HOUR), ("b", "1h", HOUR), ("c", "1h", HOUR)]) == [{"count": 1}] * 3


def test_unreachable_mongodb_is_a_clear_error_without_the_password(monkeypatch):
    monkeypatch.setattr(mongo, "client_factory", mongo._client)
    url = "mongodb://admin:s3cret@127.0.0.1:1/trifle?serverSelectionTimeoutMS=300"
    result = CliRunner().invoke(main, ["traces", "list", "--index-url", url])
    assert result.exit_code == 1
    assert "cannot search MongoDB at mongodb://admin:***@127.0.0.1:1/trifle" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("url, message", [
    ("s3://", "names no bucket"),
    ("s3://Bad_Bucket/x", "is not a valid bucket name"),
])
def test_bad_s3_urls(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_s3_url(url)


def test_s3_errors_name_the_object(s3_env):
    store = S3DataStore("s3://no-such-bucket-here/traces")
    with pytest.raises(StoreError, match="cannot write s3://no-such-bucket-here/x"):
        store.put("x", b"1")


def test_s3_setup_writes_lifecycle_rules_per_retention_class(s3_env):
    store = S3DataStore("s3://lifecycle-test/traces")
    store.setup([7, 30])
    store.setup([7, 30, 90])  # idempotent, replaces only its own rules
    rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket="lifecycle-test")["Rules"]
    assert sorted((r["ID"], r["Filter"]["Prefix"], r["Expiration"]["Days"]) for r in rules) == [
        ("trifle-otel-retention-30d", "30/traces/", 30),
        ("trifle-otel-retention-7d", "7/traces/", 7),
        ("trifle-otel-retention-90d", "90/traces/", 90),
    ]


def test_demo_into_s3_with_the_documented_layout(s3_env, tmp_path):
    env = {**os.environ, "TRIFLE_OTEL_HOME": str(tmp_path / "home"), "TRIFLE_OTEL_DATA_URL": "s3://demo-a,demo-b/traces"}
    for args in (["setup"], ["demo", "--jobs", "40"]):
        proc = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    s3 = boto3.client("s3")
    keys = {b: [o["Key"] for o in s3.list_objects_v2(Bucket=b).get("Contents", [])] for b in ("demo-a", "demo-b")}
    assert keys["demo-a"] and keys["demo-b"], "executions are spread over both buckets"
    layout = re.compile(r"^30/traces/[a-z_/]+/[0-9a-f]{48}/(data_\d+\.json|artifacts/[a-z_0-9]+\.txt)$")
    every = keys["demo-a"] + keys["demo-b"]
    assert all(layout.match(k) for k in every), [k for k in every if not layout.match(k)][:5]
    assert any("/artifacts/part_row_" in k for k in every)
    listed = json.loads(subprocess.run([str(BIN), "traces", "list", "--json", "--limit", "200"], env=env,
                                       capture_output=True, text=True).stdout)
    with_media = [r for r in listed["records"] if r["counters"]["types"]["media"]][0]
    assert with_media["bucket_name"] in ("demo-a", "demo-b")
    shown = json.loads(subprocess.run([str(BIN), "traces", "show", with_media["reference"], "--json"], env=env,
                                      capture_output=True, text=True).stdout)
    assert len(shown["lines"]) == with_media["length"]
    media = [l for l in shown["lines"] if l["type"] == "media"][0]
    body = subprocess.run([str(BIN), "traces", "show", with_media["reference"], "--artifact", media["message"]],
                          env=env, capture_output=True).stdout
    assert len(body) == media["size"]


def test_data_url_from_config_file_with_endpoint(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    file = tmp_path / "trifle.yaml"
    file.write_text(f"store:\n  data_url: s3://from-config/p\n  s3_endpoint_url: {s3_endpoint}\n")
    from trifle_otel.config import load_config

    config = load_config(file)
    store = open_data(config.resolved_data_url(), config)
    store.setup([30])
    store.put("30/p/k/r/data_1.json", b"[]")
    assert store.get("30/p/k/r/data_1.json") == b"[]" and store.prefix == "p"


def test_a_retry_that_fails_reports_only_what_was_not_applied(mongo_url):
    from pymongo.errors import AutoReconnect

    def lost(real, ops, ordered):
        raise AutoReconnect("connection lost")

    driver = MongoStatsDriver(mongo_url)
    _, real = failing_second_operation(driver, lost)
    buffer = three_tracks_partly_refused(driver)
    driver.collection.bulk_write = real
    buffer.flush()
    assert driver.get([("a", "1h", HOUR), ("b", "1h", HOUR), ("c", "1h", HOUR)]) == [{"count": 1}] * 3


def test_cli_never_prints_the_mongodb_password(mongo_url):
    url = mongo_url.replace("mongodb://", "mongodb://admin:S3cretPw@")
    for args in (["traces", "list"], ["traces", "show", "abc"]):
        result = CliRunner().invoke(main, [*args, "--index-url", url])
        assert "S3cretPw" not in result.output and "admin:***@" in result.output
