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
de-duplication, clearing delay, suppression and escalation. Bad-quality readings are ignored.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.records import Quality, Reading
from maintenance.alerts import AlertChange, AlertManager, dedup_key


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


class RuleEngine:
    """Evaluates every configured rule on incoming readings and feeds the alert manager."""

    def __init__(self, rules: Iterable[RuleConfig], manager: AlertManager) -> None:
        self.rules = list(rules)
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"rule names must be unique: {sorted(dup)}")
        self.by_tag: dict[str, list[RuleConfig]] = {}
        for r in self.rules:
            self.by_tag.setdefault(r.tag, []).append(r)
        self.manager = manager
        self.state = {r.name: _State(history=deque() if r.kind == "rate" else None) for r in self.rules}
        # Per rule, what every observation passes (rules are frozen): made once, not per reading.
        self._fixed = {r.name: (r.asset_name, f"rule:{r.name}", r.model_dump(),
                                dedup_key(r.asset_name, r.tag, f"rule:{r.name}")) for r in self.rules}

    def update(self, readings: Iterable[Reading]) -> list[AlertChange]:
        out: list[AlertChange] = []
        for rd in readings:
            rules = self.by_tag.get(rd.tag)
            if not rules:
                continue
            v = rd.numeric
            if v is None or rd.quality == Quality.BAD or not math.isfinite(v):
                continue
            for rule in rules:
                asset, kind, dumped, key = self._fixed[rule.name]
                st = self.state[rule.name]
                if st.fresh:
                    # A rule whose alert is open at its first reading (loaded after a restart) starts active, so
                    # the deadband applies: a value inside it cleared the alert, and the next one above `high`
                    # raised a second alert (a flap per restart).
                    st.fresh = False
                    st.active = rule.kind == "threshold" and key in self.manager.open
                active, detail = self._evaluate(rule, st, rd, v)
                msg, evidence = "", None
                if active:  # message and evidence matter only to an active condition (most readings are not)
                    msg = rule.message or f"{rule.name}: {rd.tag} = {v:g}" + (f" ({detail})" if detail else "")
                    evidence = {"rule": dumped, "readings": [{"tag": rd.tag, "time": rd.time, "value": v}],
                                "detail": detail}
                out.extend(self.manager.observe(asset=asset, tag=rule.tag, kind=kind, active=active, t=rd.time,
                                                severity=rule.severity, message=msg, evidence=evidence))
        return out

    @staticmethod
    def _evaluate(rule: RuleConfig, st: _State, rd: Reading, v: float) -> tuple[bool, str]:
        if rule.kind == "threshold":
            if st.active:  # hysteresis in the value: leave the active state only past the deadband
                hi = rule.high is not None and v > rule.high - rule.deadband
                lo = rule.low is not None and v < rule.low + rule.deadband
            else:
                hi = rule.high is not None and v >= rule.high
                lo = rule.low is not None and v <= rule.low
            st.active = hi or lo
            return st.active, (f">= {rule.high:g}" if hi else f"<= {rule.low:g}" if lo else "")
        h = st.history
        t = rd.time.timestamp()
        h.append((t, v))
        while h and h[0][0] < t - rule.window_s:
            h.popleft()
        if len(h) < 2 or h[-1][0] - h[0][0] < rule.window_s / 2:
            return st.active, ""  # not enough history to judge a rate
        rate = (h[-1][1] - h[0][1]) / (h[-1][0] - h[0][0]) * 60.0
        st.active = abs(rate) > rule.max_rate_per_min
        return st.active, f"rate {rate:+.3g}/min"
