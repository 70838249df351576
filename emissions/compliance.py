"""Compliance of validated averages with the emission limit values, rule by rule (IED Annex V Part 4, Annex VI Part 8).

Each `config.Rule` compares one period's validated averages with ``percent``% of an ELV:
- ``share`` = 100: every average over the limit is a breach (e.g. LCP: no validated daily average over
  110 % of the ELV);
- ``share`` < 100: within each calendar ``window`` at least ``share``% of the valid averages must be
  within the limit (e.g. LCP: 95 % of the validated hourly averages of a year within 200 %).

"Within" means ``value <= limit``: the directive's "shall not exceed". Every average over a limit is
kept as an `Event` (a breach, or tolerated within a share rule), and a failed window is an event of its
own. The directive judges completed averages: an average whose period is not inside the evaluated span
(the running day or month of a job that computes up to the last whole hour) and a window only partly
covered by it (a year to date) are provisional, and a provisional event is never a breach
(``breach = False``); the final judgement is made when a computation covers the whole period. A window or
period that started before the span (a month's run and its year) is not judged at all (`evaluate`).
Rules sharing a ``group`` are alternatives (`evaluate_group`): the group passes when any member passes.
The count of invalid days per year is checked against ``max_invalid_days_per_year`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from emissions import periods
from emissions.averages import Averages, StackResult, Status
from emissions.config import Pollutant, Rule, StackConfig

# Relative tolerance when comparing with a limit: 110 % of 200 is 220.00000000000003 in binary floating point.
_REL_TOL = 1e-9


@dataclass(frozen=True)
class Event:
    stack: str
    pollutant: str
    rule: str
    kind: str  # exceedance | window | invalid_days | pems_deviation (job.pems_events)
    period: str
    start: int  # Unix seconds
    end: int
    value: float  # validated average (window: share within the limit, %; invalid_days: count)
    limit: float  # mg/Nm³ (window: required share, %; invalid_days: allowed count)
    elv: float
    breach: bool  # a final breach; False: tolerated by a share rule or an alternative, or provisional
    provisional: bool = False  # the period (or window) is not complete in the evaluated span

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
    members: tuple[str, ...] = ()  # a group of alternatives: its member rules
    decided_by: str = ""  # a group: the member that passed ("" when none did)

    @property
    def share_within(self) -> float:
        return 100.0 * (self.n_valid - self.n_over) / self.n_valid if self.n_valid else float("nan")


def summarise(results: list[RuleResult], start: int, end: int) -> RuleResult:
    """Several windows of one rule and pollutant (e.g. the daily windows of a month) as one line."""
    first = results[0]
    return RuleResult(first.stack, first.pollutant, first.rule, start, end, sum(r.n_valid for r in results),
                      sum(r.n_over for r in results), first.limit, first.required_share,
                      all(r.passed for r in results), any(r.provisional for r in results),
                      f"alternatives {' | '.join(first.members)}" if first.members else first.reference,
                      windows=len(results), failed_windows=sum(not r.passed for r in results), members=first.members,
                      decided_by=", ".join(dict.fromkeys(r.decided_by for r in results if r.decided_by)))


def over_limit(validated: np.ndarray, limit: float) -> np.ndarray:
    """Valid averages strictly above ``limit`` (NaN is never over)."""
    with np.errstate(invalid="ignore"):
        return validated > limit * (1.0 + _REL_TOL)


def _window_bounds(window: str, av: Averages, tz: str) -> np.ndarray:
    if window == "each":
        return np.asarray([av.start[0], av.end[-1]], dtype=np.int64)
    return periods.boundaries(window, int(av.start[0]), int(av.end[-1]), tz)


def evaluate_rule(stack: StackConfig, rule: Rule, pollutant: str, av: Averages, span: tuple[int, int],
                  window: str | None = None) -> tuple[list[RuleResult], list[Event]]:
    """Apply one rule to one pollutant's averages; ``span`` is the evaluated [start, end) (``window``: a
    group's window in place of the rule's own)."""
    window = window or rule.window
    elv = stack.pollutant(pollutant).elv[rule.elv]
    limit = elv * rule.percent / 100.0
    results: list[RuleResult] = []
    events: list[Event] = []
    if len(av) == 0:
        return results, events
    over = over_limit(av.validated, limit)
    valid = av.status == Status.VALID
    complete = (av.start >= span[0]) & (av.end <= span[1])  # averages of periods that ended inside the span
    tolerated = rule.share < 100
    wb = _window_bounds(window, av, stack.timezone)
    widx = periods.locate(wb, av.start)
    for w in np.unique(widx[valid]) if valid.any() else []:
        in_w = widx == w
        n_valid = int((valid & in_w).sum())
        n_over = int((over & in_w).sum())
        ws, we = int(wb[w]), int(wb[w + 1])
        open_window = window != "each" and (ws < span[0] or we > span[1])
        # Open windows and averages still running can change the outcome, unless a completed average over a
        # share-100 limit already failed the window.
        decided = not tolerated and bool((over & in_w & complete).any())
        provisional = (open_window or bool((in_w & ~complete).any())) and not decided
        within = 100.0 * (n_valid - n_over) / n_valid
        passed = within >= rule.share - 1e-9
        results.append(RuleResult(stack.name, pollutant, rule.name, ws, we, n_valid, n_over, limit, rule.share,
                                  passed, provisional, rule.reference))
        for i in np.flatnonzero(over & in_w):
            # Each average over a share-100 limit is judged alone; under a share rule it waits for its window.
            prov = (tolerated and open_window) or not complete[i]
            events.append(Event(stack.name, pollutant, rule.name, "exceedance", av.period, int(av.start[i]),
                                int(av.end[i]), float(av.validated[i]), limit, elv,
                                breach=not tolerated and not prov, provisional=prov))
        if tolerated and not passed:
            events.append(Event(stack.name, pollutant, rule.name, "window", window, ws, we, within,
                                rule.share, elv, breach=not open_window, provisional=open_window))
    return results, events


_WINDOW_ORDER = ("each", "day", "month", "year")


def group_window(members: list[Rule]) -> str:
    """The window a group of alternatives is judged over: the widest of its members'."""
    return max((m.window for m in members), key=_WINDOW_ORDER.index)


def evaluate_group(stack: StackConfig, members: list[Rule], pollutant: str, levels: dict[str, Averages],
                   span: tuple[int, int]) -> tuple[list[RuleResult], list[Event]]:
    """Alternative rules (one ``group``): each member judged over the group's window (the widest of its
    members'), and the group passes in a window when any member passes there; ``decided_by`` names it
    (a member that passed on complete data first). The members' own results and events are kept; their
    events are breaches only where the whole group failed for good."""
    group = members[0].group or ""
    window = group_window(members)
    results: list[RuleResult] = []
    member_events: list[Event] = []
    by_window: dict[tuple[int, int], list[RuleResult]] = {}
    for m in members:
        r, e = evaluate_rule(stack, m, pollutant, levels[m.period], span, window)
        results += r
        member_events += e
        for x in r:
            by_window.setdefault((x.start, x.end), []).append(x)
    verdict: dict[tuple[int, int], RuleResult] = {}
    for (ws, we), rs in by_window.items():
        final = [x for x in rs if x.passed and not x.provisional]
        passing = final or [x for x in rs if x.passed]
        provisional = not final and any(x.provisional for x in rs)
        first = passing[0] if passing else rs[0]
        names = tuple(x.rule for x in rs)
        decided = passing[0].rule if passing else ""
        reference = (f"alternatives {' | '.join(names)}: "
                     + (f"passed by {decided}" if decided else "none passed"))
        verdict[(ws, we)] = RuleResult(stack.name, pollutant, group, ws, we, first.n_valid, first.n_over, first.limit,
                                       first.required_share, bool(passing), provisional, reference,
                                       members=names, decided_by=decided)
    groups = sorted(verdict.values(), key=lambda g: g.start)
    starts = np.asarray([g.start for g in groups], dtype=np.int64)
    events = []
    for e in member_events:  # every member event lies in a window that has results
        g = groups[int(np.searchsorted(starts, e.start, side="right")) - 1]
        if g.passed or g.provisional:
            e = replace(e, breach=False, provisional=e.provisional or g.provisional)
        events.append(e)
    return results + groups, events


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
                                  "IED Annex V Part 3 10 / Annex VI Part 8 1.2: days invalidated per year"))
        if not ok:
            events.append(Event(stack.name, pollutant, "invalid_days", "invalid_days", "year", ys, ye, float(n_bad),
                                float(allowed), 0.0, breach=not provisional, provisional=provisional))
    return results, events


def alternatives(stack: StackConfig, pollutant: Pollutant) -> list[list[Rule]]:
    """The rules that apply to ``pollutant`` in configuration order, the members of a group together (a group
    with a single applicable member is that rule alone)."""
    out: list[list[Rule]] = []
    groups: dict[str, list[Rule]] = {}
    for rule in stack.compliance:
        if not rule.applies_to(pollutant):
            continue
        if rule.group is None:
            out.append([rule])
        elif rule.group in groups:
            groups[rule.group].append(rule)
        else:
            groups[rule.group] = [rule]
            out.append(groups[rule.group])
    return out


def evaluate(stack: StackConfig, result: StackResult,
             span: tuple[int, int] | None = None) -> tuple[list[RuleResult], list[Event]]:
    """Every configured rule for every pollutant it applies to, plus the invalid-day count.

    A window or period that started before ``span`` (the year of a month's run, the month of a day's) holds only
    the part of its data inside the span: it is not judged here (no result, no event), only a run covering it
    from its start judges it. It still makes the events inside the span that depend on it provisional."""
    if span is None:
        n = len(next(iter(result.normalised.values())).valid) if result.normalised else 0
        span = (result.t0, result.t0 + n * result.step_s)
    results: list[RuleResult] = []
    events: list[Event] = []
    for pol in stack.pollutants:
        levels = result.averages[pol.name]
        for members in alternatives(stack, pol):
            if len(members) > 1:
                r, e = evaluate_group(stack, members, pol.name, levels, span)
            else:
                r, e = evaluate_rule(stack, members[0], pol.name, levels[members[0].period], span)
            results += r
            events += e
        r, e = invalid_days(stack, pol.name, levels["year"], span)
        results += r
        events += e
    return [r for r in results if r.start >= span[0]], [e for e in events if e.start >= span[0]]
