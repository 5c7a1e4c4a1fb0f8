"""What every route shares: the configuration, the stores, the stats catalog, the dashboards
and the templates (Jinja2 with autoescaping on for every template)."""

from __future__ import annotations

import os
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..config import Config
from ..errors import NotFoundError
from ..stores import TraceQuery
from .catalog import Catalog
from .dashboards import Dashboard, load_dashboards
from .filters import BadInput
from .format import FILTERS
from .sources import Sources

HERE = Path(__file__).parent
_REFERENCE = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
RUNNING_LIMIT = 2000  # running executions the running page lists


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("trifle-otel")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "dev"


def templates_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every template, whatever its name: span data is text, never markup
        undefined=jinja2.ChainableUndefined,  # a field another writer left out shows as nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


class DashboardFile:
    """The dashboards file, read again when it changes (a mistake shows on the page)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._seen: tuple[float, list[Dashboard]] | None = None
        if self.path is not None:
            self.get()  # refuse a broken file when the UI starts

    def get(self) -> list[Dashboard]:
        if self.path is None:
            return []
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            mtime = -1.0
        with self._lock:
            if self._seen is None or self._seen[0] != mtime:
                self._seen = (mtime, load_dashboards(self.path))
            return self._seen[1]


class UI:
    def __init__(self, config: Config, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.sources = Sources(config)
        self.catalog = Catalog(self.sources.stats, config.granularities, clock=self.clock)
        self.dashboards = DashboardFile(config.ui_dashboards)
        self.env = templates_env()
        self.version = version()

    # -- rendering ---------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        try:
            dashboards = self.dashboards.get()
        except Exception:  # noqa: BLE001 - a broken file is shown on the dashboards page itself
            dashboards = []
        base = {
            "request": request,
            "now": self.clock(),
            "config": self.config,
            "version": self.version,
            "stores": self.sources.describe(),
            "dashboards": dashboards,
            "nav": request.url.path,
        }
        html = self.env.get_template(name).render(**base, **context)
        return HTMLResponse(html, status_code=status)

    # -- reads -------------------------------------------------------------------------

    def record(self, reference: str) -> dict[str, Any]:
        if not _REFERENCE.match(reference):
            raise BadInput("a reference is made of letters and digits (the 16 characters the list shows are enough)")
        record = self.sources.index().get(reference)
        if record is None:
            raise NotFoundError(f"no execution with reference {reference!r} (or it matches several: give more characters)")
        return record

    def producer(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The enqueue links, each with the producing execution when it is stored as one
        (the producer span is the root of its own execution)."""
        out = []
        index = self.sources.index()
        for link in record.get("links") or []:
            if not isinstance(link, dict):
                continue
            trace_id, span_id = str(link.get("trace_id", "")), str(link.get("span_id", ""))
            found = None
            if _REFERENCE.match(span_id + trace_id or "-"):
                candidate = index.get(span_id + trace_id)
                if candidate is not None and candidate["reference"] == span_id + trace_id:
                    found = candidate
            out.append({"type": str(link.get("type", "")), "trace_id": trace_id, "span_id": span_id, "execution": found})
        return out

    def trace_url(self, trace_id: str, span_id: str = "") -> str | None:
        template = self.config.ui_trace_url
        if not template or not trace_id:
            return None
        return template.replace("{trace_id}", quote(trace_id, safe="")).replace("{span_id}", quote(span_id, safe=""))

    def running(self) -> tuple[list[dict[str, Any]], bool]:
        """Every running execution (up to ``RUNNING_LIMIT``), newest first, and whether there are more."""
        index = self.sources.index()
        records: list[dict[str, Any]] = []
        cursor = None
        while len(records) < RUNNING_LIMIT:
            page = index.search(TraceQuery(states=("running",), limit=min(500, RUNNING_LIMIT - len(records)), cursor=cursor))
            records.extend(page.records)
            cursor = page.next_cursor
            if not cursor:
                return records, False
        return records, True

    def stuck_before(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.config.stuck_after)

    def close(self) -> None:
        self.sources.close()
