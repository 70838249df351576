"""QAL3 (EN 14181): zero and span checks of an analyser on Shewhart and CUSUM control charts.

Each check reading becomes a deviation from its reference (zero gas or span gas concentration),
expressed in units of s_AMS, the analyser's standard deviation from QAL1 (or, where not configured,
estimated from the first ``n_initial`` checks as mean moving range / 1.128, which a slow drift does
not inflate). Alarms per check:

- ``drift_warning`` / ``drift_action``: Shewhart chart of the deviation, |d| > warn / action × s_AMS;
- ``cusum_up`` / ``cusum_down``: two-sided tabular CUSUM, S⁺ = max(0, S⁺ + d/s − k),
  S⁻ = max(0, S⁻ − d/s − k), alarm when S > h (EN 14181: k = 0.501, h = 2.85); the sums restart after an
  alarm (the analyser is expected to be adjusted) so a later alarm is a new drift;
- ``precision``: moving range |d_i − d_{i−1}| > precision_factor × s_AMS (the individuals chart's
  range limit D4·d2 = 3.686 for an in-control s_AMS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emissions.config import Qal3

D2 = 1.128  # mean moving range of two normal values, in standard deviations


@dataclass(frozen=True)
class Check:
    time: int  # Unix seconds
    kind: str  # zero | span
    value: float
    reference: float
    deviation: float
    z: float  # deviation / s_AMS (NaN while s_AMS is being estimated)
    cusum_pos: float
    cusum_neg: float
    moving_range: float
    s_ams: float
    s_estimated: bool
    alarms: tuple[str, ...]


@dataclass(frozen=True)
class ChartState:
    """Where an analyser's chart stands after its latest check (for reports and the console)."""

    analyser: str
    kind: str
    n_checks: int
    last_time: int | None
    last_deviation: float | None
    cusum_pos: float
    cusum_neg: float
    s_ams: float | None
    status: str  # in_control | warning | action | estimating | no_spread | no_data
    alarms_total: int


def estimate_s(deviations: np.ndarray) -> float:
    """s from the mean moving range of consecutive checks (MR̄ / d2)."""
    mr = np.abs(np.diff(deviations))
    return float(mr.mean() / D2) if len(mr) else float("nan")


def chart(cfg: Qal3, kind: str, times: np.ndarray, values: np.ndarray,
          known: dict[int, float] | None = None) -> list[Check]:
    """Run the charts over one analyser's zero or span checks in time order.

    ``known`` maps the time of a check already charted to the reference it was charted against: that check keeps it.
    A zero or span gas is replaced now and then (a new cylinder, a new certified concentration) and the configured
    reference follows; the checks made with the old gas are deviations from the old one, which recomputing them
    against the new reference would turn into a drift of the difference (and the first check on the new gas into a
    precision alarm). New checks take the configured reference."""
    reference = cfg.zero_reference if kind == "zero" else cfg.span_reference
    if reference is None:
        raise ValueError(f"{cfg.analyser}: {kind} checks need a reference value")
    order = np.argsort(times, kind="stable")
    times, values = np.asarray(times)[order], np.asarray(values, dtype=float)[order]
    ok = np.isfinite(values)
    times, values = times[ok], values[ok]
    refs = np.asarray([(known or {}).get(int(t), reference) for t in times], dtype=float)
    dev = values - refs
    s = cfg.s_ams_for(kind)
    estimated = s is None
    if estimated:
        s = estimate_s(dev[: cfg.n_initial]) if len(dev) >= cfg.n_initial else None
        if s is not None and not s > 0:
            s = None
    out: list[Check] = []
    sp = sn = 0.0
    prev = None
    for i, (t, v, d, ref) in enumerate(zip(times, values, dev, refs, strict=True)):
        mr = abs(d - prev) if prev is not None else float("nan")
        prev = d
        if s is None or (estimated and i < cfg.n_initial):
            out.append(Check(int(t), kind, float(v), float(ref), float(d), float("nan"), 0.0, 0.0, mr,
                             s or float("nan"), estimated, ()))
            continue
        z = d / s
        alarms = []
        if abs(z) > cfg.action_sigma:
            alarms.append("drift_action")
        elif abs(z) > cfg.warn_sigma:
            alarms.append("drift_warning")
        sp = max(0.0, sp + z - cfg.cusum_k)
        sn = max(0.0, sn - z - cfg.cusum_k)
        if sp > cfg.cusum_h:
            alarms.append("cusum_up")
        if sn > cfg.cusum_h:
            alarms.append("cusum_down")
        if mr == mr and mr > cfg.precision_factor * s:
            alarms.append("precision")
        out.append(Check(int(t), kind, float(v), float(ref), float(d), float(z), sp, sn, mr, s, estimated,
                         tuple(alarms)))
        if "cusum_up" in alarms or "cusum_down" in alarms:
            sp = sn = 0.0
    return out


def state(cfg: Qal3, kind: str, checks: list[Check]) -> ChartState:
    """Summary of a chart: the latest check decides the status (``no_spread``: s_AMS not configured and the first
    ``n_initial`` checks too alike to estimate it, so no check is judged; set ``s_ams`` from QAL1)."""
    if not checks:
        return ChartState(cfg.analyser, kind, 0, None, None, 0.0, 0.0, cfg.s_ams_for(kind), "no_data", 0)
    last = checks[-1]
    if last.z != last.z:
        # Past the first n_initial checks, an unjudged check means s_AMS could not be estimated from them: they were
        # all alike (a zero check read as 0.0 every time, a value rounded by the DAS). Said as such: "estimating" kept
        # a check 10 units off the zero gas unjudged for good, as if the chart were about to start.
        status = "estimating" if len(checks) <= cfg.n_initial else "no_spread"
    elif any(a in last.alarms for a in ("drift_action", "cusum_up", "cusum_down", "precision")):
        status = "action"
    elif "drift_warning" in last.alarms:
        status = "warning"
    else:
        status = "in_control"
    return ChartState(cfg.analyser, kind, len(checks), last.time, last.deviation, last.cusum_pos, last.cusum_neg,
                      last.s_ams if last.s_ams == last.s_ams else None, status,
                      sum(len(c.alarms) for c in checks))
