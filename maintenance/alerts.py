"""Alert lifecycle without I/O: raised -> acknowledged -> cleared (DESIGN.md §7).

Every detector (ISO zone tracker, rules, anomaly scorer, RUL) reports a *condition* per
``(asset, tag, kind)``: active or not, with a severity, message and evidence. `AlertManager` turns
those observations into alert changes:

- **debounce**: a condition must stay active ``raise_after_s`` before an alert is raised;
- **de-duplication**: while an alert for a key is open, further activity updates it (occurrence
  count, last seen, severity only goes up) instead of raising another one;
- **hysteresis**: an alert clears only after its condition has been inactive ``clear_after_s``
  continuously, so a flapping signal makes one alert, not one per flap;
- **re-opening**: a condition that comes back less than ``reopen_within_s`` after the manager cleared its alert
  re-opens that alert (``reopened``: same id, history, one more occurrence, severity never lower, the
  acknowledgement kept) instead of raising a new one: a bearing crossing its threshold every 20 minutes, slower
  than the hysteresis, is one alert and one incident at the pager, not a new page per crossing all night. An
  alert cleared by a person, or one whose asset had a maintenance window since, is not re-opened (the problem
  was declared over, or the machine was worked on: its return is news);
- **suppression**: conditions on an asset inside a planned maintenance window raise nothing
  (they are reported as a ``suppressed`` change for the log, once per condition and window, not per
  sample); open alerts are kept but do not escalate while the window lasts (the crew is on the machine); a
  condition still active at the window's end is raised by `tick` when its detector has not observed it within
  `release_after_s` of the end (a tag reported by exception sends nothing while its value holds);
- **escalation**: an alert left unacknowledged ``escalate_after_s`` goes one severity up
  (``info`` -> ``warning`` -> ``critical``), once per period, until acknowledged. The time of the last
  escalation is stored, so a restart does not escalate again at once.

The changes (`AlertChange`) go to the store (maintenance/store.py) and the notifiers.
Acknowledging and clearing by hand happen in the store (the console does it there too);
`acknowledged` / `cleared_by_hand` keep the manager in step.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from edge.records import Alert

log = logging.getLogger(__name__)

# How far along their own clock the observations of a condition may go on being late (older than its newest one)
# before they are taken as the source's clock set back: a redelivery or a backlog spans seconds, a device's clock at a
# DST change or a corrected clock goes back for good (held until the old time came again, the condition was silent
# for as long as the clock went back: an hour).
CLOCK_STEP_S = 300.0


class LateGuard:
    """Which observations are late, by key: older than the newest one seen (a redelivered MQTT message, a backlog
    behind newer readings) and left out, unless they go on being late for `CLOCK_STEP_S` of their own time: then the
    source's clock went back, which is logged once (``clock_set_back``) and its new time taken."""

    def __init__(self, what: str = "condition") -> None:
        self.what = what
        self.newest: dict[str, datetime] = {}
        self.late = 0  # observations left out
        self.steps = 0  # clocks taken as set back
        self._late_since: dict[str, datetime] = {}

    def seen(self, key: str, t: datetime | None) -> None:
        """``key`` was observed at ``t`` (e.g. before a restart): observations older than that are late."""
        if t is not None and (key not in self.newest or t > self.newest[key]):
            self.newest[key] = t

    def reset(self, key: str, t: datetime) -> None:
        """``key``'s clock was found set back elsewhere (a rule before its alert): ``t`` is its newest time now."""
        self.newest[key] = t
        self._late_since.pop(key, None)

    def admit(self, key: str, t: datetime) -> str:
        """"ok" (and ``t`` is the newest), "late" (leave it out), or "step" (the clock went back: taken as "ok")."""
        newest = self.newest.get(key)
        verdict = "ok"
        if newest is not None and t < newest:
            first = self._late_since.setdefault(key, t)
            if (t - first).total_seconds() < CLOCK_STEP_S:
                self.late += 1
                return "late"
            self.steps += 1
            verdict = "step"
            log.warning("%s %s: every observation for %.0f s of its own time was older than its newest (%s), now at "
                        "%s: the source's clock was set back; its new time is taken", self.what, key, CLOCK_STEP_S,
                        newest.isoformat(), t.isoformat(), extra={"event": "clock_set_back"})
        self._late_since.pop(key, None)
        self.newest[key] = t
        return verdict

SEVERITIES = ("info", "warning", "critical")


def worse(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


class AlertPolicy(BaseModel):
    """Timing of the lifecycle (``[maintenance.alerts]`` in the site configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raise_after_s: float = Field(0.0, ge=0, description="condition active this long before an alert is raised")
    clear_after_s: float = Field(60.0, ge=0, description="condition inactive this long before the alert clears")
    escalate_after_s: float | None = Field(3600.0, gt=0, description="unacknowledged this long: one severity up")
    reopen_within_s: float = Field(3600.0, ge=0, description="a condition back this soon after its alert cleared "
                                                             "re-opens that alert (0: raises a new one)")


@dataclass(frozen=True, slots=True)
class Window:
    """A planned maintenance window: no alerts for ``asset`` (``"*"``: every asset) in [start, end)."""

    asset: str
    start: datetime
    end: datetime
    reason: str = ""
    tag: str | None = None
    id: int | None = None  # maintenance_windows.id (m0202); None for a window not from the database

    def covers(self, asset: str, tag: str | None, t: datetime) -> bool:
        return (self.asset in ("*", asset) and (self.tag is None or self.tag == tag)
                and self.start <= t < self.end)


@dataclass(slots=True)
class AlertChange:
    """What happened to an alert: raised, updated, escalated, cleared, reopened, or suppressed (no alert row)."""

    event: str
    alert: Alert
    key: str
    occurrences: int = 1
    last_seen: datetime | None = None
    escalation_level: int = 0
    detail: dict = field(default_factory=dict)
    escalated_at: datetime | None = None


def dedup_key(asset: str, tag: str | None, kind: str) -> str:
    return f"{asset}|{tag or ''}|{kind}"


@dataclass(slots=True)
class _Open:
    alert: Alert
    occurrences: int
    last_seen: datetime
    inactive_since: datetime | None = None
    escalation_level: int = 0
    escalated_at: datetime | None = None
    reopened_at: datetime | None = None  # when this manager last re-opened it (`AlertManager.reopened_since`)
    # The worst severity the condition itself was observed at while open (the alert's may be higher: escalations);
    # None: not known (an alert loaded after a restart, until its next observation).
    condition: str | None = None


class AlertManager:
    """Open alerts per key, in memory; `load` them from the store after a restart."""

    def __init__(self, policy: AlertPolicy | None = None, windows: list[Window] | None = None) -> None:
        self.policy = policy or AlertPolicy()
        self.windows: list[Window] = list(windows or [])
        self.open: dict[str, _Open] = {}
        self.pending: dict[str, datetime] = {}  # key -> since when active (debounce)
        # key -> the window its suppression was last reported for: a condition active through an 8-hour overhaul
        # is one ``suppressed`` event, not one per sample (each is an alert_events row through the spool).
        self.suppressing: dict[str, Window] = {}
        # key -> (alert the manager cleared, when): re-opened if its condition comes back within reopen_within_s.
        self.recent: dict[str, tuple[_Open, datetime]] = {}
        # key -> the newest time the condition was observed at. An older observation is a reading that came late (an
        # MQTT message stored but not acknowledged before a crash or a lost connection is sent again by the broker,
        # after newer ones): it counted a flap and notified "updated" for an alert whose condition had already gone,
        # and after the clear raised (and paged) a new alert for a moment the cleared one covered.
        self.guard = LateGuard()
        self.newest = self.guard.newest
        # key -> (the latest active observation a window suppressed, since when it has been active): raised by
        # `tick` once no window covers it, unless a newer observation said otherwise. Left to the next observation,
        # a tag reported by exception (publish on change, an OPC UA deadband) holding its value past the window's
        # end raised nothing until the value changed, hours later or never.
        self.held: dict[str, tuple[dict, datetime]] = {}
        # How long after a window's end `tick` waits for the detector's own observation before raising a held
        # condition as last seen: a zone is judged at each indicator window, which closes up to a hop after the
        # readings' clock; raised at once from the last observation inside the window, a machine fine after its
        # overhaul paged zone D and cleared a minute later. `MaintenanceLive` sets its window plus hop.
        self.release_after_s = 60.0
        # The caller's clock (`advance`, `tick`): an alert raised or re-opened from readings older than it (a backlog
        # after an outage) starts its escalation clock here, not at its readings' time; nobody could acknowledge it
        # before it came.
        self.clock: datetime | None = None

    def load(self, alerts: list[tuple[Alert, int, datetime, int, datetime | None]]) -> None:
        """Resume open alerts: (alert, occurrences, last_seen, escalation_level, escalated_at) from the store."""
        for a, n, seen, level, escalated_at in alerts:
            key = dedup_key(a.asset, a.tag, a.kind)
            cur = self.open.get(key)
            if (cur is not None and cur.alert.id == a.id and a.acknowledged_at is None
                    and cur.escalation_level > level):
                # This process escalated it further than the row says: the change is still on its way to the
                # database (the spool after an outage). Taking the row's level escalated it again at once.
                continue
            self.open[key] = _Open(a, n, seen, escalation_level=level, escalated_at=escalated_at)
            self._seen(key, seen)

    def load_recent(self, alerts: list[tuple[Alert, int, datetime, int, datetime | None]]) -> None:
        """Resume alerts the manager cleared lately (`maintenance.store.recently_cleared`), so that a condition
        coming back after a restart re-opens its alert as it would have without the restart."""
        for a, n, seen, level, escalated_at in alerts:
            key = dedup_key(a.asset, a.tag, a.kind)
            if key not in self.open and a.cleared_at is not None:
                self.recent[key] = (_Open(a, n, seen, escalation_level=level, escalated_at=escalated_at),
                                    a.cleared_at)
                self._seen(key, max(seen, a.cleared_at) if seen is not None else a.cleared_at)

    def load_held(self, held: dict[str, tuple[dict, datetime]]) -> None:
        """Resume the conditions a window held before a restart (`maintenance.alert_state.held`), unless an alert
        of theirs is open or one is held already (a newer observation of this process)."""
        for key, (kw, since) in held.items():
            if key not in self.open and key not in self.held:
                self.held[key] = ({"message": "", "evidence": None} | kw, since)

    def _seen(self, key: str, t: datetime | None) -> None:
        """The condition of ``key`` was observed at ``t`` (by this process, or before a restart: a loaded alert's
        last active time, a clear's time): observations older than that are late."""
        self.guard.seen(key, t)

    @property
    def late(self) -> int:
        """Observations left out for being older than the newest of their condition."""
        return self.guard.late

    def suppressed(self, asset: str, tag: str | None, t: datetime) -> Window | None:
        return next((w for w in self.windows if w.covers(asset, tag, t)), None)

    def observe(self, *, asset: str, tag: str | None, kind: str, active: bool, t: datetime,
                severity: str = "warning", message: str = "", evidence: dict | None = None) -> list[AlertChange]:
        """One observation of a condition; returns the alert changes it causes (often none)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
        key = dedup_key(asset, tag, kind)
        if self.guard.admit(key, t) == "late":
            # Late: what the condition was then is already accounted for by the newer observations (the readings
            # themselves are stored all the same). Equal times pass: a duplicate gives the same verdict again.
            return []
        cur = self.open.get(key)
        if not active:
            self.pending.pop(key, None)
            self.held.pop(key, None)
            if cur is None:
                return []
            if cur.inactive_since is None:
                cur.inactive_since = t
            if (t - cur.inactive_since).total_seconds() >= self.policy.clear_after_s:
                del self.open[key]
                a = replace(cur.alert, cleared_at=t)
                if self.policy.reopen_within_s > 0:
                    cur.alert = a
                    self.recent[key] = (cur, t)
                return [AlertChange("cleared", a, key, cur.occurrences, cur.last_seen, cur.escalation_level)]
            return []
        if cur is not None:
            # De-duplication: the open alert absorbs the activity. A new occurrence is counted when the
            # condition comes back after having gone inactive (a flap), not on every active sample.
            flapped = cur.inactive_since is not None
            cur.inactive_since = None
            cur.last_seen = t
            changes: list[AlertChange] = []
            new_sev = worse(cur.alert.severity, severity)
            # The condition got worse than it was while the alert's severity had risen already (an escalation):
            # a warning escalated to critical and then in zone D kept the message and evidence of zone C, and
            # nobody heard of zone D.
            was = cur.condition
            got_worse = was is not None and worse(was, severity) != was
            cur.condition = severity if was is None else worse(was, severity)
            if flapped or new_sev != cur.alert.severity or got_worse:
                cur.occurrences += int(flapped)
                # A worse condition (zone C -> D) is news for receivers of escalations too (notify.wanted)
                detail = ({"severity_was": cur.alert.severity} if new_sev != cur.alert.severity
                          else {"condition_was": was} if got_worse else {})
                cur.alert = replace(cur.alert, severity=new_sev, evidence=evidence or cur.alert.evidence,
                                    message=message or cur.alert.message)
                changes.append(AlertChange("updated", cur.alert, key, cur.occurrences, t, cur.escalation_level,
                                           detail=detail))
            return changes
        window = self.suppressed(asset, tag, t)
        if window is not None:
            since = self.held[key][1] if key in self.held else t
            self.held[key] = ({"asset": asset, "tag": tag, "kind": kind, "severity": severity, "message": message,
                               "evidence": evidence}, since)
            if self.suppressing.get(key) == window:
                return []
            self.suppressing[key] = window
            a = Alert("", asset, tag, kind, severity, t, message, evidence=evidence or {})
            # The window's id: which planned work hid the condition, traceable to who planned it (the reason is
            # free text that two windows may share).
            detail = {"window": window.reason} | ({"window_id": window.id} if window.id is not None else {})
            return [AlertChange("suppressed", a, key, last_seen=t, detail=detail)]
        self.suppressing.pop(key, None)
        self.held.pop(key, None)
        since = self.pending.setdefault(key, t)
        if (t - since).total_seconds() < self.policy.raise_after_s:
            return []
        del self.pending[key]
        reopened = self._reopen(key, t, severity, message, evidence)
        if reopened is not None:
            return [reopened]
        a = Alert(str(uuid.uuid4()), asset, tag, kind, severity, t, message, evidence=evidence or {})
        self.open[key] = _Open(a, 1, t, condition=severity, escalated_at=self._known(t))
        return [AlertChange("raised", a, key, 1, t)]

    def _reopen(self, key: str, t: datetime, severity: str, message: str, evidence: dict | None) -> AlertChange | None:
        """Re-open the alert of ``key`` cleared less than ``reopen_within_s`` before ``t``; None when there is none."""
        got = self.recent.pop(key, None)
        if got is None:
            return None
        o, cleared_at = got
        if not 0 <= (t - cleared_at).total_seconds() < self.policy.reopen_within_s:
            return None
        a = o.alert
        if any(w.asset in ("*", a.asset) and (w.tag is None or w.tag == a.tag) and w.start <= t and w.end > cleared_at
               for w in self.windows):
            # A maintenance window since the clear (started after it, or still running at it: the alert cleared while
            # the crew worked on the machine, often because of that work): its return is news. Only windows starting
            # after the clear counted, so a fault back after an overhaul re-opened the old, acknowledged alert.
            return None
        new_sev = worse(o.alert.severity, severity)
        detail = {"cleared_at": cleared_at}
        if new_sev != o.alert.severity:
            detail["severity_was"] = o.alert.severity
        o.alert = replace(o.alert, cleared_at=None, severity=new_sev, evidence=evidence or o.alert.evidence,
                          message=message or o.alert.message)
        o.occurrences += 1
        o.last_seen, o.inactive_since, o.reopened_at, o.condition = t, None, t, severity
        if o.alert.acknowledged_at is None:
            # The escalation clock starts again: the crew gets escalate_after_s for the alert's return, which was
            # no alert of anyone's while it was cleared (`maintenance.store.open_alerts` does so after a restart).
            o.escalated_at = self._known(t) or t
        self.open[key] = o
        return AlertChange("reopened", o.alert, key, o.occurrences, t, o.escalation_level, detail=detail)

    def advance(self, now: datetime) -> None:
        """The caller's clock (the data's, never ahead of receipt) before it hands over observations; only forward."""
        if self.clock is None or now > self.clock:
            self.clock = now

    def _known(self, t: datetime) -> datetime | None:
        """When the escalation clock of an alert raised from an observation at ``t`` starts, if not at ``t``: the clock,
        when the observation is behind it. An hour of backlog after an outage raised its alert "unacknowledged for an
        hour" and escalated it at once (raised, escalated, cleared in one breath, for a condition nobody could have
        seen); the crew gets `escalate_after_s` from when the gateway learned of it."""
        return self.clock if self.clock is not None and self.clock > t else None

    def _forget_recent(self, now: datetime) -> None:
        within = timedelta(seconds=self.policy.reopen_within_s)
        for key in [k for k, (_, at) in self.recent.items() if now - at >= within]:
            del self.recent[key]

    def tick(self, now: datetime, data: datetime | None = None) -> list[AlertChange]:
        """Raise the conditions still active when the window that suppressed them is over (`held`), escalate open
        alerts nobody acknowledged in time, and forget cleared ones too old to re-open. ``data``: the newest time of
        the readings just observed, when behind ``now`` (a backlog): windows are over for `held` conditions by it."""
        self.advance(now)
        self._forget_recent(now)
        # A backlog's conditions are judged by its readings' time: by the clock (hours on), a condition the backlog
        # showed inside a maintenance window was out of it at once and raised at the clock's time, paging for
        # what the same backlog's next readings showed gone inside the window (and cleared before it was raised).
        out = self._release(now if data is None or data > now else data)
        after = self.policy.escalate_after_s
        if after is None:
            return out
        for key, o in self.open.items():
            if o.alert.acknowledged_at is not None or self.suppressed(o.alert.asset, o.alert.tag, now):
                continue
            since = o.escalated_at or o.alert.raised_at
            if now - since >= timedelta(seconds=after):
                o.escalation_level += 1
                o.escalated_at = now
                up = SEVERITIES[min(SEVERITIES.index(o.alert.severity) + 1, len(SEVERITIES) - 1)]
                o.alert = replace(o.alert, severity=up)
                out.append(AlertChange("escalated", o.alert, key, o.occurrences, o.last_seen, o.escalation_level,
                                       detail={"unacknowledged_s": (now - o.alert.raised_at).total_seconds()},
                                       escalated_at=now))
        return out

    def _release(self, now: datetime) -> list[AlertChange]:
        """The `held` conditions no window has covered for `release_after_s` before ``now`` and that nothing observed
        since (an observation after the window's end takes them out of `held`): observed again as last seen, at
        ``now`` (the debounce counted from when they became active inside the window)."""
        out: list[AlertChange] = []
        grace = timedelta(seconds=self.release_after_s)
        for key, (kw, since) in list(self.held.items()):
            if (self.suppressed(kw["asset"], kw["tag"], now) is not None
                    or self.suppressed(kw["asset"], kw["tag"], now - grace) is not None):
                continue
            del self.held[key]
            newest = self.newest.get(key)
            self.pending.setdefault(key, since)
            out += self.observe(**kw, active=True, t=max(now, newest) if newest is not None else now)
            if newest is not None:  # a detector's own observations up to `now` are not late for this one
                self.newest[key] = newest
            if key not in self.open:  # still in its debounce (raise_after_s): observed again at the next tick
                self.held[key] = (kw, since)
        return out

    def acknowledged(self, alert_id: str, by: str, at: datetime, *, severity: str | None = None,
                     level: int | None = None, escalated_at: datetime | None = None) -> None:
        """Keep the manager in step with an acknowledgement made in the store (stops escalation). ``severity``,
        ``level`` and ``escalated_at``: the stored row's, which did not take an escalation made here after the
        acknowledgement and before this call (`maintenance.store.apply_changes`). An alert this manager cleared
        lately (`recent`) takes it too: acknowledged just before the clear, it re-opens acknowledged."""
        for o in [*self.open.values(), *(o for o, _ in self.recent.values())]:
            if o.alert.id == alert_id:
                o.alert = replace(o.alert, acknowledged_at=at, acknowledged_by=by,
                                  severity=severity or o.alert.severity)
                if level is not None:
                    o.escalation_level, o.escalated_at = level, escalated_at

    def reopened_since(self, alert_id: str, cleared_at: datetime) -> bool:
        """Whether this manager re-opened ``alert_id`` after a clear at ``cleared_at``: a stored row still cleared
        then is the clear the re-opening undid, its write still on the way (the spool), not a clear to follow."""
        return any(o.alert.id == alert_id and o.reopened_at is not None and cleared_at <= o.reopened_at
                   for o in self.open.values())

    def cleared_by_hand(self, alert_id: str) -> None:
        """Forget an alert cleared by a person; the condition, if still active, raises a new one."""
        for key in [k for k, o in self.open.items() if o.alert.id == alert_id]:
            del self.open[key]
