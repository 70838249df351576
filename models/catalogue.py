"""The estimators `valvoja models train` offers, by name: task and a one-line description.

Kept apart from `models.estimators`, which builds them: the command line lists them in its help without importing
scikit-learn and SciPy (about two seconds of start-up for every `valvoja` command otherwise).
"""

from __future__ import annotations

from typing import Literal, NamedTuple


class Entry(NamedTuple):
    kind: Literal["regression", "anomaly"]
    description: str


CATALOGUE: dict[str, Entry] = {
    "hgb": Entry("regression", "HistGradientBoostingRegressor (default regressor)"),
    "hgb-cqr": Entry("regression", "HGB point + HGB quantile regressors at alpha/2, 1-alpha/2 (for CQR intervals)"),
    "gbr": Entry("regression", "GradientBoostingRegressor"),
    "extratrees": Entry("regression", "ExtraTreesRegressor (large ONNX files: ~16 MB for 100 trees on 15k rows)"),
    "randomforest": Entry("regression", "RandomForestRegressor"),
    "linear": Entry("regression", "ordinary least squares (the baseline)"),
    "mahalanobis": Entry("anomaly", "squared Mahalanobis distance, Ledoit-Wolf covariance (default scorer)"),
    "pca": Entry("anomaly", "PCA T² + Q (SPE) statistic"),
    "isolationforest": Entry("anomaly", "IsolationForest (slow ONNX graph: ~1 ms per row)"),
}
