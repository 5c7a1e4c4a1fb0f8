"""Bucket floors: every unit, multi-unit granularities, week starts, DST in two zones."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from trifle_otel.errors import ConfigError
from trifle_otel.stats.granularity import Floor, parse_granularity

UTC = timezone.utc


def floor(at: str, g: str, tz: str = "UTC", week: str = "monday") -> str:
    instant = datetime.fromisoformat(at)
    return Floor(tz, week).floor(instant, parse_granularity(g)).isoformat()


@pytest.mark.parametrize(
    "at, g, expected",
    [
        ("2026-11-23T10:17:43+00:00", "1s", "2026-11-23T10:17:43+00:00"),
        ("2026-11-23T10:17:43+00:00", "10s", "2026-11-23T10:17:40+00:00"),
        ("2026-11-23T10:17:43+00:00", "1m", "2026-11-23T10:17:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "15m", "2026-11-23T10:15:00+00:00"),
        ("2026-11-23T10:59:59+00:00", "15m", "2026-11-23T10:45:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "1h", "2026-11-23T10:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "6h", "2026-11-23T06:00:00+00:00"),
        ("2026-11-23T23:59:59+00:00", "6h", "2026-11-23T18:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "1d", "2026-11-23T00:00:00+00:00"),
        ("2026-01-05T10:00:00+00:00", "3d", "2026-01-04T00:00:00+00:00"),  # day 5 → days 4..6
        ("2026-11-23T10:17:43+00:00", "1w", "2026-11-23T00:00:00+00:00"),  # a Monday
        ("2026-11-29T23:00:00+00:00", "1w", "2026-11-23T00:00:00+00:00"),  # Sunday → Monday
        ("2026-01-02T12:00:00+00:00", "1w", "2026-01-01T00:00:00+00:00"),  # before the first Monday
        ("2026-01-05T12:00:00+00:00", "1w", "2026-01-05T00:00:00+00:00"),  # first Monday of 2026
        ("2026-01-20T12:00:00+00:00", "2w", "2026-01-19T00:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "1mo", "2026-11-01T00:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "5mo", "2026-11-01T00:00:00+00:00"),
        ("2026-10-23T10:17:43+00:00", "5mo", "2026-06-01T00:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "1q", "2026-10-01T00:00:00+00:00"),
        ("2026-05-23T10:17:43+00:00", "2q", "2026-01-01T00:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "1y", "2026-01-01T00:00:00+00:00"),
        ("2026-11-23T10:17:43+00:00", "10y", "2020-01-01T00:00:00+00:00"),
    ],
)
def test_floors_in_utc(at, g, expected):
    assert floor(at, g) == expected


def test_week_start_is_configurable():
    assert floor("2026-11-25T10:00:00+00:00", "1w", week="sunday") == "2026-11-22T00:00:00+00:00"
    assert floor("2026-11-25T10:00:00+00:00", "1w", week="wednesday") == "2026-11-25T00:00:00+00:00"


@pytest.mark.parametrize(
    "tz, at_utc, g, expected",
    [
        # New York, spring forward 2026-03-08 02:00 EST → 03:00 EDT
        ("America/New_York", "2026-03-08T07:30:00+00:00", "1h", "2026-03-08T03:00:00-04:00"),
        ("America/New_York", "2026-03-08T06:59:00+00:00", "1h", "2026-03-08T01:00:00-05:00"),
        ("America/New_York", "2026-03-08T12:00:00+00:00", "1d", "2026-03-08T00:00:00-05:00"),
        ("America/New_York", "2026-03-08T12:00:00+00:00", "6h", "2026-03-08T06:00:00-04:00"),
        # New York, fall back 2026-11-01 02:00 EDT → 01:00 EST: 01:xx happens twice
        ("America/New_York", "2026-11-01T05:30:00+00:00", "1h", "2026-11-01T01:00:00-04:00"),
        ("America/New_York", "2026-11-01T06:30:00+00:00", "1h", "2026-11-01T01:00:00-05:00"),
        ("America/New_York", "2026-11-01T06:30:00+00:00", "1d", "2026-11-01T00:00:00-04:00"),
        ("America/New_York", "2026-11-01T06:30:00+00:00", "15m", "2026-11-01T01:30:00-05:00"),
        # Prague, fall back 2026-10-25 03:00 CEST → 02:00 CET; spring forward 2026-03-29 02:00 → 03:00
        ("Europe/Prague", "2026-10-25T00:30:00+00:00", "1h", "2026-10-25T02:00:00+02:00"),
        ("Europe/Prague", "2026-10-25T01:30:00+00:00", "1h", "2026-10-25T02:00:00+01:00"),
        ("Europe/Prague", "2026-10-25T12:00:00+00:00", "1d", "2026-10-25T00:00:00+02:00"),
        ("Europe/Prague", "2026-10-25T12:00:00+00:00", "1w", "2026-10-19T00:00:00+02:00"),
        ("Europe/Prague", "2026-03-29T01:30:00+00:00", "1h", "2026-03-29T03:00:00+02:00"),
        ("Europe/Prague", "2026-03-29T22:30:00+00:00", "1d", "2026-03-30T00:00:00+02:00"),
        ("Europe/Prague", "2026-03-31T12:00:00+00:00", "1mo", "2026-03-01T00:00:00+01:00"),
    ],
)
def test_floors_across_dst(tz, at_utc, g, expected):
    assert floor(at_utc, g, tz) == expected


def buckets(tz, start, end, g):
    f = Floor(tz)
    return [b.isoformat() for b in f.timeline(datetime.fromisoformat(start), datetime.fromisoformat(end), parse_granularity(g))]


def test_timeline_visits_the_repeated_hour_twice_and_skips_the_missing_one():
    assert buckets("America/New_York", "2026-11-01T04:00:00+00:00", "2026-11-01T07:00:00+00:00", "1h") == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    assert buckets("America/New_York", "2026-03-08T05:00:00+00:00", "2026-03-08T08:00:00+00:00", "1h") == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]
    assert buckets("Europe/Prague", "2026-10-24T12:00:00+00:00", "2026-10-26T12:00:00+00:00", "1d") == [
        "2026-10-24T00:00:00+02:00",
        "2026-10-25T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
    ]
    six = buckets("America/New_York", "2026-11-01T04:00:00+00:00", "2026-11-01T20:00:00+00:00", "6h")
    assert six == ["2026-11-01T00:00:00-04:00", "2026-11-01T06:00:00-05:00", "2026-11-01T12:00:00-05:00"]


def test_timeline_restarts_weeks_and_months_on_january_first():
    weeks = buckets("UTC", "2025-12-22T00:00:00+00:00", "2026-01-06T00:00:00+00:00", "1w")
    assert [w[:10] for w in weeks] == ["2025-12-22", "2025-12-29", "2026-01-01", "2026-01-05"]
    months = buckets("UTC", "2025-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00", "5mo")
    assert [m[:10] for m in months] == ["2025-01-01", "2025-06-01", "2025-11-01", "2026-01-01"]


def test_every_instant_floors_into_its_own_timeline_bucket():
    f = Floor("Europe/Prague")
    for g in ("1m", "15m", "1h", "6h", "1d", "1w", "1mo", "1q", "1y"):
        gran = parse_granularity(g)
        start = datetime(2026, 3, 27, tzinfo=UTC)
        timeline = f.timeline(start, datetime(2026, 4, 2, tzinfo=UTC), gran)
        stamps = [t.timestamp() for t in timeline]
        assert stamps == sorted(set(stamps)), g
        for hour in range(0, 6 * 24, 7):
            instant = datetime.fromtimestamp(start.timestamp() + hour * 3600, UTC)
            assert f.floor(instant, gran).timestamp() in stamps, (g, instant)


def test_bucket_cache_matches_floor():
    f = Floor("America/New_York")
    g = parse_granularity("1h")
    base = datetime(2026, 11, 1, 4, tzinfo=UTC).timestamp()
    for i in range(0, 5 * 3600, 600):
        assert f.bucket(base + i, g) == int(Floor("America/New_York").floor(datetime.fromtimestamp(base + i, UTC), g).timestamp())


@pytest.mark.parametrize("bad", ["", "1", "m", "0m", "1min", "1M", "-1h", "1 h"])
def test_bad_granularities(bad):
    with pytest.raises(ConfigError, match="granularity"):
        parse_granularity(bad)


def test_bad_zone_and_week():
    with pytest.raises(ConfigError, match="time zone 'Mars/Olympus'"):
        Floor("Mars/Olympus")
    with pytest.raises(ConfigError, match="beginning of week"):
        Floor("UTC", "funday")


def test_multi_year_buckets_are_aligned_to_year_zero():
    assert [b[:4] for b in buckets("UTC", "2024-06-01T00:00:00+00:00", "2027-06-01T00:00:00+00:00", "2y")] == ["2024", "2026"]
    assert [b[:4] for b in buckets("UTC", "2024-06-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00", "1y")] == ["2024", "2025", "2026"]


def test_timeline_stops_at_the_end_of_time():
    f = Floor("UTC")
    out = f.timeline(datetime(9999, 12, 30, tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC), parse_granularity("1d"))
    assert [d.day for d in out] == [30, 31]
