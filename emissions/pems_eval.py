"""PEMS evaluation on the gas-turbine data: accuracy, interval coverage, cross-check and substitution.

The protocol of ``../shared/data/README.md``: train on 2011-2012, evaluate on 2013 (rows are hourly and
in time order; never shuffled across years). The model and its conformal calibration come from
``models/`` (trained by `models.train`, registered in `models.registry`; `emissions.pems_model` turns a
version into a `PemsFit`); this module only runs them the way a PEMS runs beside a stack:

- **static**: the split-conformal interval of the calibration, never updated;
- **streaming**: rows in time order, each row's analyser value revealed after its prediction and fed to
  `models.conformal.AdaptiveConformal` -- every value the analyser gives (not while it is down); with
  ``gate=True`` (`stream`) also not while the cross-check flags it, which locked the PEMS out under plant drift
  (coverage fell to 0.81), so the evaluation does not gate.

To show the two uses on real data, the 2013 analyser is given faults: a drift (an offset over a stretch
of hours) the cross-check should flag, and an outage whose hours the PEMS substitutes; the substituted
hours go through `emissions.averages` as one-minute primary values so the substituted share of every
daily average is checked too. Accuracy and coverage are always scored against the true 2013 values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emissions import averages, pems
from emissions.config import PemsLink, StackConfig
from emissions.normalise import Primary

T0 = 1_356_998_400  # 2013-01-01 00:00 UTC: the data has no timestamps, rows are consecutive hours


@dataclass
class PemsFit:
    """What the evaluation needs of a trained PEMS model."""

    target: str
    features: list[str]
    predict: Callable[[np.ndarray], np.ndarray]  # (n, k) in ``features`` order -> (n,)
    calibration_scores: np.ndarray  # |y - ŷ| on calibration rows the model was not trained on
    static_interval: Callable[[np.ndarray], np.ndarray]  # ŷ -> (n, 2)
    version: str = ""  # sha256 of the ONNX file


@dataclass(frozen=True)
class Faults:
    """Injected analyser faults, in rows (hours) of the evaluation year."""

    drift_start: int = 3000
    drift_end: int = 3048
    drift_offset_sigma: float = 4.0  # offset in standard deviations of the true values
    outage_start: int = 5000
    outage_end: int = 5072

    @classmethod
    def fitting(cls, n: int) -> Faults:
        """The default faults when ``n`` rows hold them (a year of hours), else the same faults moved to 40 % and
        67 % of the rows and shortened to fit (e.g. the in-repo sample, every 12th row)."""
        d = cls()
        if n >= d.outage_end + 24:
            return d
        a, b = int(0.4 * n), int(0.67 * n)
        return cls(a, a + max(min(48, n // 12), 2), d.drift_offset_sigma, b, b + max(min(72, n // 8), 2))


def metrics(y: np.ndarray, yhat: np.ndarray, interval: np.ndarray | None = None) -> dict:
    """`models.evaluate.regression_metrics` (n, MAE, RMSE, R², Spearman, coverage, mean width)."""
    from models.evaluate import regression_metrics

    return regression_metrics(y, yhat, interval)


def inject(truth: np.ndarray, faults: Faults) -> np.ndarray:
    """The analyser as it reports: truth with a drift stretch (offset) and an outage (NaN)."""
    a = truth.astype(float).copy()
    a[faults.drift_start: faults.drift_end] += faults.drift_offset_sigma * float(np.std(truth))
    a[faults.outage_start: faults.outage_end] = np.nan
    return a


def stream(fit: PemsFit, X: np.ndarray, analyser: np.ndarray, link: PemsLink, *, alpha: float = 0.1,
           window: int = 168, gamma: float = 0.005, gate: bool = False) -> dict[str, np.ndarray]:
    """Predict row by row with adaptive intervals and the online cross-check; with ``gate`` a flagged
    analyser's values are not learnt from (which can lock the PEMS out when the plant itself drifts)."""
    from models.conformal import AdaptiveConformal

    n = len(analyser)
    yhat = fit.predict(X)
    ac = AdaptiveConformal(alpha=alpha, window=window, gamma=gamma).start(fit.calibration_scores)
    lo, hi = np.empty(n), np.empty(n)
    flagged = np.zeros(n, dtype=bool)
    w = max(link.window_s // 3600, 1)
    outside = np.zeros(n, dtype=bool)
    both = np.zeros(n, dtype=bool)
    for i in range(n):
        lo[i], hi[i] = ac.interval(yhat[i: i + 1])[0]
        a = analyser[i]
        both[i] = np.isfinite(a)
        outside[i] = both[i] and not (lo[i] <= a <= hi[i])
        j = max(i - w + 1, 0)
        nb = both[j: i + 1].sum()
        flagged[i] = nb >= link.min_pairs_share * w and outside[j: i + 1].sum() >= link.min_outside_share * nb
        if both[i] and not (gate and flagged[i]):
            ac.update(a, yhat[i: i + 1], interval=np.array([[lo[i], hi[i]]]))
    return {"point": yhat, "lower": lo, "upper": hi, "flagged": flagged}


def crosscheck_summary(flagged: np.ndarray, faults: Faults) -> dict:
    in_drift = np.zeros(len(flagged), dtype=bool)
    in_drift[faults.drift_start: faults.drift_end] = True
    hits = np.flatnonzero(flagged & in_drift)
    return {"drift_hours": int(in_drift.sum()), "drift_flagged": bool(hits.size),
            "delay_h": int(hits[0] - faults.drift_start) if hits.size else None,
            "drift_hours_flagged": int(hits.size),
            "false_flag_hours": int((flagged & ~in_drift).sum()), "hours": len(flagged)}


def substitution_summary(name: str, truth: np.ndarray, analyser: np.ndarray, point: np.ndarray,
                         faults: Faults) -> dict:
    """Run the analyser with the PEMS as substitute through the averaging, one-minute primary values."""
    cfg = StackConfig.model_validate({"name": "GT", "regime": "lcp", "pollutants": [
        {"name": name, "tag": "GT." + name, "pems": {"tag": f"GT.{name}.pems"}}]})
    minutes = np.repeat(analyser, 60)
    primary = Primary(T0, 60, len(minutes), {name: minutes, f"pems:{name}": np.repeat(point, 60)})
    day = averages.compute(cfg, primary).averages[name]["day"]
    out_rows = slice(faults.outage_start, faults.outage_end)
    days_touched = np.flatnonzero(day.n_substituted > 0)
    return {"outage_hours": faults.outage_end - faults.outage_start,
            "substituted_mae": float(np.mean(np.abs(point[out_rows] - truth[out_rows]))),
            "days_with_substitution": int(days_touched.size),
            "substituted_share_of_those_days": [round(float(x), 4) for x in day.substituted_share[days_touched]],
            "days_valid": int(day.valid.sum()), "days": len(day)}


def evaluate_target(fit: PemsFit, X: np.ndarray, truth: np.ndarray, *, faults: Faults | None = None,
                    link: PemsLink | None = None, alpha: float = 0.1, window: int = 168,
                    gamma: float = 0.005) -> dict:
    """Static and streaming accuracy and coverage on the truth, plus the cross-check and substitution."""
    link = link or PemsLink(tag="pems")
    faults = faults or Faults.fitting(len(truth))
    yhat = fit.predict(X)
    static = metrics(truth, yhat, fit.static_interval(yhat))
    clean = stream(fit, X, truth, link, alpha=alpha, window=window, gamma=gamma)
    streaming = metrics(truth, clean["point"], np.column_stack([clean["lower"], clean["upper"]]))
    analyser = inject(truth, faults)
    faulty = stream(fit, X, analyser, link, alpha=alpha, window=window, gamma=gamma)
    return {"target": fit.target, "model_version": fit.version, "static": static, "streaming": streaming,
            "streaming_with_faults": metrics(truth, faulty["point"],
                                             np.column_stack([faulty["lower"], faulty["upper"]])),
            "crosscheck": crosscheck_summary(faulty["flagged"], faults),
            "crosscheck_clean_analyser": crosscheck_summary(clean["flagged"], faults),
            "substitution": substitution_summary(fit.target, truth, analyser, faulty["point"], faults),
            "batch_crosscheck_deviations": len(pems.crosscheck(
                T0 + 3600 * np.arange(len(truth)), 3600, analyser, faulty["point"], faulty["lower"],
                faulty["upper"], link)[1])}
