"""Series operations against hand-computed values."""

from __future__ import annotations

import math

import pytest

from trifle_otel.errors import ConfigError
from trifle_otel.stats.series import aggregate, category, expand_path, percentile, stddev, summarize, timeline, transpond

SERIES = {
    "at": [1, 2, 3, 4, 5],
    "values": [
        {"count": 1, "codes": {"OK": 1}, "d": {"count": 1, "sum": 2, "square": 4}},
        {"count": 2, "codes": {"OK": 1, "ERR": 1}, "d": {"count": 2, "sum": 10, "square": 52}},
        {},
        {"count": 4, "codes": {"X": 2}},
        {"count": 5},
    ],
}


def test_aggregators_with_slices():
    assert aggregate(SERIES, "sum", "count") == [12]
    assert aggregate(SERIES, "max", "count") == [5]
    assert aggregate(SERIES, "min", "count") == [1]
    assert aggregate(SERIES, "mean", "count") == [3.0]  # 12 / 4 values present
    # 5 points in 2 slices: the oldest point is dropped, then [2, -] and [4, 5]
    assert aggregate(SERIES, "sum", "count", slices=2) == [2, 9]
    assert aggregate(SERIES, "mean", "count", slices=2) == [2.0, 4.5]
    assert aggregate(SERIES, "max", "codes.OK", slices=5) == [1, 1, None, None, None]
    assert aggregate({"at": [], "values": []}, "sum", "count") == []
    with pytest.raises(ConfigError, match="aggregator 'median'"):
        aggregate(SERIES, "median", "count")


def test_wildcard_paths():
    assert expand_path(SERIES["values"], "codes.*") == ["codes.OK", "codes.ERR", "codes.X"]
    assert expand_path(SERIES["values"], "codes") == ["codes.OK", "codes.ERR", "codes.X"]
    assert expand_path(SERIES["values"], "*") == ["count", "codes.OK", "codes.ERR", "codes.X", "d.count", "d.sum", "d.square"]


def test_timeline_and_category():
    assert timeline(SERIES, "codes.OK") == {"codes.OK": [[1, 1.0], [2, 1.0], [3, 0.0], [4, 0.0], [5, 0.0]]}
    assert category(SERIES, "codes.*") == {"codes.OK": 2.0, "codes.ERR": 1.0, "codes.X": 2.0}
    assert category(SERIES, "count", slices=2) == [{"count": 2.0}, {"count": 9.0}]
    assert timeline({"at": [], "values": []}, "count") == {}


def test_expression_transponder():
    out = transpond(SERIES, ["codes.OK", "count"], "a / b * 100", "ok_rate")
    assert [v.get("ok_rate") for v in out["values"]] == [100.0, 50.0, None, None, None]
    out = transpond(SERIES, ["d.count", "d.sum", "d.square"], "sqrt((a * c - b * b) / (a * (a - 1)))", "d.stddev")
    assert out["values"][1]["d"]["stddev"] == pytest.approx(math.sqrt((2 * 52 - 100) / 2))
    assert out["values"][0]["d"]["stddev"] is None  # division by zero
    assert "ok_rate" not in SERIES["values"][0]  # the input is not changed
    assert transpond(SERIES, ["count"], "max(a, 3) + -1", "x")["values"][0]["x"] == 2


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os')", "only numbers, variables"),
        ("a.real", "only numbers, variables"),
        ("z + 1", "uses 'z'"),
        ("a +", "is not valid"),
        ("a ** 2", "only numbers"),
    ],
)
def test_expressions_cannot_run_code(expression, message):
    with pytest.raises(ConfigError, match=message):
        transpond(SERIES, ["count"], expression, "x")


def test_estimates_from_count_sum_square():
    # values 2, 4, 6: count 3, sum 12, square 56; mean 4, sample stddev 2
    assert stddev(3, 12, 56) == pytest.approx(2.0)
    assert percentile(3, 12, 56, 95) == pytest.approx(4 + 1.6448536 * 2)
    assert stddev(1, 5, 25) == 0.0 and stddev(0, 0, 0) is None
    s = summarize(SERIES, "d")
    assert s["count"] == 3 and s["mean"] == 4.0 and s["stddev"] == pytest.approx(2.0)
