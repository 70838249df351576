"""Request parameters shared by the API: ISO-8601 time ranges and keyset pagination.

Time ranges are ``from`` / ``to`` (ISO-8601 instants with an offset or ``Z``) and/or ``last``
(an ISO-8601 duration such as ``PT6H`` or ``P7D``, counted back from ``to`` or now). A naive
instant is refused rather than guessed: plant clocks and engineers' browsers are in
different zones, and a silently shifted trend is worse than an error.

Pagination is by an opaque ``cursor`` (the sort key of the last row returned), which stays
correct while new alerts arrive, unlike an offset.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from console.problems import Problem

_DURATION = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")

MAX_RANGE = timedelta(days=3660)


def parse_duration(text: str, *, name: str = "last") -> timedelta:
    """An ISO-8601 duration of weeks, days, hours, minutes, seconds (no months/years: not fixed lengths)."""
    m = _DURATION.match(text.strip().upper())
    if not m or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise Problem(422, f"{name}: {text!r} is not an ISO-8601 duration such as PT15M, PT6H, P7D or P2W "
                           "(months and years are not fixed lengths; use days)", param=name)
    parts = {k: float(v) for k, v in m.groupdict().items() if v}
    try:
        return timedelta(weeks=parts.get("w", 0), days=parts.get("d", 0), hours=parts.get("h", 0),
                         minutes=parts.get("m", 0), seconds=parts.get("s", 0))
    except OverflowError:  # P99999999999D: beyond what a date can hold (it was a 500)
        raise Problem(422, f"{name}: {text!r} is longer than the maximum range of {MAX_RANGE.days} days",
                      param=name) from None


def parse_instant(text: str, *, name: str) -> datetime:
    """An ISO-8601 instant with a UTC offset (``Z`` or ``+02:00``); returned in UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise Problem(422, f"{name}: {text!r} is not an ISO-8601 date-time "
                           "(e.g. 2024-05-01T12:00:00Z)", param=name) from None
    if t.tzinfo is None:
        raise Problem(422, f"{name}: {text!r} has no UTC offset; add Z or +hh:mm", param=name)
    try:
        return t.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first instant a date can hold (it was a 500)
        raise Problem(422, f"{name}: {text!r} is out of range", param=name) from None


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def time_range(from_: str | None, to: str | None, last: str | None, *, default: timedelta) -> TimeRange:
    """Resolve ``from``/``to``/``last`` into a checked range; ``default`` is used when only ``to`` is known."""
    end = parse_instant(to, name="to") if to else datetime.now(UTC)
    if from_ and last:
        raise Problem(422, "give either from or last, not both", param="last")
    if from_:
        start = parse_instant(from_, name="from")
    else:
        back = parse_duration(last) if last else default
        if back > MAX_RANGE:  # checked before the subtraction, which overflows for P9999999D (a 500)
            raise Problem(422, f"range of {back.days} days is longer than the maximum of {MAX_RANGE.days}",
                          param="last")
        try:
            start = end - back
        except OverflowError:
            raise Problem(422, f"last: {last!r} reaches back before the year 1", param="last") from None
    if start >= end:
        raise Problem(422, f"from ({start.isoformat()}) must be before to ({end.isoformat()})", param="from")
    if end - start > MAX_RANGE:
        raise Problem(422, f"range of {(end - start).days} days is longer than the maximum of {MAX_RANGE.days}",
                      param="from")
    return TimeRange(start, end)


def equal_filters(where: list[str], params: dict, filters: dict[str, tuple[str, Any]]) -> None:
    """Add ``column = value`` conditions for the filters given (value not None); name -> (column, value)."""
    for name, (column, value) in filters.items():
        if value is not None:
            where.append(f"{column} = %({name})s")
            params[name] = value


def encode_cursor(key: list[Any]) -> str:
    """Opaque cursor for the sort key of the last row of a page."""
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, n: int) -> list[Any]:
    """Inverse of `encode_cursor`; datetimes come back as ISO strings (PostgreSQL casts them)."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(key, list) or len(key) != n:
            raise ValueError
    except (ValueError, TypeError):
        raise Problem(422, "cursor: not a cursor returned by this API (copy next_cursor as it is)",
                      param="cursor") from None
    return key


def page(rows: list[dict], limit: int, key: tuple[str, ...]) -> dict:
    """The response envelope of a list: ``items`` plus ``next_cursor`` when more rows exist.

    ``rows`` must hold up to ``limit + 1`` rows (one more than asked, to know if there is a next page).
    """
    more = len(rows) > limit
    items = rows[:limit]
    nxt = encode_cursor([items[-1][k] for k in key]) if more and items else None
    return {"items": items, "next_cursor": nxt}
