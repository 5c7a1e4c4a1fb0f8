"""Series operations on ``{"at": [...], "values": [...]}`` (Trifle::Stats' series).

Aggregators (``sum mean min max``, with slices), formatters (``timeline``, ``category``,
paths with ``*`` wildcards), an expression transponder (``a / b * 100``, ``sqrt``, ...)
and estimates of mean / standard deviation / percentiles from ``count, sum, square``.
Plain functions over plain data.
"""

from __future__ import annotations

import ast
import copy
import math
import operator
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError
from .values import add_path, dig, is_number

Series = Mapping[str, Sequence[Any]]


# -- paths ---------------------------------------------------------------------------------


def expand_path(values: Sequence[Mapping[str, Any]], path: str) -> list[str]:
    """Concrete paths for ``path``: each ``*`` becomes every key seen at that level (first
    seen first); a path that names a group expands to its children."""
    prefixes: list[list[str]] = [[]]
    for part in path.split("."):
        if part == "*":
            expanded = []
            for prefix in prefixes:
                seen: dict[str, None] = {}
                for v in values:
                    node = dig(v, prefix) if prefix else v
                    if isinstance(node, Mapping):
                        seen.update(dict.fromkeys(node))
                expanded.extend(prefix + [k] for k in seen)
            prefixes = expanded
        else:
            prefixes = [prefix + [part] for prefix in prefixes]
    out: list[str] = []
    for prefix in prefixes:
        if any(isinstance(dig(v, prefix), Mapping) for v in values):
            out.extend(expand_path(values, ".".join(prefix + ["*"])))
        else:
            out.append(".".join(prefix))
    return out


def _slices(items: list[Any], slices: int) -> list[list[Any]]:
    if slices < 1:
        raise ConfigError("slices must be 1 or more")
    if not items:
        return []
    size = len(items) // slices
    if size == 0:
        return [items]
    items = items[len(items) % slices :]  # drop the oldest remainder, as Trifle does
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- aggregators ---------------------------------------------------------------------------


def _numbers(chunk: list[Any]) -> list[float]:
    return [v for v in chunk if is_number(v)]


AGGREGATORS: dict[str, Callable[[list[Any]], Any]] = {
    "sum": lambda chunk: sum(_numbers(chunk)),
    "mean": lambda chunk: (sum(_numbers(chunk)) / len(_numbers(chunk))) if _numbers(chunk) else 0,
    "min": lambda chunk: min(_numbers(chunk), default=None),
    "max": lambda chunk: max(_numbers(chunk), default=None),
}


def aggregate(series: Series, name: str, path: str, slices: int = 1) -> list[Any]:
    """One value per slice of the series (``slices=1``: the whole series)."""
    try:
        fn = AGGREGATORS[name]
    except KeyError:
        raise ConfigError(f"aggregator {name!r} is not known: use {', '.join(AGGREGATORS)}") from None
    points = [dig(v, path) for v in series["values"]]
    return [fn(chunk) for chunk in _slices(points, slices)]


# -- formatters ----------------------------------------------------------------------------


def timeline(series: Series, path: str, slices: int = 1) -> dict[str, Any]:
    """``{concrete path: [[at, value], ...]}``; missing values read as 0.0."""
    values = list(series["values"])
    if not series["at"]:
        return {}
    out: dict[str, Any] = {}
    for concrete in expand_path(values, path):
        points = [[at, float(v) if is_number(v := dig(value, concrete)) else 0.0] for at, value in zip(series["at"], values)]
        out[concrete] = points if slices == 1 else _slices(points, slices)
    return out


def category(series: Series, path: str, slices: int = 1) -> dict[str, float] | list[dict[str, float]]:
    """``{concrete path: sum}`` over the series (one mapping per slice when ``slices > 1``)."""
    values = list(series["values"])
    paths = expand_path(values, path)
    chunks = _slices(values, slices) if values else [[]]
    result = []
    for chunk in chunks:
        sums: dict[str, float] = {}
        for concrete in paths:
            sums[concrete] = float(sum(v for v in (dig(x, concrete) for x in chunk) if is_number(v)))
        result.append(sums)
    return result[0] if slices == 1 else result


# -- transponder ---------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sum": lambda *a: sum(a),
    "mean": lambda *a: sum(a) / len(a),
    "avg": lambda *a: sum(a) / len(a),
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
}


def compile_expression(expression: str, variables: Sequence[str]) -> Callable[[Mapping[str, Any]], Any]:
    """A safe arithmetic expression over named variables (no names, calls or attributes
    beyond ``+ - * /``, parentheses, numbers and sum/mean/avg/min/max/sqrt)."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"expression {expression!r} is not valid: {exc.msg}") from None

    def build(node: ast.AST) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(node, ast.Constant) and is_number(node.value):
            value = node.value
            return lambda env: value
        if isinstance(node, ast.Name):
            if node.id not in variables:
                raise ConfigError(f"expression {expression!r} uses {node.id!r}: known are {', '.join(variables)}")
            name = node.id
            return lambda env: env.get(name)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = build(node.operand)
            sign = -1 if isinstance(node.op, ast.USub) else 1
            return lambda env: None if (v := inner(env)) is None else sign * v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            fn, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)

            def binary(env):
                a, b = left(env), right(env)
                if a is None or b is None:
                    return None
                try:
                    return fn(a, b)
                except ZeroDivisionError:
                    return None

            return binary
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
            fn, args = _FUNCTIONS[node.func.id], [build(a) for a in node.args]
            if not args:
                raise ConfigError(f"expression {expression!r}: {node.func.id}() needs arguments")

            def call(env):
                values = [a(env) for a in args]
                if any(v is None for v in values):
                    return None
                try:
                    return fn(*values)
                except (ValueError, ZeroDivisionError):
                    return None

            return call
        raise ConfigError(
            f"expression {expression!r} has {ast.unparse(node)!r}: only numbers, variables, + - * /, "
            "parentheses and sum/mean/avg/min/max/sqrt are allowed"
        )

    return build(tree)


def transpond(series: Series, paths: Sequence[str], expression: str, response: str) -> dict[str, list]:
    """Compute ``expression`` (variables ``a``, ``b``, ... bound to ``paths`` in order) for each
    point and store it at ``response``; a missing input or a division by zero gives ``None``."""
    if any("*" in p for p in paths):
        raise ConfigError("transponder paths cannot use '*' wildcards")
    if len(paths) > 26:
        raise ConfigError("a transponder takes at most 26 paths (a ... z)")
    names = [chr(ord("a") + i) for i in range(len(paths))]
    fn = compile_expression(expression, names)
    values = []
    for value in series["values"]:
        env = {n: (v if is_number(v := dig(value, p)) else None) for n, p in zip(names, paths)}
        out = copy.deepcopy(dict(value))
        add_path(out, response.split("."), fn(env))
        values.append(out)
    return {"at": list(series["at"]), "values": values}


# -- estimates from count / sum / square ---------------------------------------------------


def mean(count: float, total: float) -> float | None:
    return total / count if count else None


def stddev(count: float, total: float, square: float) -> float | None:
    """Sample standard deviation from a count/sum/square triple."""
    if count is None or count < 2:
        return 0.0 if count == 1 else None
    variance = (count * square - total * total) / (count * (count - 1))
    return math.sqrt(variance) if variance > 0 else 0.0


def percentile(count: float, total: float, square: float, p: float = 95) -> float | None:
    """Estimate of the p-th percentile, assuming a normal distribution (mean + z·stddev)."""
    m, s = mean(count, total), stddev(count, total, square)
    if m is None or s is None:
        return None
    return m + NormalDist().inv_cdf(p / 100) * s


def summarize(series: Series, path: str) -> dict[str, Any]:
    """count, mean, stddev and p95 of the triple at ``path`` (``<path>.count/sum/square``) over the series."""
    count = sum(aggregate(series, "sum", f"{path}.count"))
    total = sum(aggregate(series, "sum", f"{path}.sum"))
    square = sum(aggregate(series, "sum", f"{path}.square"))
    return {
        "count": count,
        "mean": mean(count, total),
        "stddev": stddev(count, total, square),
        "p95": percentile(count, total, square, 95),
    }
