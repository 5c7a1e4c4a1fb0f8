"""Stats storage and API: Trifle::Stats layout in SQLite, buffering, sanitizing."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from trifle_otel.config import Config
from trifle_otel.errors import StoreError
from trifle_otel.stats.api import Stats, keys_in_use
from trifle_otel.stats.buffer import StatsBuffer
from trifle_otel.stats.drivers.sqlite import SQLiteStatsDriver
from trifle_otel.stats.granularity import Floor, parse_granularity
from trifle_otel.stats.values import flatten, nest, read_data, sanitize_name

T = datetime(2026, 11, 23, 10, 17, 43, tzinfo=timezone.utc)
HOUR = int(datetime(2026, 11, 23, 10, tzinfo=timezone.utc).timestamp())
DAY = int(datetime(2026, 11, 23, tzinfo=timezone.utc).timestamp())


def test_sanitize_names():
    assert sanitize_name("1.5") == "1_5"
    assert sanitize_name("$set") == "_set"
    assert sanitize_name('a"b\\c') == "a_b_c"
    assert sanitize_name("") == "_"
    assert sanitize_name("OK") == "OK"
    assert flatten({"codes": {"a.b": 1, "$x": 2}, "skip": "text", "flag": True}) == {"codes.a_b": 1, "codes._x": 2}


def test_read_data_merges_flat_and_nested_forms():
    # What Trifle::Stats 2.6's SQLite writer leaves: the first increment flat, later ones nested.
    stored = {"count": 3, "codes.OK": 1, "codes": {"OK": 2, "ERR": 1}, "a.b.c": 1.5}
    assert read_data(stored) == {"count": 3, "codes": {"OK": 3, "ERR": 1}, "a": {"b": {"c": 1.5}}}
    assert nest({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


@pytest.fixture
def stats(tmp_path):
    s = Stats(Config(home=str(tmp_path), granularities=["1h", "1d"]), background=False)
    yield s
    s.shutdown()


def test_sqlite_layout_is_trifles(stats, tmp_path):
    stats.track("prices", T, {"count": 1, "codes": {"OK": 1}, "price": 10.5})
    stats.track("prices", T + timedelta(minutes=5), {"count": 1, "codes": {"OK": 1, "ERR": 2}, "price": 1})
    stats.flush()
    conn = sqlite3.connect(tmp_path / "stats.db")
    schema = sorted(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    assert schema == [
        "CREATE TABLE trifle_stats (key varchar(255), data json)",
        "CREATE UNIQUE INDEX idx_trifle_stats_key ON trifle_stats (key)",
    ]
    rows = dict(conn.execute("SELECT key, data FROM trifle_stats"))
    assert set(rows) == {
        f"prices::1h::{HOUR}",
        f"prices::1d::{DAY}",
        f"__system__key__::1h::{HOUR}",
        f"__system__key__::1d::{DAY}",
    }
    assert json.loads(rows[f"prices::1h::{HOUR}"]) == {"count": 2, "codes": {"OK": 2, "ERR": 2}, "price": 11.5}
    assert json.loads(rows[f"__system__key__::1d::{DAY}"]) == {"count": 2, "keys": {"prices": 2}}
    assert isinstance(json.loads(rows[f"prices::1h::{HOUR}"])["price"], float)


def test_values_shape_and_empty_buckets(stats):
    stats.track("k", T, {"count": 2})
    stats.track("k", T + timedelta(hours=2), {"count": 1})
    series = stats.values("k", T, T + timedelta(hours=2), "1h")
    assert [a.hour for a in series["at"]] == [10, 11, 12]
    assert series["values"] == [{"count": 2}, {}, {"count": 1}]
    assert stats.values("k", T, T + timedelta(hours=2), "1h", skip_blanks=True)["values"] == [{"count": 2}, {"count": 1}]
    assert stats.values("k", T, T, "1d")["values"] == [{"count": 3}]


def test_assert_sets_values_and_keeps_the_others(stats):
    stats.track("k", T, {"count": 1, "gauge": {"a": 5}})
    stats.flush()
    stats.assert_("k", T, {"gauge": {"a": 1}, "level": 7})
    assert stats.values("k", T, T, "1h")["values"] == [{"count": 1, "gauge": {"a": 1}, "level": 7}]


def test_reads_rows_written_flat_by_trifle(stats, tmp_path):
    conn = sqlite3.connect(tmp_path / "stats.db")
    conn.execute("INSERT INTO trifle_stats VALUES (?, ?)", (f"legacy::1h::{HOUR}", json.dumps({"count": 1, "codes.OK": 1})))
    conn.commit()
    stats.track("legacy", T, {"count": 1, "codes": {"OK": 1}})
    assert stats.values("legacy", T, T, "1h")["values"] == [{"count": 2, "codes": {"OK": 2}}]


def test_keys_in_use_from_system_tracking(stats):
    stats.track("a/b", T, {"count": 1})
    stats.track("a/b", T, {"count": 1})
    stats.track("c.d", T, {"count": 1})
    assert keys_in_use(stats, T, T, "1d") == {"a/b": 2, "c_d": 1}


def test_buffer_coalesces_writes_per_bucket_not_per_track(tmp_path):
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    calls = []
    real_inc = driver.inc
    driver.inc = lambda ops: (calls.append(len(ops)), real_inc(ops))[1]
    buffer = StatsBuffer(driver, [parse_granularity("1h"), parse_granularity("1d")], Floor())
    for i in range(1000):
        buffer.track("k", T + timedelta(seconds=i), {"count": 1, "sum": 0.5})
    buffer.flush()
    assert calls == [4]  # (k + system) × 2 granularities, in one bulk write
    assert driver.get([("k", "1h", HOUR)]) == [{"count": 1000, "sum": 500.0}]


@pytest.mark.parametrize("cell_cache", [None, 50])
def test_buffer_sums_each_cell_once_and_spreads_it_exactly(tmp_path, monkeypatch, cell_cache):
    """Tracks are summed per cell (the seconds sharing every granularity's bucket), across a
    DST change in a zone with a half-hour offset; with a small cell cache (cleared often)
    a cell gets several entries and the sums are still exact."""
    from trifle_otel.stats import buffer as buffer_module

    if cell_cache:
        monkeypatch.setattr(buffer_module, "CELL_CACHE", cell_cache)
    floor = Floor("America/St_Johns")  # -02:30 → -03:30 at 2026-11-01 04:30 UTC
    grans = [parse_granularity(g) for g in ("1m", "15m", "1h", "1d")]
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    buffer = StatsBuffer(driver, grans, floor)
    start = int(datetime(2026, 11, 1, 3, tzinfo=timezone.utc).timestamp())
    expected: dict = {}
    cells = set()
    for i, second in enumerate(range(start, start + 3 * 3600, 7)):
        buffer.track_values("k", second + 0.5, {"count": 1, "v": {"i": i}})
        cells.add(tuple(floor.bucket(second, g) for g in grans))
        for g in grans:
            sums = expected.setdefault((g.text, floor.bucket(second, g)), {"count": 0, "v": {"i": 0}})
            sums["count"] += 1
            sums["v"]["i"] += i
    if cell_cache is None:
        assert len(buffer._raw) == len(cells) == 180  # one entry a minute, not one a track
    else:
        assert len(buffer._raw) > len(cells)
    buffer.flush()
    idents = sorted(expected)
    assert driver.get([("k", text, bucket) for text, bucket in idents]) == [expected[i] for i in idents]
    system = driver.get([("__system__key__", text, bucket) for text, bucket in idents])
    assert [s["count"] for s in system] == [expected[i]["count"] for i in idents]


def test_buffer_is_exact_under_concurrent_threads(tmp_path):
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    buffer = StatsBuffer(driver, [parse_granularity("1m"), parse_granularity("1h")], Floor(), flush_size=50, thread=True,
                         flush_interval=0.01)
    threads, per_thread = 8, 2000

    def work(n):
        for i in range(per_thread):
            buffer.track(f"k{i % 3}", T + timedelta(seconds=i % 120), {"count": 1, "value": 0.25, "by": {str(n): 1}})

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    buffer.shutdown()
    hour = driver.get([(f"k{j}", "1h", HOUR) for j in range(3)])
    assert sum(v["count"] for v in hour) == threads * per_thread
    assert sum(v["value"] for v in hour) == threads * per_thread * 0.25
    assert sum(sum(v["by"].values()) for v in hour) == threads * per_thread
    assert driver.get([("__system__key__", "1h", HOUR)])[0]["count"] == threads * per_thread
    assert buffer.counters.flushes > 1


def test_failed_flush_keeps_increments_and_retries(tmp_path):
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    buffer = StatsBuffer(driver, [parse_granularity("1h")], Floor())
    real_inc = driver.inc
    failing = [True]

    def inc(ops):
        if failing[0]:
            raise StoreError("store is down")
        real_inc(ops)

    driver.inc = inc
    buffer.track("k", T, {"count": 1})
    with pytest.raises(StoreError):
        buffer.flush()
    buffer.track("k", T, {"count": 2})
    failing[0] = False
    buffer.flush()
    assert driver.get([("k", "1h", HOUR)]) == [{"count": 3}]
    assert buffer.counters.write_errors == 1


def test_buffer_bounds_buckets_during_an_outage(tmp_path):
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    buffer = StatsBuffer(driver, [parse_granularity("1h")], Floor(), max_buckets=10, system_tracking=False)
    for i in range(20):
        buffer.track(f"k{i}", T, {"count": 1})
    assert buffer.pending == 10 and buffer.counters.dropped == 10


@pytest.mark.parametrize("mode", ["partial", "separated"])
def test_other_identifier_modes(tmp_path, mode):
    driver = SQLiteStatsDriver(tmp_path / "s.db", mode=mode)
    driver.inc([("k", "1h", HOUR, {"count": 1, "a.b": 2})])
    driver.inc([("k", "1h", HOUR, {"count": 1})])
    assert driver.get([("k", "1h", HOUR), ("k", "1h", HOUR + 3600)]) == [{"count": 2, "a": {"b": 2}}, {}]
    conn = sqlite3.connect(tmp_path / "s.db")
    row = conn.execute("SELECT * FROM trifle_stats").fetchone()
    if mode == "partial":
        assert row[:2] == ("k::1h", "2026-11-23T10:00:00Z")
    else:
        assert row[:3] == ("k", "1h", "2026-11-23T10:00:00Z")


def test_concurrent_processes_add_exactly(tmp_path):
    import multiprocessing

    path = tmp_path / "s.db"
    SQLiteStatsDriver(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 300)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    driver = SQLiteStatsDriver(path)
    assert driver.get([("k", "1h", HOUR)]) == [{"count": 900, "x": 450.0}]


def _writer(path: str, n: int) -> None:
    driver = SQLiteStatsDriver(path)
    for _ in range(n):
        driver.inc([("k", "1h", HOUR, {"count": 1, "x": 0.5})])
    driver.close()


def test_naive_datetimes_are_refused(stats):
    with pytest.raises(ValueError, match="naive datetime"):
        stats.track("k", datetime(2026, 1, 1), {"count": 1})


def test_flush_reports_the_buckets_it_wrote(tmp_path):
    buffer = StatsBuffer(SQLiteStatsDriver(tmp_path / "s.db"), [parse_granularity("1h")], Floor())
    buffer.track("k", T, {"count": 1})
    assert buffer.flush() == 2  # k and the system key
    assert buffer.counters.writes == 2


def test_equal_values_of_different_types_get_their_own_names():
    assert flatten({"flag": {True: 1}}) == {"flag.True": 1}
    assert flatten({"flag": {1: 1}}) == {"flag.1": 1}
    assert flatten({"flag": {1.5: 1}}) == {"flag.1_5": 1}


def test_bad_times_are_refused_at_track_and_never_poison_the_buffer(stats):
    stats.track("k", T, {"count": 1})
    with pytest.raises(ValueError, match="looks like milliseconds"):
        stats.track("k", T.timestamp() * 1000, {"count": 1})
    with pytest.raises(ValueError, match="between 1900 and 9998"):
        stats.track("k", datetime(9999, 12, 31, tzinfo=timezone.utc), {"count": 1})
    assert stats.values("k", T, T, "1h")["values"] == [{"count": 1}]


def test_at_max_buckets_the_held_sums_are_kept_and_the_newest_cut(tmp_path):
    driver = SQLiteStatsDriver(tmp_path / "s.db")
    buffer = StatsBuffer(driver, [parse_granularity("1h")], Floor(), max_buckets=2, system_tracking=False)
    real_inc = driver.inc
    driver.inc = lambda ops: (_ for _ in ()).throw(StoreError("down"))
    buffer.track("old", T, {"count": 5})
    with pytest.raises(StoreError):
        buffer.flush()  # "old" is held, put back
    buffer.track("new1", T, {"count": 1})
    buffer.track("new2", T, {"count": 1})
    with pytest.raises(StoreError):
        buffer.flush()
    driver.inc = real_inc
    buffer.flush()
    assert driver.get([("old", "1h", HOUR)]) == [{"count": 5}]
    assert buffer.counters.dropped >= 1


def test_add_nested_matches_flatten_at_every_depth():
    from collections import OrderedDict
    from decimal import Decimal

    from trifle_otel.stats.values import add_nested, flatten

    values = {
        "count": 1, "price.eur": 2.5, "$set": 3, "skip": True, "nan": float("nan"), "text": "x",
        "codes": {"OK": 1, "a.b": 2, 7: 4, "deep": {"er": {"est": 5}}, "flag": False},
        "mapping": OrderedDict(x=1, y={"z": 2}), "dec": Decimal("1.5"),
    }
    target: dict = {}
    added = add_nested(target, values)
    add_nested(target, values)
    expected = flatten(values)
    assert target == {path: value * 2 for path, value in expected.items()}
    assert added == len(expected)
    assert "codes.deep.er.est" in target and "codes.a_b" in target and "_set" in target and "codes.7" in target


def test_a_str_enum_name_is_its_text_whichever_is_seen_first():
    import enum

    from trifle_otel.stats.values import add_nested, flatten

    class Code(str, enum.Enum):
        OK = "OK"
        LOW = "low.margin"

    first: dict = {}
    add_nested(first, {"codes": {Code.LOW: 1, "OK": 1}})
    add_nested(first, {"codes": {"low.margin": 1, Code.OK: 1}})
    assert first == {"codes.low_margin": 2, "codes.OK": 2}
    assert flatten({"codes": {Code.LOW: 1}}) == {"codes.low_margin": 1}
