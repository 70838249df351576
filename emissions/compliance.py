"""Compliance of validated averages with the emission limit values, rule by rule (IED Annex V Part 4, Annex VI Part 8).

Each `config.Rule` compares one period's validated averages with ``percent``% of an ELV:
- ``share`` = 100: every average over the limit is a breach (e.g. LCP: no validated daily average over
  110 % of the ELV);
- ``share`` < 100: within each calendar ``window`` at least ``share``% of the valid averages must be
  within the limit (e.g. LCP: 95 % of the validated hourly averages of a year within 200 %).

"Within" means ``value <= limit``: the directive's "shall not exceed". Every average over a limit is
kept as an `Event` (a breach, or tolerated within a share rule), and a failed window is an event of its
own. A window only partly covered by the evaluated span (a year to date) is marked provisional.
The count of invalid days per year is checked against ``max_invalid_days_per_year`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emissions import periods
from emissions.averages import Averages, StackResult, Status
from emissions.config import Rule, StackConfig

# Relative tolerance when comparing with a limit: 110 % of 200 is 220.00000000000003 in binary floating point.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class Event:
    stack: str
    pollutant: str
    rule: str
    kind: str  # exceedance | window | invalid_days
    period: str
    start: int  # Unix seconds
    end: int
    value: float  # validated average (window: share within the limit, %; invalid_days: count)
    limit: float  # mg/Nm³ (window: required share, %; invalid_days: allowed count)
    elv: float
    breach: bool  # False: over the limit but tolerated by a share rule
    provisional: bool = False

    @property
    def percent_of_elv(self) -> float:
        return 100.0 * self.value / self.elv if self.elv else float("nan")


@dataclass(frozen=True)
class RuleResult:
    """Outcome of one rule for one pollutant in one window (the whole span for share = 100)."""

    stack: str
    pollutant: str
    rule: str
    start: int
    end: int
    n_valid: int
    n_over: int
    limit: float
    required_share: float
    passed: bool
    provisional: bool
    reference: str = ""
    windows: int = 1  # > 1 when a report sums up several windows (e.g. the days of a month)
    failed_windows: int = 0

    @property
    def share_within(self) -> float:
        return 100.0 * (self.n_valid - self.n_over) / self.n_valid if self.n_valid else float("nan")


def summarise(results: list[RuleResult], start: int, end: int) -> RuleResult:
    """Several windows of one rule and pollutant (e.g. the daily windows of a month) as one line."""
    first = results[0]
    return RuleResult(first.stack, first.pollutant, first.rule, start, end, sum(r.n_valid for r in results),
                      sum(r.n_over for r in results), first.limit, first.required_share,
                      all(r.passed for r in results), any(r.provisional for r in results), first.reference,
                      windows=len(results), failed_windows=sum(not r.passed for r in results))


def over_limit(validated: np.ndarray, limit: float) -> np.ndarray:
    """Valid averages strictly above ``limit`` (NaN is never over)."""
    with np.errstate(invalid="ignore"):
        return validated > limit * (1.0 + _REL_TOL)


def _window_bounds(rule: Rule, av: Averages, tz: str) -> np.ndarray:
    if rule.window == "each":
        return np.asarray([av.start[0], av.end[-1]], dtype=np.int64)
    return periods.boundaries(rule.window, int(av.start[0]), int(av.end[-1]), tz)


def evaluate_rule(stack: StackConfig, rule: Rule, pollutant: str, av: Averages,
                  span: tuple[int, int]) -> tuple[list[RuleResult], list[Event]]:
    """Apply one rule to one pollutant's averages; ``span`` is the evaluated [start, end)."""
    elv = stack.pollutant(pollutant).elv[rule.elv]
    limit = elv * rule.percent / 100.0
    results: list[RuleResult] = []
    events: list[Event] = []
    if len(av) == 0:
        return results, events
    over = over_limit(av.validated, limit)
    valid = av.status == Status.VALID
    wb = _window_bounds(rule, av, stack.timezone)
    widx = periods.locate(wb, av.start)
    for w in np.unique(widx[valid]) if valid.any() else []:
        in_w = widx == w
        n_valid = int((valid & in_w).sum())
        n_over = int((over & in_w).sum())
        ws, we = int(wb[w]), int(wb[w + 1])
        provisional = rule.window != "each" and (ws < span[0] or we > span[1])
        within = 100.0 * (n_valid - n_over) / n_valid
        passed = within >= rule.share - 1e-9
        results.append(RuleResult(stack.name, pollutant, rule.name, ws, we, n_valid, n_over, limit, rule.share,
                                  passed, provisional, rule.reference))
        tolerated = rule.share < 100
        for i in np.flatnonzero(over & in_w):
            events.append(Event(stack.name, pollutant, rule.name, "exceedance", av.period, int(av.start[i]),
                                int(av.end[i]), float(av.validated[i]), limit, elv, breach=not tolerated,
                                provisional=provisional))
        if tolerated and not passed:
            events.append(Event(stack.name, pollutant, rule.name, "window", rule.window, ws, we, within,
                                rule.share, elv, breach=True, provisional=provisional))
    return results, events


def invalid_days(stack: StackConfig, pollutant: str, year: Averages,
                 span: tuple[int, int]) -> tuple[list[RuleResult], list[Event]]:
    """Days invalidated per year against ``max_invalid_days_per_year`` (the authority requires measures above it)."""
    allowed = stack.regulatory.max_invalid_days_per_year
    results, events = [], []
    for i in range(len(year)):
        n_bad = int(year.sub_invalid[i])
        ys, ye = int(year.start[i]), int(year.end[i])
        provisional = ys < span[0] or ye > span[1]
        ok = n_bad <= allowed
        results.append(RuleResult(stack.name, pollutant, "invalid_days", ys, ye, int(year.sub_valid[i]) + n_bad,
                                  n_bad, float(allowed), float("nan"), ok, provisional,
                                  "IED Annex V Part 3 10 / Annex VI Part 6 1.2: days invalidated per year"))
        if not ok:
            events.append(Event(stack.name, pollutant, "invalid_days", "invalid_days", "year", ys, ye, float(n_bad),
                                float(allowed), 0.0, breach=True, provisional=provisional))
    return results, events


def evaluate(stack: StackConfig, result: StackResult,
             span: tuple[int, int] | None = None) -> tuple[list[RuleResult], list[Event]]:
    """Every configured rule for every pollutant it applies to, plus the invalid-day count."""
    if span is None:
        n = len(next(iter(result.normalised.values())).valid) if result.normalised else 0
        span = (result.t0, result.t0 + n * result.step_s)
    results: list[RuleResult] = []
    events: list[Event] = []
    for pol in stack.pollutants:
        levels = result.averages[pol.name]
        for rule in stack.compliance:
            if rule.applies_to(pol):
                r, e = evaluate_rule(stack, rule, pol.name, levels[rule.period], span)
                results += r
                events += e
        r, e = invalid_days(stack, pol.name, levels["year"], span)
        results += r
        events += e
    return results, events
