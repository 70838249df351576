"""Conformal uncertainty: prediction intervals for regressors and p-values for anomaly scores (DESIGN.md §6).

Everything here is plain numpy on scores and predictions, so it works with any point predictor: an
onnxruntime session (`models.runtime`), a scikit-learn estimator, a RUL model. Definitions:

- **Split conformal** (`SplitConformal`): scores are absolute residuals ``|y - ŷ|`` on a calibration set the
  model never saw; the interval is ``ŷ ± q`` with ``q = quantile(scores, alpha)``. With exchangeable data,
  ``P(y in interval) >= 1 - alpha`` (and ``<= 1 - alpha + 1/(n+1)`` without ties).
- **Conformalised quantile regression** (`ConformalizedQuantile`, Romano et al. 2019): the model predicts a
  lower and an upper quantile; scores are ``max(lo - y, y - hi)``; the interval is ``[lo - q, hi + q]``.
  Widths then follow the local noise level (heteroscedastic data).
- **Adaptive conformal** (`AdaptiveConformal`): online, for streams whose distribution drifts. It keeps the
  last ``window`` scores (a rolling calibration set, so the interval widens when recent errors grow) and
  adapts the level as in adaptive conformal inference (Gibbs & Candès 2021): ``alpha_t+1 = alpha_t +
  gamma * (alpha - err_t)``, clipped so the interval is always finite.
- **Conformal p-values** (`p_values`, `ConformalPValue`): for an anomaly score ``s`` (larger = more
  anomalous) and calibration scores of normal data, ``p = (1 + #{cal >= s}) / (n + 1)``. Under
  exchangeability ``P(p <= alpha) <= alpha``: flagging at ``p <= alpha`` bounds the false alarm rate.

Intervals are returned as ``(n, 2)`` arrays ``[lower, upper]``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AdaptiveConformal",
    "ConformalPValue",
    "ConformalizedQuantile",
    "SplitConformal",
    "coverage",
    "mean_width",
    "min_scores",
    "p_values",
    "p_values_many",
    "quantile",
]


def _scores(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"conformal scores must be finite ({int(np.sum(~np.isfinite(a)))} of {a.size} are not)")
    return a


def quantile(scores, alpha: float) -> float:
    """Finite-sample corrected ``1 - alpha`` quantile: the ``ceil((n + 1)(1 - alpha))``-th smallest score.

    ``alpha`` is the miscoverage rate in (0, 1). NaN scores are ignored. Returns ``inf`` when there are too
    few scores for that level (``n < 1/alpha - 1``): no finite interval has the guaranteed coverage then.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    n = s.size
    k = math.ceil((n + 1) * (1.0 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def min_scores(alpha: float) -> int:
    """The fewest calibration scores with a finite `quantile` at ``alpha`` (``ceil((n + 1)(1 - alpha)) <= n``).

    Equally the fewest whose smallest conformal p-value, ``1 / (n + 1)``, reaches ``alpha`` (``alpha >= 1/(n+1)``):
    fewer could never flag at ``p <= alpha``. Every alpha check (models.train, maintenance's detectors and
    configuration) uses this one rule."""
    n = max(1, math.ceil(1.0 / alpha) - 2)  # one below n >= 1/alpha - 1, for the float rounding of 1/alpha
    while math.isinf(quantile(np.zeros(n), alpha)):  # float rounding of (n + 1)(1 - alpha) near an integer
        n += 1
    return n


def p_values(calibration, scores) -> np.ndarray:
    """Conformal p-values of ``scores`` (larger = more anomalous) against calibration scores of normal data.

    NaN calibration scores are ignored; a NaN score gets a NaN p-value.
    """
    cal = np.sort(np.asarray(calibration, dtype=np.float64).ravel())
    cal = cal[~np.isnan(cal)]
    s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    n = cal.size
    if n == 0:
        raise ValueError("conformal p-values need at least one calibration score")
    # count of calibration scores >= s = n - (number strictly below s)
    ge = n - np.searchsorted(cal, s, side="left")
    p = (1.0 + ge) / (n + 1.0)
    p[np.isnan(s)] = np.nan
    return p


def p_values_many(calibrations: Sequence, scores) -> np.ndarray:
    """One score per calibration set (e.g. one per asset), each against its own set."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(calibrations) != s.size:
        raise ValueError(f"{len(calibrations)} calibration sets for {s.size} scores")
    return np.array([p_values(c, v)[0] for c, v in zip(calibrations, s, strict=True)])


def coverage(y, interval) -> float:
    """Share of ``y`` inside ``interval`` (``(n, 2)``), bounds included."""
    y = np.asarray(y, dtype=np.float64).ravel()
    iv = np.asarray(interval, dtype=np.float64).reshape(-1, 2)
    return float(np.mean((iv[:, 0] <= y) & (y <= iv[:, 1]))) if y.size else math.nan


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) two-sided ``level`` confidence interval of a proportion ``k / n``, None when ``n`` is 0.

    For the empirical figures reported next to a nominal one (coverage of ``n`` intervals, precision of ``n``
    reviews): ``k / n`` alone reads 3 of 3 as 100 % though it is consistent with 29 % (95 %). Exact rather than the
    normal approximation because such counts are often small and all-or-nothing, where that one has zero width."""
    from scipy.stats import beta

    if n <= 0:
        return None
    tail = (1.0 - level) / 2.0
    lower = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    upper = float(beta.isf(tail, k + 1, n - k)) if k < n else 1.0
    return lower, upper


def mean_width(interval) -> float:
    """Mean of ``upper - lower``."""
    iv = np.asarray(interval, dtype=np.float64).reshape(-1, 2)
    return float(np.mean(iv[:, 1] - iv[:, 0])) if iv.size else math.nan


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


@dataclass
class SplitConformal:
    """Symmetric split-conformal intervals ``ŷ ± q`` from absolute calibration residuals.

    ``fit(y_true, y_pred)`` on calibration rows the model was not trained on; ``interval(y_pred)``.
    """

    alpha: float = 0.1

    def fit(self, y_true, y_pred) -> SplitConformal:
        _check_alpha(self.alpha)
        self.scores_ = np.abs(_scores(y_true) - _scores(y_pred))
        self.q_ = quantile(self.scores_, self.alpha)
        self.n_ = int(self.scores_.size)
        return self

    def interval(self, y_pred) -> np.ndarray:
        p = np.asarray(y_pred, dtype=np.float64).ravel()
        return np.column_stack([p - self.q_, p + self.q_])

    def to_dict(self) -> dict:
        return {"method": "split", "alpha": self.alpha, "q": self.q_, "n": self.n_}

    @classmethod
    def from_dict(cls, d: dict) -> SplitConformal:
        obj = cls(alpha=float(d["alpha"]))
        obj.q_, obj.n_ = float(d["q"]), int(d["n"])
        return obj


@dataclass
class ConformalizedQuantile:
    """Conformalised quantile regression (CQR): ``[lo - q, hi + q]`` from predicted quantiles ``lo``, ``hi``."""

    alpha: float = 0.1

    def fit(self, y_true, lower, upper) -> ConformalizedQuantile:
        _check_alpha(self.alpha)
        y = _scores(y_true)
        self.scores_ = np.maximum(_scores(lower) - y, y - _scores(upper))
        self.q_ = quantile(self.scores_, self.alpha)
        self.n_ = int(self.scores_.size)
        return self

    def interval(self, lower, upper) -> np.ndarray:
        lo = np.asarray(lower, dtype=np.float64).ravel()
        hi = np.asarray(upper, dtype=np.float64).ravel()
        return np.column_stack([lo - self.q_, hi + self.q_])

    def to_dict(self) -> dict:
        return {"method": "cqr", "alpha": self.alpha, "q": self.q_, "n": self.n_}

    @classmethod
    def from_dict(cls, d: dict) -> ConformalizedQuantile:
        obj = cls(alpha=float(d["alpha"]))
        obj.q_, obj.n_ = float(d["q"]), int(d["n"])
        return obj


class AdaptiveConformal:
    """Online conformal intervals for drifting streams: a rolling calibration window plus an ACI level update.

    Use per stream, in time order: ``interval(...)`` for the next prediction(s), then ``update(y_true, ...)``
    once the truth is known. Two nonconformity scores:

    - ``score="absolute"``: ``|y - ŷ|``; ``interval(y_pred)`` gives ``ŷ ± q_t``;
    - ``score="cqr"``: ``max(lo - y, y - hi)`` on predicted quantiles; ``interval(lower=, upper=)`` gives
      ``[lo - q_t, hi + q_t]``.

    ``q_t`` is the conformal ``1 - alpha_t`` quantile of the last ``window`` scores. ``alpha_t`` starts at
    ``alpha`` and moves by ``gamma * (alpha - err_t)`` after each revealed truth (ACI, Gibbs & Candès 2021):
    a miss lowers it (wider intervals), a hit raises it a little. It is clipped to
    ``[1 / (window + 1), alpha_max]`` so the interval stays finite (ACI's ``alpha_t <= 0`` would mean an
    infinite interval; here it means "the largest recent score"). ``gamma=0`` gives a plain rolling window.
    ``window`` must hold at least `min_scores` ``(alpha)`` scores, so that the nominal level itself has a finite
    interval (refused otherwise: the largest of fewer scores covers less than the ``1 - alpha`` it would state).

    Start it from calibration scores (``start(scores)``, e.g. ``SplitConformal.scores_``); it keeps the most
    recent ``window`` of them.
    """

    def __init__(self, alpha: float = 0.1, *, window: int = 168, gamma: float = 0.005, score: str = "absolute",
                 alpha_max: float = 0.5):
        _check_alpha(alpha)
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if math.isinf(quantile(np.zeros(int(window)), alpha)):
            # Fewer recent scores than the level needs: no finite interval has it, and the fallback (the largest
            # score) would cover only window/(window+1) while predictions state 1 - alpha.
            raise ValueError(f"window {window} is too small for {1 - alpha:.1%} intervals: it needs at least "
                             f"{min_scores(alpha)} scores")
        if score not in ("absolute", "cqr"):
            raise ValueError(f"score must be 'absolute' or 'cqr', got {score!r}")
        if not (math.isfinite(gamma) and gamma >= 0):  # a negative step narrows the interval after each miss
            raise ValueError(f"gamma must be a number >= 0 (the ACI step; 0: a plain rolling window), got {gamma}")
        self.alpha = alpha
        self.window = int(window)
        self.gamma = float(gamma)
        self.score = score
        self.alpha_max = float(alpha_max)
        self.scores_: deque[float] = deque(maxlen=self.window)
        self.alpha_t_ = alpha
        self.n_updates_ = 0
        self.n_errors_ = 0

    def start(self, scores) -> AdaptiveConformal:
        """Seed the window with calibration scores (the last ``window`` are kept) and reset the level."""
        self.scores_.clear()
        self.scores_.extend(float(v) for v in _scores(scores)[-self.window:])
        self.alpha_t_ = self.alpha
        self.n_updates_ = self.n_errors_ = 0
        return self

    @property
    def level_alpha(self) -> float:
        """The miscoverage level used for the next interval (``alpha_t`` after clipping)."""
        lo = 1.0 / (len(self.scores_) + 1.0)
        return min(max(self.alpha_t_, lo), self.alpha_max)

    @property
    def q(self) -> float:
        """The current half-width (absolute) or widening (cqr) of the interval."""
        if not self.scores_:
            return math.inf
        q = quantile(np.fromiter(self.scores_, dtype=np.float64), self.level_alpha)
        return q if math.isfinite(q) else max(self.scores_)

    def interval(self, y_pred=None, *, lower=None, upper=None) -> np.ndarray:
        """Interval(s) with the current state: ``(n, 2)``."""
        q = self.q
        if self.score == "absolute":
            p = np.asarray(y_pred, dtype=np.float64).ravel()
            return np.column_stack([p - q, p + q])
        lo = np.asarray(lower, dtype=np.float64).ravel()
        hi = np.asarray(upper, dtype=np.float64).ravel()
        return np.column_stack([lo - q, hi + q])

    def update(self, y_true, y_pred=None, *, lower=None, upper=None, interval=None) -> None:
        """Reveal the truth of earlier predictions (in time order).

        ``interval`` is what was issued for them (to count misses exactly as served); if omitted, the
        interval the current state gives is used, which is the same when each ``update`` follows its
        ``interval`` call.
        """
        y = np.asarray(y_true, dtype=np.float64).ravel()
        if self.score == "absolute":
            p = np.asarray(y_pred, dtype=np.float64).ravel()
            s = np.abs(y - p)
        else:
            lo = np.asarray(lower, dtype=np.float64).ravel()
            hi = np.asarray(upper, dtype=np.float64).ravel()
            s = np.maximum(lo - y, y - hi)
        issued = None if interval is None else np.asarray(interval, dtype=np.float64).reshape(-1, 2)
        for i in range(y.size):
            if not (math.isfinite(y[i]) and math.isfinite(s[i])):
                continue  # no truth for this one (analyser down): nothing to learn
            if issued is not None:
                miss = not (issued[i, 0] <= y[i] <= issued[i, 1])
            else:
                miss = bool(s[i] > self.q)
            self.alpha_t_ += self.gamma * (self.alpha - float(miss))
            # keep alpha_t within reach of the clip range so a long run of hits or misses cannot wind it up
            self.alpha_t_ = min(max(self.alpha_t_, -0.5), 1.0)
            self.scores_.append(float(s[i]))
            self.n_updates_ += 1
            self.n_errors_ += int(miss)

    def to_dict(self) -> dict:
        """State for a model card or a checkpoint (scores included)."""
        return {"method": "adaptive", "alpha": self.alpha, "window": self.window, "gamma": self.gamma,
                "score": self.score, "alpha_max": self.alpha_max, "alpha_t": self.alpha_t_,
                "scores": list(self.scores_)}

    @classmethod
    def from_dict(cls, d: dict) -> AdaptiveConformal:
        obj = cls(float(d["alpha"]), window=int(d["window"]), gamma=float(d["gamma"]), score=d.get("score", "absolute"),
                  alpha_max=float(d.get("alpha_max", 0.5)))
        obj.start(d.get("scores", []))
        obj.alpha_t_ = float(d.get("alpha_t", obj.alpha))
        return obj


class ConformalPValue:
    """Conformal p-values for anomaly scores, with an optional rolling reference of recent normal scores.

    ``fit(calibration_scores)`` with scores of normal operation the detector was not trained on;
    ``p_value(scores)``; flag at ``p <= alpha`` for a false alarm rate of at most ``alpha`` on normal data.
    ``threshold(alpha)`` is the score above which p <= alpha. With ``window`` set, ``update(scores)`` adds
    scores confirmed normal (e.g. reviewed) and keeps the last ``window``.
    """

    def __init__(self, *, window: int | None = None):
        self.window = window

    def fit(self, calibration_scores) -> ConformalPValue:
        s = np.asarray(calibration_scores, dtype=np.float64).ravel()
        s = s[~np.isnan(s)]
        if s.size == 0:
            raise ValueError("conformal p-values need at least one calibration score")
        self.recent_ = s[-self.window:] if self.window else s  # arrival order, so the oldest leave first
        self.calibration_ = np.sort(self.recent_)
        return self

    def p_value(self, scores) -> np.ndarray:
        return p_values(self.calibration_, scores)

    def threshold(self, alpha: float) -> float:
        """Every score above this value has a p-value <= ``alpha`` (``inf`` if no score can reach it)."""
        return quantile(self.calibration_, alpha)

    def update(self, normal_scores) -> None:
        s = np.asarray(normal_scores, dtype=np.float64).ravel()
        s = np.concatenate([self.recent_, s[~np.isnan(s)]])
        self.recent_ = s[-self.window:] if self.window else s
        self.calibration_ = np.sort(self.recent_)

    def to_dict(self) -> dict:
        return {"method": "p_value", "window": self.window, "n": int(self.calibration_.size),
                "scores": self.recent_.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ConformalPValue:
        return cls(window=d.get("window")).fit(d["scores"])
