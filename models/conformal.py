"""Conformal prediction: the finite-sample primitives every uncertainty in Valvoja is built on.

- `quantile(scores, alpha)`: the split-conformal ``(1 - alpha)`` quantile of calibration
  nonconformity scores, ``ceil((n + 1)(1 - alpha))``-th smallest (Vovk et al.; Lei et al. 2018).
  With exchangeable data, ``P(new score <= q) >= 1 - alpha``.
- `p_values(calibration, scores)`: conformal p-values ``(1 + #{cal >= s}) / (n + 1)``; under the
  null (the new point is like the calibration set) ``P(p <= alpha) <= alpha``, which is what makes
  an anomaly threshold a controlled false alarm rate.

These are pure numpy functions; estimator-level wrappers (split conformal regression,
conformalised quantile regression, adaptive conformal) build on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quantile(scores: np.ndarray, alpha: float) -> float:
    """Finite-sample corrected ``1 - alpha`` quantile of ``scores``; ``inf`` when too few scores exist.

    ``alpha`` is the miscoverage rate in (0, 1). NaN scores are ignored.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(scores, dtype=float).ravel()
    s = s[~np.isnan(s)]
    n = s.size
    k = int(np.ceil((n + 1) * (1.0 - alpha)))
    if n == 0 or k > n:
        return float("inf")
    return float(np.partition(s, k - 1)[k - 1])


def p_values(calibration: np.ndarray, scores: np.ndarray | float) -> np.ndarray:
    """Conformal p-values of ``scores`` (larger = stranger) against calibration scores of normal data."""
    cal = np.sort(np.asarray(calibration, dtype=float).ravel())
    cal = cal[~np.isnan(cal)]
    s = np.atleast_1d(np.asarray(scores, dtype=float))
    n = cal.size
    if n == 0:
        raise ValueError("conformal p-values need at least one calibration score")
    # count of calibration scores >= s = n - (number strictly below s)
    ge = n - np.searchsorted(cal, s, side="left")
    p = (1.0 + ge) / (n + 1.0)
    p[np.isnan(s)] = np.nan
    return p


def p_values_many(calibrations: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
    """One score per calibration set (e.g. one per asset), each against its own set."""
    scores = np.asarray(scores, dtype=float).ravel()
    if len(calibrations) != scores.size:
        raise ValueError(f"{len(calibrations)} calibration sets for {scores.size} scores")
    return np.array([p_values(c, s)[0] for c, s in zip(calibrations, scores, strict=True)])
