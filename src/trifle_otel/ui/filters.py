"""The executions filter as it lives in the URL (shareable), and its translation to a search.

``/?key=prices&state=error&state=warning&tags=customer.id:acme,vip&tags_mode=any&since=2h
&min_duration=500&stuck=1&cursor=...``.  Every value is checked and bounded; a bad one gets
a message naming the field and what it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Mapping
from urllib.parse import urlencode

from ..errors import ConfigError
from ..stores import TraceQuery
from ..timeutil import parse_time

STATES = ("running", "success", "warning", "error")
MAX_TEXT = 256
MAX_TAGS = 20
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class BadInput(ConfigError):
    """A query parameter the page cannot use (answered with 400 and the message)."""


def text_param(params: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = params.get(name) or ""
    value = value.strip()
    if len(value) > limit:
        raise BadInput(f"'{name}' is longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise BadInput(f"'{name}' has control characters")
    return value


def int_param(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = text_param(params, name, 20)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"'{name}' must be a whole number (got {raw!r})") from None
    if not low <= value <= high:
        raise BadInput(f"'{name}' must be between {low} and {high} (got {value})")
    return value


@dataclass(frozen=True)
class ListFilter:
    key: str = ""
    states: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tags_mode: str = "all"
    since: str = ""
    until: str = ""
    min_duration: str = ""
    stuck: bool = False
    limit: int = DEFAULT_LIMIT
    cursor: str = ""

    @classmethod
    def parse(cls, params: Any) -> "ListFilter":
        """From request query parameters (a multi-dict with ``getlist``)."""
        states = tuple(dict.fromkeys(s.strip() for s in params.getlist("state") if s.strip()))
        for state in states:
            if state not in STATES:
                raise BadInput(f"'state' must be one of {', '.join(STATES)} (got {state[:40]!r})")
        raw_tags = text_param(params, "tags", MAX_TEXT * 4)
        tags = tuple(dict.fromkeys(t.strip() for t in raw_tags.split(",") if t.strip()))
        if len(tags) > MAX_TAGS:
            raise BadInput(f"at most {MAX_TAGS} tags")
        if any(len(t) > MAX_TEXT for t in tags):
            raise BadInput(f"a tag is longer than {MAX_TEXT} characters")
        mode = text_param(params, "tags_mode") or "all"
        if mode not in ("all", "any"):
            raise BadInput(f"'tags_mode' must be all or any (got {mode[:40]!r})")
        min_duration = text_param(params, "min_duration", 20)
        if min_duration:
            try:
                if float(min_duration) < 0:
                    raise ValueError
            except ValueError:
                raise BadInput(f"'min_duration' must be a number of milliseconds (got {min_duration!r})") from None
        found = cls(
            key=text_param(params, "key").strip("/"),
            states=states,
            tags=tags,
            tags_mode=mode,
            since=text_param(params, "since", 40),
            until=text_param(params, "until", 40),
            min_duration=min_duration,
            stuck=text_param(params, "stuck", 5) in ("1", "on", "true", "yes"),
            limit=int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            cursor=text_param(params, "cursor", 512),
        )
        found.range(datetime.now().astimezone())  # refuse bad times now, with their field name
        return found

    def range(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        since = parse_time(self.since, now=now, what="'since'") if self.since else None
        until = parse_time(self.until, now=now, what="'until'") if self.until else None
        if since and until and since > until:
            raise BadInput("'since' is after 'until'")
        return since, until

    def query(self, now: datetime, stuck_after: float) -> TraceQuery:
        since, until = self.range(now)
        return TraceQuery(
            key=self.key or None,
            states=self.states,
            tags_all=self.tags if self.tags_mode == "all" else (),
            tags_any=self.tags if self.tags_mode == "any" else (),
            since=since,
            until=until,
            min_duration=float(self.min_duration) if self.min_duration else None,
            stuck_before=now - timedelta(seconds=stuck_after) if self.stuck else None,
            limit=self.limit,
            cursor=self.cursor or None,
        )

    @property
    def active(self) -> bool:
        return any((self.key, self.states, self.tags, self.since, self.until, self.min_duration, self.stuck))

    def params(self, **changes: Any) -> str:
        """The URL query of this filter (with ``changes``), without empty values."""
        f = replace(self, **changes)
        pairs: list[tuple[str, str]] = []
        if f.key:
            pairs.append(("key", f.key))
        pairs.extend(("state", s) for s in f.states)
        if f.tags:
            pairs.append(("tags", ",".join(f.tags)))
            if f.tags_mode != "all":
                pairs.append(("tags_mode", f.tags_mode))
        for name in ("since", "until", "min_duration"):
            if getattr(f, name):
                pairs.append((name, getattr(f, name)))
        if f.stuck:
            pairs.append(("stuck", "1"))
        if f.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(f.limit)))
        if f.cursor:
            pairs.append(("cursor", f.cursor))
        return urlencode(pairs)
