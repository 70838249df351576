"""Train a model: pipeline + conformal calibration + ONNX export + parity + holdout metrics -> `TrainedModel`.

The rows of the `FeatureTable` are split **by time**, never shuffled (the data drifts; a random split would
leak the future into training and overstate the metrics):

    | train (fit the pipeline) | calibration (conformal scores) | holdout (metrics, parity, the gate) |

Regressors get split-conformal intervals (``interval="split"``) or, with the ``hgb-cqr`` estimator whose
graph also outputs a lower and an upper quantile, conformalised quantile regression (``"cqr"``). Anomaly
scorers get conformal p-values: the calibration scores are those of the calibration rows (normal rows only
when a label column says which are anomalous). Holdout metrics are computed from the **ONNX** outputs,
because that graph is what gets served; the export is refused (`ParityError`) when it does not reproduce
scikit-learn on the holdout rows.

The card (``TrainedModel.card``) is what `models.registry` stores as ``card.json`` and in the database.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
from sklearn.pipeline import Pipeline

from models.conformal import (
    ConformalizedQuantile,
    ConformalPValue,
    SplitConformal,
    coverage,
    mean_width,
    min_scores,
)
from models.data import FeatureTable
from models.estimators import ESTIMATORS, check_params, make_pipeline
from models.export import DEFAULT_ATOL, DEFAULT_RTOL, ParityError, ParityReport, check_parity, sha256, to_onnx
from models.schema import Feature, InputSchema

__all__ = ["ESTIMATORS", "GATE_METRICS", "TrainSpec", "TrainedModel", "holdout_metrics", "train"]

# Metrics a card may name for the promotion gate, and which direction is better.
GATE_METRICS = {"mae": "lower", "rmse": "lower", "r2": "higher", "mean_width": "lower", "auc": "higher",
                "far_gap": "lower"}
# Calibration scores kept in the card: they seed the runtime's adaptive intervals (a rolling window of
# recent scores) and give anomaly p-values their reference. Enough for p-values down to 1/5001.
MAX_CARD_SCORES = 5000
MAX_PARITY_ROWS = 5000


@dataclass
class TrainSpec:
    """What to train. ``target`` for regressors; anomaly scorers have none (``label`` optionally names a 0/1
    column: 1 = anomalous, used to leave anomalies out of training and calibration and for the AUC)."""

    model_id: str
    features: Sequence[str]
    target: str | None = None
    estimator: str = "hgb"
    params: dict = field(default_factory=dict)
    label: str | None = None
    alpha: float = 0.1  # 90 % intervals; anomaly: the p-value flag level the card reports the FAR for
    interval: str = "auto"  # "split" | "cqr" | "auto" (cqr when the estimator outputs quantiles)
    calibration_fraction: float = 0.2
    holdout_fraction: float = 0.2
    metric: str | None = None  # the gate's metric; default mae (regression), auc or far_gap (anomaly)
    units: dict = field(default_factory=dict)
    description: str = ""
    parity_atol: float = DEFAULT_ATOL
    parity_rtol: float = DEFAULT_RTOL

    @property
    def kind(self) -> str:
        try:
            return ESTIMATORS[self.estimator].kind
        except KeyError:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}") from None

    def gate_metric(self) -> str:
        if self.metric:
            return self.metric
        if self.kind == "regression":
            return "mae"
        return "auc" if self.label else "far_gap"

    def check(self) -> None:
        kind = self.kind
        problems = []
        if not self.model_id or "/" in self.model_id or self.model_id.startswith("."):
            problems.append(f"model id {self.model_id!r} must be a non-empty name without '/'")
        if not self.features:
            problems.append("no input features")
        if kind == "regression" and not self.target:
            problems.append(f"estimator {self.estimator!r} is a regressor: give a target column")
        if kind == "anomaly" and self.target:
            problems.append(f"estimator {self.estimator!r} is an anomaly scorer: it takes no target")
        if self.target and self.target in self.features:
            problems.append(f"target {self.target!r} is also an input feature")
        if self.label and self.label in self.features:
            problems.append(f"label {self.label!r} is also an input feature")
        if not 0.0 < self.alpha < 1.0:  # NaN fails too; refused before the fit, not by the conformal step after it
            problems.append(f"alpha {self.alpha} must be in (0, 1) (the miscoverage: 0.1 gives 90 % intervals)")
        try:
            check_params(self.estimator, self.params)
        except ValueError as exc:
            problems.append(str(exc))
        if self.estimator == "hgb-cqr" and "alpha" in self.params:
            # Its quantiles are alpha/2 and 1 - alpha/2 of the interval's alpha: a --param alpha was overridden.
            problems.append("hgb-cqr takes its quantiles from the interval's alpha (--alpha), not --param alpha")
        if self.interval not in ("auto", "split", "cqr"):
            problems.append(f"interval must be auto, split or cqr, not {self.interval!r}")
        if self.interval == "cqr" and self.estimator != "hgb-cqr":
            problems.append("cqr intervals need the hgb-cqr estimator (it predicts the quantiles)")
        if not (0 < self.calibration_fraction < 1 and 0 < self.holdout_fraction < 1
                and self.calibration_fraction + self.holdout_fraction < 0.9):
            problems.append("calibration and holdout fractions must be in (0, 1) and leave >= 10 % for training")
        if self.gate_metric() not in GATE_METRICS:
            problems.append(f"gate metric {self.gate_metric()!r} not one of {', '.join(GATE_METRICS)}")
        elif kind == "regression" and self.gate_metric() in ("auc", "far_gap"):
            problems.append(f"gate metric {self.gate_metric()!r} is for anomaly scorers")
        elif kind == "anomaly" and self.gate_metric() not in ("auc", "far_gap"):
            problems.append(f"gate metric {self.gate_metric()!r} is for regressors")
        elif self.gate_metric() == "auc" and not self.label:
            problems.append("the auc gate metric needs a label column")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class TrainedModel:
    """A trained, exported and parity-checked model, ready for `Registry.register`."""

    spec: TrainSpec
    pipeline: Pipeline
    schema: InputSchema
    onnx_bytes: bytes
    sha256: str
    calibration: dict
    parity: ParityReport
    metrics: dict
    card: dict
    holdout: FeatureTable  # the held-out rows (features, target, label): stored with the version for the gate

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def kind(self) -> str:
        return self.spec.kind


# ---------------------------------------------------------------- metrics (shared with the gate)

def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney rank statistic (ties get half credit)."""
    from scipy.stats import rankdata

    pos, neg = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if pos == 0 or neg == 0:
        return math.nan
    r = rankdata(scores)
    return float((r[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def holdout_metrics(card: dict, table: FeatureTable, value: np.ndarray, lower=None, upper=None,
                    p_value=None) -> dict:
    """Metrics of served outputs on the rows of ``table`` (truth from the card's target or label column).

    Regression: mae, rmse, r2, and the coverage and mean width of the (static) intervals. Anomaly: the false
    alarm rate on normal rows at ``p <= alpha`` (``far``), its distance to ``alpha`` (``far_gap``: the
    p-values are calibrated when it is small), and with labels the AUC and detection rate.
    """
    m: dict = {"rows": len(table)}
    if card["kind"] == "regression":
        y = table.column(card["target"])
        e = value - y
        m["mae"] = float(np.mean(np.abs(e)))
        m["rmse"] = float(np.sqrt(np.mean(e**2)))
        ss = float(np.sum((y - y.mean()) ** 2))
        m["r2"] = float(1 - np.sum(e**2) / ss) if ss > 0 else math.nan
        if lower is not None:
            iv = np.column_stack([lower, upper])
            m["coverage"] = coverage(y, iv)
            m["nominal_coverage"] = 1 - card["calibration"]["alpha"]
            m["mean_width"] = mean_width(iv)
        return m
    alpha = card["calibration"]["alpha"]
    labels = table.column(card["label"]).astype(int) if card.get("label") else np.zeros(len(table), dtype=int)
    normal = labels == 0
    flagged = p_value <= alpha
    m["alpha"] = alpha
    m["far"] = float(np.mean(flagged[normal])) if normal.any() else math.nan
    m["far_gap"] = abs(m["far"] - alpha) if normal.any() else math.nan
    m["normal_rows"] = int(normal.sum())
    if card.get("label"):
        m["auc"] = _auc(labels, value)
        m["detection_rate"] = float(np.mean(flagged[~normal])) if (~normal).any() else math.nan
        m["anomalous_rows"] = int((~normal).sum())
    return m


# ---------------------------------------------------------------- training

def _split_points(n: int, spec: TrainSpec) -> tuple[int, int]:
    n_hold = round(n * spec.holdout_fraction)
    n_cal = round(n * spec.calibration_fraction)
    a, b = n - n_hold - n_cal, n - n_hold
    if a < 20 or n_cal < 10 or n_hold < 10:
        raise ValueError(f"{n} rows are too few to split into train/calibration/holdout "
                         f"({a}/{n_cal}/{n_hold}); need at least 20/10/10")
    return a, b


def _time_order(table: FeatureTable) -> FeatureTable:
    """Rows in time order (stable): tables from several files may come in any order of files."""
    if table.times is None or len(table) < 2:
        return table
    t = table.times.astype("datetime64[us]").astype(np.int64)
    if np.all(np.diff(t) >= 0):
        return table
    order = np.argsort(t, kind="stable")
    return FeatureTable({k: v[order] for k, v in table.columns.items()}, table.times[order], [("sorted", 0, len(t))],
                        table.sources)


def _check_unique_times(table: FeatureTable) -> None:
    """`ValueError` when a time is on more than one row (the table in time order). Such rows (a file given twice,
    overlapping exports) trained silently, and the time split could put copies of a training row in the holdout:
    metrics and the gate then judge the model on rows it was fitted on."""
    if table.times is None or len(table) < 2:
        return
    t = table.times.astype("datetime64[us]")
    dup = np.unique(t[1:][t[1:] == t[:-1]])
    if dup.size:
        shown = ", ".join(str(x) for x in dup[:3]) + (" ..." if dup.size > 3 else "")
        raise ValueError(f"{dup.size} time(s) on more than one row ({shown}): rows overlap (a file given twice?); "
                         "drop or merge the duplicates, or the time split may put copies of training rows in the "
                         "holdout")


def _single_row_latency_us(model, x: np.ndarray, repeats: int = 200) -> float:
    """Median single-row onnxruntime latency: measured, so the card says what a version costs to serve."""
    row = np.ascontiguousarray(x[:1], dtype=np.float32)
    for _ in range(20):
        model.run_raw(row)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        model.run_raw(row)
        ts.append(time.perf_counter_ns() - t0)
    return float(np.median(ts) / 1000.0)


def _drift_reference(train_rows: FeatureTable, features: list[str]) -> dict | None:
    """Per-feature reference distribution of the training rows (`models.drift.DriftMonitor`), so drift can be
    checked in service without the training files. 1,000 order statistics per feature keep the card small while
    the KS statistic stays within 1e-3 of the full sample's."""
    try:
        from models.drift import DriftMonitor
    except ImportError:  # drift is an optional part; the card is complete without it
        return None
    return DriftMonitor(train_rows, features, max_reference=1000).to_dict()


def _software() -> dict:
    import onnxruntime
    import skl2onnx
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def train(spec: TrainSpec, table: FeatureTable, *, parent_version: int | None = None,
          progress: Callable[[str], None] | None = None) -> TrainedModel:
    """Fit, calibrate, export, check parity and score ``spec`` on ``table``; raises `ParityError` if the ONNX
    graph does not reproduce the pipeline on the holdout rows (nothing is returned to register then)."""
    from threadpoolctl import threadpool_limits

    from models.runtime import OnnxModel

    say = progress or (lambda msg: None)
    spec.check()
    kind = spec.kind
    features = list(spec.features)
    needed = features + [c for c in (spec.target, spec.label) if c]
    table = _time_order(table)
    _check_unique_times(table)
    full = table.matrix(needed)  # ConfigError naming a missing column
    if not np.all(np.isfinite(full)):
        bad = [c for j, c in enumerate(needed) if not np.all(np.isfinite(full[:, j]))]
        rows = np.flatnonzero(~np.isfinite(full).all(axis=1))
        # which rows: by time when the table has times (its row numbers are after sorting), else by row number
        at = [str(table.times[i]) for i in rows[:3]] if table.times is not None else [str(i) for i in rows[:3]]
        raise ValueError(f"non-finite values in column(s) {', '.join(bad)}, {rows.size} row(s) "
                         f"({'at ' if table.times is not None else 'rows '}{', '.join(at)}"
                         f"{' ...' if rows.size > 3 else ''}): clean or drop those rows first")
    if spec.label:
        # 0 is normal operation (what an anomaly scorer learns), 1 an anomaly; a label of 1/2 or -1/1 (another
        # convention) silently trained on the wrong rows, or on none.
        odd = sorted(set(np.unique(full[:, needed.index(spec.label)]).tolist()) - {0.0, 1.0})
        if odd:
            raise ValueError(f"label column {spec.label} must hold 0 (normal) or 1 (anomaly); it also holds "
                             f"{', '.join(f'{v:g}' for v in odd[:5])}{' ...' if len(odd) > 5 else ''}")
    schema = InputSchema(tuple(Feature(n, spec.units.get(n, "")) for n in features))
    n = len(table)
    a, b = _split_points(n, spec)
    parts = {"train": table.rows(0, a), "calibration": table.rows(a, b), "holdout": table.rows(b, n)}
    say(f"{spec.model_id}: {n} rows -> train {a}, calibration {b - a}, holdout {n - b} (in time order)")

    def xy(part: FeatureTable, normal_only: bool = False):
        X = part.matrix(features).astype(np.float32).astype(np.float64)  # what the float32 graph will see
        y = part.column(spec.target) if spec.target else None
        if normal_only and spec.label:
            keep = part.column(spec.label) == 0
            X = X[keep]
            y = y[keep] if y is not None else None
        return X, y

    X_tr, y_tr = xy(parts["train"], normal_only=kind == "anomaly")
    if y_tr is not None and kind == "regression" and y_tr.size and np.ptp(y_tr) == 0:
        # Its intervals would be 0 wide "at 90 %": a frozen analyser or a wrong column, not a model to serve.
        raise ValueError(f"target {spec.target} is constant ({y_tr[0]:g}) over the {y_tr.size} training rows: "
                         "nothing to learn (a frozen analyser or the wrong column?)")
    if kind == "anomaly" and len(X_tr) < 20:
        raise ValueError(f"only {len(X_tr)} normal training rows: an anomaly scorer needs normal operation data")
    pipeline = make_pipeline(spec.estimator, {**spec.params, **({"alpha": spec.alpha} if spec.estimator == "hgb-cqr"
                                                                 else {})})
    t0 = time.perf_counter()
    # One thread: OpenMP on a busy small machine made HGB fits 10-30x slower (models/README.md).
    with threadpool_limits(1):
        pipeline.fit(X_tr, y_tr)
    fit_s = time.perf_counter() - t0
    say(f"{spec.model_id}: fitted {spec.estimator} on {len(X_tr)} rows in {fit_s:.1f} s")

    onnx_bytes = to_onnx(pipeline, schema, metadata={"model_id": spec.model_id, "kind": kind,
                                                     "target": spec.target or ""})
    X_ho, _ = xy(parts["holdout"])
    parity = check_parity(pipeline, onnx_bytes, X_ho[:MAX_PARITY_ROWS], atol=spec.parity_atol, rtol=spec.parity_rtol)
    say(f"{spec.model_id}: {parity.describe()}")
    if not parity.passed:
        raise ParityError(f"{spec.model_id}: ONNX export refused, {parity.describe()}")
    digest = sha256(onnx_bytes)

    # Calibration on rows the model never saw, with the ONNX outputs (what will be served).
    raw_model = OnnxModel(onnx_bytes, {"model_id": spec.model_id, "kind": kind, "input_schema": schema.to_dict(),
                                       "sha256": digest})
    X_cal, y_cal = xy(parts["calibration"], normal_only=kind == "anomaly")
    out_cal = raw_model.run_raw(X_cal)
    if kind == "regression":
        method = spec.interval
        if method == "auto":
            method = "cqr" if out_cal.shape[1] == 3 else "split"
        if method == "cqr":
            cp = ConformalizedQuantile(alpha=spec.alpha).fit(y_cal, out_cal[:, 1], out_cal[:, 2])
        else:
            cp = SplitConformal(alpha=spec.alpha).fit(y_cal, out_cal[:, 0])
        if not math.isfinite(cp.q_):
            raise ValueError(f"{cp.n_} calibration rows are too few for {1 - spec.alpha:.1%} intervals (need at "
                             f"least {min_scores(spec.alpha)}); give more data or a larger alpha")
        calibration = {**cp.to_dict(), "score": "cqr" if method == "cqr" else "absolute",
                       "scores": cp.scores_[-MAX_CARD_SCORES:].tolist()}
        say(f"{spec.model_id}: {method} conformal on {cp.n_} rows, q = {cp.q_:.4g} ({1 - spec.alpha:.0%} nominal)")
    else:
        if len(X_cal) < 10:
            raise ValueError(f"only {len(X_cal)} normal calibration rows: p-values need normal operation data")
        pv = ConformalPValue().fit(out_cal[:, 0][-MAX_CARD_SCORES:])
        n = pv.calibration_.size
        if n < min_scores(spec.alpha):
            # The smallest conformal p-value is 1/(n+1): a smaller alpha never flags (a holdout FAR of 0 that
            # says nothing); the same rule (min_scores) as maintenance's AnomalyDetector.fit and [maintenance].
            raise ValueError(f"alpha {spec.alpha} is below the p-value resolution 1/(n+1) = {1 / (n + 1):.4f} of "
                             f"{n} normal calibration rows (alpha {spec.alpha} needs {min_scores(spec.alpha)}): "
                             "give more normal data or a larger alpha")
        calibration = {**pv.to_dict(), "alpha": spec.alpha}
        say(f"{spec.model_id}: conformal p-values from {pv.calibration_.size} normal calibration scores")

    card: dict = {
        "model_id": spec.model_id,
        "version": None,  # set by the registry
        "parent_version": parent_version,
        "kind": kind,
        "estimator": spec.estimator,
        "params": dict(spec.params),
        "description": spec.description,
        "target": spec.target,
        "target_unit": spec.units.get(spec.target, "") if spec.target else "",
        "label": spec.label,
        "created_at": datetime.now(UTC).isoformat(),
        "sha256": digest,
        "onnx_bytes": len(onnx_bytes),
        "input_schema": schema.to_dict(),
        "output": {"columns": ["value", "lower_quantile", "upper_quantile"] if out_cal.shape[1] == 3 else
                   ["score" if kind == "anomaly" else "value"]},
        "calibration": calibration,
        "parity": parity.to_dict(),
    }
    raw_model = OnnxModel(onnx_bytes, card)
    out = raw_model.predict(X_ho)
    metrics = holdout_metrics(card, parts["holdout"], out.value, out.lower, out.upper, out.p_value)
    metric = spec.gate_metric()
    card["metrics"] = {"holdout": metrics, "gate": {"metric": metric, "direction": GATE_METRICS[metric]},
                       "fit_seconds": round(fit_s, 3), "onnx_single_row_us": round(_single_row_latency_us(raw_model,
                                                                                                            X_ho), 2)}
    card["training_data"] = {
        "fingerprint": table.fingerprint(needed),
        "span": table.span(),
        "sources": table.sources,
        "split": {"method": "time", "calibration_fraction": spec.calibration_fraction,
                  "holdout_fraction": spec.holdout_fraction,
                  **{k: {"rows": len(v), "span": v.span()} for k, v in parts.items()}},
        # The rows the pipeline was fitted on and the calibration scored: an anomaly scorer with a label column
        # learns from the normal ones only (855 of a 900-row train part at 5 % anomalies), which "rows" alone hid.
        "fitted_rows": len(X_tr),
        "calibration_scored_rows": len(X_cal),
        "holdout_fingerprint": parts["holdout"].fingerprint(needed),
    }
    # The reference of what the model learnt: for a labelled anomaly scorer, normal operation only.
    drift = _drift_reference(parts["train"] if not (kind == "anomaly" and spec.label) else FeatureTable(
        {c: v[parts["train"].column(spec.label) == 0] for c, v in parts["train"].columns.items()}), features)
    if drift is not None:
        card["drift_reference"] = drift
    card["spec"] = {k: v for k, v in asdict(spec).items() if k not in ("params", "units")}
    card["software"] = _software()
    holdout = parts["holdout"]
    holdout = FeatureTable({c: holdout.columns[c] for c in needed}, holdout.times, holdout.segments, holdout.sources)
    say(f"{spec.model_id}: holdout " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                if isinstance(v, float)))
    return TrainedModel(spec, pipeline, schema, onnx_bytes, digest, calibration, parity, metrics, card, holdout)
