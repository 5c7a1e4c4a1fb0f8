"""Stats derived from finished executions: the rules' tracks and the default execution stat."""

from __future__ import annotations

import logging
from typing import Any

from ..config import Config
from ..model import Execution
from ..translate import Document
from .buffer import StatsBuffer
from .drivers import open_stats_driver
from .granularity import Floor, parse_granularity
from .rules import RuleSet, load_rules

logger = logging.getLogger("trifle_otel")


def default_values(state: str, duration: float, length: int) -> dict[str, Any]:
    """What Trifle::Traces tracks on an execution's key when it finishes, as flat paths:
    ``{count, states: {<state>: 1}, entries: {count}, duration: {count, sum, square,
    states: {<state>: {count, sum, square}}}}``."""
    square = duration * duration
    return {
        "count": 1,
        f"states.{state}": 1,
        "entries.count": length,
        "duration.count": 1,
        "duration.sum": duration,
        "duration.square": square,
        f"duration.states.{state}.count": 1,
        f"duration.states.{state}.sum": duration,
        f"duration.states.{state}.square": square,
    }


class ExecutionStats:
    """Observes finished executions and feeds a stats buffer; the pipeline's worker flushes it."""

    def __init__(self, config: Config, rules: RuleSet | None = None) -> None:
        self.config = config
        self.rules = rules if rules is not None else (load_rules(config.stats_rules, default_stats=config.default_stats) if config.stats_rules else RuleSet())
        self.default_stats = config.default_stats
        self.buffer = StatsBuffer(
            None,  # type: ignore[arg-type]  # opened on the first flush, in the worker
            [parse_granularity(g) for g in config.granularities],
            Floor(config.time_zone, config.beginning_of_week),
            flush_interval=config.flush_interval,
        )
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self.rules) or self.default_stats

    def observe(self, execution: Execution, doc: Document) -> None:
        """Rules see every finished execution, ignored ones too (``execution.state`` reads
        ``ignored``: the run happened, its trace is just not kept); the default execution
        stat, as in Trifle::Traces, counts stored executions only."""
        record = doc.record
        ctx = {"state": "ignored" if doc.ignored else record["state"], "key": record["key"]}
        tracks: list = []
        if self.rules:
            collect = self.rules.collect
            collect(execution.root, ctx, tracks)
            for span in execution.spans:
                collect(span, ctx, tracks)
        if self.default_stats and not doc.ignored:
            end_ns = execution.root.end_ns or execution.root.start_ns
            tracks.append(
                (record["key"], end_ns / 1e9, default_values(record["state"], float(record["duration"]), record["length"]), "")
            )
        self.buffer.track_many(tracks)

    def _ready(self) -> bool:
        if self.buffer.driver is not None:
            return True
        try:
            self.buffer.driver = open_stats_driver(
                self.config.resolved_stats_url(), mode=self.config.stats_mode, expire_after=self.config.stats_expire_after
            )
            return True
        except Exception as exc:
            self.errors += 1
            self.buffer.counters.write_errors += 1
            logger.warning("trifle-otel cannot open the stats store: %s", exc)
            return False

    def flush_if_due(self) -> None:
        if self.buffer.pending and self._ready():
            self.buffer.flush_if_due()

    def flush(self) -> None:
        if self.buffer.pending and self._ready():
            try:
                self.buffer.flush()
            except Exception:
                pass  # counted by the buffer and kept for the next flush

    def close(self) -> None:
        self.flush()
        if self.buffer.driver is not None:
            try:
                self.buffer.driver.close()
            except Exception:
                pass
