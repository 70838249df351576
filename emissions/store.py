"""Database I/O of emission monitoring: primary values from ``readings``, results into the m0300 tables.

Reading: one query per tag buckets the raw readings into primary values in the database
(``Features.bucket`` = ``time_bucket`` on TimescaleDB, ``date_bin`` on plain PostgreSQL) and streams
them back as binary COPY, which is parsed straight into numpy arrays (fixed-width rows, no Python
object per row): a year of one-minute values per tag is one ~23 MB buffer.

Writing: averages, compliance results and events of a span replace what was stored for that span in
one transaction (upsert for averages; delete-and-insert for events and rule results, so an event that
late data removed disappears). Recomputing a span is therefore idempotent.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from edge.db.features import Features
from edge.records import Flag, Quality
from emissions import periods, pgcopy, revisions
from emissions.averages import Averages, StackResult
from emissions.compliance import Event, RuleResult
from emissions.config import AGED_ONLY, NOT_AGED_ONLY, StackConfig
from emissions.normalise import Primary
from emissions.qal3 import Check

# Primary values come back as fixed-width binary COPY rows (see emissions.pgcopy).
_VALUE_ROW = pgcopy.row_dtype([("tid", ">i4"), ("t", ">i8"), ("v", ">f8"), ("s", "u1")])
_STATE_ROW = pgcopy.row_dtype([("t", ">i8"), ("x", "u1")])
_STATUS_ROW = pgcopy.row_dtype([("t", ">i8"), ("any", "u1"), ("last", "u1"), ("at0", "u1")])


def lock_key(cfg: StackConfig) -> str:
    """The advisory lock (``hashtext`` of this) under which one stack's results are computed and stored."""
    return "valvoja.emissions:" + cfg.name


@contextmanager
def stack_lock(conn: psycopg.Connection, cfg: StackConfig) -> Iterator[None]:
    """Hold the stack's session advisory lock: runs of one stack (a redundant pair of gateways, `compute`) take turns
    from before they read the readings until they have stored, so the one stored last read last."""
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_key(cfg),))
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:  # a lost session has released it
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock_key(cfg),))


def _ts(t: int) -> datetime:
    return datetime.fromtimestamp(int(t), UTC)


def _copy_out(conn: psycopg.Connection, query: str, params: dict) -> bytearray:
    """The binary COPY output of ``query`` in one buffer (the server sends a message per row: appending
    them keeps no Python object per row). JIT is off: compiling the aggregate cost more than it saved."""
    buf = bytearray()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL jit = off")
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)", params) as copy:
            for data in copy:
                buf += data
    return buf


def tag_ids(conn: psycopg.Connection, names: list[str]) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT name, id FROM tags WHERE name = ANY(%s)", (names,))
        return dict(cur.fetchall())


def _good(cfg: StackConfig) -> str:
    """Valid data (`emissions.config.valid_quality`) as SQL: a backfill UNCERTAIN only for its age counts too."""
    if cfg.regulatory.accept_uncertain:
        q = f"quality <= {int(Quality.UNCERTAIN)}"
    else:
        q = (f"(quality = {int(Quality.GOOD)} OR (quality = {int(Quality.UNCERTAIN)} AND (flags & {AGED_ONLY}) <> 0"
             f" AND (flags & {NOT_AGED_ONLY}) = 0))")
    return (f"{q} AND value IS NOT NULL AND value <> 'NaN'::float8"
            " AND value < 'Infinity'::float8 AND value > '-Infinity'::float8")


def fetch_primary(conn: psycopg.Connection, features: Features, cfg: StackConfig, start: int, end: int, *,
                  workers: int = 2) -> Primary:
    """Primary values of every tag of ``cfg`` for [start, end) (Unix seconds, multiples of primary_s).

    With ``workers`` > 1 the span is split into that many parts fetched on as many connections at once
    (the server aggregates each on its own core); the extra connections reuse ``conn``'s parameters.
    """
    step = cfg.primary_s
    if start % step or end % step or end <= start:
        raise ValueError(f"span must be whole {step} s intervals, got [{start}, {end})")
    n = (end - start) // step
    roles = cfg.tags()
    ids = tag_ids(conn, sorted(set(roles.values())))
    operating = unknown = None
    if "state" in roles:
        tid = ids.get(roles["state"])
        if tid is None:
            operating, unknown = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
        else:
            operating, unknown = _operating(conn, features, cfg, tid, start, end, n)
    excluded = status_excluded(conn, features, cfg, ids, start, end, n)
    measured = [role for role in roles if role != "state" and not role.startswith("status:")]
    wanted = {role: ids[roles[role]] for role in measured if roles[role] in ids}
    values = {role: np.full(n, np.nan) for role in measured}
    substituted = {role: np.zeros(n, dtype=bool) for role in values}
    # One pass over the readings for all tags (a query per tag would scan each chunk once per tag where
    # the planner prefers a sequential scan); with workers, each takes a contiguous part of the span.
    cuts = np.linspace(0, n, max(workers, 1) + 1).astype(np.int64)
    parts = [(start + int(a) * step, start + int(b) * step) for a, b in itertools.pairwise(cuts) if b > a]

    def fetch(c: psycopg.Connection, lo: int, hi: int) -> None:
        rows = _primary_rows(c, features, cfg, sorted(set(wanted.values())), lo, hi)
        idx = (pgcopy.timestamps_s(rows["t"]) - start) // step
        for role, tid in wanted.items():
            m = rows["tid"] == tid
            values[role][idx[m]] = rows["v"][m]
            substituted[role][idx[m]] = rows["s"][m].astype(bool)

    if not wanted:
        pass
    elif len(parts) == 1:
        fetch(conn, *parts[0])
    else:
        conninfo = make_conninfo(conn.info.dsn, password=conn.info.password) if conn.info.password else conn.info.dsn

        def worker(lo: int, hi: int) -> None:
            with psycopg.connect(conninfo, autocommit=True) as c:
                fetch(c, lo, hi)

        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="emissions-fetch") as pool:
            for f in [pool.submit(worker, lo, hi) for lo, hi in parts]:
                f.result()
    return Primary(start, step, n, values, substituted, operating, unknown).exclude(excluded)


def _primary_rows(conn: psycopg.Connection, features: Features, cfg: StackConfig, tids: list[int], start: int,
                  end: int) -> np.ndarray:
    """Primary values of several tags over [start, end), bucketed in the database: (tid, t, v, s) rows."""
    return pgcopy.parse(_copy_out(conn, f"""
        SELECT tag_id::int4, {features.bucket(f"{cfg.primary_s} seconds", "time")} AS b, avg(value)::float8,
               bool_or((flags & {int(Flag.SUBSTITUTED)}) <> 0)
        FROM readings WHERE tag_id = ANY(%(tids)s) AND time >= %(start)s AND time < %(end)s AND {_good(cfg)}
        GROUP BY 1, 2""", {"tids": tids, "start": _ts(start), "end": _ts(end)}), _VALUE_ROW)


def _operating(conn: psycopg.Connection, features: Features, cfg: StackConfig, tid: int, start: int, end: int,
               n: int) -> tuple[np.ndarray, np.ndarray]:
    """Operating mask from the state tag and where the state is unknown.

    An interval is excluded only if every state sample in it is an excluded state; intervals without a
    sample keep the state before them (states are often sent on change). Before the first state sample
    the state is unknown: such time is not counted as operating (days before commissioning or before the
    gateway ran would otherwise count as invalid days); reports show how much time that was."""
    step = cfg.primary_s
    excluded = [float(x) for x in cfg.excluded_states]
    rows = pgcopy.parse(_copy_out(conn, f"""
        SELECT {features.bucket(f"{step} seconds", "time")} AS b, bool_and(value = ANY(%(ex)s::float8[]))
        FROM readings WHERE tag_id = %(tid)s AND time >= %(start)s AND time < %(end)s AND {_good(cfg)}
        GROUP BY 1""", {"tid": tid, "ex": excluded, "start": _ts(start), "end": _ts(end)}), _STATE_ROW)
    with conn.cursor() as cur:
        cur.execute(f"SELECT value FROM readings WHERE tag_id = %s AND time < %s AND {_good(cfg)} "
                    "ORDER BY time DESC LIMIT 1", (tid, _ts(start)))
        before = cur.fetchone()
    state = np.full(n, -1, dtype=np.int8)  # -1 unknown, 0 operating, 1 excluded
    idx = (pgcopy.timestamps_s(rows["t"]) - start) // step
    state[idx] = rows["x"]
    if before is not None:
        state[0] = state[0] if state[0] >= 0 else int(before[0] in excluded)
    filled = _carry_forward(state)
    return filled == 0, filled < 0


def _carry_forward(state: np.ndarray) -> np.ndarray:
    """Each interval's state, or where it has none (-1) the last known one before it (-1 before any)."""
    known = np.where(state >= 0, np.arange(len(state)), -1)
    np.maximum.accumulate(known, out=known)
    return np.where(known >= 0, state[np.maximum(known, 0)], -1)


def status_excluded(conn: psycopg.Connection, features: Features, cfg: StackConfig, ids: dict[str, int], start: int,
                     end: int, n: int) -> dict[str, np.ndarray]:
    """Pollutant -> primary intervals in which its analyser's status said "not measuring" (calibration,
    maintenance, fault): a status value outside ``status_ok`` holds from its reading to the next one, and an
    interval is excluded when such a value was in force at any moment of it. Before the first status reading the
    analyser counts as measuring; status readings that are not valid data (BAD, NaN) are skipped, the status
    before them holding on. One query per distinct status tag (a tag several pollutants share is read once)."""
    out: dict[str, np.ndarray] = {}
    done: dict[tuple[str, tuple[float, ...]], np.ndarray] = {}
    for p in cfg.pollutants:
        if p.status_tag is None or p.status_tag not in ids:
            continue  # a status tag never read: measuring, as without one
        key = (p.status_tag, tuple(sorted(float(x) for x in p.status_ok)))
        if key not in done:
            done[key] = _status_mask(conn, features, cfg, ids[p.status_tag], list(key[1]), start, end, n)
        out[p.name] = done[key]
    return out


def _status_mask(conn: psycopg.Connection, features: Features, cfg: StackConfig, tid: int, ok: list[float],
                 start: int, end: int, n: int) -> np.ndarray:
    step = cfg.primary_s
    bucket = features.bucket(f"{step} seconds", "time")
    rows = pgcopy.parse(_copy_out(conn, f"""
        SELECT b, bool_or(bad), coalesce(max(time) FILTER (WHERE bad) > max(time) FILTER (WHERE NOT bad), bool_or(bad)),
               min(time) = b
        FROM (SELECT {bucket} AS b, time, value <> ALL(%(ok)s::float8[]) AS bad FROM readings
              WHERE tag_id = %(tid)s AND time >= %(start)s AND time < %(end)s AND {_good(cfg)}) s
        GROUP BY b""", {"tid": tid, "ok": ok, "start": _ts(start), "end": _ts(end)}), _STATUS_ROW)
    with conn.cursor() as cur:
        cur.execute(f"SELECT value <> ALL(%s::float8[]) FROM readings WHERE tag_id = %s AND time < %s AND {_good(cfg)}"
                    " ORDER BY time DESC LIMIT 1", (ok, tid, _ts(start)))
        before = cur.fetchone()
    # In force at the end of each interval (-1: no status yet), carried forward over intervals without readings.
    last = np.full(n, -1, dtype=np.int8)
    idx = (pgcopy.timestamps_s(rows["t"]) - start) // step
    last[idx] = rows["last"]
    at_end = _carry_forward(last)
    # In force at the start of each interval: what held at the end of the one before (unless a reading came at
    # the very start of the interval, which then decides, and is in ``any``).
    at_start = np.empty(n, dtype=np.int8)
    at_start[0] = -1 if before is None else int(before[0])
    at_start[1:] = at_end[:-1]
    if at_start[0] >= 0:
        at_start[1:] = np.where(at_start[1:] < 0, at_start[0], at_start[1:])
    starts_new = np.zeros(n, dtype=bool)
    starts_new[idx] = rows["at0"].astype(bool)
    excluded = np.zeros(n, dtype=bool)
    excluded[idx] = rows["any"].astype(bool)
    excluded |= (at_start == 1) & ~starts_new
    return excluded


_AVG_COLUMNS = ("stack", "pollutant", "period", "period_start", "period_end", "value", "validated", "raw",
                "status", "valid", "availability", "n_expected", "n_operating", "n_valid", "n_substituted",
                "substituted_share", "sub_valid", "sub_invalid", "ci", "mass_kg_h", "mass_kg", "config_sha256")
# Sent as NaN / -1 in the binary COPY and stored as NULL.
_NULLABLE_F8 = ("value", "validated", "raw", "availability", "mass_kg_h", "mass_kg")
_NULLABLE_I4 = ("sub_valid", "sub_invalid")


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _text(s: str) -> tuple[str, bytes]:
    b = s.encode()
    return f"S{len(b)}", b


def _average_rows(cfg: StackConfig, pol: str, av: Averages, sha: str, keep: np.ndarray) -> bytes:
    n = int(keep.sum())
    has_sub = len(av.sub_valid) == len(av)
    minus = np.full(n, -1, dtype=np.int32)
    cols = [("stack", *_text(cfg.name)), ("pollutant", *_text(pol)), ("period", *_text(av.period)),
            ("period_start", ">i8", pgcopy.pg_us(av.start[keep])), ("period_end", ">i8", pgcopy.pg_us(av.end[keep])),
            ("value", ">f8", av.value[keep]), ("validated", ">f8", av.validated[keep]), ("raw", ">f8", av.raw[keep]),
            ("status", ">i2", av.status[keep]), ("valid", "u1", av.status[keep] == 0),
            ("availability", ">f8", av.availability[keep]), ("n_expected", ">i4", av.n_expected[keep]),
            ("n_operating", ">i4", av.n_operating[keep]), ("n_valid", ">i4", av.n_valid[keep]),
            ("n_substituted", ">i4", av.n_substituted[keep]),
            ("substituted_share", ">f8", av.substituted_share[keep]),
            ("sub_valid", ">i4", av.sub_valid[keep] if has_sub else minus),
            ("sub_invalid", ">i4", av.sub_invalid[keep] if has_sub else minus),
            ("ci", ">f8", cfg.ci_value(cfg.pollutant(pol))), ("mass_kg_h", ">f8", av.mass_kg_h[keep]),
            ("mass_kg", ">f8", av.mass_kg[keep]), ("config_sha256", *_text(sha))]
    return pgcopy.build(n, cols)


class Written(NamedTuple):
    """What `write_result` stored: average rows, and closed averages it changed (`emissions.revisions`)."""

    averages: int
    revisions: int
    run_id: int  # its ``emission_runs.id``: what a report of the span names, and revisions name


def write_result(conn: psycopg.Connection, cfg: StackConfig, result: StackResult, span: tuple[int, int],
                 rule_results: list[RuleResult], events: list[Event], seconds: float = 0.0, *,
                 reaches_now: bool = True, rollup_readings: int | None = None, reason: str = "") -> Written:
    """Store one computed span in one transaction; returns how many average rows it wrote and how many stored
    averages of closed periods it changed.
    The run goes to ``emission_runs`` with ``rollup_readings`` (`emissions.late.rollup_readings` when it started)
    and ``reason`` (why it ran, where that is not the usual schedule). Stored averages of closed periods that it
    changes are recorded first (`emissions.revisions`).

    Averages, events and rule windows that start inside the span replace the stored ones (a period or
    window that started before the span was computed from part of its data and is left alone: the year
    windows of a month's run, say, are the year run's).
    A span that ends before the data does (``reaches_now`` False: a `report` or `compute` of a past period) holds
    only part of a period or window that runs on after it, so such a one is left alone too (the year average and
    year windows of a report of March, which the runs covering the year judged), and an event it could judge only
    provisionally (an hour under a year's share rule) keeps the judgement stored, its value updated.
    Averages go by binary COPY into a temporary table, then one DELETE and one INSERT: the same result
    as an upsert per row, several times faster for a year. Writes of one stack take turns (a transaction advisory
    lock): two gateways of a redundant pair storing it at once both succeed, the later one's result stays.
    """
    sha = result.config_sha256
    n_rows = 0
    end_cap = float("inf") if reaches_now else span[1]  # what may end after the span: only when nothing follows
    events = [e for e in events if span[0] <= e.start < span[1] and e.end <= end_cap]
    keep_judged = [] if reaches_now else [e for e in events if e.provisional]
    events = [e for e in events if reaches_now or not e.provisional]
    kept_keys = [f"{e.pollutant}|{e.rule}|{e.kind}|{int(e.start)}" for e in keep_judged]
    lo, hi = _ts(span[0]), _ts(span[1])
    ends = "" if reaches_now else " AND {} <= %(hi)s"
    with conn.transaction(), conn.cursor() as cur:
        # A redundant pair of gateways stores the same stack: without turns, the second DELETE does not see the
        # first's uncommitted rows and its INSERT fails on their key once the first commits.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key(cfg),))
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS _emis_avg (LIKE emission_averages INCLUDING DEFAULTS)"
                    " ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY _emis_avg ({', '.join(_AVG_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(pgcopy.HEADER)
            for pol, levels in result.averages.items():
                for av in levels.values():
                    keep = (av.start >= span[0]) & (av.start < span[1]) & (av.end <= end_cap)
                    if keep.any():
                        copy.write(_average_rows(cfg, pol, av, sha, keep))
                        n_rows += int(keep.sum())
            copy.write(pgcopy.TRAILER)
        select = ", ".join(f"NULLIF({c}, 'NaN'::float8)" if c in _NULLABLE_F8 else
                           f"NULLIF({c}, -1)" if c in _NULLABLE_I4 else c for c in _AVG_COLUMNS)
        within = {"stack": cfg.name, "lo": lo, "hi": hi}
        # The run first, so that the revisions of closed averages it makes can name it (compared before replacing).
        cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages, events,"
                    " seconds, rollup_readings, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (cfg.name, lo, hi, json.dumps(cfg.model_dump(mode="json")), sha, n_rows, len(events), seconds,
                     rollup_readings, reason))
        run_id = cur.fetchone()[0]
        revised = revisions.record(cur, cfg, lo, hi, run_id)
        cur.execute("DELETE FROM emission_averages WHERE stack = %(stack)s AND period_start >= %(lo)s"
                    " AND period_start < %(hi)s" + ends.format("period_end"), within)
        cur.execute(f"INSERT INTO emission_averages ({', '.join(_AVG_COLUMNS)}) SELECT {select} FROM _emis_avg")
        cur.execute("DELETE FROM emission_events WHERE stack = %(stack)s AND period_start >= %(lo)s"
                    " AND period_start < %(hi)s" + ends.format("period_end")
                    + " AND concat_ws('|', pollutant, rule, kind, extract(epoch FROM period_start)::bigint)"
                    " <> ALL(%(kept)s::text[])", {**within, "kept": kept_keys})
        insert = ("INSERT INTO emission_events (stack, pollutant, rule, kind, period, period_start, period_end, value,"
                  " limit_value, elv, breach, provisional, config_sha256) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                  "%s) ON CONFLICT (stack, pollutant, rule, kind, period_start) DO UPDATE SET value = EXCLUDED.value,"
                  " limit_value = EXCLUDED.limit_value, config_sha256 = EXCLUDED.config_sha256, computed_at = now()")
        for rows, judge in ((events, ", breach = EXCLUDED.breach, provisional = EXCLUDED.provisional"),
                            (keep_judged, "")):
            cur.executemany(insert + judge, [(e.stack, e.pollutant, e.rule, e.kind, e.period, _ts(e.start), _ts(e.end),
                                              e.value, e.limit, e.elv, e.breach, e.provisional, sha) for e in rows])
        cur.execute("DELETE FROM emission_compliance WHERE stack = %(stack)s AND window_start >= %(lo)s"
                    " AND window_start < %(hi)s" + ends.format("window_end"), within)
        cur.executemany(
            "INSERT INTO emission_compliance (stack, pollutant, rule, window_start, window_end, n_valid, n_over,"
            " limit_value, required_share, share_within, passed, provisional, reference, config_sha256)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (stack, pollutant, rule, window_start) DO UPDATE SET window_end = EXCLUDED.window_end,"
            " n_valid = EXCLUDED.n_valid, n_over = EXCLUDED.n_over, limit_value = EXCLUDED.limit_value,"
            " required_share = EXCLUDED.required_share, share_within = EXCLUDED.share_within,"
            " passed = EXCLUDED.passed, provisional = EXCLUDED.provisional, reference = EXCLUDED.reference,"
            " config_sha256 = EXCLUDED.config_sha256, computed_at = now()",
            [(r.stack, r.pollutant, r.rule, _ts(r.start), _ts(r.end), r.n_valid, r.n_over, r.limit,
              _f(r.required_share), _f(r.share_within), r.passed, r.provisional, r.reference, sha)
             for r in rule_results if span[0] <= r.start < span[1] and r.end <= end_cap])
    revisions.log_revisions(cfg, revised)  # after the commit: what is logged is stored
    return Written(n_rows, len(revised), run_id)


def finished_until(conn: psycopg.Connection, cfg: StackConfig, before: int) -> int | None:
    """Where the stored runs of ``cfg`` left the time before ``before`` (the start of the period the periodic job
    is about to compute), for its catch-up after a restart: the latest end of the runs that started at or before
    the start of the year in which ``before - 1`` lies, i.e. that judged that year's windows from its start. The
    newest run is not enough: `report` or `compute` of an earlier period would send the job back to recompute a
    year it had finished, and a run starting later (a report of the new month, a `compute` from a day in
    December) judged neither the end of that year nor its year windows. None when no such run is stored."""
    year_start = periods.year_of(before - 1, cfg.timezone)[0]
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM max(span_end))::bigint FROM emission_runs WHERE stack = %s"
                    " AND span_start <= %s", (cfg.name, _ts(year_start)))
        row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def write_qal3(conn: psycopg.Connection, stack: str, analyser: str, checks: list[Check]) -> None:
    """Upsert QAL3 check rows (recomputing a chart rewrites its statistics)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO emission_qal3_checks (stack, analyser, kind, time, value, reference, deviation, z,"
            " cusum_pos, cusum_neg, moving_range, s_ams, s_estimated, alarms)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (stack, analyser, kind, time) DO UPDATE SET value = EXCLUDED.value,"
            " deviation = EXCLUDED.deviation, z = EXCLUDED.z, cusum_pos = EXCLUDED.cusum_pos,"
            " cusum_neg = EXCLUDED.cusum_neg, moving_range = EXCLUDED.moving_range, s_ams = EXCLUDED.s_ams,"
            " s_estimated = EXCLUDED.s_estimated, alarms = EXCLUDED.alarms, computed_at = now()",
            [(stack, analyser, c.kind, _ts(c.time), c.value, c.reference, c.deviation, _f(c.z), c.cusum_pos,
              c.cusum_neg, _f(c.moving_range), _f(c.s_ams), c.s_estimated, list(c.alarms)) for c in checks])


def qal3_stored(conn: psycopg.Connection, stack: str, analyser: str, kind: str) -> dict[int, tuple[float, float]]:
    """Time (Unix seconds) -> (value, reference) of the QAL3 checks stored for one chart: `emissions.qal3.chart` keeps
    their references, and the job charts them where retention has removed their readings."""
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM time)::bigint, value, reference FROM emission_qal3_checks"
                    " WHERE stack = %s AND analyser = %s AND kind = %s", (stack, analyser, kind))
        return {int(t): (float(v), float(r)) for t, v, r in cur.fetchall()}


def fetch_tag(conn: psycopg.Connection, cfg: StackConfig, tag: str, start: int, end: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Raw (time, value) of one tag's good readings in [start, end), e.g. QAL3 check readings."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT extract(epoch FROM r.time)::bigint, r.value FROM readings r JOIN tags t"
                    f" ON t.id = r.tag_id WHERE t.name = %s AND r.time >= %s AND r.time < %s AND {_good(cfg)}"
                    " ORDER BY r.time", (tag, _ts(start), _ts(end)))
        rows = cur.fetchall()
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=float))
