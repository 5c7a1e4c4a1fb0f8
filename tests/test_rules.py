"""Stat rules: compilation errors name the rule, evaluation over spans."""

from __future__ import annotations

import pytest
from conftest import make_span

from trifle_otel.errors import ConfigError
from trifle_otel.stats.rules import RuleError, compile_rule, load_rules, parse_rules

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


# -- nil, and bare words ------------------------------------------------------------------


def _rule(where: str) -> str:
    return f"rules:\n  - name: r\n    where: ['{where}']\n    keys: [k]\n    values: {{count: 1}}\n"


@pytest.mark.parametrize("where, with_attribute, without_attribute", [
    ('attributes["customer.id"] != nil', True, False),
    ('attributes["customer.id"] == nil', False, True),
    ('attributes["customer.id"] != null', True, False),
    ('attributes["customer.id"] == "acme"', True, False),
    ('attributes["customer.id"] in ["acme", nil]', True, True),
    ('attributes["customer.id"] not in [nil]', True, False),
])
def test_nil_is_no_value(where, with_attribute, without_attribute):
    rules = parse_rules(_rule(where))
    has = make_span("run/calc", 0, 20, attributes={"customer.id": "acme"})
    lacks = make_span("run/calc", 0, 20, attributes={"other": "x"})
    assert bool(rules.evaluate(has)) is with_attribute
    assert bool(rules.evaluate(lacks)) is without_attribute


@pytest.mark.parametrize("where, message", [
    ('attributes["customer.id"] != nill', "unknown word 'nill' in 'attributes[\"customer.id\"] != nill'"),
    ('attributes["code"] == OK', "unknown word 'OK'"),
    ('attributes["code"] in [OK, "LOW"]', "unknown word 'OK'"),
    ('attributes["flag"] == yes', "unknown word 'yes'"),
    ('kind == consumr', "kind is one of internal, server, client, producer, consumer"),
    ('status.code == "eror"', "status.code is never 'eror'"),
    ('execution.state in [success, failed]', "unknown word 'failed'"),
    ('name matches ^run', "needs a quoted regular expression"),
    ('duration > [1, 2]', "compares with one value, not a list"),
])
def test_unknown_bare_words_are_refused(where, message):
    with pytest.raises(RuleError) as err:
        parse_rules(_rule(where), "rules.yaml")
    assert message in str(err.value) and "rule 'r'" in str(err.value)


def test_known_words_numbers_and_booleans_are_read_as_such():
    rules = parse_rules(_rule('kind == consumer') + _rule('attributes["vip"] == true').replace("rules:\n", "").replace("name: r", "name: s")
                        + _rule('attributes["n"] >= 2.5').replace("rules:\n", "").replace("name: r", "name: t"))
    span = make_span("x", 0, 1, kind="consumer", attributes={"vip": True, "n": 3})
    assert [t.rule for t in rules.evaluate(span)] == ["r", "s", "t"]


# -- rules that meet the default execution stat --------------------------------------------


COLLIDING = """
rules:
  - name: refresh runs
    where: ['execution.key == "products/refresh"']
    keys: [products/refresh, "products/refresh/{attributes[reseller.id]}"]
    values: {count: 1, products: 'attributes["products.count"]', duration: {triple: duration}}
  - name: refresh products
    where: ['attributes["trifle.key"] == "products/refresh"']
    keys: [products/refresh]
    values: {products: 'attributes["products.count"]'}
  - name: calculations
    where: ['name == "run/calc"']
    keys: [prices/calculations]
    values: {count: 1, states: {map: execution.state}}
"""


def test_collisions_with_the_default_stat(tmp_path, caplog):
    from trifle_otel.stats.rules import collisions, default_stat_overlap

    rules = parse_rules(COLLIDING)
    assert default_stat_overlap(rules.rules[0]) == ["count", "duration.count", "duration.sum", "duration.square"]
    assert default_stat_overlap(rules.rules[1]) == []
    assert default_stat_overlap(rules.rules[2]) == ["count", "states.<execution.state>"]
    # Certain from the conditions alone: only the rule that requires the execution key.
    found = collisions(rules.rules)
    assert [(c.rule, c.key, c.paths[0]) for c in found] == [("refresh runs", "products/refresh", "count")]
    # Given which keys executions have (from a trace index), every literal key that is one.
    found = collisions(rules.rules, lambda key: key == "prices/calculations")
    assert [(c.rule, c.key) for c in found] == [("refresh runs", "products/refresh"), ("calculations", "prices/calculations")]
    file = tmp_path / "rules.yaml"
    file.write_text(COLLIDING)
    with caplog.at_level("WARNING", logger="trifle_otel"):
        load_rules(file)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "rule 'refresh runs' tracks count, duration.count" in message and "count twice" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="trifle_otel"):
        load_rules(file, default_stats=False)
    assert not caplog.records


def test_demo_rules_do_not_count_refresh_runs_twice(caplog):
    from trifle_otel.demo import DEMO_RULES
    from trifle_otel.stats.rules import default_stat_overlap

    with caplog.at_level("WARNING", logger="trifle_otel"):
        rules = load_rules(DEMO_RULES)
    assert not caplog.records
    refresh = [r for r in rules.rules if "products/refresh" in r.literal_keys]
    assert refresh and all(default_stat_overlap(r) == [] for r in refresh)


def test_conditions_on_the_name_are_decided_once_per_name_and_the_others_every_time():
    rules = parse_rules(
        """
rules:
  - name: supplier calls
    where:
      - name matches "^Fetching offers from "
      - attributes["ok"] == true
      - name != "Fetching offers from nobody"
    keys: [suppliers]
    values: {count: 1}
"""
    )
    calls = []
    for name, ok in [("Fetching offers from a", True), ("Fetching offers from a", False),
                     ("Fetching offers from a", True), ("Fetching offers from nobody", True), ("Other", True)]:
        calls.append(len(rules.evaluate(make_span(name, 0, 5, attributes={"ok": ok}))))
    assert calls == [1, 0, 1, 0, 0]


def test_values_below_a_map_take_the_mapped_name_as_their_level():
    rules = parse_rules(
        """
rules:
  - name: per code
    where: [name == "calc"]
    keys: [k]
    values:
      by_code:
        map: attributes["code"]
        value:
          price: attributes["price"]
          n: 1
          took: {triple: duration}
      sum_by_code: {map: 'attributes["code"]', value: 'attributes["price"]'}
"""
    )
    [track] = rules.evaluate(make_span("calc", 0, 4, attributes={"code": "OK", "price": 2.5}))
    assert track.values == {
        "by_code.OK.price": 2.5, "by_code.OK.n": 1,
        "by_code.OK.took.count": 1, "by_code.OK.took.sum": 4.0, "by_code.OK.took.square": 16.0,
        "sum_by_code.OK": 2.5,
    }


# -- a rule's values as one function (stats/emit_source.py) ----------------------------------

VALUE_FORMS = """
count: 1
weight: 2.5
price: 'attributes["price"]'
items: {triple: 'attributes["items"]'}
duration: {triple: duration}
codes: {map: 'attributes["code"]'}
states: {map: execution.state, value: 3}
kinds: {map: kind}
margin: {distribution: 'attributes["margin"]', linear: {start: 0, step: 0.05, count: 5}}
size: {distribution: 'attributes["items"]', geometric: {start: 10, factor: 10, count: 3}}
odd: {distribution: 'attributes["price"]', bounds: [1, 10, 100]}
nested: {deeper: {count: 1, price: 'attributes["price"]', by_code: {map: 'attributes["code"]'}}}
"""

ODD_VALUES = [
    {"customer.id": "c", "price": 12.5, "code": "OK", "margin": 0.12, "items": 250},
    {"customer.id": "c"},  # nothing to read: the paths are skipped
    {"customer.id": "c", "price": True, "items": False, "code": True, "margin": "0.1"},  # bools and text are no numbers
    {"customer.id": "c", "price": float("nan"), "items": float("inf"), "code": "", "margin": -1},
    {"customer.id": "c", "price": 10**30, "items": 7, "code": 1.5, "margin": 99},
    {"customer.id": "c", "price": -3, "code": "a.b$c\"d"},  # a code that needs sanitizing
]


@pytest.mark.parametrize("attributes", ODD_VALUES)
def test_the_one_function_adds_what_the_closures_add(attributes):
    from trifle_otel.stats.rules import _values, compile_rule

    import yaml

    spec = yaml.safe_load(VALUE_FORMS)
    rule = compile_rule({"name": "forms", "keys": ["k"], "values": spec}, 0)
    assert hasattr(rule.emit, "source"), "the usual forms are written as one function"
    span = make_span("run/calc", 0, 20, attributes=attributes, status="error")
    for ctx in ({"state": "success", "key": "k"}, {}):
        written: dict = {}
        closures: dict = {}
        rule.emit(span, ctx, "", written)
        _values("forms", spec, "")(span, ctx, "", closures)
        assert written == closures and [type(v) for v in written.values()] == [type(v) for v in closures.values()]
    assert closures  # (the comparison compared something)


def test_a_map_of_values_keeps_the_closures_and_still_tracks():
    spec = "{by_code: {map: 'attributes[\"code\"]', value: {count: 1, price: 'attributes[\"price\"]'}}}"
    rules = parse_rules(BASE.replace("{values}", spec))
    assert not hasattr(rules.rules[0].emit, "source")
    assert track(spec, SPAN)[0][1] == {"by_code.OK.count": 1, "by_code.OK.price": 12.5}


def test_names_from_the_file_reach_the_function_only_as_literals():
    # A value name trying to close the quote and run a statement: it is only a name.
    name = "x'] = 0\nraise SystemExit('ran')\nout['y"
    yaml_name = name.replace("\n", "\\n")
    text = BASE.replace("{values}", '{"' + yaml_name + '": 1, "it\'s": {map: \'attributes["code"]\'}}')
    rule = parse_rules(text).rules[0]
    assert hasattr(rule.emit, "source")
    out: dict = {}
    rule.emit(SPAN, {}, "", out)
    assert out == {name: 1, "it's.OK": 1}


def test_attribute_keys_reach_the_function_only_as_literals():
    # An attribute key with quotes and a statement in it: read as a key, never run.
    key = "p') or __import__('os')._exit(3) or ('"
    rule = compile_rule({"name": "keys", "keys": ["k"], "values": {"price": f'attributes["{key}"]', "n": 1}}, 0)
    assert repr(key) in rule.emit.source
    out: dict = {}
    rule.emit(make_span("run/calc", 0, 20, attributes={key: 4.5}), {}, "", out)
    assert out == {"price": 4.5, "n": 1}
