"""Nested stat values: sanitizing names, flattening to dotted paths and back, merging.

Value names must not contain ``.`` (the path separator) nor start with ``$`` (MongoDB
operators); names built from data are sanitized, never passed through raw.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Iterable

Number = int | float
_UNSAFE = re.compile(r'[.\x00"\\]')


_sanitized: dict[Any, str] = {}


def sanitize_name(name: Any) -> str:
    """``"1.5"`` → ``"1_5"``, ``"$set"`` → ``"_set"``; empty names become ``"_"``."""
    # Cached for strings only: 1, 1.0 and True are equal keys but different names.
    is_str = type(name) is str
    cached = _sanitized.get(name) if is_str else None
    if cached is not None:
        return cached
    # A string of a str subclass (a str-mixin Enum) is named by its text, as a plain string
    # is: the same name whichever of the two a cache saw first.
    text = _UNSAFE.sub("_", name if isinstance(name, str) else str(name))
    if text.startswith("$"):
        text = "_" + text[1:]
    text = text or "_"
    if is_str:
        if len(_sanitized) > 50_000:  # names come from data: bound the cache
            _sanitized.clear()
        _sanitized[name] = text
    return text


def is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(values: Mapping[str, Any], prefix: str = "", out: dict[str, Number] | None = None) -> dict[str, Number]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, sanitizing every name; non-numbers are left out."""
    if out is None:
        out = {}
    cache = _sanitized
    isfinite = math.isfinite
    for name, value in values.items():
        # (sanitize_name inlined: this runs for every value of every track)
        clean = cache.get(name) if type(name) is str else None
        path = prefix + (clean if clean is not None else sanitize_name(name))
        kind = type(value)
        if kind is int or (kind is float and isfinite(value)):
            out[path] = value
        elif kind is dict or isinstance(value, Mapping):
            flatten(value, path + ".", out)
        elif kind is not float and is_number(value):
            out[path] = value
    return out


# prefix -> ({name -> prefix + sanitized name}, {name -> (the nested prefix, its table's
# paths)}): the dotted path of a value, built once per name instead of once per track
# (names come from data: every cache is bounded).
_tables: dict[str, tuple[dict[Any, str], dict[Any, tuple[str, dict[Any, str]]]]] = {}
_CACHED = 10_000


def _table(prefix: str) -> tuple[dict[Any, str], dict[Any, tuple[str, dict[Any, str]]]]:
    table = _tables.get(prefix)
    if table is None:
        if len(_tables) > _CACHED:
            _tables.clear()
        table = _tables[prefix] = ({}, {})
    return table


def _path(paths: dict[Any, str], prefix: str, name: Any) -> str:
    # Cached for strings only: 1, 1.0 and True are equal keys but different names.  (A
    # lookup by a non-string name finds no string's entry, or, for a str subclass, the
    # entry of its own text, which sanitize_name gives it too.)
    path = prefix + sanitize_name(name)
    if type(name) is str:
        if len(paths) > _CACHED:
            paths.clear()
        paths[name] = path
    return path


def _nested(inner: dict[Any, tuple[str, dict[Any, str]]], prefix: str, name: Any) -> tuple[str, dict[Any, str]]:
    nested_prefix = prefix + sanitize_name(name) + "."
    entry = (nested_prefix, _table(nested_prefix)[0])
    if type(name) is str:
        if len(inner) > _CACHED:
            inner.clear()
        inner[name] = entry
    return entry


def _add_other(target: dict[str, Number], name: Any, value: Any, prefix: str) -> int:
    """One value that is not a finite ``int``/``float``: a mapping, another number type, or
    something left out (``bool``, ``nan``, text)."""
    kind = type(value)
    if kind is dict or isinstance(value, Mapping):
        return add_nested(target, value, prefix + sanitize_name(name) + ".")
    if kind is not float and is_number(value):
        path = prefix + sanitize_name(name)
        target[path] = target.get(path, 0) + value
        return 1
    return 0


def add_nested(target: dict[str, Number], values: Mapping[str, Any], prefix: str = "") -> int:
    """Add the numbers of nested ``values`` into flat ``target`` sums (what :func:`flatten`
    then a sum would do, without the intermediate dict); returns how many were added.

    The stats API's hot path: the first level of nesting (``{"codes": {"OK": 1}}``) is
    walked in place rather than by a call, and ``x - x == 0`` is ``isfinite`` for a float
    without a call."""
    table = _tables.get(prefix)
    paths, inner = table if table is not None else _table(prefix)
    get = target.get
    added = 0
    for name, value in values.items():
        kind = type(value)
        if kind is int or (kind is float and value - value == 0.0):
            path = paths.get(name) or _path(paths, prefix, name)
            target[path] = get(path, 0) + value
            added += 1
        elif kind is dict:
            nested_prefix, nested_paths = inner.get(name) or _nested(inner, prefix, name)
            for nested_name, nested_value in value.items():
                kind = type(nested_value)
                if kind is int or (kind is float and nested_value - nested_value == 0.0):
                    path = nested_paths.get(nested_name) or _path(nested_paths, nested_prefix, nested_name)
                    target[path] = get(path, 0) + nested_value
                    added += 1
                else:
                    added += _add_other(target, nested_name, nested_value, nested_prefix)
        else:
            added += _add_other(target, name, value, prefix)
    return added


def flatten_any(values: Mapping[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Like :func:`flatten` but keeps every leaf value (for ``set``)."""
    if out is None:
        out = {}
    for name, value in values.items():
        path = prefix + sanitize_name(name)
        if isinstance(value, Mapping) and value:
            flatten_any(value, path + ".", out)
        else:
            out[path] = value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        add_path(out, path.split("."), value)
    return out


def add_path(target: dict[str, Any], parts: list[str], value: Any, *, add: bool = False) -> None:
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    leaf = parts[-1]
    if add and is_number(value) and is_number(node.get(leaf)):
        node[leaf] = node[leaf] + value
    elif add and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        merge_sum(node[leaf], value)
    else:
        node[leaf] = value


def merge_sum(target: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``other`` into ``target``, adding numbers that both hold."""
    for name, value in other.items():
        current = target.get(name)
        if isinstance(value, Mapping):
            if not isinstance(current, dict):
                current = target[name] = {}
            merge_sum(current, value)
        elif is_number(value) and is_number(current):
            target[name] = current + value
        else:
            target[name] = value
    return target


def read_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Trifle's stored ``data`` in either form: nested, flat dotted keys (``"codes.OK": 1``,
    as Trifle::Stats' SQLite writer leaves a row's first increment), or both; values that
    both forms hold are summed."""
    nested: dict[str, Any] = {}
    flat: list[tuple[str, Any]] = []
    for name, value in data.items():
        if "." in name:
            flat.append((name, value))
        elif isinstance(value, Mapping):
            nested[name] = read_data(value)
        else:
            nested[name] = value
    for name, value in flat:
        add_path(nested, name.split("."), read_data(value) if isinstance(value, Mapping) else value, add=True)
    return nested


def dig(values: Mapping[str, Any], path: str | Iterable[str]) -> Any:
    parts = path.split(".") if isinstance(path, str) else path
    node: Any = values
    for part in parts:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node
