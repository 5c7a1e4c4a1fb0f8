"""The data layout's paths (``<retention>/<prefix>/<key>/<reference>/``), shared by every data store."""

from __future__ import annotations

import pytest

from trifle_otel.stores.layout import data_prefix, part_name

HEX = "e2758f34f830dadd74577ccb8ca9e47850464356fa5f465a"


@pytest.mark.parametrize(
    ("record", "prefix", "expected"),
    [
        ({"retention": 30, "key": "run/pricing.calculate_price", "reference": HEX}, "traces",
         f"30/traces/run/pricing.calculate_price/{HEX}/"),
        ({"retention": 30, "key": "run", "reference": "a/b"}, "traces", "30/traces/run/a_b/"),
        ({"retention": 7, "key": "a b/../c", "reference": ".."}, "/p/", "7/p/a_b/__/c/__/"),
        ({"retention": 30.0, "key": "run", "reference": HEX}, "traces", f"30.0/traces/run/{HEX}/"),
        ({"retention": 30, "key": "run", "reference": ""}, "traces", "30/traces/run/"),
        ({"retention": "", "key": "", "reference": ""}, "", "/"),
        ({"retention": 30, "key": "run", "reference": "ü" + "x" * 300}, "traces", "30/traces/run/_" + "x" * 199 + "/"),
    ],
)
def test_data_prefix(record, prefix, expected):
    assert data_prefix(record, prefix) == expected


def test_part_names():
    assert [part_name(n, False) for n in (1, 63, 64, 200)] == ["data_1.json", "data_63.json", "data_64.json", "data_200.json"]
    assert part_name(2, True) == "data_2.json.gz"
