"""Paths into a span, in the syntax OTel Collector users know (OTTL-like).

``name``, ``kind``, ``status.code``, ``status.message``, ``duration`` (ms), ``trace_id``,
``span_id``, ``scope.name``, ``attributes["customer.id"]`` and
``resource.attributes["service.name"]``.  A path is compiled once into a plain getter;
a missing attribute reads as ``None``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .errors import ConfigError
from .model import Span

Getter = Callable[[Span], Any]

_ATTR = re.compile(r"""^(resource\.)?attributes\[\s*(?:"([^"]*)"|'([^']*)'|([^\]"']+))\s*\]$""")

_FIELDS: dict[str, Getter] = {
    "name": lambda s: s.name,
    "kind": lambda s: s.kind,
    "status.code": lambda s: s.status,
    "status.message": lambda s: s.status_message,
    "duration": lambda s: s.duration_ms,
    "trace_id": lambda s: s.trace_id,
    "span_id": lambda s: s.span_id,
    "scope.name": lambda s: s.scope,
}

_FIELDS_IN_CONTEXT: dict[str, Callable[[Span, Any], Any]] = {
    "name": lambda s, ctx: s.name,
    "kind": lambda s, ctx: s.kind,
    "status.code": lambda s, ctx: s.status,
    "status.message": lambda s, ctx: s.status_message,
    "duration": lambda s, ctx: s.duration_ms,
    "trace_id": lambda s, ctx: s.trace_id,
    "span_id": lambda s, ctx: s.span_id,
    "scope.name": lambda s, ctx: s.scope,
}
assert set(_FIELDS_IN_CONTEXT) == set(_FIELDS)

KNOWN_PATHS = tuple(_FIELDS) + ('attributes["<key>"]', 'resource.attributes["<key>"]')


def compile_path(path: str) -> Getter:
    """Compile a path into a getter; a bad path raises :class:`ConfigError` saying why."""
    text = path.strip()
    getter = _FIELDS.get(text)
    if getter is not None:
        return getter
    resource, key = _attribute(path, text)
    if resource:
        return lambda s: s.resource.get(key)
    return lambda s: s.attributes.get(key)


def compile_path_in_context(path: str) -> Callable[[Span, Any], Any]:
    """``compile_path`` for callers that pass a context too (the stats rules): a getter of
    ``(span, context)`` that reads the span directly, one call per value on the hot path."""
    text = path.strip()
    field_getter = _FIELDS_IN_CONTEXT.get(text)
    if field_getter is not None:
        return field_getter
    resource, key = _attribute(path, text)
    if resource:
        return lambda s, ctx: s.resource.get(key)
    return lambda s, ctx: s.attributes.get(key)


def _attribute(path: str, text: str) -> tuple[bool, str]:
    """``(resource?, key)`` of an attribute path, or ConfigError saying what is wrong."""
    match = _ATTR.match(text)
    if match:
        key = next(g for g in match.groups()[1:] if g is not None).strip()
        if not key:
            raise ConfigError(f"path {path!r} names an empty attribute key")
        return bool(match.group(1)), key
    raise ConfigError(f"unknown path {path!r}: use one of {', '.join(KNOWN_PATHS)}")


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def compile_template(template: str) -> Callable[[Span], str | None]:
    """Compile ``"prices/{attributes[customer.id]}"``; renders ``None`` when a value is missing."""
    parts: list[str | Getter] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(template[pos : match.start()])
        parts.append(compile_path(match.group(1)))
        pos = match.end()
    parts.append(template[pos:])
    if "{" in template.replace("{{", "") and not any(callable(p) for p in parts):
        raise ConfigError(f"template {template!r} has an unclosed '{{'")

    def render(span: Span) -> str | None:
        out = []
        for part in parts:
            if callable(part):
                value = part(span)
                if value is None or value == "":
                    return None
                out.append(str(value))
            else:
                out.append(part)
        return "".join(out)

    return render
