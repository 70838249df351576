"""Real-time warnings: running averages projected to the end of their period (DESIGN.md §8).

`LiveMonitor` follows one stack while the plant runs. Readings go in (`observe`, e.g. from the gateway
pipeline after validation), are held ``live.reorder_s`` (by their time) for the readings of the same interval
that other collectors commit later, and are binned into primary intervals, each closed interval is normalised
exactly as the stored averages are (`emissions.normalise`), and the running average of every watched
compliance rule's period (10-minute, half-hour, hour, day) is updated incrementally.

Projection to the end of the period (config ``live.projection``):
- ``recent``: the rest of the period continues at the mean of the last ``recent_s`` seconds;
- ``zero``: the rest is zero, so an alert means the period exceeds whatever happens now.
For a day, completed sub-averages (hours or half-hours as the regime builds days) are kept, the
current one is projected and the remaining ones are assumed at the recent level.

When the projection passes ``warn_percent``% of the rule's limit before the period ends, an
`edge.records.Alert` is passed to ``on_alert`` (severity ``warning``; ``critical`` when even the
``zero`` projection exceeds). Alert ids are deterministic per stack, pollutant, rule, period and
severity, so a repeated alert de-duplicates; the same alert is passed again with ``cleared_at`` set
when the projection falls 5 % below the threshold or the period ends.

The alert lifecycle (debounce, hysteresis, suppression in maintenance windows, escalation, storage)
belongs to ``maintenance/``: pass ``on_condition=manager.observe`` (a `maintenance.alerts.AlertManager`)
and every primary interval reports the condition "heading over the limit" per pollutant and rule,
active or not, as kind ``emission:<rule>``; collect the changes it returns for the alert store.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from edge.records import Alert, Flag, Quality, Reading
from emissions import periods
from emissions.config import Rule, StackConfig, valid_quality
from emissions.normalise import Primary, normalise_stack

CLEAR_HYSTERESIS = 0.95

log = logging.getLogger(__name__)


@dataclass
class _Running:
    """One rule's running period for one pollutant."""

    start: int = 0
    end: int = 0
    sum: float = 0.0  # base periods: valid normalised values; day: the current sub-period
    count: int = 0
    sub_start: int = 0
    sub_end: int = 0
    done_subs: list[float] = field(default_factory=list)  # day: completed valid sub-averages
    alerts: dict[str, Alert] = field(default_factory=dict)  # severity -> active alert


def _ts(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class LiveMonitor:
    """Incremental running averages and end-of-period projections for one stack."""

    def __init__(self, cfg: StackConfig, on_alert: Callable[[Alert], None] | None = None,
                 on_condition: Callable[..., object] | None = None, on_pems: Callable[..., object] | None = None,
                 pems_dsn: str | None = None, tag_units: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.on_alert = on_alert or (lambda _alert: None)
        self.on_condition = on_condition
        self.sha = cfg.fingerprint()
        self.step = cfg.primary_s
        self.roles = {tag: role for role, tag in cfg.tags().items() if not role.startswith("status:")}
        # Analyser status (a step signal): status tag -> pollutants reading it; per pollutant the status in force
        # after its latest status reading (True: not measuring) and that reading's time; measuring before any.
        self.status_tags: dict[str, list[str]] = {}
        for p in cfg.pollutants:
            if p.status_tag:
                self.status_tags.setdefault(p.status_tag, []).append(p.name)
        self._status_ok = {p.name: {float(x) for x in p.status_ok} for p in cfg.pollutants if p.status_tag}
        self._status_bad: dict[str, bool] = dict.fromkeys(self._status_ok, False)
        self._status_t: dict[str, float] = dict.fromkeys(self._status_ok, -math.inf)
        self._bin_start_bad: set[str] = set()  # not measuring when the current interval began
        self._bin_start_ok: set[str] = set()  # a "measuring" status read at the very start of the interval
        self._bin_excluded: set[str] = set()  # a "not measuring" status read in the interval
        names = cfg.live.rules
        self.rules: list[Rule] = [r for r in cfg.compliance if (r.name in names if names is not None else (
            r.share >= 100 and r.period in ("ten_min", "half_hour", "hour", "day")))]
        self.state: dict[tuple[str, str], _Running] = {}
        self.recent: dict[str, deque[tuple[int, float]]] = {p.name: deque() for p in cfg.pollutants}
        self._bin_t: int | None = None
        self._bin: dict[str, list[float]] = {}
        self._bin_subst: set[str] = set()
        self._operating = True
        self.last: dict[str, dict] = {}  # pollutant -> rule -> latest figures, for the console
        # Live PEMS (emissions.pems_live) for pollutants whose pems link names a registered model.
        self.on_pems = on_pems or (lambda _step: None)
        self.pems = self._start_pems(pems_dsn, tag_units or {})
        self.pems_tags = {tag for lp in self.pems.values() for tag in lp.link.inputs.values()}
        self._in_bin: dict[str, list[float]] = {}
        self._pending: list[Reading] = []  # readings within live.reorder_s of the newest, not binned yet
        self._newest = -math.inf
        self._closed_to: int | None = None  # end of the last interval closed by flush or seed
        self._seeding = False
        # Readings older than the interval being filled (a backlog behind live readings of the stack's other tags):
        # left to the stored averages, so the live view's averages lack them until the job's next run. Counted, and
        # said once per run of them (one ends with an interval closed without any).
        self.late = 0
        self._late_in_bin = False
        self._late_said = False

    def _start_pems(self, dsn: str | None, tag_units: Mapping[str, str]) -> dict:
        out = {}
        for pol in self.cfg.pollutants:
            link = pol.pems
            if link is None or link.model_id is None:
                continue
            try:
                from emissions.pems_live import LivePems

                if link.registry_db and not dsn:
                    raise ValueError("pems.registry_db is set but the site has no database")
                out[pol.name] = LivePems(link, asset=self.cfg.name, target=pol.name,
                                         dsn=dsn if link.registry_db else None, tag_units=tag_units,
                                         step_s=self.cfg.primary_s, truth_tag=pol.tag, target_unit=pol.unit)
            except Exception as exc:  # the monitor (and the gateway) runs on without this PEMS
                log.error("stack %s %s: live PEMS not started: %s", self.cfg.name, pol.name, exc,
                          extra={"event": "pems_not_started", "asset": self.cfg.name})
        return out

    # -- input -------------------------------------------------------------------------------
    def seed(self, primary: Primary) -> None:
        """Start the running periods from stored primary values (`emissions.store.fetch_primary` of the running day
        up to now): a gateway restarted inside a half-hour or a day otherwise averaged only what it saw after the
        restart. No alert or condition is reported for these intervals (the next live one projects); readings of
        them that come live afterwards are left out (each interval counted once). Only before any reading."""
        if self._bin_t is not None or self.state or self._pending or primary.n == 0:
            return
        step = primary.step_s
        operating = primary.operating_mask()
        self._seeding = True
        try:
            for i in range(primary.n):
                values = {role: v[i:i + 1] for role, v in primary.values.items() if math.isfinite(v[i])}
                subst = {role: m[i:i + 1] for role, m in primary.substituted.items() if m[i]}
                excluded = [name for name, m in primary.excluded.items() if m[i]]
                self.push(primary.t0 + i * step, values, subst, bool(operating[i]), excluded=excluded)
        finally:
            self._seeding = False
        self._closed_to = primary.t0 + primary.n * step
        if primary.operating is not None and (primary.state_unknown is None or not primary.state_unknown[-1]):
            self._operating = bool(primary.operating[-1])
        for name, mask in primary.excluded.items():  # in calibration at the restart: until its next status reading
            if name in self._status_bad:
                self._status_bad[name] = bool(mask[-1])

    def observe(self, readings: Iterable[Reading]) -> None:
        """Feed validated readings, in any order within ``live.reorder_s`` of the newest one seen (the collectors of
        a stack commit apart: the O2 analyser's last readings of a minute can come after the flow's first of the
        next); a reading older than the interval being filled is left to the stored averages."""
        for r in readings:
            if r.tag in self.roles or r.tag in self.pems_tags or r.tag in self.status_tags:
                self._pending.append(r)
                ts = r.time.timestamp()
                if ts > self._newest:
                    self._newest = ts
        self._take_pending(self._newest - self.cfg.live.reorder_s)

    def _take_pending(self, until: float) -> None:
        """Bin the held readings stamped at ``until`` or before, in time order."""
        if not self._pending:
            return
        self._pending.sort(key=lambda r: r.time)
        n = 0
        while n < len(self._pending) and self._pending[n].time.timestamp() <= until:
            n += 1
        ready, self._pending = self._pending[:n], self._pending[n:]
        accept_max = Quality.UNCERTAIN if self.cfg.regulatory.accept_uncertain else Quality.GOOD
        for r in ready:
            self._take(r, accept_max)

    def _take(self, r: Reading, accept_max: int) -> None:
        role = self.roles.get(r.tag)
        pems_input = r.tag in self.pems_tags
        status_of = self.status_tags.get(r.tag)
        ts = r.time.timestamp()
        t = int(ts) // self.step * self.step
        if self._bin_t is None:
            if self._closed_to is not None and t < self._closed_to:
                if status_of is not None:  # a late status still holds from its time on (the next interval)
                    self._status(status_of, r, ts, accept_max, late=True)
                else:
                    self._late(r, self._closed_to)
                return  # an interval already closed (flush): counted once, late readings go to the stored averages
            self._open_bin(t)
        elif t > self._bin_t:
            self._close_bin()
            self._open_bin(t)
        elif t < self._bin_t:
            if status_of is not None:  # a late status still holds from its time on: into this interval
                self._status(status_of, r, ts, accept_max, late=True)
            else:
                self._late(r, self._bin_t)
            return  # late reading: the stored averages will include it, the live view has moved on
        if status_of is not None:
            self._status(status_of, r, ts, accept_max)
            if role is None and not pems_input:
                return
        v = r.numeric
        if role == "state":
            if v is not None:
                self._operating = v not in self.cfg.excluded_states
            return
        if v is None or not math.isfinite(v) or not valid_quality(r.quality, r.flags, accept_max >= Quality.UNCERTAIN):
            return
        if pems_input:
            self._in_bin.setdefault(r.tag, []).append(v)
            if role is None:
                return
        self._bin.setdefault(role, []).append(v)
        if r.flags & Flag.SUBSTITUTED:
            self._bin_subst.add(role)

    def _status(self, pollutants: list[str], r: Reading, ts: float, accept_max: int, late: bool = False) -> None:
        """One analyser status reading (a step signal): in force from ``ts`` until the next one."""
        v = r.numeric
        if v is None or not math.isfinite(v) or not valid_quality(r.quality, r.flags, accept_max >= Quality.UNCERTAIN):
            return  # not valid data: the status before it holds on
        for name in pollutants:
            bad = v not in self._status_ok[name]
            if late:
                if ts > self._status_t[name]:  # newer than any status read so far: it holds now
                    self._status_bad[name], self._status_t[name] = bad, ts
                    if bad:
                        self._bin_excluded.add(name)
                continue
            if bad:
                self._bin_excluded.add(name)
            elif ts == self._bin_t:
                self._bin_start_ok.add(name)
            if ts >= self._status_t[name]:
                self._status_bad[name], self._status_t[name] = bad, ts

    def _late(self, r: Reading, filling: int) -> None:
        """A reading of an interval the live view has closed: left to the stored averages; counted, said once a run."""
        self.late += 1
        self._late_in_bin = True
        if not self._late_said:
            self._late_said = True
            log.warning("stack %s: %s at %s arrived after the live view moved on to %s (a backlog behind the stack's "
                        "other tags): left out of the live running averages and projections until the stored "
                        "averages take it at the job's next run; said once until they stop", self.cfg.name, r.tag,
                        r.time.isoformat(), _ts(filling).isoformat(),
                        extra={"event": "emissions_live_late", "asset": self.cfg.name, "tag": r.tag})

    def _open_bin(self, t: int) -> None:
        self._bin_t = t
        self._bin_start_bad = {name for name, bad in self._status_bad.items() if bad}
        self._bin_start_ok, self._bin_excluded = set(), set()

    def flush(self) -> None:
        """Bin every held reading and close the current primary interval now (e.g. on a timer when readings stop);
        readings of it that come later are left to the stored averages (it is not opened, and counted, again)."""
        self._take_pending(math.inf)
        if self._bin_t is not None:
            self._close_bin()
            self._closed_to = self._bin_t + self.step
            self._bin_t = None

    def _close_bin(self) -> None:
        # Not measuring at any moment of the interval (calibration, maintenance, fault): its value is left out
        # before anything sees it (the averages, and live PEMS, which learns from the analyser's values).
        excluded = self._bin_excluded | (self._bin_start_bad - self._bin_start_ok)
        values = {role: np.array([sum(v) / len(v)]) for role, v in self._bin.items() if role not in excluded}
        subst = {role: np.array([True]) for role in self._bin_subst if role not in excluded}
        if self.pems:
            self._run_pems(self._bin_t, values, set(subst))
        self.push(self._bin_t, values, subst, self._operating, excluded=excluded)
        self._bin, self._bin_subst, self._in_bin = {}, set(), {}
        if not self._late_in_bin:
            self._late_said = False  # a run of late readings is over: the next one is said again
        self._late_in_bin = False

    def _run_pems(self, t: int, values: dict[str, np.ndarray], substituted: set[str] = frozenset()) -> None:
        """Predict the closed interval from the input tags' means (before its analyser value is used), then learn
        from the analyser's value -- a measured one: not from readings substituted upstream (another system's
        estimate is no truth for the interval); the prediction fills the interval's ``pems`` roles unless they were
        read."""
        means = {tag: sum(v) / len(v) for tag, v in self._in_bin.items()}
        for name, lp in self.pems.items():
            try:
                step = lp.push(t, means)
                measured = values.get(name)
                if measured is not None and name not in substituted:
                    lp.observe(t, float(measured[0]))
            except Exception:  # one model's failure must not stop the averages
                log.exception("stack %s %s: live PEMS failed at %d", self.cfg.name, name, t)
                continue
            if step is None:
                continue
            p = step.prediction
            self.on_pems(step)
            if p.details.get("outside_training") and not self.cfg.regulatory.accept_uncertain:
                continue  # its readings are UNCERTAIN (emissions.pems_live): no substitute here, as in the stored job
            values.setdefault(f"pems:{name}", np.array([p.value]))
            if p.lower is not None and lp.link.lower_tag and lp.link.upper_tag:
                values.setdefault(f"pems_lo:{name}", np.array([p.lower]))
                values.setdefault(f"pems_hi:{name}", np.array([p.upper]))

    def push(self, t: int, values: dict[str, np.ndarray], substituted: dict[str, np.ndarray] | None = None,
             operating: bool = True, excluded: Iterable[str] = ()) -> None:
        """One primary interval starting at Unix time ``t``: role -> 1-element arrays of mean values; the
        pollutants in ``excluded`` had an analyser status of "not measuring" (their values are left out)."""
        primary = Primary(t, self.step, 1, dict(values), dict(substituted or {}), np.array([operating]))
        primary.exclude({name: np.array([True]) for name in excluded})
        norm = normalise_stack(self.cfg, primary)
        t_end = t + self.step
        for pol in self.cfg.pollutants:
            n = norm[pol.name]
            value = float(n.ref[0]) if n.valid[0] else None
            rec = self.recent[pol.name]
            if value is not None:
                rec.append((t, value))
            while rec and rec[0][0] < t_end - self.cfg.live.recent_s:
                rec.popleft()
            for rule in self.rules:
                if rule.applies_to(pol):
                    self._update(pol.name, rule, t, value, operating)

    # -- running averages --------------------------------------------------------------------
    def _bounds(self, period: str, t: int) -> tuple[int, int]:
        b = periods.boundaries(period, t, t + 1, self.cfg.timezone)
        i = int(periods.locate(b, np.array([t]))[0])
        return int(b[i]), int(b[i + 1])

    def _update(self, pol: str, rule: Rule, t: int, value: float | None, operating: bool) -> None:
        st = self.state.setdefault((pol, rule.name), _Running())
        if t >= st.end:
            self._end_period(pol, rule, st)
            st.start, st.end = self._bounds(rule.period, t)
            st.sum, st.count, st.done_subs = 0.0, 0, []
            st.sub_start = st.sub_end = 0
        if rule.period == "day":
            sub = self.cfg.regulatory.day_from
            if t >= st.sub_end:
                self._close_sub(st, sub)
                st.sub_start, st.sub_end = self._bounds(sub, t)
        if value is not None and operating:
            st.sum += value
            st.count += 1
        self._project(pol, rule, st, t + self.step)

    def _close_sub(self, st: _Running, sub: str) -> None:
        if st.sub_end == 0:
            return
        n_expected = (st.sub_end - st.sub_start) // self.step
        # Live view: a sub-period counts when it met the validity share of its full length.
        if st.count and st.count >= self.cfg.regulatory.min_valid_share[sub] * n_expected - 1e-9:
            st.done_subs.append(st.sum / st.count)
        st.sum, st.count = 0.0, 0

    def _project(self, pol: str, rule: Rule, st: _Running, now: int) -> None:
        live = self.cfg.live
        elapsed = (now - st.start) / (st.end - st.start)
        rec = self.recent[pol]
        level = sum(v for _, v in rec) / len(rec) if rec else None
        if rule.period == "day":
            cur_rem = max((st.sub_end - now) // self.step, 0)
            subs_left = len(periods.boundaries(self.cfg.regulatory.day_from, now, st.end, self.cfg.timezone)) - 1
            subs_left = max(subs_left - (1 if st.sub_end > now else 0), 0)
            parts = list(st.done_subs)
            running = (sum(parts) + (st.sum / st.count if st.count else 0.0)) / max(len(parts) + bool(st.count), 1)

            def proj(lvl: float) -> float:
                cur = (st.sum + lvl * cur_rem) / (st.count + cur_rem) if st.count + cur_rem else None
                vals = parts + ([cur] if cur is not None else []) + [lvl] * subs_left
                return sum(vals) / len(vals) if vals else float("nan")
        else:
            remaining = max((st.end - now) // self.step, 0)
            running = st.sum / st.count if st.count else float("nan")

            def proj(lvl: float) -> float:
                n = st.count + remaining
                return (st.sum + lvl * remaining) / n if n else float("nan")
        ci = self.cfg.ci_value(self.cfg.pollutant(pol)) if live.subtract_ci else 0.0
        limit = self.cfg.pollutant(pol).elv[rule.elv] * rule.percent / 100.0
        threshold = limit * live.warn_percent / 100.0
        certain = proj(0.0) - ci
        likely = (proj(level) - ci) if (live.projection == "recent" and level is not None) else certain
        self.last.setdefault(pol, {})[rule.name] = {
            "period_start": st.start, "period_end": st.end, "elapsed_share": elapsed, "running": running,
            "projected": likely, "limit": limit, "threshold": threshold}
        if self._seeding:
            return
        judged = not (elapsed < live.min_elapsed_share or (st.count == 0 and not st.done_subs))
        message = (f"{self.cfg.name} {pol}: {rule.period} average projected at {likely:.1f} mg/Nm³ against "
                   f"{threshold:.1f} ({rule.name}), {100 * elapsed:.0f} % of the period elapsed")
        if self.on_condition is not None:
            self.on_condition(asset=self.cfg.name, tag=self.cfg.pollutant(pol).tag, kind=f"emission:{rule.name}",
                              active=judged and likely > threshold, t=_ts(now),
                              severity="critical" if certain > threshold else "warning", message=message,
                              evidence={"rule": rule.name, "period_start": _ts(st.start).isoformat(),
                                        "projected": likely, "certain_minimum": certain, "limit": limit,
                                        "threshold": threshold, "running_average": running})
        if not judged:
            return
        evidence = {"stack": self.cfg.name, "pollutant": pol, "rule": rule.name, "period": rule.period,
                    "period_start": _ts(st.start).isoformat(), "period_end": _ts(st.end).isoformat(),
                    "elapsed_share": round(elapsed, 4), "running_average": running, "projected": likely,
                    "certain_minimum": certain, "recent_level": level, "limit": limit, "threshold": threshold,
                    "projection": live.projection, "unit": "mg/Nm3", "config_sha256": self.sha}
        for severity, value in (("warning", likely), ("critical", certain)):
            active = st.alerts.get(severity)
            if value > threshold and active is None:
                alert = Alert(
                    id=f"emis:{self.cfg.name}:{pol}:{rule.name}:{st.start}:{severity}", asset=self.cfg.name,
                    tag=self.cfg.pollutant(pol).tag, kind="emission_projection", severity=severity,
                    raised_at=_ts(now), message=message, evidence=evidence)
                st.alerts[severity] = alert
                self.on_alert(alert)
            elif active is not None and value < threshold * CLEAR_HYSTERESIS:
                self.on_alert(replace(active, cleared_at=_ts(now), evidence={**active.evidence, "cleared": evidence}))
                del st.alerts[severity]

    def _end_period(self, pol: str, rule: Rule, st: _Running) -> None:
        for alert in st.alerts.values():
            self.on_alert(replace(alert, cleared_at=_ts(st.end), evidence={**alert.evidence, "period_ended": True}))
        st.alerts = {}


class LiveEmissions:
    """Every configured stack's `LiveMonitor` behind one ``observe(readings)`` (for the gateway pipeline)."""

    def __init__(self, stacks: list[StackConfig], on_alert: Callable[[Alert], None] | None = None,
                 on_condition: Callable[..., object] | None = None, on_pems: Callable[..., object] | None = None,
                 pems_dsn: str | None = None, tag_units: Mapping[str, str] | None = None):
        """``on_pems`` receives each live PEMS output (`emissions.pems_live.PemsStep`: the prediction record and
        the readings of the ``pems`` tags); ``pems_dsn`` is the site database, for links with ``registry_db``;
        ``tag_units`` the site's tag registry units (tag -> unit), checked against a PEMS model's input units."""
        self.monitors = {cfg.name: LiveMonitor(cfg, on_alert, on_condition, on_pems, pems_dsn, tag_units)
                         for cfg in stacks}
        self._route: dict[str, list[LiveMonitor]] = {}
        for mon in self.monitors.values():
            for tag in {*mon.roles, *mon.pems_tags, *mon.status_tags}:
                self._route.setdefault(tag, []).append(mon)

    def tags(self) -> set[str]:
        """The tags the stacks read (measurands, conditions, PEMS inputs, analyser status)."""
        return set(self._route)

    def pems_due(self) -> bool:
        """Whether a live PEMS is due to ask the model registry for its champion (`refresh_pems`)."""
        return any(lp.due() for mon in self.monitors.values() for lp in mon.pems.values())

    def refresh_pems(self) -> None:
        """Ask the registry for every live PEMS that is due (blocking I/O: the gateway runs it in a worker
        thread between two `observe` calls)."""
        for mon in self.monitors.values():
            for lp in mon.pems.values():
                lp.maybe_refresh()

    def observe(self, readings: Iterable[Reading]) -> None:
        """Feed a batch of validated readings; readings of tags no stack uses cost one dict lookup."""
        per: dict[int, tuple[LiveMonitor, list[Reading]]] = {}
        for r in readings:
            for mon in self._route.get(r.tag, ()):
                per.setdefault(id(mon), (mon, []))[1].append(r)
        for mon, rs in per.values():
            mon.observe(rs)

    def flush(self) -> None:
        for mon in self.monitors.values():
            mon.flush()

    def seed(self, conn, now: float) -> None:
        """Start every stack's running periods from the stored readings of its running local day up to the minute
        of ``now`` (`LiveMonitor.seed`; blocking database I/O: the gateway runs it in a worker thread at start)."""
        from edge.db.features import detect
        from emissions import store

        features = detect(conn)
        for mon in self.monitors.values():
            cfg = mon.cfg
            end = int(now) // cfg.primary_s * cfg.primary_s
            start = int(periods.boundaries("day", end - 1, end, cfg.timezone)[0])
            if end > start:
                mon.seed(store.fetch_primary(conn, features, cfg, start, end, workers=1))

    @property
    def late(self) -> int:
        """Readings the live views left out for arriving after their interval closed, all stacks."""
        return sum(mon.late for mon in self.monitors.values())

    def status(self) -> dict[str, dict]:
        """Latest running average, projection and limit per stack, pollutant and rule (for the console)."""
        return {name: mon.last for name, mon in self.monitors.items()}
