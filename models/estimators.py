"""Estimators offered for training, and the custom ones whose ONNX graphs we write ourselves.

Every model exports to an ONNX graph with one input ``X`` (float32, ``(n, k)``) and one float output:

- regressors: ``(n, 1)`` point prediction;
- ``QuantileBandRegressor`` (for conformalised quantile regression): ``(n, 3)`` point, lower, upper quantile;
- anomaly scorers: ``(n, 1)`` anomaly score, **larger = more anomalous** (IsolationForest's sign flipped).

Anomaly scorers ``mahalanobis`` and ``pca`` are both a quadratic form ``||(x - mu) L||^2``: Mahalanobis with
``L`` from the (shrunk) precision matrix; PCA T² + Q with ``L`` from the weighted sum of the Hotelling
and residual (SPE) forms, which is one positive semi-definite matrix. Their ONNX graph is four nodes (Sub,
MatMul, Mul, MatMul), so a row costs a few microseconds. IsolationForest converts to a large tree graph
that ran slower than scikit-learn in batches here; it is offered, not the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.covariance import EmpiricalCovariance, LedoitWolf, MinCovDet
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from models.catalogue import CATALOGUE


class QuantileBandRegressor(RegressorMixin, BaseEstimator):
    """A point regressor plus lower and upper quantile regressors fitted on the same rows.

    ``predict`` gives the point; ``predict_band`` gives ``(n, 3)``: point, lower, upper. Exported as one ONNX
    graph with a ``(n, 3)`` output, so one onnxruntime call serves the point and the CQR band.
    """

    def __init__(self, point=None, lower=None, upper=None):
        self.point = point
        self.lower = lower
        self.upper = upper

    def fit(self, X, y):
        self.point_ = clone(self.point).fit(X, y)
        self.lower_ = clone(self.lower).fit(X, y)
        self.upper_ = clone(self.upper).fit(X, y)
        self.n_features_in_ = self.point_.n_features_in_
        return self

    def predict(self, X):
        check_is_fitted(self, "point_")
        return self.point_.predict(X)

    def predict_band(self, X):
        check_is_fitted(self, "point_")
        return np.column_stack([self.point_.predict(X), self.lower_.predict(X), self.upper_.predict(X)])


class _QuadraticScorer(BaseEstimator):
    """Anomaly score ``||(x - location_) @ L_||^2``; subclasses set ``location_`` and ``L_`` in ``fit``."""

    def score_samples(self, X):
        """Anomaly score per row, larger = more anomalous."""
        check_is_fitted(self, "L_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        z = (X - self.location_) @ self.L_
        return np.einsum("ij,ij->i", z, z)

    def predict(self, X):
        """Same as ``score_samples`` (pipelines export and check parity through ``predict``)."""
        return self.score_samples(X)


class MahalanobisScorer(_QuadraticScorer):
    """Squared Mahalanobis distance to the training data; ``covariance``: ledoit_wolf, empirical or mcd."""

    def __init__(self, covariance: str = "ledoit_wolf", random_state: int | None = 0):
        self.covariance = covariance
        self.random_state = random_state

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        est = {"ledoit_wolf": LedoitWolf(), "empirical": EmpiricalCovariance(),
               "mcd": MinCovDet(random_state=self.random_state)}[self.covariance].fit(X)
        self.location_ = est.location_
        self.L_ = _sqrt_psd(est.get_precision())
        return self


class PCAResidualScorer(_QuadraticScorer):
    """PCA monitoring statistic: ``w_t2 * T²/median(T²) + w_q * Q/median(Q)`` over the training rows.

    T² (Hotelling, in the retained components) catches unusual operating points inside the normal
    subspace, Q (squared reconstruction error, SPE) catches broken correlations. Both are quadratic forms,
    so their weighted sum is one: the ONNX graph is the same as Mahalanobis's.
    """

    def __init__(self, n_components: float | int = 0.9, w_t2: float = 1.0, w_q: float = 1.0):
        self.n_components = n_components
        self.w_t2 = w_t2
        self.w_q = w_q

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        pca = PCA(n_components=self.n_components, svd_solver="full").fit(X)
        W = pca.components_  # (k, p)
        A = W.T / np.sqrt(np.maximum(pca.explained_variance_, 1e-12))  # T² = ||c A||²
        B = np.eye(X.shape[1]) - W.T @ W  # Q = ||c B||²  (B symmetric, idempotent)
        c = X - pca.mean_
        t2 = np.einsum("ij,ij->i", c @ A, c @ A)
        q = np.einsum("ij,ij->i", c @ B, c @ B)
        s_t2 = self.w_t2 / max(float(np.median(t2)), 1e-12)
        s_q = self.w_q / max(float(np.median(q)), 1e-12) if self.w_q else 0.0
        M = s_t2 * (A @ A.T) + s_q * (B @ B.T)
        self.location_ = pca.mean_
        self.L_ = _sqrt_psd(M)
        self.n_components_ = W.shape[0]
        return self


class IsolationForestScorer(BaseEstimator):
    """IsolationForest with the anomaly-score sign of the other scorers (``-decision_function``)."""

    def __init__(self, n_estimators: int = 100, max_samples="auto", random_state: int | None = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X, y=None):
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                       random_state=self.random_state).fit(X)
        self.n_features_in_ = self.forest_.n_features_in_
        return self

    def score_samples(self, X):
        return -self.forest_.decision_function(X)

    def predict(self, X):
        return self.score_samples(X)


def _sqrt_psd(M: np.ndarray) -> np.ndarray:
    """``L`` with ``L @ L.T == M`` for a symmetric positive semi-definite ``M`` (eigen-decomposition)."""
    w, V = np.linalg.eigh((M + M.T) / 2.0)
    return V * np.sqrt(np.clip(w, 0.0, None))


# ---------------------------------------------------------------- what `train` offers, by name

@dataclass(frozen=True)
class EstimatorSpec:
    """A named estimator: its task, a factory ``(params) -> estimator``, and whether it needs scaling."""

    kind: str  # "regression" | "anomaly"
    factory: Callable[..., BaseEstimator]
    scale: bool
    description: str


def _hgb(**kw):
    return HistGradientBoostingRegressor(**{"max_iter": 300, "random_state": 0, **kw})


def _cqr(**kw):
    alpha = kw.pop("alpha", 0.1)
    return QuantileBandRegressor(_hgb(**kw), _hgb(loss="quantile", quantile=alpha / 2, **kw),
                                 _hgb(loss="quantile", quantile=1 - alpha / 2, **kw))


_BUILD: dict[str, tuple[Callable[..., BaseEstimator], bool]] = {  # name -> (factory, needs scaling)
    "hgb": (_hgb, False),
    "hgb-cqr": (_cqr, False),
    "gbr": (lambda **kw: GradientBoostingRegressor(**{"n_estimators": 300, "max_depth": 4, "random_state": 0, **kw}),
            False),
    "extratrees": (lambda **kw: ExtraTreesRegressor(
        **{"n_estimators": 100, "min_samples_leaf": 5, "max_features": 0.7, "random_state": 0, **kw}), False),
    "randomforest": (lambda **kw: RandomForestRegressor(
        **{"n_estimators": 100, "min_samples_leaf": 5, "max_features": 0.5, "random_state": 0, **kw}), False),
    "linear": (lambda **kw: LinearRegression(**kw), True),
    "mahalanobis": (lambda **kw: MahalanobisScorer(**kw), True),
    "pca": (lambda **kw: PCAResidualScorer(**kw), True),
    "isolationforest": (lambda **kw: IsolationForestScorer(**kw), False),
}
# Names, tasks and descriptions are the catalogue's (the command line reads it without scikit-learn); a name in one
# and not the other fails here, at import.
ESTIMATORS: dict[str, EstimatorSpec] = {
    name: EstimatorSpec(entry.kind, *_BUILD[name], entry.description) for name, entry in CATALOGUE.items()}
if set(_BUILD) != set(CATALOGUE):
    raise ImportError(f"models.estimators and models.catalogue name different estimators: "
                      f"{sorted(set(_BUILD) ^ set(CATALOGUE))}")


def accepted_params(name: str) -> set[str]:
    """The parameter names estimator ``name`` takes (``--param NAME=VALUE``). ``hgb-cqr`` takes the
    HistGradientBoosting ones for its three models, but not ``loss`` and ``quantile``: those make them the point
    and the two quantile models."""
    if name == "hgb-cqr":
        return (set(HistGradientBoostingRegressor().get_params(deep=False)) - {"loss", "quantile"}) | {"alpha"}
    return set(ESTIMATORS[name].factory().get_params(deep=False))


def check_params(name: str, params: dict | None) -> None:
    """`ValueError` naming the parameters ``params`` gives that estimator ``name`` does not take (a factory called
    with them raised a TypeError, a traceback on the command line, and only once the data was read)."""
    unknown = sorted(set(params or {}) - accepted_params(name))
    if unknown:
        raise ValueError(f"estimator {name!r} does not take parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))} (it takes {', '.join(sorted(accepted_params(name)))})")


def make_pipeline(name: str, params: dict | None = None) -> Pipeline:
    """The scikit-learn pipeline for estimator ``name`` (``ESTIMATORS``): optional scaler + estimator."""
    try:
        spec = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}") from None
    check_params(name, params)
    steps = [("scale", StandardScaler())] if spec.scale else []
    steps.append(("model", spec.factory(**(params or {}))))
    return Pipeline(steps)


def model_output(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes, from scikit-learn: ``(n, 1)`` or ``(n, 3)`` float64."""
    final = pipeline.steps[-1][1]
    if isinstance(final, QuantileBandRegressor):
        Xt = pipeline[:-1].transform(X) if len(pipeline) > 1 else X
        return final.predict_band(Xt)
    return np.asarray(pipeline.predict(X), dtype=np.float64).reshape(-1, 1)
