"""Synthetic feature tables with known noise for the models/ tests (deterministic, generated in memory, so no
data file has to ship with the repository and the truth is known exactly)."""

from __future__ import annotations

import numpy as np

from models.data import FeatureTable
from models.train import TrainSpec

FEATURES = ("x1", "x2", "x3", "x4")


def regression_table(n: int = 1500, *, noise: float = 0.3, seed: int = 0, start: str = "2024-01-01") -> FeatureTable:
    """Hourly rows; ``y`` is a smooth non-linear function of x1..x4 plus Gaussian noise of sd ``noise``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    y = 2 * X[:, 0] + 1.5 * np.sin(2 * X[:, 1]) + X[:, 2] * X[:, 3] + rng.normal(scale=noise, size=n)
    times = np.datetime64(start, "us") + np.arange(n) * np.timedelta64(3600, "s")
    cols = {f: X[:, j] for j, f in enumerate(FEATURES)}
    cols["y"] = y
    return FeatureTable(cols, times.astype("datetime64[us]"))


def anomaly_table(n: int = 1500, *, rate: float = 0.05, seed: int = 1) -> FeatureTable:
    """Correlated normal rows; a share ``rate`` (``label`` = 1) breaks the correlation."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    X = np.column_stack([z[:, 0], z[:, 0] + 0.2 * z[:, 1], z[:, 1], -z[:, 0] + 0.1 * rng.normal(size=n)])
    label = (rng.random(n) < rate).astype(float)
    X[label == 1, 1] -= 3.0
    cols = {f: X[:, j] for j, f in enumerate(FEATURES)}
    cols["label"] = label
    return FeatureTable(cols)


def spec(model_id: str = "syn", estimator: str = "hgb", **kw) -> TrainSpec:
    params = kw.pop("params", {"max_iter": 60} if estimator.startswith("hgb") else {})
    target = kw.pop("target", None if estimator in ("mahalanobis", "pca", "isolationforest") else "y")
    return TrainSpec(model_id, FEATURES, target, estimator=estimator, params=params, **kw)
