"""How the commands print: one console, JSON, and the formats of times, durations and states.

States are marked in text (``✗`` error, ``!`` warning), never by colour alone, so that
output reads the same piped into a file or a pager.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console


STATE_STYLE = {"success": "green", "warning": "yellow", "error": "red", "running": "cyan", "debug": "dim"}
STATE_MARK = {"error": "✗", "warning": "!", "debug": "·", "running": "…"}
PIPED_WIDTH = 200  # piped output is not cut to 80 columns: whole lines are easier to grep


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (``| head -1``): not an error (rich's own exits with 1)."""
        self.quiet = True
        silence_stdout()
        raise SystemExit(0)


def silence_stdout() -> None:
    """Drop what is left for a reader that went away, so that exiting does not complain again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (tests): nothing will be flushed to a closed pipe


def console(*, stderr: bool = False) -> Console:
    """The terminal's width (or ``COLUMNS``); piped output gets long lines, no colour."""
    width: int | None = None
    columns = os.environ.get("COLUMNS", "")
    stream = sys.stderr if stderr else sys.stdout
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif not stream.isatty():
        width = PIPED_WIDTH
    return _Console(highlight=False, width=width, stderr=stderr, soft_wrap=False)


def dump(payload: Any) -> None:
    click.echo(json.dumps(payload, ensure_ascii=False, indent=2, default=str))




def warn(message: str) -> None:
    """A ``warning: ...`` line on standard error."""
    click.echo(f"warning: {message}", err=True)


def styled(text: str, style: str) -> str:
    return f"[{style}]{text}[/]" if style else text


def state_label(state: str) -> str:
    """``✗ error``, ``! warning``, ``success``: the state's word, marked, in its colour."""
    mark = STATE_MARK.get(state)
    return styled(f"{mark} {state}" if mark else state, STATE_STYLE.get(state, ""))


def milliseconds(value: float) -> str:
    """A duration given in ms: ``0.4ms``, ``24ms``, ``1.50s``, ``9m12s``."""
    if value >= 60_000:
        return elapsed(value / 1000)
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value < 10:
        return f"{value:.1f}ms"
    return f"{value:.0f}ms"


def elapsed(seconds: float) -> str:
    """A time span in seconds as people say it: ``45s``, ``9m12s``, ``3h05m``, ``2d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def utc_clock(value: datetime | float, now: datetime | None = None) -> str:
    """``16:02:11 UTC``, with the date in front when it is not today's."""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, timezone.utc)
    moment = moment.astimezone(timezone.utc)
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    if moment.date() == today:
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.3g}"
    return f"{int(value):,}"
