"""Paths into a span, in the syntax OTel Collector users know (OTTL-like).

``name``, ``kind``, ``status.code``, ``status.message``, ``duration`` (ms), ``trace_id``,
``span_id``, ``scope.name``, ``attributes["customer.id"]`` and
``resource.attributes["service.name"]``.  A path is compiled once into a plain getter;
a missing attribute reads as ``None``.
"""

from __future__ import annotations

import re
from operator import attrgetter
from typing import Any, Callable

from .errors import ConfigError
from .model import Span

Getter = Callable[[Span], Any]

_ATTR = re.compile(r"""^(resource\.)?attributes\[\s*(?:"([^"]*)"|'([^']*)'|([^\]"']+))\s*\]$""")

# Each field path and the attribute of the neutral span it reads.
_FIELDS: dict[str, str] = {
    "name": "name",
    "kind": "kind",
    "status.code": "status",
    "status.message": "status_message",
    "duration": "duration_ms",
    "trace_id": "trace_id",
    "span_id": "span_id",
    "scope.name": "scope",
}

KNOWN_PATHS = tuple(_FIELDS) + ('attributes["<key>"]', 'resource.attributes["<key>"]')


def field_attribute(path: str) -> str | None:
    """The neutral span's attribute a field path reads (``duration`` → ``duration_ms``), or
    None for any other path."""
    return _FIELDS.get(path.strip())


def attribute_path(path: str) -> tuple[bool, str] | None:
    """``(resource?, key)`` of an attribute path (``attributes["k"]``), None for a field path;
    a bad path raises :class:`ConfigError`."""
    text = path.strip()
    if text in _FIELDS:
        return None
    return _attribute(path, text)


def compile_path(path: str) -> Getter:
    """Compile a path into a getter; a bad path raises :class:`ConfigError` saying why."""
    return _compile(path, with_context=False)


def compile_path_in_context(path: str) -> Callable[[Span, Any], Any]:
    """``compile_path`` for callers that pass a context too (the stats rules): a getter of
    ``(span, context)`` that reads the span directly, no wrapper around a span getter."""
    return _compile(path, with_context=True)


def _compile(path: str, *, with_context: bool) -> Any:
    text = path.strip()
    field = _FIELDS.get(text)
    if field is not None:
        read = attrgetter(field)
        return (lambda s, ctx: read(s)) if with_context else read
    resource, key = _attribute(path, text)
    if resource:
        return (lambda s, ctx: s.resource.get(key)) if with_context else (lambda s: s.resource.get(key))
    return (lambda s, ctx: s.attributes.get(key)) if with_context else (lambda s: s.attributes.get(key))


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
