from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from trifle_otel.config import Config
from trifle_otel.model import Event, Execution, Span

_ids = itertools.count(1)
T0 = 1_795_000_000_000_000_000  # 2026-11-19T...Z in ns


def new_id(width: int = 16) -> str:
    return format(next(_ids), f"0{width}x")


def make_span(name: str, start_ms: float, end_ms: float | None, parent: Span | None = None, **kw) -> Span:
    trace_id = parent.trace_id if parent is not None else kw.pop("trace_id", new_id(32))
    events = tuple(
        Event(e[0], T0 + int(e[1] * 1e6), e[2] if len(e) > 2 else {}) for e in kw.pop("events", ())
    )
    return Span(
        trace_id=trace_id,
        span_id=kw.pop("span_id", new_id()),
        name=name,
        start_ns=T0 + int(start_ms * 1e6),
        end_ns=T0 + int(end_ms * 1e6) if end_ms is not None else None,
        parent_span_id=parent.span_id if parent is not None else kw.pop("parent_span_id", None),
        events=events,
        **kw,
    )


def execution(root: Span, *spans: Span) -> Execution:
    return Execution(root, list(spans))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def config(home: Path) -> Config:
    return Config(home=str(home), flush_interval=0.05, live_interval=0.2)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("TRIFLE_OTEL_") or var.startswith("OTEL_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
