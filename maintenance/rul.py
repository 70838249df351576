"""Remaining useful life from run-to-failure histories, with prediction intervals (DESIGN.md §6, §7).

Pipeline (each step is what the C-MAPSS literature found to matter, kept generic):

1. **Operating-condition normalisation** (`ConditionNormaliser`): rows are grouped by operating
   condition (KMeans on standardised settings; ``conditions=1`` for a single regime) and every sensor
   is standardised within its condition, so a change of altitude or throttle is not read as wear.
2. **History features** (`history_features`): per asset, causal exponentially weighted means of the
   normalised sensors over several spans (they work from the first cycle on, unlike fixed windows
   longer than short histories), the difference of a short and a long mean (a trend), and the age
   in cycles.
3. **Model**: gradient boosting (`HistGradientBoostingRegressor`) on the run-to-failure target
   capped at ``cap`` (piecewise linear: an engine far from failure looks healthy).
4. **Intervals**: conformal calibration on *held-out assets truncated at random cycles* (as a live
   asset is seen), out-of-fold over grouped folds; residuals are grouped by predicted RUL (Mondrian
   bins: errors grow with the predicted life), and the interval half-width per bin comes from the
   conformal quantile of ``models.conformal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits


@dataclass
class ConditionNormaliser:
    """Per-condition standardisation of sensors; constant sensors (within every condition) are dropped."""

    conditions: int = 1
    seed: int = 0
    centres_: np.ndarray | None = None
    settings_scale_: np.ndarray | None = None
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None
    keep_: np.ndarray | None = None
    # The range of the normalised kept sensors over the training rows: what the model has seen, so that a live
    # asset running in a condition it was not trained on (another altitude, a different machine) is recognised
    # rather than given a confident RUL (maintenance.rul_live).
    z_min_: np.ndarray | None = None
    z_max_: np.ndarray | None = None

    def fit(self, settings: np.ndarray, sensors: np.ndarray) -> ConditionNormaliser:
        labels = self._fit_labels(settings)
        k = self.conditions
        self.mean_ = np.zeros((k, sensors.shape[1]))
        self.std_ = np.ones((k, sensors.shape[1]))
        for c in range(k):
            m = labels == c
            self.mean_[c] = sensors[m].mean(axis=0)
            self.std_[c] = sensors[m].std(axis=0)
        # A sensor carries information only where it varies within a condition.
        self.keep_ = (self.std_ > 1e-6 * (1 + np.abs(self.mean_))).all(axis=0)
        self.std_[self.std_ <= 0] = 1.0
        z = ((sensors - self.mean_[labels]) / self.std_[labels])[:, self.keep_]
        self.z_min_, self.z_max_ = z.min(axis=0), z.max(axis=0)
        return self

    def _fit_labels(self, settings: np.ndarray) -> np.ndarray:
        self.settings_scale_ = settings.std(axis=0) + 1e-9
        if self.conditions <= 1:
            self.centres_ = (settings / self.settings_scale_).mean(axis=0, keepdims=True)
            return np.zeros(len(settings), dtype=int)
        km = KMeans(self.conditions, n_init=10, random_state=self.seed).fit(settings / self.settings_scale_)
        self.centres_ = km.cluster_centers_
        return km.labels_

    def labels(self, settings: np.ndarray) -> np.ndarray:
        d = ((settings / self.settings_scale_)[:, None, :] - self.centres_[None, :, :]) ** 2
        return d.sum(axis=2).argmin(axis=1)

    def transform(self, settings: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        lab = self.labels(settings)
        z = (sensors - self.mean_[lab]) / self.std_[lab]
        return z[:, self.keep_]


def _segments(unit: np.ndarray) -> list[tuple[int, int]]:
    starts = np.r_[0, np.flatnonzero(np.diff(unit)) + 1]
    ends = np.r_[starts[1:], len(unit)]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def ewm(x: np.ndarray, span: float) -> np.ndarray:
    """Causal, bias-corrected exponentially weighted mean along axis 0 (pandas' ``adjust=True``)."""
    a = 2.0 / (span + 1.0)
    num = lfilter([1.0], [1.0, -(1.0 - a)], x, axis=0)
    den = lfilter([1.0], [1.0, -(1.0 - a)], np.ones(len(x)))
    return num / den[:, None]


def history_features(unit: np.ndarray, cycle: np.ndarray, z: np.ndarray,
                     spans: tuple[float, ...] = (3, 10, 20, 40)) -> tuple[np.ndarray, list[str]]:
    """Features of every row from the history up to it (rows sorted by unit, then cycle)."""
    blocks = [np.empty((len(unit), z.shape[1])) for _ in spans]
    for st, en in _segments(unit):
        for b, s in zip(blocks, spans, strict=True):
            b[st:en] = ewm(z[st:en], s)
    trend = blocks[1] - blocks[-1]
    names = ["cycle"] + [f"ewm{s:g}_{j}" for s in spans for j in range(z.shape[1])] + \
            [f"trend_{j}" for j in range(z.shape[1])]
    return np.hstack([cycle[:, None].astype(float), *blocks, trend]), names


@dataclass
class RulConfig:
    """Hyper-parameters; `select` in maintenance/rul_eval.py chooses among a few by grouped CV."""

    conditions: int = 1
    spans: tuple[float, ...] = (3, 10, 20, 40)
    cap: float = 125.0
    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 50
    sensors: tuple[int, ...] | None = None  # 0-based sensor columns; None: all that vary
    seed: int = 0
    # OpenMP threads for boosting. One by default: on a shared or busy machine (a gateway, CI) OpenMP's
    # spinning threads made fitting several times slower than one thread (measured: 90 s vs 17 s).
    threads: int = 1
    extra: dict = field(default_factory=dict)


class RulModel:
    """Normaliser + history features + gradient boosting; `fit` on run-to-failure histories."""

    def __init__(self, config: RulConfig | None = None) -> None:
        self.config = config or RulConfig()

    def _z(self, settings: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        if self.config.sensors is not None:
            sensors = sensors[:, list(self.config.sensors)]
        return self.normaliser_.transform(settings, sensors)

    def features(self, unit, cycle, settings, sensors) -> np.ndarray:
        return history_features(unit, cycle, self._z(settings, sensors), self.config.spans)[0]

    def fit(self, unit, cycle, settings, sensors, rul) -> RulModel:
        c = self.config
        s = sensors[:, list(c.sensors)] if c.sensors is not None else sensors
        self.normaliser_ = ConditionNormaliser(c.conditions, c.seed).fit(settings, s)
        x, self.feature_names_ = history_features(unit, cycle, self._z(settings, sensors), c.spans)
        with threadpool_limits(limits=c.threads, user_api="openmp"):
            self.estimator_ = HistGradientBoostingRegressor(
                max_iter=c.max_iter, learning_rate=c.learning_rate, max_leaf_nodes=c.max_leaf_nodes,
                min_samples_leaf=c.min_samples_leaf, random_state=c.seed).fit(x, np.minimum(rul, c.cap))
        return self

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=self.config.threads, user_api="openmp"):
            return np.clip(self.estimator_.predict(x), 0.0, self.config.cap)

    def predict(self, unit, cycle, settings, sensors) -> np.ndarray:
        return self.predict_features(self.features(unit, cycle, settings, sensors))
