"""Prediction intervals for RUL: conformal calibration binned by the predicted value (Mondrian).

RUL errors grow with the predicted life (an engine predicted at 10 cycles is near failure and its
signals say so; one predicted at 110 is barely degraded). One global conformal quantile would give
intervals too wide near failure and too narrow far from it. Calibration residuals are therefore
grouped into bins of the predicted RUL (equal-count bins, at least ``min_per_bin`` residuals each)
and each bin gets its own lower and upper offsets: the conformal quantiles (``models.conformal``) of
the signed residuals at ``(1 - coverage) / 2`` on each side, so the interval may be asymmetric.

The model predicts RUL capped at ``cap`` (an engine far from failure looks healthy, however far it
is). An interval of the capped RUL whose upper end reaches the cap therefore says "``lower`` cycles or
more": `interval` returns ``upper = inf`` there. The set {RUL : min(RUL, cap) in [lower, upper]} is
exactly that, so the conformal coverage of the capped target carries over to the true RUL unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maintenance import uncertainty as conformal


@dataclass
class BinnedConformal:
    coverage: float = 0.9
    cap: float | None = None
    max_bins: int = 5
    min_per_bin: int = 100
    edges_: np.ndarray = field(default_factory=lambda: np.array([]))
    below_: np.ndarray = field(default_factory=lambda: np.array([]))  # offset under the prediction, per bin
    above_: np.ndarray = field(default_factory=lambda: np.array([]))

    def fit(self, pred: np.ndarray, truth: np.ndarray) -> BinnedConformal:
        pred = np.asarray(pred, float)
        resid = np.asarray(truth, float) - pred
        bins = int(max(1, min(self.max_bins, len(pred) // self.min_per_bin)))
        self.edges_ = np.quantile(pred, np.linspace(0, 1, bins + 1)[1:-1]) if bins > 1 else np.array([])
        which = np.searchsorted(self.edges_, pred, side="right")
        tail = (1.0 - self.coverage) / 2.0
        self.below_ = np.array([conformal.quantile(-resid[which == b], tail) for b in range(bins)])
        self.above_ = np.array([conformal.quantile(resid[which == b], tail) for b in range(bins)])
        return self

    def interval(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred = np.asarray(pred, float)
        which = np.searchsorted(self.edges_, pred, side="right")
        upper = pred + self.above_[which]
        if self.cap is not None:
            upper = np.where(upper >= self.cap, np.inf, upper)
        return np.clip(pred - self.below_[which], 0.0, None), upper

    def to_dict(self) -> dict:
        return {"coverage": self.coverage, "cap": self.cap, "edges": self.edges_.tolist(),
                "below": self.below_.tolist(), "above": self.above_.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> BinnedConformal:
        """As `to_dict` wrote it, also after a strict-JSON card (``edge.jsontext.json_safe``) turned an infinite
        offset into null: a bin with too few residuals for its level keeps an infinite offset (interval ``[0, inf)``),
        where ``float(None)`` would be NaN bounds: no interval at all, and a RUL alert that can never fire."""
        def offsets(v) -> np.ndarray:
            return np.array([np.inf if x is None else float(x) for x in v], float)

        return cls(coverage=float(d["coverage"]), cap=None if d.get("cap") is None else float(d["cap"]),
                   edges_=np.asarray(d["edges"], float), below_=offsets(d["below"]), above_=offsets(d["above"]))
