"""Stat rules: compilation errors name the rule, evaluation over spans."""

from __future__ import annotations

import pytest
from conftest import make_span

from trifle_otel.errors import ConfigError
from trifle_otel.stats.rules import RuleError, load_rules, parse_rules

BASE = """
rules:
  - name: calc
    where:
      - name == "run/calc"
      - attributes["customer.id"] != nil
    keys: [prices, "prices/customer/{attributes[customer.id]}"]
    values: {values}
"""


def track(values_yaml: str, span, ctx=None):
    rules = parse_rules(BASE.replace("{values}", values_yaml))
    return [(t.key, t.values) for t in rules.evaluate(span, ctx or {})]


SPAN = make_span(
    "run/calc",
    0,
    20,
    attributes={"customer.id": "acme.corp", "price": 12.5, "code": "OK", "margin": 0.12, "items": 250},
    status="ok",
)


def test_constants_paths_triples_and_keys():
    out = track("{count: 1, price: 'attributes[\"price\"]', duration: {triple: duration}, missing: 'attributes[\"nope\"]'}", SPAN)
    expected = {"count": 1, "price": 12.5, "duration.count": 1, "duration.sum": 20.0, "duration.square": 400.0}
    assert out == [("prices", expected), ("prices/customer/acme.corp", expected)]


def test_maps_nested_groups_and_sanitized_names():
    out = track("{codes: {map: 'attributes[\"code\"]'}, by: {customer: {map: 'attributes[\"customer.id\"]', value: 2}}}", SPAN)
    assert out[0][1] == {"codes.OK": 1, "by.customer.acme_corp": 2}


def test_distributions():
    out = track(
        "{m: {distribution: 'attributes[\"margin\"]', linear: {start: 0, step: 0.05, count: 4}},"
        " p: {distribution: 'attributes[\"price\"]', geometric: {start: 1, factor: 2, count: 3}},"
        " i: {distribution: 'attributes[\"items\"]', bounds: [10, 100, 200]},"
        " low: {distribution: 'attributes[\"margin\"]', bounds: [1, 2]}}",
        SPAN,
    )
    assert out[0][1] == {"m.0_1": 1, "p.ge_8": 1, "i.ge_200": 1, "low.lt_1": 1}


def test_conditions():
    rules = parse_rules(
        """
rules:
  - name: slow errors
    where: ['status.code == "error"', "duration >= 100", 'kind in [consumer, server]',
            'attributes["code"] matches "^E_"', 'resource.attributes["service.name"] != "test"']
    keys: [slow]
    values: {count: 1}
  - name: has customer
    where: 'attributes["customer.id"]'
    keys: [with-customer]
    values: {count: 1}
  - name: by state
    where: ['execution.state == "error"', 'attributes["code"] not in ["OK"]']
    keys: ["state/{execution.key}"]
    values: {count: 1}
"""
    )
    span = make_span("x", 0, 150, status="error", kind="consumer", attributes={"code": "E_TIMEOUT", "customer.id": "a"},
                     resource={"service.name": "worker"})
    assert [t.key for t in rules.evaluate(span, {"state": "error", "key": "jobs/x"})] == ["slow", "with-customer", "state/jobs_x"]
    fast = make_span("x", 0, 50, status="error", kind="consumer", attributes={"code": "E_TIMEOUT"})
    assert [t.key for t in rules.evaluate(fast, {"state": "success"})] == []


def test_key_with_missing_attribute_is_skipped():
    span = make_span("run/calc", 0, 20, attributes={"customer.id": "a"})
    rules = parse_rules(BASE.replace("{values}", "{count: 1}").replace("prices/customer/{attributes[customer.id]}", "r/{attributes[reseller.id]}"))
    assert [t.key for t in rules.evaluate(span)] == ["prices"]


def test_at_is_the_span_end_by_default_or_its_start():
    span = make_span("run/calc", 0, 2000, attributes={"customer.id": "a"})
    rules = parse_rules(BASE.replace("{values}", "{count: 1}") + "    at: start\n")
    assert rules.evaluate(span)[0].at == span.start_ns / 1e9
    rules = parse_rules(BASE.replace("{values}", "{count: 1}"))
    assert rules.evaluate(span)[0].at == span.end_ns / 1e9


@pytest.mark.parametrize(
    "text, message",
    [
        ("rules:\n  - where: []\n", "rule #1 has no name"),
        ("rules:\n  - name: a\n    keys: [k]\n", "rule 'a': 'values' must be a mapping"),
        ("rules:\n  - name: a\n    values: {count: 1}\n", "rule 'a': 'keys' needs at least one key"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {count: 1}\n    when: x\n", "rule 'a': unknown field(s) when"),
        ("rules:\n  - name: a\n    where: 'color == 1'\n    keys: [k]\n    values: {count: 1}\n", "rule 'a': unknown path 'color'"),
        ("rules:\n  - name: a\n    where: 'name matches \"(\"'\n    keys: [k]\n    values: {count: 1}\n", "bad regular expression"),
        ("rules:\n  - name: a\n    where: 'kind in consumer'\n    keys: [k]\n    values: {count: 1}\n", "'in' needs a list"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {count: true}\n", "value count must be a number, a path or a mapping"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {x: 'attributes[\"a\"] + 1'}\n", "unknown path"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {x.y: 1}\n", "value name 'x.y' cannot contain '.'"),
        ("rules:\n  - name: a\n    keys: ['k/{attributes[a]'}]\n    values: {c: 1}\n", "is not valid YAML"),
        ("rules:\n  - name: a\n    keys: ['k/{name']\n    values: {c: 1}\n", "unmatched brace"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {d: {distribution: name, linear: {start: 0, step: 0, count: 3}}}\n", "'step' must be a positive number"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {d: {distribution: name, geometric: {start: 1, factor: 1, count: 3}}}\n", "factor must be greater than 1"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {d: {distribution: name, bounds: [3, 1]}}\n", "bounds must be increasing"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {d: {distribution: name}}\n", "exactly one of linear, geometric or bounds"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {m: {map: name, extra: 1}}\n", "'map' takes only 'value'"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {c: 1}\n  - name: a\n    keys: [k]\n    values: {c: 1}\n", "rule names must be unique"),
        ("rules:\n  - name: a\n    keys: [k]\n    values: {c: 1}\n    at: middle\n", "'at' is start or end"),
        ("rule: []\n", "unknown top-level field(s) rule"),
        ("rules: {a: 1}\n", "'rules' must be a list"),
        ("rules: [\n", "is not valid YAML"),
    ],
)
def test_broken_rules_are_refused_naming_the_rule(text, message):
    with pytest.raises(RuleError) as err:
        parse_rules(text, "rules.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("rules.yaml")


def test_missing_rules_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_rules(tmp_path / "nope.yaml")


def test_demo_rules_compile():
    from trifle_otel.demo import DEMO_RULES

    assert len(load_rules(DEMO_RULES)) == 5


def test_processor_refuses_broken_rules_at_construction(tmp_path):
    from trifle_otel import TrifleSpanProcessor

    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: broken\n    keys: [k]\n    values: {c: nope}\n")
    with pytest.raises(RuleError, match="rule 'broken'"):
        TrifleSpanProcessor(home=str(tmp_path), stats_rules=str(bad))
