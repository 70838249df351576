"""Late readings of a closed year: found from the rollups, taken by recomputing the stored year, bounded and logged.

The periodic job keeps the running year current (its hourly year run recomputes the year to date, so late readings of
an earlier month are taken within the hour) and computes the year before once to its end when a new year begins.
Readings of that year can still arrive after that run: the database was away over New Year's Eve and the run came
before the forwarder had drained the spool, a gateway restarted in January with December in its spool, a device sent
its own buffered backlog days later. At every year run (hourly, and at start) `due` says whether, and why, the year
before must be computed again; the job then recomputes it whole (its yearly windows need all of it) and stores the
reason with the run (``emission_runs.reason``), which reports of its periods quote (`notes`).

Found by count: every run stores how many readings of the stack's tags the rollups (``readings_1h``) held for its span
when it started (``emission_runs.rollup_readings``); readings that arrive later change that count.
- The rollups are kept by every forwarder for exactly the minutes its commits touched (noted in its spool in the
  transaction that forgets the batches, so even a crash does not lose that work), whichever gateway, restart or device
  backlog the readings came through; nothing is held in this process. The spool's oldest reading would have covered
  one gateway's spool only, not a device's backlog, and it would be gone after a restart had drained it.
- Looking in ``readings`` for rows newer than the run would scan the year (tens of millions of rows); ``readings_1h``
  has one row per tag and hour: a year of a stack of eight tags is 70 k rows by its key, ~20 ms (bench).
- Counted before the run reads the readings: a reading in the count is in the run; one committed before the run and
  rolled up after it makes the next check recompute once more (harmless). Readings are only ever inserted (a replay
  hits the key) and retention keeps the rollups' counts, so an unchanged count is unchanged data.
Bounds: the year before the running one only, up to ``late_data_days`` after its end, only when the count changed
(one recomputation per year run at most, 10-17 s a year of a stack), never with a configuration other than the one it
was computed with (a permit changed at the new year must not re-judge the old one) nor where retention has removed raw
readings of that year (`raw_kept`). Readings it leaves are logged (once per count) for `valvoja emissions compute`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from emissions import periods
from emissions.config import StackConfig
from emissions.store import _ts

log = logging.getLogger(__name__)

# The rollup hours are UTC hours: in a zone with a half-hour offset the hour across a year boundary counts whole.
_IN_SPAN = ("FROM readings_1h r JOIN tags t ON t.id = r.tag_id WHERE t.name = ANY(%(tags)s)"
            " AND r.bucket > %(lo)s - interval '1 hour' AND r.bucket < %(hi)s")


def _span(cfg: StackConfig, start: int, end: int) -> dict:
    return {"tags": sorted(set(cfg.tags().values())), "lo": _ts(start), "hi": _ts(end)}


def rollup_readings(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> int:
    """Readings (good and bad) of the stack's tags in [start, end) as the rollups count them now."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT coalesce(sum(r.count + r.bad_count), 0)::bigint {_IN_SPAN}", _span(cfg, start, end))
        return int(cur.fetchone()[0])


def raw_kept(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> bool:
    """Whether the raw readings of [start, end) are still stored. Retention removes the oldest first and keeps their
    rollups, so a first rollup hour without raw readings means some are gone: recomputing would then replace the
    stored averages of that time with ones from no data."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT min(r.bucket) {_IN_SPAN}", _span(cfg, start, end))
        first = cur.fetchone()[0]
        if first is None:
            return True
        cur.execute("SELECT EXISTS (SELECT 1 FROM readings r JOIN tags t ON t.id = r.tag_id WHERE t.name = ANY(%s)"
                    " AND r.time >= %s AND r.time < %s + interval '1 hour')",
                    (sorted(set(cfg.tags().values())), first, first))
        return bool(cur.fetchone()[0])


@dataclass(frozen=True)
class LastRun:
    """The latest stored run that computed a whole period (to its end)."""

    span: tuple[int, int]
    readings: int | None  # None: stored before runs kept their count
    computed_at: int
    config_sha256: str


def last_full_run(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> LastRun | None:
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM span_start)::bigint, extract(epoch FROM span_end)::bigint,"
                    " rollup_readings, extract(epoch FROM computed_at)::bigint, config_sha256 FROM emission_runs"
                    " WHERE stack = %s"
                    " AND span_end >= %s AND span_start <= %s ORDER BY id DESC LIMIT 1",
                    (cfg.name, _ts(end), _ts(start)))
        row = cur.fetchone()
    return None if row is None else LastRun((int(row[0]), int(row[1])), row[2], int(row[3]), row[4])


def due(conn: psycopg.Connection, cfg: StackConfig, now: int, warned: dict) -> tuple[int, int, str] | None:
    """(start, end, why) of the year before ``now`` when its stored results must be computed again from readings that
    arrived after its last computation to its end; None when not, or not allowed (then logged once per process and
    count in ``warned``)."""
    tz = cfg.timezone
    start, end = periods.year_of(periods.year_of(now, tz)[0] - 1, tz)
    label = periods.iso(start, tz)[:4]
    last = last_full_run(conn, cfg, start, end)
    if last is None:
        return None  # never computed to its end: nothing stored to correct (the job's year-end run comes first)
    seen = rollup_readings(conn, cfg, *last.span)
    if seen == last.readings:
        return None
    at = periods.iso(last.computed_at, tz)
    if last.readings is None:
        why = f"late data check: no count of readings stored with its computation at {at} (an earlier version)"
    elif seen > last.readings:
        why = f"late data: {seen - last.readings} readings of {label} arrived after its computation at {at}"
    else:
        why = f"readings of {label} changed ({seen - last.readings:+d}) since its computation at {at}"
    to_take = (f"to take them: valvoja emissions compute --stack {cfg.name} --from {label}-01-01 --to "
               f"{int(label) + 1}-01-01")
    if now - end > cfg.late_data_days * 86400:
        if last.readings is None:
            return None  # stored before runs kept a count: nothing says readings came late (no warning at upgrade)
        leave = (f"{(now - end) / 86400:.0f} days after its end, later than late_data_days = {cfg.late_data_days}; "
                 f"{to_take}")
    elif last.config_sha256 != cfg.fingerprint():
        # A new permit (limits, rules) applies from some date: the closed year must not be judged again by it unasked.
        leave = (f"the configuration changed since (config_sha256 {last.config_sha256[:12]} -> "
                 f"{cfg.fingerprint()[:12]}): recomputing would judge it by today's numbers; {to_take} with --config "
                 "a site file holding the stack as it applied then")
    elif not raw_kept(conn, cfg, start, end):
        leave = (f"raw readings of {label} are no longer stored (retention): recomputing would replace their averages "
                 "with ones from no data")
    else:
        leave = None
    extra = {"stack": cfg.name, "period": label}
    if leave is not None:
        if warned.get((cfg.name, start)) != seen:  # once per count: not every hour while nothing changes
            warned[(cfg.name, start)] = seen
            log.warning("emissions: %s %s: %s, but %s: stored results left as they are", cfg.name, label, why, leave,
                        extra={"event": "emissions_late_data_ignored", **extra})
        return None
    log.warning("emissions: %s %s: recomputing the closed year: %s", cfg.name, label, why,
                extra={"event": "emissions_late_recompute", **extra})
    return start, end, why


def notes(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> list[str]:
    """Report notes: the recomputations from late data of stored results that cover [start, end)."""
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM computed_at)::bigint, reason FROM emission_runs WHERE stack = %s"
                    " AND reason <> '' AND span_start <= %s AND span_end >= %s ORDER BY id", (cfg.name, _ts(start),
                                                                                              _ts(end)))
        rows = cur.fetchall()
    return [f"Stored results of this period were recomputed at {periods.iso(int(t), cfg.timezone)} ({why}); "
            "a report made before then may differ." for t, why in rows]
