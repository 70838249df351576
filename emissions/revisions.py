"""Revisions of closed periods: a run that changes a stored average of a period that had ended records it.

The periodic job recomputes the running month every 5 minutes and the year every hour, and `valvoja emissions compute`
recomputes what it is told, all from the stored readings: late readings (a spool drained after a database outage, a
device's backlog) change the averages of days and months that had closed, and may have been reported. `record` runs in
the transaction of `store.write_result`, before the stored rows are replaced: it compares them with the new ones and
keeps each closed average whose value (beyond `TOLERANCE`) or status changed in ``emission_revisions``. Reports of a
period quote the revisions of it and of its sub-averages (`notes`); the run logs them (event
``emissions_revised``).

- Closed: the period had ended when its stored average was computed, i.e. it ends at or before the end of the run that
  stored it (found by the row's ``computed_at``, which that run's ``emission_runs`` row shares: one transaction). An
  average of a period still running then was provisional and is expected to change.
- Which averages: the day's sub-averages that its limits and the daily report use (``day_from``: hour or half-hour;
  the half-hour limits of waste incinerators), days, months, years. Ten-minute averages are left out: 144 a day per
  pollutant would make a revision of every late batch a long list, and no report shows them.
- Cost: only rows the run writes and replaces anyway (its span), compared in the database; the run that stored a row is
  looked up only for rows that differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from emissions import periods
from emissions.config import StackConfig

log = logging.getLogger(__name__)

# |new - old| above TOLERANCE x max(1, |old|) (mg/Nm3) is a revision. The same readings give the same average (the
# month and year runs of the tests store identical values), but a sum over another span or another numpy may differ
# in its last bits, ~1e-13 relative: far below this; any change a report shows (to 0.01 mg/Nm3) is far above it.
TOLERANCE = 1e-6
STATUS = {0: "valid", 1: "invalid", 2: "not operating"}
PERIOD_TEXT = {"half_hour": "half-hour", "hour": "hourly", "day": "daily", "month": "monthly", "year": "yearly"}
LISTED = 5  # sub-averages named one by one in a report's note; the rest are counted


@dataclass(frozen=True)
class Revision:
    """One closed average that a run changed (times are Unix seconds)."""

    pollutant: str
    period: str
    start: int
    end: int
    old_value: float | None
    new_value: float | None
    old_status: int
    new_status: int
    run_id: int
    revised_at: int

    def change(self, tz: str) -> str:
        """``<start>: <old> (status) -> <new> (status)``."""
        return f"{self.before(tz)} -> {self.after()}"

    def before(self, tz: str) -> str:
        """``<start>: <old> (status)``."""
        return f"{periods.iso(self.start, tz)}: {_value(self.old_value)} ({STATUS[self.old_status]})"

    def after(self) -> str:
        """``<new> (status)``."""
        return f"{_value(self.new_value)} ({STATUS[self.new_status]})"


def _value(x: float | None) -> str:
    return "no value" if x is None else f"{x:.2f} mg/Nm³"


def watched(cfg: StackConfig) -> list[str]:
    """The periods whose closed averages are compared."""
    return [cfg.regulatory.day_from, "day", "month", "year"]


_COLUMNS = ("pollutant, period, extract(epoch FROM period_start)::bigint, extract(epoch FROM period_end)::bigint,"
            " old_value, new_value, old_status, new_status, run_id, extract(epoch FROM revised_at)::bigint")


def record(cur: psycopg.Cursor, cfg: StackConfig, lo, hi, run_id: int) -> list[Revision]:
    """Store the revisions the run ``run_id`` makes: its new averages are in ``_emis_avg`` (values NaN for none), the
    stored ones of [lo, hi) not yet replaced. Called inside `store.write_result`'s transaction."""
    cur.execute(f"""
        INSERT INTO emission_revisions (stack, pollutant, period, period_start, period_end, old_value, new_value,
                                        old_status, new_status, run_id)
        SELECT o.stack, o.pollutant, o.period, o.period_start, o.period_end, o.value, n.value, o.status, n.status,
               %(run)s
        FROM emission_averages o
        JOIN (SELECT pollutant, period, period_start, NULLIF(value, 'NaN'::float8) AS value, status FROM _emis_avg
              WHERE period = ANY(%(periods)s)) n USING (pollutant, period, period_start)
        WHERE o.stack = %(stack)s AND o.period = ANY(%(periods)s) AND o.period_start >= %(lo)s
          AND o.period_start < %(hi)s
          AND (o.status <> n.status OR (o.value IS NULL) <> (n.value IS NULL)
               OR abs(o.value - n.value) > %(tol)s * greatest(1.0, abs(o.value)))
          AND o.period_end <= (SELECT r.span_end FROM emission_runs r WHERE r.stack = o.stack
                               AND r.computed_at = o.computed_at ORDER BY r.id DESC LIMIT 1)
        RETURNING {_COLUMNS}""",
                {"run": run_id, "periods": watched(cfg), "stack": cfg.name, "lo": lo, "hi": hi, "tol": TOLERANCE})
    return [Revision(*row) for row in cur.fetchall()]


def log_revisions(cfg: StackConfig, revisions: list[Revision]) -> None:
    """One warning per run that changed closed averages: how many, of which periods, the first few changes."""
    if not revisions:
        return
    tz = cfg.timezone
    shown = "; ".join(f"{r.pollutant} {r.period} {r.change(tz)}" for r in revisions[:LISTED])
    more = f"; and {len(revisions) - LISTED} more" if len(revisions) > LISTED else ""
    log.warning("emissions: %s: %d averages of closed periods changed (run %d): %s%s; reports made before may differ",
                cfg.name, len(revisions), revisions[0].run_id, shown, more,
                extra={"event": "emissions_revised", "stack": cfg.name, "revisions": len(revisions),
                       "periods": sorted({r.period for r in revisions}), "run_id": revisions[0].run_id})


def notes(conn: psycopg.Connection, cfg: StackConfig, kind: str, start: int, end: int) -> list[str]:
    """Report notes of the ``kind`` (day, month) [start, end): the revisions of its own average (each, with old and new
    value and status), then of the sub-averages the report shows (a day's hours or half-hours, a month's days; per
    pollutant: how many, the first `LISTED` named)."""
    detail = cfg.regulatory.day_from if kind == "day" else "day"
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM emission_revisions WHERE stack = %s AND period = ANY(%s)"
                    " AND period_start >= to_timestamp(%s) AND period_end <= to_timestamp(%s)"
                    " ORDER BY period = %s DESC, pollutant, period_start, id", (cfg.name, [kind, detail], start, end,
                                                                                kind))
        revisions = [Revision(*row) for row in cur.fetchall()]
        # A run made by hand (`valvoja emissions compute --reason`) says who ran it and why; a scheduled one nothing.
        cur.execute("SELECT id, reason FROM emission_runs WHERE id = ANY(%s) AND reason <> ''",
                    (sorted({r.run_id for r in revisions}),))
        why = dict(cur.fetchall())
    tz = cfg.timezone

    def run(r: Revision) -> str:
        return f"run {r.run_id}" + (f": {why[r.run_id]}" if r.run_id in why else "")

    out = [f"The stored {PERIOD_TEXT[r.period]} {r.pollutant} average of this period changed after it closed, at "
           f"{periods.iso(r.revised_at, tz)} ({run(r)}): {_value(r.old_value)} ({STATUS[r.old_status]}) -> "
           f"{_value(r.new_value)} ({STATUS[r.new_status]}); a report made before then may differ."
           for r in revisions if r.period == kind and r.start == start]
    groups: dict[tuple[str, str], list[Revision]] = {}
    for r in revisions:
        if not (r.period == kind and r.start == start):
            groups.setdefault((r.pollutant, r.period), []).append(r)
    for (pol, period), rs in groups.items():
        # One line per average, however many runs changed it (a backlog arriving over several runs revises an hour
        # each time): from its value before the first change to its value after the last. Counted per revision, the
        # note said "2 stored hourly averages changed" of one hour, and named it twice.
        by_start: dict[int, list[Revision]] = {}
        for r in rs:  # in period_start, id order
            by_start.setdefault(r.start, []).append(r)
        changes = [f"{seq[0].before(tz)} -> {seq[-1].after()}" + (f" (in {len(seq)} runs)" if len(seq) > 1 else "")
                   for seq in by_start.values()]
        more = f"; and {len(changes) - LISTED} more" if len(changes) > LISTED else ""
        last = max(rs, key=lambda r: (r.revised_at, r.run_id))
        what = ("average of this period changed after it" if len(changes) == 1
                else "averages of this period changed after they")
        out.append(f"{len(changes)} stored {PERIOD_TEXT[period]} {pol} {what} closed (the last at "
                   f"{periods.iso(last.revised_at, tz)}, {run(last)}): {'; '.join(changes[:LISTED])}{more}; a report "
                   "made before then may differ.")
    return out
