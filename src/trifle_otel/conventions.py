"""Span attribute and event names that carry Trifle semantics.

Everything the annotation API does is expressed with these plain attributes and events, so
code instrumented in any language (and sent over OTLP) is understood the same way.

Span attributes
    ``trifle.key``      the execution's key (on the local root span)
    ``trifle.result``   the span's result: shown as a raw line ``↳ <result>``
    ``trifle.head``     true: the span's begin line is a ``head`` line
    ``trifle.state``    ``success`` / ``warning`` / ``error``: sets the execution state
    ``trifle.ignore``   true: the execution is not stored
    ``trifle.tags``     list of strings: tags of the execution

Span events
    ``trifle.fail`` / ``trifle.warn`` / ``trifle.success``  set the execution state; an optional
                        ``message`` attribute becomes a line with that state
    ``trifle.ignore``   the execution is not stored
    ``trifle.tag``      attribute ``tags`` (string or list of strings) adds tags
    ``exception``       (OTel semantic convention) an error line and the stack trace as raw
    any other event     a text line (state from an optional ``trifle.state`` attribute);
                        its other attributes a raw line
"""

KEY = "trifle.key"
RESULT = "trifle.result"
HEAD = "trifle.head"
STATE = "trifle.state"
IGNORE = "trifle.ignore"
TAGS = "trifle.tags"

EVENT_FAIL = "trifle.fail"
EVENT_WARN = "trifle.warn"
EVENT_SUCCESS = "trifle.success"
EVENT_IGNORE = "trifle.ignore"
EVENT_TAG = "trifle.tag"
EVENT_EXCEPTION = "exception"

STATE_EVENTS = {EVENT_FAIL: "error", EVENT_WARN: "warning", EVENT_SUCCESS: "success"}
LINE_STATES = ("success", "warning", "error", "debug")

PREFIX = "trifle."
