"""Server-side downsampling of one tag's readings for a chart (DESIGN.md §3, §9).

A chart needs at most a few thousand points whatever the range. The bucket width is
``span / points``; the cheapest source that is fine enough answers:

- width under a minute: raw ``readings`` (as they are when few enough, else bucketed);
- a minute up to an hour: ``readings_1m`` re-bucketed to the width;
- an hour or more: ``readings_1h`` re-bucketed.

Each bucket carries min, max, mean, count of good values and the count of bad ones, so a
chart can draw the min-max envelope and nothing is hidden by averaging. The rollups are
kept by the gateway's forwarder a few seconds behind the raw data; the part of the range
after the newest rollup bucket is bucketed from raw readings, so the right edge of a live
trend is never missing. Buckets use ``Features.bucket`` (time_bucket or date_bin).

Buckets of a day or longer begin at the plant's midnight (``console.time_zone``; without one, UTC's):
``Features.local_bucket``, so "yesterday's max" is the plant's yesterday and the day of a DST change (23 or
25 hours) is one bucket. Hourly rollups re-bucketed into local days are exact where the zone's midnights fall on
whole UTC hours (every zone with a whole-hour offset). Where they do not (India +05:30, Nepal +05:45, Newfoundland
-03:30, South Australia +09:30/+10:30) the hour holding midnight would be counted whole in one day: such ranges
(up to ``MINUTE_DAYS_MAX`` days) are drawn from the 1-minute rollups instead, exact; longer ones, or ones whose
minutes retention removed, from the hourly rollups with ``edges_exact`` false (each day's edges off by the
offset's minutes).

``database.rollups_1m_retention_days`` removes the oldest 1-minute rollups and keeps the hourly ones. A range
``auto`` would draw from ``readings_1m`` that begins before what is left of them is drawn from ``readings_1h``
instead, whole (one bucket width across the chart rather than a line that is empty, or a few late readings, up
to a point). Found by count, not by a setting (the console's file need not hold the gateway's retention, and
chunks are dropped a week late on TimescaleDB): retention removes the oldest whole hours first, so the range's
first hour with an hourly rollup tells, by whether its 1-minute rollups count as many readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from console.params import TimeRange
from edge.db.features import Features

GOOD = "quality < 2 AND value IS NOT NULL AND value <> 'NaN'::float8"
# A tag's raw readings over a range, oldest first (the chart's raw points, the CSV download's raw rows).
RAW = ("SELECT time, value, value_text, quality, flags, status FROM readings WHERE tag_id = %(tag)s "
       "AND time >= %(start)s AND time < %(end)s ORDER BY time")
DAY = 86400
# Local days of a zone whose midnight is not on a whole UTC hour come from the 1-minute rollups up to this range
# (132,480 rollup rows per tag at 92 days); longer ranges from the hourly ones, edges not exact.
MINUTE_DAYS_MAX = 92
_NICE_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
           2 * 86400, 7 * 86400)


@dataclass(frozen=True, slots=True)
class Plan:
    source: str  # readings | readings_1m | readings_1h
    bucket_s: int  # 0 = raw points


def nice_width(seconds: float) -> int:
    """The smallest 'round' bucket width not under ``seconds`` (so buckets align to clock times)."""
    for w in _NICE_S:
        if w >= seconds:
            return w
    return int(-(-seconds // 86400) * 86400)


def plan(span: timedelta, points: int, resolution: str = "auto") -> Plan:
    """Which table and bucket width serve ``span`` in about ``points`` buckets."""
    width = nice_width(span.total_seconds() / points)
    if resolution == "raw":
        return Plan("readings", 0)
    if resolution == "1m" or (resolution == "auto" and 60 <= width < 3600):
        return Plan("readings_1m", max(width, 60))
    if resolution == "1h" or (resolution == "auto" and width >= 3600):
        return Plan("readings_1h", max(width, 3600))
    return Plan("readings", width)


def _floor(t: datetime, level: int) -> datetime:
    return datetime.fromtimestamp(math.floor(t.timestamp() / level) * level, UTC)


def _ceil(t: datetime, level: int) -> datetime:
    return datetime.fromtimestamp(math.ceil(t.timestamp() / level) * level, UTC)


def local_days(width: int, zone: str | None) -> str | None:
    """The zone whose midnights bound buckets of ``width`` s: ``zone`` for whole days, else None (UTC grid)."""
    return zone if zone and width and width % DAY == 0 else None


def midnights_on_grid(tr: TimeRange, zone: str, level: int) -> bool:
    """Whether every midnight of ``zone`` inside ``tr`` is a multiple of ``level`` s in UTC (the rollups' grid), so
    that no rollup bucket straddles the edge of a local day."""
    tz = ZoneInfo(zone)
    day = tr.start.astimezone(tz).date()
    while (midnight := local_midnight(day, tz)) < tr.end:
        if midnight.timestamp() % level:
            return False
        day += timedelta(days=1)
    return True


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant PostgreSQL gives ``day``'s midnight in ``tz`` (``timestamp AT TIME ZONE``), which starts that
    day's bucket: the later of the two readings of a wall time, so a midnight the clocks skip (Cuba in March) is
    the first instant of the day (01:00 DST), and one they pass twice (Cuba in November) the second."""
    # By timestamp: aware datetimes of one tzinfo compare by wall clock, fold ignored.
    return max((datetime.combine(day, time(fold=f), tz) for f in (0, 1)), key=datetime.timestamp)


def _bucket(features: Features, width: int, column: str, zone: str | None) -> str:
    if local_days(width, zone):
        return features.local_bucket(f"{width // DAY} days", column, "%(zone)s::text")
    return features.bucket(f"{width} seconds", column)


def _raw_bucket_sql(features: Features, width: int, zone: str | None = None) -> str:
    b = _bucket(features, width, "time", zone)
    return (f"SELECT {b} AS t, min(value) FILTER (WHERE {GOOD}) AS min, max(value) FILTER (WHERE {GOOD}) AS max, "
            f"avg(value) FILTER (WHERE {GOOD}) AS avg, count(*) FILTER (WHERE {GOOD}) AS n, "
            f"count(*) FILTER (WHERE NOT ({GOOD})) AS bad "
            f"FROM readings WHERE tag_id = %(tag)s AND time >= %(start)s AND time < %(end)s GROUP BY 1")


def _rollup_bucket_sql(features: Features, table: str, width: int, zone: str | None = None) -> str:
    b = _bucket(features, width, "bucket", zone)
    return (f"SELECT {b} AS t, min(min) AS min, max(max) AS max, sum(sum) / nullif(sum(count), 0) AS avg, "
            f"sum(count) AS n, sum(bad_count) AS bad "
            f"FROM {table} WHERE tag_id = %(tag)s AND bucket >= %(start)s AND bucket < %(end)s GROUP BY 1")


async def minutes_removed(db, tag_id: int, tr: TimeRange) -> bool:
    """Whether retention removed 1-minute rollups of ``tag_id`` in ``tr``: the range's first hour with an hourly
    rollup counts more readings than its 1-minute rollups do (two probes by the (tag_id, bucket) keys)."""
    row = await db.fetchone(
        "SELECT h.n AS hour_n, (SELECT coalesce(sum(m.count + m.bad_count), 0) FROM readings_1m m"
        " WHERE m.tag_id = %(tag)s AND m.bucket >= h.bucket AND m.bucket < h.bucket + interval '1 hour') AS minute_n"
        " FROM (SELECT bucket, count + bad_count AS n FROM readings_1h WHERE tag_id = %(tag)s"
        "  AND bucket >= %(start)s AND bucket < %(end)s ORDER BY bucket LIMIT 1) h",
        {"tag": tag_id, "start": _floor(tr.start, 3600), "end": tr.end})
    return row is not None and row["minute_n"] < row["hour_n"]


async def fetch(db, features: Features, tag_id: int, tr: TimeRange, points: int, resolution: str,
                zone: str | None = None) -> dict:
    """Columnar series for one tag: raw (t, v, q, flags, status) or bucketed (t, min, max, avg, n, bad); buckets of
    whole days begin at ``zone``'s midnight (None: UTC's)."""
    p = plan(tr.span, points, resolution)
    local = local_days(p.bucket_s, zone)
    if (local and p.source == "readings_1h" and resolution == "auto" and tr.span <= timedelta(days=MINUTE_DAYS_MAX)
            and not midnights_on_grid(tr, local, 3600)):
        p = Plan("readings_1m", p.bucket_s)  # the hour holding a midnight off the hour's grid would go whole
    if p.source == "readings_1m" and resolution == "auto" and await minutes_removed(db, tag_id, tr):
        p = Plan("readings_1h", max(p.bucket_s, 3600))
    params = {"tag": tag_id, "start": tr.start, "end": tr.end, "n": points + 1}
    if p.source == "readings" and (p.bucket_s < 60 or resolution == "raw"):
        rows = await db.fetch(RAW + " LIMIT %(n)s", params)
        if len(rows) <= points or resolution == "raw":
            out = {"source": "readings", "bucket_s": 0, "truncated": len(rows) > points,
                   "t": [r["time"] for r in rows[:points]], "v": [r["value"] for r in rows[:points]],
                   "q": [r["quality"] for r in rows[:points]], "flags": [r["flags"] for r in rows[:points]],
                   "status": [r["status"] for r in rows[:points]]}
            if any(r["value_text"] is not None for r in rows):
                out["text"] = [r["value_text"] for r in rows[:points]]
            return out
        p = Plan("readings", max(p.bucket_s, 1))
    sql, more = await bucket_query(db, features, tag_id, tr, p, zone)
    rows = await db.fetch(sql, params | more)
    level = {"readings_1m": 60, "readings_1h": 3600}.get(p.source, 1)
    exact = not local or level == 1 or midnights_on_grid(tr, local, level)
    return {"source": p.source, "bucket_s": p.bucket_s, "truncated": False, "zone": local or "UTC",
            "edges_exact": exact,
            "t": [r["t"] for r in rows], "min": [r["min"] for r in rows], "max": [r["max"] for r in rows],
            "avg": [r["avg"] for r in rows], "n": [int(r["n"] or 0) for r in rows],
            "bad": [int(r["bad"] or 0) for r in rows]}


async def bucket_query(db, features: Features, tag_id: int, tr: TimeRange, p: Plan,
                       zone: str | None = None) -> tuple[str, dict]:
    """The SQL (ordered by bucket time ``t``; min, max, avg, n good, bad) and parameters of ``p``'s buckets of
    ``tag_id`` over ``tr``: the chart's, and the CSV download's at 1 minute or 1 hour. Buckets of whole days begin
    at ``zone``'s midnight (None: UTC's)."""
    params = {"tag": tag_id, "start": tr.start, "end": tr.end, "zone": zone}
    if p.source == "readings":
        sql = _raw_bucket_sql(features, p.bucket_s, zone) + " ORDER BY 1"
    else:
        # Whole rollup buckets inside the range come from the rollup; the partial buckets at either edge and
        # the part after the newest rollup bucket (the rollup worker runs seconds behind) from raw readings.
        level = 60 if p.source == "readings_1m" else 3600
        # A range inside one rollup bucket has no whole bucket: head and tail meet at its end, all of it is raw.
        head = min(_ceil(tr.start, level), tr.end)
        tail = max(_floor(tr.end, level), head)
        row = await db.fetchone(f"SELECT max(bucket) AS b FROM {p.source} WHERE tag_id = %(tag)s "
                                "AND bucket >= %(head)s AND bucket < %(tail)s", params | {"head": head, "tail": tail})
        covered = row["b"] + timedelta(seconds=level) if row and row["b"] else head
        params |= {"head": head, "split": max(min(covered, tail), head)}
        # Raw and rollup parts are bucketed on the same grid, so a bucket split between them is merged here.
        rollup = _rollup_bucket_sql(features, p.source, p.bucket_s, zone).replace("%(start)s", "%(head)s").replace(
            "%(end)s", "%(split)s")
        # Two plain ranges rather than one OR: TimescaleDB excludes chunks only on simple range conditions.
        raw = _raw_bucket_sql(features, p.bucket_s, zone)
        head_raw = raw.replace("%(end)s", "%(head)s")
        tail_raw = raw.replace("%(start)s", "%(split)s")
        sql = (f"SELECT t, min(min) AS min, max(max) AS max, sum(avg * n) / nullif(sum(n), 0) AS avg, "
               f"sum(n) AS n, sum(bad) AS bad FROM ({rollup} UNION ALL {head_raw} UNION ALL {tail_raw}) u "
               "GROUP BY t ORDER BY t")
    return sql, params
