"""The one place where maintenance/ reaches ``models/`` for conformal uncertainty.

maintenance/ never computes a conformal quantity itself: p-values of anomaly scores and the
quantiles behind RUL intervals come from ``models.conformal``. This adapter keeps the names
maintenance uses stable while the models API evolves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models import conformal


def p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of ``scores`` (larger = more anomalous) against healthy calibration scores."""
    return np.asarray(conformal.p_values(calibration, scores), dtype=float)


def p_values_many(calibrations: Sequence[np.ndarray], scores: np.ndarray) -> np.ndarray:
    """One score per asset, each against its own calibration scores."""
    return np.asarray(conformal.p_values_many(calibrations, scores), dtype=float)


def quantile(scores: np.ndarray, alpha: float) -> float:
    """The conformal (finite-sample corrected) 1 - alpha quantile of calibration scores."""
    return float(conformal.quantile(scores, alpha))


def min_scores(alpha: float) -> int:
    """The fewest calibration scores for ``alpha``: their smallest p-value 1/(n+1) reaches alpha (a smaller alpha
    could never flag) and their 1 - alpha quantile is finite. The one resolution rule of every alpha check."""
    return conformal.min_scores(alpha)


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) ``level`` confidence interval of ``k / n`` (None without any): `models.conformal`."""
    return conformal.proportion_interval(k, n, level)
