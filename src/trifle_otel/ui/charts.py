"""What to draw for a stat key: plain functions from a series (``{at, values}``) to charts,
category tables, triple summaries and expression rows.

A value's shape says how it reads best:

- a number (``count``)                                → a line
- ``{count, sum, square}`` (``duration``)             → mean and p95 lines (from the triple)
- a map of such triples (``duration.states``)         → the mean of each
- a map of numbers named as buckets (``lt_100``, ``200``, ``ge_1600``) → stacked bars (distribution)
- a map of numbers with a total among them (``products: {count, success, failure}``) → lines
- any other map of numbers (``states``, ``codes``)   → stacked bars, and a category table
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError
from ..stats.series import compile_expression, summarize
from ..stats.values import dig, is_number, merge_sum

TRIPLE = frozenset(("count", "sum", "square"))
TOTALS = frozenset(("count", "sum", "total"))
_BUCKET = re.compile(r"^(lt_|ge_)?-?\d+(_\d+)?$")
MAX_CHARTS = 40
MAX_SERIES = 24  # per chart; the rest is summed as "other"


@dataclass
class Chart:
    title: str
    kind: str  # line, lines, stacked, distribution, triple, means
    paths: list[str]
    table: list[tuple[str, float, float]] = field(default_factory=list)  # name, total, share %
    summary: dict[str, Any] | None = None  # triples: count, mean, stddev, p95

    def spec(self) -> dict[str, Any]:
        """What the page's script needs to draw it."""
        return {"title": self.title, "kind": self.kind, "paths": self.paths}


def totals(values: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """All buckets summed into one value of the same shape."""
    out: dict[str, Any] = {}
    for value in values:
        merge_sum(out, value)
    return out


def bucket_bound(name: str) -> float:
    """The lower bound a distribution bucket is named by (``0_05`` → 0.05; ``lt_x`` first)."""
    if name.startswith("lt_"):
        return -math.inf
    if name.startswith("ge_"):
        return math.inf
    try:
        return float(name.replace("_", "."))
    except ValueError:
        return math.inf


def is_bucket(name: str) -> bool:
    """A distribution bucket's name: ``lt_100``, ``200``, ``0_05``, ``ge_1600``."""
    return bool(_BUCKET.match(name))


def bucket_label(name: str) -> str:
    """``lt_0`` → ``< 0``, ``0_05`` → ``≥ 0.05``, ``ge_1600`` → ``≥ 1600``."""
    if name.startswith("lt_"):
        return "< " + name[3:].replace("_", ".", 1)
    if name.startswith("ge_"):
        return "≥ " + name[3:].replace("_", ".", 1)
    return "≥ " + name.replace("_", ".", 1)


def _is_triple(node: Any) -> bool:
    return isinstance(node, Mapping) and TRIPLE <= set(node) and all(is_number(node[k]) for k in TRIPLE)


def charts_for(series: Mapping[str, Sequence[Any]]) -> list[Chart]:
    total = totals(series["values"])
    charts: list[Chart] = []
    _walk(series, total, "", charts)
    return charts[:MAX_CHARTS]


def _walk(series, node: Mapping[str, Any], path: str, charts: list[Chart]) -> None:
    names = sorted(node, key=lambda n: (n != "count", n))
    for name in names:
        child = node[name]
        full = f"{path}.{name}" if path else name
        if is_number(child):
            if path == "":
                charts.append(Chart(full, "line", [full]))
            continue
        if not isinstance(child, Mapping) or not child:
            continue
        if _is_triple(child):
            charts.append(Chart(f"{full}: mean and p95", "triple", [full], summary=summarize(series, full)))
            rest = {k: v for k, v in child.items() if isinstance(v, Mapping)}
            if rest:
                _walk(series, rest, full, charts)
            continue
        leaves = {k: v for k, v in child.items() if is_number(v)}
        maps = {k: v for k, v in child.items() if isinstance(v, Mapping)}
        if maps and all(_is_triple(v) for v in maps.values()) and not leaves:
            paths = [f"{full}.{k}" for k in sorted(maps)][:MAX_SERIES]
            charts.append(Chart(f"{full}: mean", "means", paths))
            continue
        if leaves:
            keys = list(leaves)
            if len(keys) >= 2 and all(is_bucket(k) for k in keys):
                keys.sort(key=bucket_bound)
                kind = "distribution"
            elif TOTALS & set(keys):
                keys.sort(key=lambda k: (k not in TOTALS, k))
                kind = "lines"
            else:
                keys.sort(key=lambda k: -leaves[k])
                kind = "stacked"
            paths = [f"{full}.{k}" for k in keys][:MAX_SERIES]
            table = _table(leaves, keys, bucket_label if kind == "distribution" else str) if kind != "lines" else []
            charts.append(Chart(full, kind, paths, table=table))
        if maps:
            _walk(series, maps, full, charts)


def _table(leaves: Mapping[str, float], keys: Sequence[str], label) -> list[tuple[str, float, float]]:
    whole = sum(leaves[k] for k in keys) or 1
    return [(label(k), float(leaves[k]), leaves[k] / whole * 100) for k in keys]


# -- expressions ---------------------------------------------------------------------------

_FUNCTIONS = {"sum", "mean", "avg", "min", "max", "sqrt"}
_TOKEN = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
MAX_EXPRESSION = 300


@dataclass
class Expression:
    text: str
    paths: list[str]
    points: list[float | None]
    total: float | None
    error: str | None = None


def parse_expression(text: str) -> tuple[str, list[str]]:
    """``codes.OK / count * 100`` → (``a / b * 100``, ``["codes.OK", "count"]``); paths with
    other characters go in backticks (`` `codes.tech-data` ``)."""
    if len(text) > MAX_EXPRESSION:
        raise ConfigError(f"expression is longer than {MAX_EXPRESSION} characters")
    paths: list[str] = []

    def replace(match: re.Match) -> str:
        path = match.group(1) or match.group(2)
        if match.group(2) and path in _FUNCTIONS:
            return path
        if path not in paths:
            paths.append(path)
        return _variable(paths.index(path))

    rewritten = _TOKEN.sub(replace, text)
    if not paths:
        raise ConfigError(f"expression {text!r} uses no value: name paths such as codes.OK or count")
    return rewritten, paths


def _variable(i: int) -> str:
    return f"v{i}"


def compile_paths(text: str) -> tuple[Callable[[Mapping[str, Any]], Any], list[str]]:
    """A safe function of a value for an expression written with paths, and those paths.
    Errors quote the expression as written."""
    rewritten, paths = parse_expression(text)
    names = [_variable(i) for i in range(len(paths))]
    try:
        fn = compile_expression(rewritten, names)
    except ConfigError as exc:
        message = str(exc).replace(repr(rewritten), repr(text))
        for name, path in zip(names, paths):
            message = re.sub(rf"\b{name}\b", path, message)
        raise ConfigError(message) from None

    def value_of(value: Mapping[str, Any]) -> Any:
        return fn({n: (v if is_number(v := dig(value, p)) else None) for n, p in zip(names, paths)})

    return value_of, paths


def evaluate(series: Mapping[str, Sequence[Any]], text: str) -> Expression:
    """The expression in each bucket, and over the whole range (on the summed values)."""
    try:
        fn, paths = compile_paths(text)
    except ConfigError as exc:
        return Expression(text, [], [], None, str(exc))

    def at(value: Mapping[str, Any]) -> float | None:
        result = fn(value)
        return float(result) if is_number(result) else None

    points = [at(v) for v in series["values"]]
    return Expression(text, paths, points, at(totals(series["values"])))
