"""Trifle's ergonomics on top of OTel: ``trace``, ``fail``, ``warn``, ``ignore``, ``tag``.

Everything here becomes plain span attributes and events (see :mod:`conventions`), so the
same document comes out of code instrumented in any language.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable, TypeVar

from opentelemetry import trace as otel_trace

from . import conventions as cv

F = TypeVar("F", bound=Callable[..., Any])
_NOTHING = object()


def _tracer():
    return otel_trace.get_tracer("trifle_otel")


def format_result(value: Any) -> str:
    """A readable one-line form of a result: JSON when it can be, ``repr`` otherwise."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_default)
    except (TypeError, ValueError):
        return repr(value)


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError


class trace:  # noqa: N801 - reads as a verb, like Trifle's `trace`
    """A child span for a block; its result is recorded as a raw line ``↳ <result>``.

    As a context manager, set ``.result``::

        with trace("Fetching main product") as step:
            step.result = fetch(product_id)

    As a decorator, the function's return value is the result::

        @trace("Computing price")
        def compute(offer): ...
    """

    def __init__(self, message: str, *, head: bool = False, attributes: dict[str, Any] | None = None) -> None:
        self.message = message
        self.head = head
        self.attributes = attributes
        self.result: Any = _NOTHING
        self._cm = None
        self.span = None

    def __enter__(self) -> "trace":
        attrs = dict(self.attributes or {})
        if self.head:
            attrs[cv.HEAD] = True
        self._cm = _tracer().start_as_current_span(self.message, attributes=attrs or None)
        self.span = self._cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        if self.result is not _NOTHING and self.span is not None:
            self.span.set_attribute(cv.RESULT, format_result(self.result))
        return self._cm.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        message, head, attributes = self.message, self.head, self.attributes

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with trace(message, head=head, attributes=attributes) as step:
                    result = await func(*args, **kwargs)
                    if result is not None:
                        step.result = result
                    return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with trace(message, head=head, attributes=attributes) as step:
                result = func(*args, **kwargs)
                if result is not None:
                    step.result = result
                return result

        return wrapper  # type: ignore[return-value]


def _event(name: str, attributes: dict[str, Any] | None = None) -> None:
    span = otel_trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes or {})


def fail(message: str | None = None) -> None:
    """Mark the current execution as failed (``error``); the message becomes an error line."""
    _event(cv.EVENT_FAIL, {"message": message} if message else None)


def warn(message: str | None = None) -> None:
    """Mark the current execution with a ``warning``; the message becomes a warning line."""
    _event(cv.EVENT_WARN, {"message": message} if message else None)


def success(message: str | None = None) -> None:
    """Mark the current execution as ``success`` (undoes an earlier ``warn``/``fail``)."""
    _event(cv.EVENT_SUCCESS, {"message": message} if message else None)


def ignore() -> None:
    """Do not store the current execution (e.g. a run that found nothing to do)."""
    _event(cv.EVENT_IGNORE)


def tag(*tags: str) -> None:
    """Add search tags to the current execution."""
    if tags:
        _event(cv.EVENT_TAG, {"tags": [str(t) for t in tags]})
