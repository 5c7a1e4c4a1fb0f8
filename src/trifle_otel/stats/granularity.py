"""Granularities (``1m``, ``15m``, ``6h``, ``1d``, ``1w``, ``1mo``, ``1q``, ``1y``) and bucket floors.

Buckets are floored in local time of the configured zone, as Trifle::Stats' Nocturnal does:
``m`` from the start of the hour, ``h`` from local midnight, ``d`` and ``w`` from January 1
(weeks start on the first ``beginning_of_week`` day of the year; the days before it form
the January 1 bucket), ``mo``/``q`` from January, ``y`` from year 0.  Across DST changes a
floor that falls in a skipped hour moves forward by the gap; one that falls in a repeated
hour keeps the offset of the instant being floored when it can, else the earlier one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError

UNITS = ("s", "m", "h", "d", "w", "mo", "q", "y")
DEFAULT_GRANULARITIES = ("1m", "1h", "1d", "1w", "1mo", "1q", "1y")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PATTERN = re.compile(r"^(\d+)([a-z]+)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class Granularity:
    text: str
    n: int
    unit: str

    @property
    def elapsed(self) -> timedelta | None:
        """The length of a bucket when it is fixed (``s``, ``m``, ``h``); ``None`` otherwise."""
        seconds = _SECONDS.get(self.unit)
        return timedelta(seconds=seconds * self.n) if seconds else None


@lru_cache(maxsize=256)
def parse_granularity(text: str) -> Granularity:
    match = _PATTERN.match(str(text).strip())
    if not match or match.group(2) not in UNITS or int(match.group(1)) < 1:
        raise ConfigError(
            f"granularity {text!r} is not valid: use <n><unit> with n >= 1 and a unit of "
            f"{', '.join(UNITS)} (e.g. 1m, 15m, 1h, 6h, 1d, 1w, 1mo, 1q, 1y)"
        )
    return Granularity(str(text).strip(), int(match.group(1)), match.group(2))


def zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "GMT", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"time zone {name!r} is not known: use an IANA name such as 'Europe/Prague' or 'UTC'") from None


def weekday_index(name: str) -> int:
    try:
        return WEEKDAYS.index(name.strip().lower())
    except ValueError:
        raise ConfigError(f"beginning of week {name!r} is not a weekday name (monday ... sunday)") from None


def _localize(naive: datetime, tz: tzinfo, fold: int) -> datetime:
    """Attach ``tz`` to a local wall time.  ``fold`` is the floored instant's own fold, so a
    repeated hour keeps its offset; going through UTC moves a wall time that does not exist
    (a skipped hour: fold 0 reads it with the offset before the change) forward by the gap."""
    return naive.replace(tzinfo=tz, fold=fold).astimezone(timezone.utc).astimezone(tz)


class Floor:
    """Bucket floors for one zone and week start, with a per-granularity cache of the current
    bucket (most tracks fall in the bucket the previous one did)."""

    def __init__(self, tz: tzinfo | str = timezone.utc, beginning_of_week: str | int = "monday") -> None:
        self.tz = zone(tz) if isinstance(tz, str) else tz
        self.week_start = beginning_of_week if isinstance(beginning_of_week, int) else weekday_index(beginning_of_week)
        self._cache: dict[str, tuple[float, float, int]] = {}

    def floor(self, at: datetime, g: Granularity) -> datetime:
        local = at.astimezone(self.tz)
        n, unit = g.n, g.unit
        if unit == "s":
            naive = local.replace(second=(local.second // n) * n, microsecond=0, tzinfo=None)
        elif unit == "m":
            naive = local.replace(minute=(local.minute // n) * n, second=0, microsecond=0, tzinfo=None)
        elif unit == "h":
            naive = local.replace(hour=(local.hour // n) * n, minute=0, second=0, microsecond=0, tzinfo=None)
        else:
            midnight = datetime(local.year, local.month, local.day)
            jan1 = datetime(local.year, 1, 1)
            if unit == "d":
                yday = (midnight - jan1).days
                naive = jan1 + timedelta(days=(yday // n) * n)
            elif unit == "w":
                first = jan1 + timedelta(days=(self.week_start - jan1.weekday()) % 7)
                if midnight < first:
                    naive = jan1
                else:
                    weeks = (midnight - first).days // 7
                    naive = first + timedelta(days=(weeks // n) * n * 7)
            elif unit == "mo":
                naive = datetime(local.year, ((local.month - 1) // n) * n + 1, 1)
            elif unit == "q":
                naive = datetime(local.year, (((local.month - 1) // 3) // n) * n * 3 + 1, 1)
            else:  # y
                naive = datetime((local.year // n) * n, 1, 1)
            return _localize(naive, self.tz, 0)
        return _localize(naive, self.tz, local.fold)

    def bucket(self, ts: float, g: Granularity) -> int:
        """Unix seconds of the start of the bucket holding ``ts`` (epoch seconds)."""
        cached = self._cache.get(g.text)
        if cached is not None and cached[0] <= ts < cached[1]:
            return cached[2]
        start = self.floor(datetime.fromtimestamp(ts, timezone.utc), g)
        end = self.next(start, g)
        start_ts = int(start.timestamp())
        self._cache[g.text] = (start_ts, end.timestamp(), start_ts)
        return start_ts

    def next(self, start: datetime, g: Granularity) -> datetime:
        """The start of the bucket after the one starting at ``start``."""
        local = start.astimezone(self.tz)
        if g.elapsed is not None:
            step = g.elapsed
            candidate = start.astimezone(timezone.utc) + step  # elapsed time, not wall time
            following = self.floor(candidate, g)
            while following.timestamp() <= start.timestamp():  # a bucket made longer by a DST change
                candidate += step
                following = self.floor(candidate, g)
            return following
        n = g.n
        if g.unit == "d":
            naive = datetime(local.year, local.month, local.day) + timedelta(days=n)
        elif g.unit == "w":
            naive = datetime(local.year, local.month, local.day) + timedelta(days=7 * n)
        elif g.unit in ("mo", "q"):
            months = n * (3 if g.unit == "q" else 1)
            total = local.year * 12 + local.month - 1 + months
            naive = datetime(total // 12, total % 12 + 1, 1)
        else:
            naive = datetime(local.year + n, 1, 1)
        following = self.floor(_localize(naive, self.tz, 0), g)
        if g.unit == "y" or local.year == 9999:  # years are aligned to year 0, not restarted
            return following
        year_start = _localize(datetime(local.year + 1, 1, 1), self.tz, 0)
        # Buckets restart every January 1: never step over it.  (Aware datetimes in one zone
        # compare by wall time, ignoring the fold: compare instants.)
        if start.timestamp() < year_start.timestamp() < following.timestamp():
            return year_start
        if following.timestamp() <= start.timestamp():
            return year_start
        return following

    def timeline(self, start: datetime, end: datetime, g: Granularity, limit: int = 100_000) -> list[datetime]:
        """Bucket starts from the bucket holding ``start`` to the one holding ``end``."""
        item = self.floor(start, g)
        last = self.floor(end, g).timestamp()
        out = []
        while item.timestamp() <= last:
            out.append(item)
            if len(out) > limit:
                raise ConfigError(
                    f"{len(out)}+ buckets of {g.text} between {start.isoformat()} and {end.isoformat()}: "
                    "choose a coarser granularity or a shorter range"
                )
            try:
                item = self.next(item, g)
            except (OverflowError, ValueError):  # past year 9999
                break
        return out
