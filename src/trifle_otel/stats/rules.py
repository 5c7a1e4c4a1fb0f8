"""Stat rules: YAML that turns span attributes into ``track(key, at, values)`` increments.

A rules file is compiled once; every mistake is refused at load with the rule's name and
what is wrong.  Nothing in it is executed as code: conditions and values are a small
OTel-Collector-flavoured path syntax, compiled into closures (and a rule's usual values
into one function built from their structure: ``emit_source``)::

    rules:
      - name: price calculations
        where:
          - name == "run/pricing.calculate_price"
          - attributes["customer.id"] != nil
        keys:
          - prices/calculations
          - prices/calculations/customer/{attributes["customer.id"]}
        values:
          count: 1                                  # a constant
          price: attributes["price"]                # a numeric attribute (skipped if missing)
          duration: {triple: duration}              # {count, sum, square}
          codes: {map: attributes["result.code"]}   # {<value>: 1}
          margin: {distribution: attributes["margin"], linear: {start: 0, step: 0.05, count: 6}}

Paths: ``name``, ``kind``, ``status.code``, ``status.message``, ``duration`` (ms),
``attributes["..."]``, ``resource.attributes["..."]``, ``scope.name`` and, for spans of a
finished execution, ``execution.state`` and ``execution.key``.
"""

from __future__ import annotations

import bisect
import logging
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from ..errors import ConfigError
from ..model import Span
from ..paths import compile_path_in_context
from ..yamlfile import parse_yaml, read_text
from .emit_source import compile_values
from .values import is_number, sanitize_name

logger = logging.getLogger("trifle_otel")

Context = Mapping[str, Any]
Getter = Callable[[Span, Context], Any]
Emitter = Callable[[Span, Context, str, dict[str, Any]], None]

RULE_FIELDS = ("name", "where", "keys", "values", "at", "description")
_CONDITION = re.compile(
    r"^\s*(?P<path>.+?)\s+(?P<op>==|!=|<=|>=|<|>|not\s+in|in|matches|not\s+matches)\s+(?P<value>.+?)\s*$"
)
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class RuleError(ConfigError):
    pass


@dataclass
class Rule:
    name: str
    conditions: list[Callable[[Span, Context], bool]]
    keys: list[Callable[[Span, Context], str | None]]
    emit: Emitter
    at_start: bool = False
    explain: list[str] = field(default_factory=list)
    spec: Mapping[str, Any] = field(default_factory=dict)  # as written, for `rules check`
    pinned_keys: frozenset[str] = frozenset()  # execution keys the conditions require (execution.key == "k")
    on_name: tuple[bool, ...] = ()  # per condition: whether it reads the span's name only

    @property
    def key_templates(self) -> list[str]:
        keys = self.spec.get("keys")
        return [str(k) for k in (keys if isinstance(keys, list) else [keys])]

    @property
    def literal_keys(self) -> list[str]:
        """Keys without ``{...}``: the same key for every span the rule matches."""
        return [k for k in self.key_templates if not _PLACEHOLDER.search(k)]


@dataclass(slots=True)
class Track:
    rule: str
    key: str
    at: float  # epoch seconds
    values: dict[str, Any]  # flat dotted paths


def _path(rule: str, text: str) -> Getter:
    text = str(text).strip()
    if text == "execution.state":
        return lambda span, ctx: ctx.get("state")
    if text == "execution.key":
        return lambda span, ctx: ctx.get("key")
    try:
        return compile_path_in_context(text)
    except ConfigError as exc:
        raise RuleError(f"rule {rule!r}: {exc} (or execution.state, execution.key)") from None


# Values a path can only ever have: a bare word naming one of them is read as that string.
ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "kind": ("internal", "server", "client", "producer", "consumer"),
    "status.code": ("ok", "error", "unset"),
    "execution.state": ("success", "warning", "error", "ignored"),
}
_NIL_WORDS = ("nil", "null")
_WORDS_HINT = 'quote a string ("OK"), or use nil, true, false or a number'


def _literal(rule: str, text: str, path: str = "", said: str = "") -> Any:
    """The value on the right of a condition: a quoted string, a number, ``true``/``false``,
    ``nil`` (no value), a ``[list]`` of those, or a bare word naming a value of an enumerated
    path (``kind == consumer``).  Any other bare word is refused: ``!= nill`` is a typo, not a
    string."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        raise RuleError(f"rule {rule!r}: cannot read the value {text!r} ({_WORDS_HINT})") from None
    if node is None:
        raise RuleError(f"rule {rule!r}: a condition needs a value after its operator ({_WORDS_HINT})")
    return _node_value(rule, node, said or text, path)


def _node_value(rule: str, node: yaml.Node, text: str, path: str) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return [_scalar(rule, item, text, path) for item in node.value]
    return _scalar(rule, node, text, path)


def _scalar(rule: str, node: yaml.Node, text: str, path: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise RuleError(f"rule {rule!r}: cannot compare with {text!r}: use a string, a number, nil or a list")
    word = node.value
    enum = ENUM_VALUES.get(path)
    if node.style in ('"', "'"):  # quoted: a string
        if enum is not None and word not in enum:
            raise RuleError(f"rule {rule!r}: {path} is never {word!r}: it is one of {', '.join(enum)}")
        return word
    if word.lower() in _NIL_WORDS:
        return None
    if node.tag.endswith((":int", ":float")):
        return yaml.safe_load(word)
    if node.tag.endswith(":bool") and word.lower() in ("true", "false"):
        return word.lower() == "true"
    if enum is not None and word in enum:
        return word
    if enum is not None:
        raise RuleError(f"rule {rule!r}: unknown word {word!r} in {text.strip()!r}: {path} is one of {', '.join(enum)}")
    raise RuleError(f"rule {rule!r}: unknown word {word!r} in {text.strip()!r}: {_WORDS_HINT}")


def _compare(a: Any, b: Any, op: Callable[[Any, Any], bool]) -> bool:
    if a is None or b is None:
        return False
    if is_number(a) and is_number(b):
        return op(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return op(a, b)
    return False


@dataclass
class Condition:
    test: Callable[[Span, Context], bool]
    text: str  # how `rules check` explains it
    path: str = ""
    op: str = ""
    value: Any = None


def _condition(rule: str, text: Any) -> Condition:
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"rule {rule!r}: each 'where' condition is a string like 'attributes[\"x\"] == \"y\"'")
    match = _CONDITION.match(text)
    if not match:  # a bare path: true when the value is present and truthy
        get = _path(rule, text)
        return Condition(lambda span, ctx: bool(get(span, ctx)), f"{text.strip()} is set", text.strip(), "set")
    path = match.group("path").strip()
    get = _path(rule, path)
    op = re.sub(r"\s+", " ", match.group("op"))
    raw = match.group("value")
    said = text.strip()
    if op in ("matches", "not matches"):
        try:
            pattern_text = _literal(rule, raw, said=said)
        except RuleError:
            pattern_text = None
        if not isinstance(pattern_text, str):
            raise RuleError(f"rule {rule!r}: '{op}' needs a quoted regular expression, e.g. "
                            f"{path} {op} \"^run/\" (got {raw.strip()!r})")
        try:
            pattern = re.compile(pattern_text)
        except re.error as exc:
            raise RuleError(f"rule {rule!r}: bad regular expression {pattern_text!r}: {exc}") from None
        want = op == "matches"
        return Condition(lambda span, ctx: (isinstance(v := get(span, ctx), str) and bool(pattern.search(v))) == want,
                         said, path, op, pattern_text)
    value = _literal(rule, raw, path, said)
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise RuleError(f"rule {rule!r}: '{op}' needs a list, e.g. [\"ok\", \"unset\"] (got {raw!r})")
        choices = set(value)
        want = op == "in"

        def member(span: Span, ctx: Context) -> bool:
            v = get(span, ctx)
            try:
                return (v in choices) == want
            except TypeError:  # an unhashable value (a list attribute) is in no list
                return not want

        return Condition(member, said, path, op, value)
    if isinstance(value, list):
        raise RuleError(f"rule {rule!r}: '{op}' compares with one value, not a list (use 'in' for a list)")
    if op == "==":
        if value is None:
            return Condition(lambda span, ctx: get(span, ctx) is None, f"{path} is not set", path, op, value)
        return Condition(lambda span, ctx: get(span, ctx) == value, said, path, op, value)
    if op == "!=":
        if value is None:
            return Condition(lambda span, ctx: get(span, ctx) is not None, f"{path} is set", path, op, value)
        return Condition(lambda span, ctx: get(span, ctx) != value, said, path, op, value)
    if not (is_number(value) or isinstance(value, str)):
        raise RuleError(f"rule {rule!r}: '{op}' compares with a number or a string (got {raw!r})")
    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    return Condition(lambda span, ctx: _compare(get(span, ctx), value, fn), said, path, op, value)


def _pinned_keys(conditions: list[Condition]) -> frozenset[str]:
    """Execution keys the conditions require: ``execution.key == "k"`` (or ``in [...]``), or
    the root's ``trifle.key`` attribute, which names the execution's key."""
    keys: set[str] | None = None
    for c in conditions:
        if c.path not in ("execution.key", 'attributes["trifle.key"]', "attributes['trifle.key']"):
            continue
        if c.op == "==" and isinstance(c.value, str):
            found = {c.value}
        elif c.op == "in" and isinstance(c.value, list):
            found = {v for v in c.value if isinstance(v, str)}
        else:
            continue
        keys = found if keys is None else keys & found
    return frozenset(keys or ())


def _key_template(rule: str, template: Any) -> Callable[[Span, Context], str | None]:
    if not isinstance(template, str) or not template.strip():
        raise RuleError(f"rule {rule!r}: each key is a non-empty string")
    parts: list[Any] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(template[pos : match.start()])
        parts.append(_path(rule, match.group(1)))
        pos = match.end()
    parts.append(template[pos:])
    if "{" in "".join(p for p in parts if isinstance(p, str)) or "}" in "".join(p for p in parts if isinstance(p, str)):
        raise RuleError(f"rule {rule!r}: key {template!r} has an unmatched brace")

    if len(parts) == 1:  # no placeholder: the same key for every span
        literal = parts[0]

        def render_literal(span: Span, ctx: Context) -> str | None:
            return literal

        return render_literal

    if len(parts) == 3:  # one placeholder (``prices/customer/{attributes["customer.id"]}``): no loop
        head, read, tail = parts

        def render_one(span: Span, ctx: Context) -> str | None:
            value = read(span, ctx)
            if value is None or value == "":
                return None  # this key does not apply to this span
            text = value if type(value) is str else str(value)
            if "/" in text or "::" in text:
                text = text.replace("::", "_").replace("/", "_")
            return head + text + tail

        return render_one

    def render(span: Span, ctx: Context) -> str | None:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(span, ctx)
            if value is None or value == "":
                return None  # this key does not apply to this span
            out.append(str(value).replace("::", "_").replace("/", "_"))
        return "".join(out)

    return render


def _number(rule: str, spec: Mapping[str, Any], name: str, *, positive: bool = False, integer: bool = False) -> float:
    value = spec.get(name)
    if not is_number(value) or (positive and value <= 0) or (integer and int(value) != value):
        kind = "a positive whole number" if integer else ("a positive number" if positive else "a number")
        raise RuleError(f"rule {rule!r}: distribution '{name}' must be {kind} (got {value!r})")
    return value


def _label(value: float) -> str:
    text = f"{value:.10g}"
    return sanitize_name(text)


def _bounds(rule: str, spec: Mapping[str, Any]) -> list[float]:
    kinds = [k for k in ("linear", "geometric", "bounds") if k in spec]
    if len(kinds) != 1:
        raise RuleError(f"rule {rule!r}: a distribution needs exactly one of linear, geometric or bounds")
    kind = kinds[0]
    if kind == "bounds":
        bounds = spec["bounds"]
        if not isinstance(bounds, list) or not bounds or not all(is_number(b) for b in bounds):
            raise RuleError(f"rule {rule!r}: bounds must be a list of numbers")
        if sorted(bounds) != bounds or len(set(bounds)) != len(bounds):
            raise RuleError(f"rule {rule!r}: bounds must be increasing (got {bounds})")
        return list(bounds)
    params = spec[kind]
    if not isinstance(params, Mapping):
        raise RuleError(f"rule {rule!r}: {kind} takes start, {'step' if kind == 'linear' else 'factor'} and count")
    count = int(_number(rule, params, "count", positive=True, integer=True))
    if count > 1000:
        raise RuleError(f"rule {rule!r}: a distribution has at most 1000 buckets (got {count})")
    start = _number(rule, params, "start", positive=kind == "geometric")
    if kind == "linear":
        step = _number(rule, params, "step", positive=True)
        return [start + i * step for i in range(count + 1)]
    factor = _number(rule, params, "factor", positive=True)
    if factor <= 1:
        raise RuleError(f"rule {rule!r}: geometric factor must be greater than 1 (got {factor})")
    return [start * factor**i for i in range(count + 1)]


def _distribution(rule: str, spec: Mapping[str, Any], prefix: str = "") -> Emitter:
    extra = set(spec) - {"distribution", "linear", "geometric", "bounds"}
    if extra:
        raise RuleError(f"rule {rule!r}: unknown distribution setting(s) {', '.join(sorted(extra))}")
    get = _path(rule, spec["distribution"])
    bounds = _bounds(rule, spec)
    labels = [_label(b) for b in bounds]
    paths = [prefix + "lt_" + labels[0], *(prefix + label for label in labels[:-1]), prefix + "ge_" + labels[-1]]

    def emit(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
        value = get(span, ctx)
        if not is_number(value):
            return
        path = paths[bisect.bisect_right(bounds, value)]
        if dynamic:
            path = dynamic + path
        out[path] = out.get(path, 0) + 1

    return emit


def _values(rule: str, spec: Any, where: str, prefix: str = "") -> Emitter:
    """Compile a ``values`` spec into an emitter adding to ``out`` (flat dotted paths).

    Paths are known when the rule compiles, except below a ``map`` (the mapped value names
    a level): those emitters take the level's prefix at span time, the others ignore it
    and use the paths worked out here."""
    if isinstance(spec, bool) or spec is None:
        raise RuleError(f"rule {rule!r}: value {where or 'values'} must be a number, a path or a mapping (got {spec!r})")
    if is_number(spec):
        constant = spec
        fixed = prefix[:-1]

        def emit_constant(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
            path = (dynamic + prefix)[:-1] if dynamic else fixed
            out[path] = out.get(path, 0) + constant

        return emit_constant
    if isinstance(spec, str):
        get = _path(rule, spec)
        fixed = prefix[:-1]

        def emit_path(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
            value = get(span, ctx)
            if is_number(value):
                path = (dynamic + prefix)[:-1] if dynamic else fixed
                out[path] = out.get(path, 0) + value

        return emit_path
    if not isinstance(spec, Mapping) or not spec:
        raise RuleError(f"rule {rule!r}: value {where or 'values'} must be a number, a path or a mapping (got {spec!r})")
    # A special form names its path as a string; otherwise the mapping is a group of values
    # (so a value may itself be called "map" or "distribution").
    if isinstance(spec.get("triple"), str):
        if set(spec) != {"triple"}:
            raise RuleError(f"rule {rule!r}: value {where}: 'triple' takes only a path")
        get = _path(rule, spec["triple"])
        names = (prefix + "count", prefix + "sum", prefix + "square")

        def emit_triple(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
            value = get(span, ctx)
            if is_number(value):
                count, total, square = (dynamic + n for n in names) if dynamic else names
                out[count] = out.get(count, 0) + 1
                out[total] = out.get(total, 0) + value
                out[square] = out.get(square, 0) + value * value

        return emit_triple
    if isinstance(spec.get("map"), str):
        extra = set(spec) - {"map", "value"}
        if extra:
            raise RuleError(f"rule {rule!r}: value {where}: 'map' takes only 'value' beside it (got {', '.join(sorted(extra))})")
        get = _path(rule, spec["map"])
        inner_spec = spec.get("value", 1)
        inner = _values(rule, inner_spec, where + ".<value>")
        if is_number(inner_spec) and not isinstance(inner_spec, bool):  # the usual form: {<value>: 1}
            constant = inner_spec

            def emit_map_count(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
                value = get(span, ctx)
                if value is None or value == "":
                    return
                path = dynamic + prefix + sanitize_name(value)
                out[path] = out.get(path, 0) + constant

            return emit_map_count

        def emit_map(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
            value = get(span, ctx)
            if value is None or value == "":
                return
            inner(span, ctx, dynamic + prefix + sanitize_name(value) + ".", out)

        return emit_map
    if isinstance(spec.get("distribution"), str):
        return _distribution(rule, spec, prefix)
    children = []
    for name, child in spec.items():
        clean = sanitize_name(name)
        if clean != str(name):
            raise RuleError(f"rule {rule!r}: value name {name!r} cannot contain '.', '\"' or start with '$' (use {clean!r})")
        children.append(_values(rule, child, f"{where}.{clean}" if where else clean, prefix + clean + "."))
    emitters = tuple(children)

    def emit_group(span: Span, ctx: Context, dynamic: str, out: dict[str, Any]) -> None:
        for emit in emitters:
            emit(span, ctx, dynamic, out)

    return emit_group


def compile_rule(raw: Any, index: int) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleError(f"rule #{index + 1} must be a mapping with name, where, keys and values")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"rule #{index + 1} has no name: give each rule a 'name'")
    unknown = set(raw) - set(RULE_FIELDS)
    if unknown:
        raise RuleError(f"rule {name!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(RULE_FIELDS)})")
    where = raw.get("where") or []
    if isinstance(where, str):
        where = [where]
    if not isinstance(where, list):
        raise RuleError(f"rule {name!r}: 'where' is a condition string or a list of them")
    conditions = [_condition(name, text) for text in where]
    keys = raw.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys:
        raise RuleError(f"rule {name!r}: 'keys' needs at least one key, e.g. [prices/calculations]")
    key_fns = [_key_template(name, k) for k in keys]
    if "values" not in raw or not isinstance(raw["values"], Mapping) or not raw["values"]:
        raise RuleError(f"rule {name!r}: 'values' must be a mapping of value names, e.g. {{count: 1}}")
    emit = _values(name, raw["values"], "")  # (validates the values, whichever form runs)
    emit = compile_values(
        raw["values"], lambda path: _path(name, path), lambda spec: _bounds(name, spec), _label, f"<rule {name!r} values>"
    ) or emit
    at = raw.get("at", "end")
    if at not in ("start", "end"):
        raise RuleError(f"rule {name!r}: 'at' is start or end (got {at!r})")
    return Rule(name.strip(), [c.test for c in conditions], key_fns, emit, at == "start", [c.text for c in conditions],
                dict(raw), _pinned_keys(conditions), tuple(c.path == "name" for c in conditions))


# -- explaining a rule, and where it meets the default execution stat ------------------------

# What every stored execution tracks on its own key (see stats.sink.default_values); `*` is
# any one name.
DEFAULT_STAT_PATHS: tuple[tuple[str, ...], ...] = (
    ("count",),
    ("states", "*"),
    ("entries", "count"),
    ("duration", "count"),
    ("duration", "sum"),
    ("duration", "square"),
    ("duration", "states", "*", "count"),
    ("duration", "states", "*", "sum"),
    ("duration", "states", "*", "square"),
)


@dataclass(frozen=True)
class ValuePath:
    segments: tuple[str, ...]  # value names, "*" where a name comes from the span
    shown: str  # the path as `rules check` prints it: codes.<attributes["result.code"]>
    meaning: str  # what is added there


def value_paths(spec: Any, prefix: tuple[str, ...] = (), shown: str = "") -> list[ValuePath]:
    """The paths a (compiled, so valid) ``values`` spec writes, each with what it adds."""
    def join(name: str) -> str:
        return f"{shown}.{name}" if shown else name

    if is_number(spec):
        return [ValuePath(prefix, shown, f"+{_plain(spec)}")]
    if isinstance(spec, str):
        return [ValuePath(prefix, shown, f"+ {spec.strip()} (when it is a number)")]
    if isinstance(spec.get("triple"), str):
        return [ValuePath(prefix + (n,), join(n), text) for n, text in (
            ("count", "+1"), ("sum", f"+ {spec['triple'].strip()}"), ("square", f"+ {spec['triple'].strip()} squared"))]
    if isinstance(spec.get("map"), str):
        inner = value_paths(spec.get("value", 1), prefix + ("*",), join(f"<{spec['map'].strip()}>"))
        return inner
    if isinstance(spec.get("distribution"), str):
        labels = _bucket_labels(spec)
        listed = ", ".join(labels) if len(labels) <= 8 else ", ".join(labels[:3] + ["..."] + labels[-3:])
        return [ValuePath(prefix + ("*",), join("<bucket>"),
                          f"+1 in the bucket of {spec['distribution'].strip()}: {listed}")]
    out: list[ValuePath] = []
    for name, child in spec.items():
        out.extend(value_paths(child, prefix + (str(name),), join(str(name))))
    return out


def _plain(number: Any) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _bucket_labels(spec: Mapping[str, Any]) -> list[str]:
    bounds = _bounds("", spec)
    labels = [_label(b) for b in bounds]
    return ["lt_" + labels[0], *labels[:-1], "ge_" + labels[-1]]


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two paths can name the same value, or one a value inside the other."""
    return all(x == y or "*" in (x, y) for x, y in zip(a, b))


def default_stat_overlap(rule: Rule) -> list[str]:
    """The rule's value paths that the default execution stat also writes, were both on one key."""
    return [p.shown for p in value_paths(rule.spec.get("values") or {})
            if any(_overlap(p.segments, d) for d in DEFAULT_STAT_PATHS)]


@dataclass(frozen=True)
class Collision:
    rule: str
    key: str
    paths: tuple[str, ...]

    def message(self, why: str) -> str:
        return (f"rule {self.rule!r} tracks {', '.join(self.paths)} on {self.key}, {why}: the default execution "
                f"stat (stats.default_stats) tracks {', '.join(sorted({p.split('.')[0] for p in self.paths}))} there "
                "too, so those values count twice. Track the rule under another key, leave those values out, "
                "or set stats.default_stats: false")


def collisions(rules: Iterable[Rule], execution_keys: Callable[[str], bool] | None = None) -> list[Collision]:
    """Literal rule keys whose values meet the default execution stat's values.

    Without ``execution_keys`` only the certain ones: a rule whose conditions require the
    execution key to be that key.  With it (a test of whether executions with a key exist,
    from a trace index), every literal key that is one."""
    out = []
    for rule in rules:
        paths = default_stat_overlap(rule)
        if not paths:
            continue
        for key in rule.literal_keys:
            if key in rule.pinned_keys or (execution_keys is not None and execution_keys(key)):
                out.append(Collision(rule.name, key, tuple(paths)))
    return out


MAX_DISPATCH_NAMES = 10_000


class RuleSet:
    """Compiled rules; ``evaluate`` gives the tracks a span (in its execution) makes.

    Conditions on the span's name alone (``name == "..."``, ``name matches "..."``) are
    decided once per name: a span is checked only against the rules its name admits, and
    only against their other conditions.
    """

    def __init__(self, rules: Iterable[Rule] = (), source: str = "") -> None:
        self.rules = list(rules)
        self.source = source
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RuleError(f"{source or 'rules'}: rule names must be unique ({', '.join(dupes)} repeated)")
        self._for_name: dict[str, list[tuple[Rule, list[Callable[[Span, Context], bool]]]]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def _candidates(self, name: str) -> list[tuple[Rule, list[Callable[[Span, Context], bool]]]]:
        found = self._for_name.get(name)
        if found is None:
            if len(self._for_name) >= MAX_DISPATCH_NAMES:
                self._for_name.clear()
            probe = Span("", "", name, 0)
            found = []
            for rule in self.rules:
                on_name = rule.on_name or (False,) * len(rule.conditions)
                if all(test(probe, {}) for test, named in zip(rule.conditions, on_name) if named):
                    found.append((rule, [test for test, named in zip(rule.conditions, on_name) if not named]))
            self._for_name[name] = found
        return found

    def evaluate(self, span: Span, ctx: Context | None = None) -> list[Track]:
        out: list[tuple[str, float, dict[str, Any], str]] = []
        self.collect(span, ctx or {}, out)
        return [Track(rule, key, at, values) for key, at, values, rule in out]

    def collect(self, span: Span, ctx: Context, tracks: list) -> None:
        """Append the span's tracks to ``tracks`` as ``(key, at, values, rule)`` (the hot path)."""
        candidates = self._for_name.get(span.name)
        if candidates is None:
            candidates = self._candidates(span.name)
        for rule, conditions in candidates:
            for condition in conditions:
                if not condition(span, ctx):
                    break
            else:
                values: dict[str, Any] = {}
                rule.emit(span, ctx, "", values)
                if not values:
                    continue
                ns = span.start_ns if rule.at_start or span.end_ns is None else span.end_ns
                at = ns / 1e9
                for key_fn in rule.keys:
                    key = key_fn(span, ctx)
                    if key:
                        tracks.append((key, at, values, rule.name))


def load_rules(path: str | Path, *, default_stats: bool = True) -> RuleSet:
    """Compile a rules file; warns (log ``trifle_otel``) about rules that certainly track on an
    execution's own key values the default execution stat tracks there too."""
    file = Path(path)
    ruleset = parse_rules(read_text(file, "rules file", RuleError), str(file))
    if default_stats:
        for collision in collisions(ruleset.rules):
            logger.warning("trifle-otel: %s: %s", file, collision.message("the key of the executions it matches"))
    return ruleset


def parse_rules(text: str, source: str = "rules") -> RuleSet:
    data = parse_yaml(
        text, source, RuleError, " (inside { } or [ ], quote paths that have brackets: 'attributes[\"customer.id\"]')"
    )
    if isinstance(data, Mapping):
        unknown = set(data) - {"rules"}
        if unknown:
            raise RuleError(f"{source}: unknown top-level field(s) {', '.join(sorted(map(str, unknown)))}: put rules under 'rules:'")
        data = data.get("rules")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise RuleError(f"{source}: 'rules' must be a list of rules")
    try:
        return RuleSet([compile_rule(raw, i) for i, raw in enumerate(data)], source)
    except RuleError as exc:
        raise RuleError(f"{source}: {exc}") from None


def describe(rule: Rule) -> list[str]:
    return rule.explain or ["every span"]


__all__ = ["Collision", "Rule", "RuleError", "RuleSet", "Track", "collisions", "load_rules", "parse_rules", "value_paths"]
