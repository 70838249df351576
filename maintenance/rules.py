"""Threshold and rate-of-change rules from configuration, for what needs no model (DESIGN.md §7).

The site configuration embeds `RuleConfig` as ``[[rules]]`` (sample in ``maintenance/sample.toml``)::

    [[rules]]
    name = "P-101 bearing hot"
    tag = "P-101.bearing_temp"
    kind = "threshold"
    high = 90.0          # active when value >= high (or <= low)
    deadband = 2.0       # inactive again only below high - deadband (hysteresis in the value)
    severity = "warning"

    [[rules]]
    name = "P-101 bearing heating fast"
    tag = "P-101.bearing_temp"
    kind = "rate"
    max_rate_per_min = 2.0   # |change| per minute over the window
    window_s = 300

A rule turns readings into conditions (active or not) for the alert manager, which does the
de-duplication, clearing delay, suppression and escalation. Bad-quality readings are ignored, and so are
the readings `maintenance.quality` calls sensor problems (frozen, the device's own doubt): the rule holds its
state. An out-of-range reading (``[maintenance.quality] out_of_range = "unverified"``) may make a rule active,
one severity lower and marked unverified, never inactive. A rule on an indicator (``<tag>.<stat>``) holds on
windows with less than ``min_share`` of usable readings, and one with out-of-range readings in it counts as an
out-of-range reading. ``use_flagged = true`` judges every reading but bad ones as it comes, at the rule's own
severity (a rule that deliberately watches raw values). The evidence of every alert states the data quality.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.records import Quality, Reading
from maintenance.alerts import CLOCK_STEP_S, AlertChange, AlertManager, dedup_key
from maintenance.bounds import at_or_above, at_or_below
from maintenance.quality import GOOD, OUT_OF_RANGE, QualityConfig, classify_reading, lower, one_reading

log = logging.getLogger(__name__)
# Readings in a row further apart than a rate rule's window before it says its rate is never judged.
RATE_APART_READINGS = 3


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    asset: str | None = Field(None, description="default: the part of the tag before the first '.'")
    kind: Literal["threshold", "rate"]
    high: float | None = None
    low: float | None = None
    deadband: float = Field(0.0, ge=0)
    max_rate_per_min: float | None = Field(None, gt=0)
    window_s: float = Field(300.0, gt=0)
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str = ""
    use_flagged: bool = Field(False, description="judge every reading but bad ones, whatever its validation flags, "
                                                 "at this severity (a rule that deliberately watches raw values)")

    @model_validator(mode="after")
    def _complete(self) -> RuleConfig:
        if self.kind == "threshold":
            if self.high is None and self.low is None:
                raise ValueError(f"rule {self.name!r}: a threshold rule needs high and/or low")
            if self.high is not None and self.low is not None and self.low >= self.high:
                raise ValueError(f"rule {self.name!r}: low ({self.low}) must be below high ({self.high})")
        elif self.max_rate_per_min is None:
            raise ValueError(f"rule {self.name!r}: a rate rule needs max_rate_per_min")
        return self

    @property
    def asset_name(self) -> str:
        return self.asset or self.tag.split(".", 1)[0]


@dataclass(slots=True)
class _State:
    active: bool = False
    history: deque | None = None
    fresh: bool = True  # not evaluated yet since this engine started
    last: datetime | None = None  # time of the newest reading judged: an older one is late and left out
    late_said: bool = False  # a late reading was logged since the last one judged
    late_since: datetime | None = None  # the first of the late readings since the last one judged
    apart: int = 0  # rate rules: readings in a row that came more than window_s after the one before
    apart_said: bool = False  # that was logged (once per rule)


class RuleEngine:
    """Evaluates every configured rule on incoming readings and feeds the alert manager."""

    def __init__(self, rules: Iterable[RuleConfig], manager: AlertManager, quality: QualityConfig | None = None
                 ) -> None:
        self.rules = list(rules)
        self.quality = quality or QualityConfig()
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"rule names must be unique: {sorted(dup)}")
        self.by_tag: dict[str, list[RuleConfig]] = {}
        for r in self.rules:
            self.by_tag.setdefault(r.tag, []).append(r)
        self.manager = manager
        self.late = 0  # readings left out for being older than the newest one their rule judged
        self.state = {r.name: _State(history=deque() if r.kind == "rate" else None) for r in self.rules}
        # Per rule, what every observation passes (rules are frozen): made once, not per reading.
        self._fixed = {r.name: (r.asset_name, f"rule:{r.name}", r.model_dump(),
                                dedup_key(r.asset_name, r.tag, f"rule:{r.name}")) for r in self.rules}

    def update(self, readings: Iterable[Reading], judge: Callable[[Reading], tuple[int, dict] | None] | None = None
               ) -> list[AlertChange]:
        """Alert changes of the rules on these readings. ``judge(reading)``: the `maintenance.quality` class and
        `data_quality` of a reading that is a window's statistic (None, or no judge: from its own flags)."""
        out: list[AlertChange] = []
        unverified_ok = self.quality.out_of_range == "unverified"
        for rd in readings:
            rules = self.by_tag.get(rd.tag)
            if not rules:
                continue
            v = rd.numeric
            if v is None or rd.quality == Quality.BAD or not math.isfinite(v):
                continue
            judged = judge(rd) if judge is not None else None
            cls, dq = judged if judged is not None else (classify_reading(rd, v, self.quality.out_of_range), None)
            for rule in rules:
                c = GOOD if rule.use_flagged else cls
                if c != GOOD and not (c == OUT_OF_RANGE and unverified_ok):
                    continue  # a sensor problem, or too few usable readings: the rule holds (maintenance.quality)
                asset, kind, dumped, key = self._fixed[rule.name]
                st = self.state[rule.name]
                if st.last is not None and rd.time < st.last:
                    st.late_since = st.late_since or rd.time
                    if (rd.time - st.late_since).total_seconds() < CLOCK_STEP_S:
                        # Late (a redelivered MQTT message, a backlog behind newer readings): judged now it moved the
                        # deadband state and the rate history (appended out of order) for the readings after it.
                        self.late += 1
                        if not st.late_said:  # once per stretch
                            st.late_said = True
                            log.warning("rule %r: a reading of %s at %s is older than the newest one judged (%s) and "
                                        "is left out (a redelivery or a backlog; if every reading is for %.0f s of "
                                        "their time, the source's clock was set back and its new time is taken)",
                                        rule.name, rd.tag, rd.time.isoformat(), st.last.isoformat(), CLOCK_STEP_S,
                                        extra={"event": "rule_reading_late", "asset": asset})
                        continue
                    # Late for CLOCK_STEP_S of their own time: the source's clock went back (a device at a DST change,
                    # a corrected clock). Held until the old time came again, the rule was silent for that long.
                    log.warning("rule %r: the readings of %s stayed older than the newest one judged (%s) for %.0f s "
                                "of their time, now at %s: the source's clock was set back; its new time is taken",
                                rule.name, rd.tag, st.last.isoformat(), CLOCK_STEP_S, rd.time.isoformat(),
                                extra={"event": "clock_set_back", "asset": asset})
                    if st.history is not None:
                        st.history.clear()  # a rate over a step in the clock means nothing
                    self.manager.guard.reset(key, rd.time)  # it saw none of the late ones: no stretch of its own
                    st.late_since = None
                if st.fresh:
                    # A rule whose alert is open at its first reading (loaded after a restart) starts active, so
                    # the deadband applies: a value inside it cleared the alert, and the next one above `high`
                    # raised a second alert (a flap per restart).
                    st.fresh = False
                    st.active = rule.kind == "threshold" and key in self.manager.open
                # An out-of-range reading may be a broken loop: it may raise (unverified), never clear, and leaves
                # no trace in the rule's state (hysteresis, rate history) for the good readings after it.
                unverified = c == OUT_OF_RANGE
                if rule.kind == "rate" and not unverified and st.last is not None:
                    self._apart(rule, st, rd, asset)
                active, detail = self._evaluate(rule, st, rd, v, trial=unverified)
                if not unverified:  # an out-of-range reading leaves no trace in the rule's state
                    st.last, st.late_said, st.late_since = rd.time, False, None
                if unverified and not active:
                    continue
                msg, evidence, sev = "", None, rule.severity
                if active:  # message and evidence matter only to an active condition (most readings are not)
                    msg = rule.message or f"{rule.name}: {rd.tag} = {v:g}" + (f" ({detail})" if detail else "")
                    quality = {**(dq if dq is not None else one_reading(cls, rd)), "unverified": unverified}
                    if unverified:
                        sev = lower(sev)
                        msg += "; unverified: out-of-range readings (a sensor fault, or a real value beyond the " \
                               "sensor's range): check the sensor"
                    evidence = {"rule": dumped, "readings": [{"tag": rd.tag, "time": rd.time, "value": v}],
                                "detail": detail, "data_quality": quality}
                out.extend(self.manager.observe(asset=asset, tag=rule.tag, kind=kind, active=active, t=rd.time,
                                                severity=sev, message=msg, evidence=evidence))
        return out

    @staticmethod
    def _apart(rule: RuleConfig, st: _State, rd: Reading, asset: str) -> None:
        """A rate rule judges the change over its window from readings at least half a window apart: a tag read
        less often than every ``window_s`` (a slow poll, a historian feed) leaves one reading in each window and its
        rate is never judged. Said once per rule, after a few such readings in a row (a gap now and then is no
        pattern), rather than a rule that watches nothing without a word."""
        st.apart = st.apart + 1 if (rd.time - st.last).total_seconds() > rule.window_s else 0
        if st.apart >= RATE_APART_READINGS and not st.apart_said:
            st.apart_said = True
            log.warning("rule %r: the last %d readings of %s came more than window_s (%g s) apart (the latest %.0f s "
                        "after the one before): its rate of change is never judged; make window_s at least twice the "
                        "tag's sampling interval", rule.name, st.apart, rd.tag, rule.window_s,
                        (rd.time - st.last).total_seconds(), extra={"event": "rule_rate_unjudged", "asset": asset})

    @staticmethod
    def _evaluate(rule: RuleConfig, st: _State, rd: Reading, v: float, trial: bool = False) -> tuple[bool, str]:
        """Whether the rule is active with this reading; ``trial``: without changing its state."""
        if rule.kind == "threshold":
            if st.active:  # hysteresis in the value: leave the active state only past the deadband
                # Inclusive as the entry is: with the default deadband 0 a value sitting exactly on `high` (an
                # integer transmitter at 90) entered at one reading and left at the next, a flap every two readings
                # (an "updated" change, an alert_events row and an MQTT notification each: 299 in 10 min at 1 Hz).
                hi = rule.high is not None and at_or_above(v, rule.high - rule.deadband)
                lo = rule.low is not None and at_or_below(v, rule.low + rule.deadband)
            else:
                # Within a relative millionth (`bounds`): a PLC's float32 2.8 (2.7999999523) never reached high = 2.8.
                hi = rule.high is not None and at_or_above(v, rule.high)
                lo = rule.low is not None and at_or_below(v, rule.low)
            if not trial:
                st.active = hi or lo
            return hi or lo, (f">= {rule.high:g}" if hi else f"<= {rule.low:g}" if lo else "")
        h = st.history
        t = rd.time.timestamp()
        while h and h[0][0] < t - rule.window_s:
            h.popleft()
        if not trial:
            h.append((t, v))
        if not h or t - h[0][0] < rule.window_s / 2 or (not trial and len(h) < 2):
            return st.active and not trial, ""  # not enough history to judge a rate
        rate = (v - h[0][1]) / (t - h[0][0]) * 60.0
        active = abs(rate) > rule.max_rate_per_min
        if not trial:
            st.active = active
        return active, f"rate {rate:+.3g}/min"
