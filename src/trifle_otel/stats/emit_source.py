"""A rule's ``values`` as one Python function, for the forms nearly every rule uses.

The rules' emitters are closures, one per value, nested as the values are; a span that
matches a rule calls each of them, and each calls its path's getter.  For the usual forms
(constants, numeric paths, triples, distributions, maps counting a constant, and groups of
those) this module writes the same additions as the body of a single function instead, so
a span costs one call per rule.  Only the rule's structure shapes the source: names from
the file (value names, attribute keys) reach it as ``repr`` literals, a span field as the
attribute the paths' own table names, other paths' getters and bucket bounds as objects in
its namespace, so nothing from the file is executed.  ``out`` starts empty, so a path's
first addition (unless a map or a distribution could have written it before) is a plain
assignment.  A form not covered here (a map whose value is not a
constant) keeps the closures.  The rules file is validated by the closures' compilation
first; this only runs on what that accepted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any, Callable

from ..paths import attribute_path, field_attribute
from .values import is_number, sanitize_name

Emitter = Callable[[Any, Any, str, dict[str, Any]], None]
PathCompiler = Callable[[str], Callable[[Any, Any], Any]]
BoundsOf = Callable[[Mapping[str, Any]], list[float]]
Labeler = Callable[[float], str]


class _Unsupported(Exception):
    """A form this module does not write: the closures are used."""


class _Writer:
    def __init__(self, compile_path: PathCompiler, bounds_of: BoundsOf, label: Labeler) -> None:
        self.compile_path = compile_path
        self.bounds_of = bounds_of
        self.label = label
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "_sanitize": sanitize_name, "_isfinite": math.isfinite, "_is_number": is_number,
            "_bisect": bisect.bisect_right,
        }
        self.count = 0
        self.assigned: set[str] = set()  # fixed paths written so far
        self.map_prefixes: list[str] = []  # prefixes of the paths maps write (any suffix)
        self.chosen: set[str] = set()  # paths distributions choose from

    def name(self, value: Any, stem: str) -> str:
        """Put an object in the namespace; its name in the source."""
        self.count += 1
        name = f"_{stem}{self.count}"
        self.namespace[name] = value
        return name

    def read(self, path: str) -> None:
        field = field_attribute(path)
        if field == "duration_ms":  # (the property, inline)
            self.lines.append("v = span.end_ns\nif v is not None:\n    v = (v - span.start_ns) / 1e6")
            return
        if field is not None:  # a field of the span (its name from the paths' own table): read inline
            self.lines.append(f"v = span.{field}")
            return
        text = path.strip()
        if text in ("execution.state", "execution.key"):
            self.lines.append(f"v = ctx.get({text.split('.')[1]!r})")
            return
        attribute = attribute_path(text) if not text.startswith("execution.") else None
        if attribute is not None:  # an attribute: its key as a literal
            resource, key = attribute
            self.lines.append(f"v = span.{'resource' if resource else 'attributes'}.get({key!r})")
            return
        getter = self.name(self.compile_path(path), "get")
        self.lines.append(f"v = {getter}(span, ctx)")

    def if_number(self) -> None:
        # is_number, inline for the usual types: int (not bool), finite float.
        self.lines.append(
            "t = type(v)\n"
            "if t is int or (t is float and _isfinite(v)) or (t is not float and v is not None and _is_number(v)):"
        )

    def add(self, path: str, amount: str, indent: str = "") -> None:
        if path in self.assigned or path in self.chosen or any(path.startswith(p) for p in self.map_prefixes):
            self.lines.append(f"{indent}out[{path!r}] = get({path!r}, 0) + {amount}")
        else:
            self.assigned.add(path)
            self.lines.append(f"{indent}out[{path!r}] = {amount}")

    def values(self, spec: Any, prefix: str) -> None:
        if is_number(spec):
            self.add(prefix[:-1], repr(spec))
            return
        if isinstance(spec, str):
            self.read(spec)
            self.if_number()
            self.add(prefix[:-1], "v", "    ")
            return
        if isinstance(spec.get("triple"), str):
            self.read(spec["triple"])
            self.if_number()
            self.add(prefix + "count", "1", "    ")
            self.add(prefix + "sum", "v", "    ")
            self.add(prefix + "square", "v * v", "    ")
            return
        if isinstance(spec.get("map"), str):
            inner = spec.get("value", 1)
            if not is_number(inner):
                raise _Unsupported
            self.read(spec["map"])
            self.map_prefixes.append(prefix)
            self.lines.append(
                f'if v is not None and v != "":\n'
                f"    p = {prefix!r} + _sanitize(v)\n"
                f"    out[p] = get(p, 0) + {inner!r}"
            )
            return
        if isinstance(spec.get("distribution"), str):
            bounds = self.bounds_of(spec)
            labels = [self.label(b) for b in bounds]
            paths = [prefix + "lt_" + labels[0], *(prefix + label for label in labels[:-1]), prefix + "ge_" + labels[-1]]
            bounds_name, paths_name = self.name(bounds, "bounds"), self.name(paths, "paths")
            self.chosen.update(paths)
            self.read(spec["distribution"])
            self.if_number()
            self.lines.append(f"    p = {paths_name}[_bisect({bounds_name}, v)]\n    out[p] = get(p, 0) + 1")
            return
        for name, child in spec.items():
            self.values(child, prefix + sanitize_name(name) + ".")


def compile_values(spec: Mapping[str, Any], compile_path: PathCompiler, bounds_of: BoundsOf, label: Labeler,
                   source_name: str = "<rule values>") -> Emitter | None:
    """One function adding what ``spec`` tracks for a span to ``out`` (called with an empty
    ``out`` and an empty ``dynamic`` prefix, as a rule's top-level values are), or None for
    the closures."""
    writer = _Writer(compile_path, bounds_of, label)
    try:
        writer.values(spec, "")
    except _Unsupported:
        return None
    body = "\n".join("    " + line for block in writer.lines for line in block.split("\n"))
    source = f"def emit(span, ctx, dynamic, out):\n    get = out.get\n{body}\n"
    exec(compile(source, source_name, "exec"), writer.namespace)  # noqa: S102 (source built above from repr literals)
    emit = writer.namespace["emit"]
    emit.source = source  # type: ignore[attr-defined]  # (to read when debugging a rule)
    return emit
