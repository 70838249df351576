"""Averaging period boundaries as Unix-second arrays, calendar periods in the stack's time zone.

Days, months and years start at local midnight in the configured zone (permits count calendar days);
10-minute, half-hour and hour periods are laid from each local midnight, so a day of a daylight-saving
change has 23 or 25 hours and zones with half-hour offsets still get whole local hours. Locating a
time in a period is one ``np.searchsorted``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

WIDTH_S = {"ten_min": 600, "half_hour": 1800, "hour": 3600}
CALENDAR = ("day", "month", "year")
ORDER = ("ten_min", "half_hour", "hour", "day", "month", "year")


def _local_midnight(d: date, zone: ZoneInfo) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp())


def _next(d: date, period: str) -> date:
    if period == "day":
        return d + timedelta(days=1)
    if period == "month":
        return date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return date(d.year + 1, 1, 1)


def _floor(d: date, period: str) -> date:
    if period == "month":
        return d.replace(day=1)
    if period == "year":
        return d.replace(month=1, day=1)
    return d


def boundaries(period: str, start_s: int, end_s: int, tz: str = "UTC") -> np.ndarray:
    """Sorted period boundaries b[0] <= start_s and b[-1] >= end_s; period i is [b[i], b[i+1])."""
    zone = ZoneInfo(tz)
    first = _floor(datetime.fromtimestamp(start_s, UTC).astimezone(zone).date(), "day")
    if period in CALENDAR:
        d = _floor(first, period)
        out = [_local_midnight(d, zone)]
        while out[-1] < end_s:
            d = _next(d, period)
            out.append(_local_midnight(d, zone))
        return np.asarray(out, dtype=np.int64)
    width = WIDTH_S[period]
    days = boundaries("day", start_s, end_s, tz)
    parts = [np.arange(a, b, width, dtype=np.int64) for a, b in itertools.pairwise(days)]
    out = np.concatenate([*parts, days[-1:]])
    # Trim whole periods outside [start, end] so a short span does not carry a day of empty periods.
    lo = max(np.searchsorted(out, start_s, side="right") - 1, 0)
    hi = min(np.searchsorted(out, end_s, side="left") + 1, len(out))
    return out[lo:hi]


def locate(bounds: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the period holding each time (times must lie within the boundaries)."""
    return np.searchsorted(bounds, times, side="right") - 1


def last_whole_hour(t: int, tz: str = "UTC") -> int:
    """The start of the local hour holding Unix time ``t``: where data up to ``t`` ends in whole hours."""
    b = boundaries("hour", t - 3600, t + 1, tz)
    return int(b[locate(b, np.asarray([t]))[0]])


def iso(t: int | np.integer, tz: str = "UTC") -> str:
    """A period boundary as local ISO time, for reports."""
    return datetime.fromtimestamp(int(t), UTC).astimezone(ZoneInfo(tz)).isoformat(timespec="minutes")


def parse_day(text: str, tz: str) -> tuple[int, int]:
    """'2026-03-01' -> (start, end) Unix seconds of that local day."""
    d = date.fromisoformat(text)
    zone = ZoneInfo(tz)
    return _local_midnight(d, zone), _local_midnight(_next(d, "day"), zone)


def parse_month(text: str, tz: str) -> tuple[int, int]:
    """'2026-03' -> (start, end) Unix seconds of that local month."""
    y, m = (int(x) for x in text.split("-"))
    d = date(y, m, 1)
    zone = ZoneInfo(tz)
    return _local_midnight(d, zone), _local_midnight(_next(d, "month"), zone)


def year_of(t: int, tz: str) -> tuple[int, int]:
    """(start, end) of the local calendar year holding Unix time ``t``."""
    zone = ZoneInfo(tz)
    d = datetime.fromtimestamp(t, UTC).astimezone(zone).date().replace(month=1, day=1)
    return _local_midnight(d, zone), _local_midnight(_next(d, "year"), zone)
