"""The emissions job: readings -> primary values -> averages -> compliance -> emission tables.

`run_span` computes one stack over whole periods and stores the result idempotently; `run_periodic`
keeps the current month and year up to date while the gateway runs (late data after an outage
corrects earlier periods, because every run recomputes them from the stored readings; where that changes the stored
average of a period that had closed, `emissions.revisions` records it and reports of the period say so).

Compliance windows of a year need the year's data, so by default a span is widened to the start of
its calendar year (``context="year"``); results for windows that are not complete yet are provisional.
A span never ends after the last whole hour of the clock (`capped`): a report of the running day or month, or
a recomputation to a day still to come, covers the data so far, its running periods are provisional, and the
stored run (``emission_runs.span_end``) ends where its data does.
A periodic run covers its context period up to the last whole hour, so when the context period has moved
on since the previous run (a new month, a new year) the previous one is first computed once to its end:
its last hour, day, month and year get their final judgement. Readings of that year which arrive after it
(a spool drained late, a device's backlog) make a year run compute it again, within bounds (`emissions.late`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import psycopg

from edge.db.features import Features, detect
from edge.timeouts import within
from emissions import averages, compliance, late, pems, periods, qal3, store
from emissions.averages import StackResult
from emissions.compliance import Event, RuleResult
from emissions.config import StackConfig
from emissions.normalise import Primary

if TYPE_CHECKING:
    from edge.metrics import Metrics

log = logging.getLogger(__name__)

# The periodic job closes an hour this long after it ends: its last readings are still on their way then (collector
# batches, the spool, the forwarder), and an hour stored without them is revised by the next run (a revision logged
# and noted in reports for readings that were only in flight). Readings later than this are late data (revisions).
SETTLE_S = 120


@dataclass
class SpanResult:
    cfg: StackConfig
    span: tuple[int, int]
    primary: Primary
    result: StackResult
    rules: list[RuleResult]
    events: list[Event]
    qal3: dict[tuple[str, str], list[qal3.Check]]
    seconds: float
    rows_written: int = 0
    revisions: int = 0  # stored averages of closed periods this run changed (emissions.revisions)
    run_id: int | None = None  # emission_runs.id of the stored run (None: not stored)
    readings: int | None = None  # readings of the stack's tags in the span as the hourly rollups counted them at start
    qal3_alarms: int = 0  # QAL3 checks with alarms this run charted (and stored) first
    # Per chart (analyser, kind), the latest check this run charted (and stored) first: where the chart stands now,
    # for the alert board (`run_periodic`'s ``on_qal3``).
    qal3_latest: dict[tuple[str, str], qal3.Check] = field(default_factory=dict)


def widen(cfg: StackConfig, start: int, end: int, context: str = "year", whole_days: bool = True
          ) -> tuple[int, int]:
    """Widen [start, end) to the start of its calendar ``context`` (day, month or year) and, with
    ``whole_days``, to the end of the last day, so every average in it is computed from complete data.
    Without it the end is kept (aligned down to whole hours): the running day is then partial."""
    b = periods.boundaries(context, start, start + 1, cfg.timezone)
    if whole_days:
        return int(b[0]), int(periods.boundaries("day", end - 1, end, cfg.timezone)[-1])
    return int(b[0]), max(periods.last_whole_hour(end, cfg.timezone), int(b[0]) + 3600)


class NothingClosed(ValueError):
    """A span that starts after the last whole hour: no average in it has any data yet."""


def capped(cfg: StackConfig, span: tuple[int, int], now: float) -> tuple[int, int]:
    """``span`` ending at the last whole hour of ``now`` at the latest. Compliance judges an average final when it
    ends inside the span, so a span reaching past now would judge the running day or month on its data so far."""
    end = min(span[1], periods.last_whole_hour(int(now), cfg.timezone))
    if end <= span[0]:
        raise NothingClosed(f"stack {cfg.name}: nothing to compute from {periods.iso(span[0], cfg.timezone)}: no "
                            f"hour of it has ended yet (now {periods.iso(int(now), cfg.timezone)})")
    return span[0], end


def run_span(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int, *, features: Features | None = None,
             context: str = "year", whole_days: bool = True, write: bool = True,
             clock: Callable[[], float] = time.time, reason: str = "") -> SpanResult:
    """Compute (and store) a stack's averages, compliance and QAL3 charts for [start, end) widened, up to the last
    whole hour of ``clock()`` at the most (`capped`; `NothingClosed` when none of it has ended). ``reason`` is stored
    with the run where it is not the usual schedule. A run that stores holds the stack's lock (`store.stack_lock`)
    throughout: the runs of two gateways take turns."""
    if write:
        with store.stack_lock(conn, cfg):
            return _run_span(conn, cfg, start, end, features, context, whole_days, write, clock, reason)
    return _run_span(conn, cfg, start, end, features, context, whole_days, write, clock, reason)


def _run_span(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int, features: Features | None,
              context: str, whole_days: bool, write: bool, clock: Callable[[], float], reason: str) -> SpanResult:
    t_begin = time.perf_counter()
    features = features or detect(conn)
    span = capped(cfg, widen(cfg, start, end, context, whole_days), clock())
    # Counted before the readings are read: whatever this count holds, the run has (emissions.late). A report states
    # it also when it does not store (the data its figures rest on).
    seen = late.rollup_readings(conn, cfg, *span)
    primary = store.fetch_primary(conn, features, cfg, *span)
    result = averages.compute(cfg, primary)
    rules, events = compliance.evaluate(cfg, result, span)
    events += pems_events(cfg, primary)
    charts: dict[tuple[str, str], list[qal3.Check]] = {}
    first_charted: dict[tuple[str, str], set[int]] = {}  # the checks stored before this run, per chart
    for q in cfg.qal3:
        for kind, tag in (("zero", q.zero_tag), ("span", q.span_tag)):
            if tag:
                # Charts are cumulative: the checks before the span decide where the CUSUM stands. Checks already
                # stored keep the reference they were charted against (a zero or span gas replaced since).
                t, v = store.fetch_tag(conn, cfg, tag, 0, span[1])
                stored = store.qal3_stored(conn, cfg.name, q.analyser, kind)
                # Retention (`database.retention_days`) removes the oldest readings, the first checks among them: the
                # chart then started later, its s_AMS estimated from other checks and every stored check re-judged.
                # The checks charted before the first reading left stay its start.
                first = int(t[0]) if len(t) else span[1]
                gone = sorted(s for s in stored if s < first)
                t = np.concatenate([np.asarray(gone, dtype=np.int64), t])
                v = np.concatenate([np.asarray([stored[s][0] for s in gone], dtype=float), v])
                known = {s: ref for s, (_, ref) in stored.items()}
                charts[(q.analyser, kind)] = qal3.chart(q, kind, t, v, known)
                first_charted[(q.analyser, kind)] = set(stored)
    out = SpanResult(cfg, span, primary, result, rules, events, charts, 0.0, readings=seen)
    if write:
        for (analyser, kind), checks in charts.items():
            store.write_qal3(conn, cfg.name, analyser, checks)
            out.qal3_alarms += _log_qal3_alarms(cfg, analyser, kind, checks, first_charted[(analyser, kind)])
            new = [c for c in checks if c.time not in first_charted[(analyser, kind)]]
            if new:
                out.qal3_latest[(analyser, kind)] = new[-1]
            _log_qal3_not_judged(cfg, analyser, kind, checks, first_charted[(analyser, kind)])
        reaches_now = span[1] >= periods.last_whole_hour(int(clock()), cfg.timezone)
        out.rows_written, out.revisions, out.run_id = store.write_result(
            conn, cfg, result, span, rules, events, time.perf_counter() - t_begin, reaches_now=reaches_now,
            rollup_readings=seen, reason=reason)
    out.seconds = time.perf_counter() - t_begin
    log.info("emissions: %s %s..%s: %d averages, %d events in %.2f s", cfg.name, periods.iso(span[0]),
             periods.iso(span[1]), out.rows_written, len(events), out.seconds,
             extra={"event": "emissions_job", "stack": cfg.name})
    return out


def pems_levels(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> dict[str, list[float | None]]:
    """Pollutant -> the nominal coverages of the PEMS predictions stored in [start, end) for its ``pems`` tag
    (live PEMS stores each with its readings): the level of the interval the analyser was checked against, which
    the readings of the lower and upper tags do not carry. None in the list: a prediction without a stated level;
    an empty list: no PEMS prediction stored (the bounds came from elsewhere)."""
    links = {p.pems.tag: p.name for p in cfg.pollutants if p.pems is not None and p.pems.lower_tag}
    if not links:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT details->>'pems_tag', coverage FROM predictions WHERE kind = 'pems' "
                    "AND details->>'pems_tag' = ANY(%s) AND time >= to_timestamp(%s) AND time < to_timestamp(%s) "
                    "ORDER BY 1, 2", (list(links), start, end))
        rows = cur.fetchall()
    out: dict[str, list[float | None]] = {name: [] for name in links.values()}
    for tag, coverage in rows:
        out[links[tag]].append(coverage)
    return out


@dataclass(frozen=True)
class PemsModel:
    """A model version whose PEMS predictions are stored in a report's period (substitutes and cross-check bounds)."""

    model_id: str
    registry_version: str | None  # as the registry numbers it (``details.registry_version``)
    sha256: str  # of the ONNX file (``predictions.model_version``)
    predictions: int
    first: int  # Unix seconds
    last: int
    # Of them, made from inputs outside the version's training range (``details.outside_training``, readings UNCERTAIN)
    outside_training: int = 0


def pems_models(conn: psycopg.Connection, cfg: StackConfig, start: int, end: int) -> dict[str, list[PemsModel]]:
    """Pollutant -> the model versions of the PEMS predictions stored in [start, end) for its ``pems`` tag, oldest
    first: which model the substituted values and the cross-check's interval came from (the readings of the ``pems``
    tags do not name it; `pems_live` stores a prediction with each)."""
    links = {p.pems.tag: p.name for p in cfg.pollutants if p.pems is not None}
    if not links:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT details->>'pems_tag', model_id, details->>'registry_version', model_version, count(*),"
                    " extract(epoch FROM min(time))::bigint, extract(epoch FROM max(time))::bigint,"
                    " count(*) FILTER (WHERE details ? 'outside_training') FROM predictions"
                    " WHERE kind = 'pems' AND details->>'pems_tag' = ANY(%s) AND time >= to_timestamp(%s)"
                    " AND time < to_timestamp(%s) GROUP BY 1, 2, 3, 4 ORDER BY 1, 6", (list(links), start, end))
        rows = cur.fetchall()
    out: dict[str, list[PemsModel]] = {name: [] for name in links.values()}
    for tag, *model in rows:
        out[links[tag]].append(PemsModel(*model))
    return out


def _log_qal3_alarms(cfg: StackConfig, analyser: str, kind: str, checks: list[qal3.Check], stored: set[int]) -> int:
    """Log the alarms of the checks this run charted first (not stored before): EN 14181 asks for the analyser to be
    seen to when its chart leaves control, and the alarms were only stored, shown in the next report. Returns how many
    checks with alarms were new (`valvoja_emissions_qal3_alarms_total`)."""
    new = [c for c in checks if c.alarms and c.time not in stored]
    if new:  # one line per chart and run (a chart first configured over a history of checks charts them all at once)
        c = new[-1]
        more = f" ({len(new)} new checks with alarms, this the latest)" if len(new) > 1 else ""
        log.warning("emissions: %s %s %s check at %s out of control: %s (deviation %.4g = %.2f s_AMS, CUSUM+ %.2f, "
                    "CUSUM- %.2f)%s", cfg.name, analyser, kind, periods.iso(c.time), ", ".join(c.alarms), c.deviation,
                    c.z, c.cusum_pos, c.cusum_neg, more,
                    extra={"event": "qal3_alarm", "stack": cfg.name, "analyser": analyser, "kind": kind,
                           "alarms": list(c.alarms), "checks": len(new)})
    return len(new)


def _log_qal3_not_judged(cfg: StackConfig, analyser: str, kind: str, checks: list[qal3.Check],
                         stored: set[int]) -> None:
    """Log the checks charted first that could not be judged because s_AMS could not be estimated (`qal3.state`
    ``no_spread``): once per chart and run that charts new ones, like an alarm; without it such a chart stayed
    "estimating" for good while the analyser drifted."""
    q = next(q for q in cfg.qal3 if q.analyser == analyser)
    new = [c for i, c in enumerate(checks) if i >= q.n_initial and c.z != c.z and c.time not in stored]
    if new:
        log.warning("emissions: %s %s %s checks are not judged: s_AMS is not configured and the first %d checks are "
                    "too alike to estimate it (no spread); %d new check(s), the latest at %s deviating %.4g; set "
                    "qal3.s_ams from the analyser's QAL1", cfg.name, analyser, kind, q.n_initial, len(new),
                    periods.iso(new[-1].time), new[-1].deviation,
                    extra={"event": "qal3_not_judged", "stack": cfg.name, "analyser": analyser, "kind": kind})


def pems_events(cfg: StackConfig, primary: Primary) -> list[Event]:
    """Cross-check events: stretches where an analyser stayed outside its PEMS prediction interval."""
    out = []
    times = primary.times()
    for pol in cfg.pollutants:
        link = pol.pems
        if link is None or link.lower_tag is None:
            continue
        nan = np.full(primary.n, np.nan)
        # Measured values only: one substituted upstream (a DAS's estimate, a held last value) says nothing of the
        # analyser, and a run of them outside the interval was reported as the analyser deviating.
        analyser = primary.values.get(pol.name, nan)
        upstream = primary.substituted.get(pol.name)
        if upstream is not None:
            analyser = np.where(upstream, np.nan, analyser)
        _, deviations = pems.crosscheck(
            times, primary.step_s, analyser, primary.values.get(f"pems:{pol.name}", nan),
            primary.values.get(f"pems_lo:{pol.name}", nan), primary.values.get(f"pems_hi:{pol.name}", nan), link)
        out += [Event(cfg.name, pol.name, "pems_crosscheck", "pems_deviation", "primary", d.start, d.end,
                      100 * d.max_outside_share, 100 * link.min_outside_share, 0.0, breach=False)
                for d in deviations]
    return out


async def run_periodic(conninfo: str, stacks: list[StackConfig], stop: asyncio.Event, *,
                       interval_s: float = 300.0, full_interval_s: float = 3600.0,
                       clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                       on_qal3: Callable[[StackConfig, str, str, qal3.Check], None] | None = None) -> None:
    """Keep every stack's stored results current until ``stop`` is set.

    ``on_qal3(cfg, analyser, kind, check)`` is told, on the event loop, of the latest QAL3 check of each chart a run
    charted first (the gateway raises and clears an alert from it, `edge.analytics.Analytics.qal3_check`).

    Every ``interval_s`` the current month is recomputed up to the last whole hour (`SETTLE_S` after it ended); every
    ``full_interval_s`` (and at start) the whole year to date, which the yearly compliance windows need
    (a year of one stack takes about 10 s here, see bench/bench_emissions.py); a month run leaves the windows
    that started before its month (the yearly ones) to the year runs (`compliance.evaluate`). When the period a run
    starts from lies after the end of the previous run (also one stored before a restart), the time
    between is computed first from the start of its year to the new period (`_run_once`); a year run also
    recomputes the year before when readings of it arrived after that (`emissions.late`). The synchronous
    job runs in a worker thread so the gateway's event loop is never blocked; a database that is away is
    retried at the next interval, and so is a stack whose run failed otherwise (logged once per distinct error,
    with the stack; the other stacks still run). ``metrics`` (the gateway's) counts the runs per stack and result,
    the closed averages they changed, and when each stack last completed one.
    """
    last_full = -float("inf")
    done: dict[str, int | None] = {}  # stack -> end of its last computed span (None: not known yet)
    warned: dict = {}  # late readings not taken, already logged (emissions.late.due)
    failing: dict[str, str] = {}  # stack -> the error its runs fail with, logged once
    while not stop.is_set():
        now = clock()
        context = "year" if now - last_full >= full_interval_s else "month"
        failed = False
        for cfg in stacks:
            runs: list[SpanResult] = []
            try:
                done[cfg.name] = await asyncio.to_thread(_run_once, conninfo, cfg, int(now), context,
                                                         done.get(cfg.name), warned, runs)
                result = "ok"
            except psycopg.OperationalError as exc:
                log.warning("emissions: database not reachable (%s); retrying in %.0f s", exc, interval_s,
                            extra={"event": "emissions_job_retry", "stack": cfg.name})
                failed, result = True, "db_unreachable"  # the year run is due again at the next interval
            except Exception as exc:
                # A stack the job cannot compute (a bug, data the code did not foresee) must not stop the others
                # or the job: its reports would silently go stale. Logged once per distinct error, then counted.
                failed, result = True, "error"
                if failing.get(cfg.name) != repr(exc):
                    failing[cfg.name] = repr(exc)
                    log.exception("emissions: stack %s could not be computed (%s run); retrying every %.0f s",
                                  cfg.name, context, interval_s,
                                  extra={"event": "emissions_job_error", "stack": cfg.name})
            if on_qal3 is not None:
                for r in runs:
                    for (analyser, kind), check in sorted(r.qal3_latest.items()):
                        on_qal3(cfg, analyser, kind, check)
            if result == "ok" and failing.pop(cfg.name, None) is not None:
                log.info("emissions: stack %s computed again", cfg.name,
                         extra={"event": "emissions_job_recovered", "stack": cfg.name})
            if metrics is not None:
                metrics.emissions_runs.labels(cfg.name, result).inc()
                metrics.emissions_revisions.labels(cfg.name).inc(sum(r.revisions for r in runs))
                metrics.emissions_qal3_alarms.labels(cfg.name).inc(sum(r.qal3_alarms for r in runs))
                if result == "ok":
                    metrics.emissions_last_success.labels(cfg.name).set(time.time())
        if context == "year" and not failed:
            last_full = now
        try:
            await within(stop.wait(), interval_s)
        except TimeoutError:
            pass


def _run_once(conninfo: str, cfg: StackConfig, now: int, context: str, last_end: int | None,
              warned: dict | None = None, runs: list[SpanResult] | None = None, settle_s: int = SETTLE_S) -> int:
    """One periodic run at ``now``, computing as of ``now - settle_s`` (`SETTLE_S`); returns the end of what is
    computed. ``last_end`` is where the previous run ended (None: read from ``emission_runs``,
    `store.finished_until`); ``warned`` keeps what `late.due` logged; ``runs`` collects the spans computed."""
    runs = [] if runs is None else runs
    now = int(now) - settle_s
    span = widen(cfg, now - 1, now, context, whole_days=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if last_end is None:
            last_end = store.finished_until(conn, cfg, span[0])
            if last_end is None:
                last_end = span[0]  # nothing stored before this period: nothing to finish
        if last_end < span[0]:
            # The context period moved on: what was left of the previous one (at least its last hour) is
            # computed to its end, from the start of its year for the yearly windows (at most the year before).
            year_before = periods.year_of(periods.year_of(span[0] - 1, cfg.timezone)[0] - 1, cfg.timezone)[0]
            runs.append(run_span(conn, cfg, max(last_end, year_before), span[0], context="year", whole_days=True,
                                 clock=lambda: now))
        # The year-end run may have come before all of its readings did (a spool drained after it, a device's
        # backlog): the hourly year run looks for them, cheaply, and recomputes the year within its bounds.
        redo = late.due(conn, cfg, now, {} if warned is None else warned) if context == "year" else None
        if redo is not None:
            runs.append(run_span(conn, cfg, redo[0], redo[1], context="year", whole_days=True, clock=lambda: now,
                                 reason=redo[2]))
        if span[1] <= now:  # nothing closed yet in a period that has just begun
            runs.append(run_span(conn, cfg, now - 1, now, context=context, whole_days=False, clock=lambda: now))
            return span[1]
    return span[0]
