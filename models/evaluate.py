"""Metrics and the evaluation protocol: static and streaming, on what is served (the ONNX graph).

- `regression_metrics`: MAE, RMSE, R², Spearman rank correlation and, with intervals, empirical coverage
  and mean width (non-finite rows left out).
- `stream`: the streaming mode. Rows in time order; each row is predicted, then (after ``delay`` further
  rows) its truth is revealed, as a PEMS beside a working analyser sees it. Two things adapt to the
  revealed truth: the intervals (`models.conformal.AdaptiveConformal`: rolling window of recent scores plus
  the ACI level step) and, with ``bias_halflife``, the point prediction: an exponentially weighted mean of
  recent residuals is added to the model output (the model's offset follows slow plant and analyser
  changes between recalibrations; the ONNX graph itself is unchanged).
- `windowed`: coverage, width and error per consecutive window of rows (the report's "over time").
- `evaluate_gas_turbine`: the data README's protocol on the UCI gas-turbine files: fit on the training
  years (the last ``calibration_share`` of them, in time order, calibrate the interval and are never
  fitted), export to ONNX with the parity check, then predict the test year(s) with onnxruntime in two
  modes: **static** (split-conformal interval, never sees the test truth) and **streaming** (`stream`). A
  linear baseline is run through the same modes; the issue's bars are evaluated and reported.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.conformal import AdaptiveConformal, SplitConformal

__all__ = ["StreamResult", "evaluate_gas_turbine", "fit_onnx", "regression_metrics", "stream", "windowed"]


def regression_metrics(y_true, y_pred, interval=None) -> dict:
    """MAE, RMSE, R², Spearman and (with ``interval`` ``(n, 2)``) coverage and mean width; NaN rows ignored."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.size != p.size:
        raise ValueError(f"{y.size} true values for {p.size} predictions")
    ok = np.isfinite(y) & np.isfinite(p)
    iv = None
    if interval is not None:
        iv = np.asarray(interval, dtype=np.float64).reshape(-1, 2)
        ok &= np.all(np.isfinite(iv), axis=1)
        iv = iv[ok]
    y, p = y[ok], p[ok]
    n = int(y.size)
    out: dict = {"n": n}
    if n == 0:
        out.update(mae=math.nan, rmse=math.nan, r2=math.nan, spearman=math.nan)
    else:
        e = y - p
        ss = float(np.sum((y - y.mean()) ** 2))
        out["mae"] = float(np.mean(np.abs(e)))
        out["rmse"] = float(np.sqrt(np.mean(e**2)))
        out["r2"] = float(1.0 - np.sum(e**2) / ss) if ss > 0 else math.nan
        out["spearman"] = _spearman(y, p)
    if iv is not None:
        out["coverage"] = float(np.mean((iv[:, 0] <= y) & (y <= iv[:, 1]))) if n else math.nan
        out["mean_width"] = float(np.mean(iv[:, 1] - iv[:, 0])) if n else math.nan
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class StreamResult:
    """Per-row output of `stream`: the served point (after bias correction), interval, and the adaptive state."""

    point: np.ndarray
    raw: np.ndarray  # model output before the bias correction
    lower: np.ndarray
    upper: np.ndarray
    q: np.ndarray  # half-width used for the row
    alpha_t: np.ndarray  # ACI level used for the row
    params: dict = field(default_factory=dict)

    @property
    def interval(self) -> np.ndarray:
        return np.column_stack([self.lower, self.upper])

    def metrics(self, y_true) -> dict:
        return regression_metrics(y_true, self.point, self.interval)


def _bias_step(halflife: float | None) -> float:
    if not halflife:
        return 0.0
    if halflife <= 0:
        raise ValueError(f"bias_halflife must be positive, got {halflife}")
    return 1.0 - 0.5 ** (1.0 / halflife)


def stream(y_pred, y_true, calibration_scores, *, alpha: float = 0.1, window: int = 168, gamma: float = 0.005,
           bias_halflife: float | None = None, delay: int = 0, bias0: float = 0.0) -> StreamResult:
    """Streaming evaluation of predictions ``y_pred`` (model output in time order) against ``y_true``.

    For row ``i``: serve ``y_pred[i] + b`` with the current adaptive interval, then reveal truths up to row
    ``i - delay`` (``delay=0``: this row's truth arrives before the next prediction), which update the
    interval (`AdaptiveConformal`, started from ``calibration_scores``) and the bias ``b`` (exponential
    mean of residuals with half-life ``bias_halflife`` rows; ``None`` = no bias correction). NaN truths
    (analyser down) teach nothing.
    """
    raw = np.asarray(y_pred, dtype=np.float64).ravel()
    y = np.asarray(y_true, dtype=np.float64).ravel()
    if raw.size != y.size:
        raise ValueError(f"{y.size} true values for {raw.size} predictions")
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    n = raw.size
    lam = _bias_step(bias_halflife)
    ac = AdaptiveConformal(alpha=alpha, window=window, gamma=gamma).start(calibration_scores)
    point, lo, hi = np.empty(n), np.empty(n), np.empty(n)
    qs, alphas = np.empty(n), np.empty(n)
    b = float(bias0)
    pending: deque[int] = deque()
    for i in range(n):
        point[i] = raw[i] + b
        qs[i], alphas[i] = ac.q, ac.level_alpha
        lo[i], hi[i] = point[i] - qs[i], point[i] + qs[i]
        pending.append(i)
        while pending and pending[0] <= i - delay:
            j = pending.popleft()
            if not math.isfinite(y[j]):
                continue
            ac.update(y[j:j + 1], point[j:j + 1], interval=np.array([[lo[j], hi[j]]]))
            if lam:
                b += lam * ((y[j] - raw[j]) - b)
    return StreamResult(point, raw, lo, hi, qs, alphas,
                        {"alpha": alpha, "window": window, "gamma": gamma, "bias_halflife": bias_halflife,
                         "delay": delay})


def windowed(y_true, y_pred, interval, window: int = 168) -> dict:
    """Coverage, mean width and MAE per consecutive window of ``window`` rows (the last may be shorter)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    iv = np.asarray(interval, dtype=np.float64).reshape(-1, 2)
    out: dict = {"window": window, "start": [], "end": [], "coverage": [], "mean_width": [], "mae": []}
    for a in range(0, y.size, window):
        b = min(a + window, y.size)
        m = regression_metrics(y[a:b], p[a:b], iv[a:b])
        out["start"].append(a)
        out["end"].append(b)
        out["coverage"].append(m["coverage"])
        out["mean_width"].append(m["mean_width"])
        out["mae"].append(m["mae"])
    return out


# ---------------------------------------------------------------- fitting + ONNX, for the evaluation

@dataclass
class OnnxFit:
    """A pipeline fitted for evaluation, its ONNX export (what is served) and its split-conformal calibration."""

    estimator: str
    features: list[str]
    target: str
    onnx_bytes: bytes
    version: str  # sha256 of the ONNX bytes
    predict: Callable[[np.ndarray], np.ndarray]  # onnxruntime, (n, k) -> (n,)
    conformal: SplitConformal
    calibration_y: np.ndarray
    calibration_pred: np.ndarray
    parity: dict
    fit_rows: int
    fit_seconds: float


def fit_onnx(X: np.ndarray, y: np.ndarray, features: Sequence[str], target: str, *, estimator: str = "hgb",
             alpha: float = 0.1, calibration_share: float = 0.2, units: dict | None = None) -> OnnxFit:
    """Fit ``estimator`` on the first ``1 - calibration_share`` rows, export to ONNX, check parity on the rest
    (raises `models.export.ParityError`), calibrate split conformal on the rest with the ONNX predictions."""
    from threadpoolctl import threadpool_limits

    from models.estimators import make_pipeline
    from models.export import INPUT_NAME, ParityError, check_parity, session, sha256, to_onnx
    from models.schema import InputSchema

    _check_regressor(estimator)
    # The graph takes float32: fit on float32-representable values so no split falls between a value and
    # its float32 rounding (see models.export).
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    k = int(len(y) * (1.0 - calibration_share))
    if k < 10 or len(y) - k < 10:
        raise ValueError(f"too few rows to fit and calibrate: {len(y)} (fit {k}, calibrate {len(y) - k})")
    pipe = make_pipeline(estimator)
    t0 = time.perf_counter()
    with threadpool_limits(1):
        pipe.fit(X[:k], y[:k])
    fit_s = time.perf_counter() - t0
    schema = InputSchema.of(list(features), units or {})
    onnx_bytes = to_onnx(pipe, schema, metadata={"target": target, "estimator": estimator})
    parity = check_parity(pipe, onnx_bytes, X[k:])
    if not parity.passed:
        raise ParityError(f"{estimator} for {target}: {parity.describe()}")
    sess = session(onnx_bytes)

    def predict(rows: np.ndarray) -> np.ndarray:
        out = sess.run(None, {INPUT_NAME: np.ascontiguousarray(rows, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)[:, 0]

    cal_pred = predict(X[k:])
    sc = SplitConformal(alpha=alpha).fit(y[k:], cal_pred)
    return OnnxFit(estimator, list(features), target, onnx_bytes, sha256(onnx_bytes), predict, sc, y[k:], cal_pred,
                   parity.to_dict(), k, fit_s)


def _check_regressor(name: str) -> None:
    """`ValueError` unless ``name`` is a regressor of the catalogue: an anomaly scorer fits a distance to the inputs,
    and its output scored against the target read as a (bad) model with MAE and a coverage that looked fine."""
    from models.catalogue import CATALOGUE

    regressors = [k for k, e in CATALOGUE.items() if e.kind == "regression"]
    if name not in regressors:
        what = "an anomaly scorer" if name in CATALOGUE else "not an estimator"
        raise ValueError(f"estimator {name!r} is {what}: the evaluation needs a regressor, one of "
                         f"{', '.join(regressors)}")


def _stream_calibration_scores(fit: OnnxFit, bias_halflife: float | None) -> np.ndarray:
    """Scores of the streaming predictor on the calibration rows: with bias correction, the residuals of the
    corrected predictions (run through the calibration rows in time order), so the start matches the mode."""
    if not bias_halflife:
        return fit.conformal.scores_
    lam = _bias_step(bias_halflife)
    b, s = 0.0, np.empty(fit.calibration_y.size)
    for i, (yt, p) in enumerate(zip(fit.calibration_y, fit.calibration_pred, strict=True)):
        s[i] = abs(yt - (p + b))
        b += lam * ((yt - p) - b)
    return s


def _run_modes(fit: OnnxFit, X: np.ndarray, y: np.ndarray, *, alpha: float, window: int, gamma: float,
               bias_halflife: float | None, delay: int) -> tuple[dict, np.ndarray, StreamResult, StreamResult]:
    yhat = fit.predict(X)
    static_iv = fit.conformal.interval(yhat)
    # The bias state at the end of the calibration rows carries over: they are the hours just before the test.
    b0 = 0.0
    if bias_halflife:
        lam = _bias_step(bias_halflife)
        for yt, p in zip(fit.calibration_y, fit.calibration_pred, strict=True):
            b0 += lam * ((yt - p) - b0)
    st = stream(yhat, y, _stream_calibration_scores(fit, bias_halflife), alpha=alpha, window=window, gamma=gamma,
                bias_halflife=bias_halflife, delay=delay, bias0=b0)
    intervals_only = stream(yhat, y, fit.conformal.scores_, alpha=alpha, window=window, gamma=gamma, delay=delay)
    res = {"estimator": fit.estimator, "model_version": fit.version, "parity": fit.parity,
           "fit_rows": fit.fit_rows, "calibration_rows": int(fit.calibration_y.size),
           "fit_seconds": round(fit.fit_seconds, 3), "static_q": fit.conformal.q_,
           "static": regression_metrics(y, yhat, static_iv),
           "streaming": st.metrics(y),
           "streaming_intervals_only": intervals_only.metrics(y)}
    return res, static_iv, st, intervals_only


def evaluate_gas_turbine(folder: str | Path, train_years: Sequence[int | str], test_years: Sequence[int | str],
                         targets: Sequence[str] = ("NOX", "CO"), *, estimator: str = "hgb",
                         baseline: str | None = "linear", alpha: float = 0.1, window: int = 168,
                         gamma: float = 0.005, bias_halflife: float | None = 24.0, delay: int = 0,
                         calibration_share: float = 0.2, series_window: int = 168,
                         progress: Callable[[str], None] | None = None, keep: bool = False) -> dict:
    """Train on ``train_years``, evaluate on ``test_years`` (files ``gt_<year>.csv`` of ``folder``), per target.
    A year in both is refused (`ValueError`).

    Returns a JSON-able dict: per target and model (``estimator`` and the ``baseline``), static and
    streaming metrics; coverage / width / MAE per ``series_window`` rows for the static and streaming
    intervals; input drift of the test rows per feature against the training rows; and the issue's bars
    (streaming coverage within ±2 points of nominal, MAE at least 30 % below the baseline's in the same
    mode). With ``keep`` the per-row arrays and fits are added under ``"_arrays"`` (not JSON; for reports).
    """
    from models.data import GAS_TURBINE_INPUTS, GAS_TURBINE_UNITS, load_gas_turbine
    from models.drift import DriftMonitor

    say = progress or (lambda _msg: None)
    targets = [targets] if isinstance(targets, str) else list(targets)
    for name in [estimator] + ([baseline] if baseline else []):
        _check_regressor(name)
    if baseline == estimator:  # one result under both names: the "MAE reduction" against itself, 0 %
        raise ValueError(f"--baseline {baseline} is the estimator itself: give another regressor, or none")
    # A year on both sides would be fitted and calibrated on the very rows it is scored on: flattering metrics
    # reported as the evaluation (the data README: never train on an evaluation part).
    both = sorted({str(y) for y in train_years} & {str(y) for y in test_years})
    if both:
        raise ValueError(f"year(s) {', '.join(both)} given as both training and test years: the evaluation would "
                         "score rows the model was fitted or calibrated on")
    inputs = sorted(set(targets) & set(GAS_TURBINE_INPUTS))
    if inputs:
        # `--target AT` fitted AT from itself: MAE 0.000, R² 1.000 printed as an evaluation.
        raise ValueError(f"target(s) {', '.join(inputs)} are inputs of the gas-turbine models "
                         f"({', '.join(GAS_TURBINE_INPUTS)}): predicting an input from itself scores nothing; "
                         "the targets are CO and NOX")
    train = load_gas_turbine(folder, list(train_years))
    test = load_gas_turbine(folder, list(test_years))
    features = list(GAS_TURBINE_INPUTS)
    X, Xt = train.matrix(features), test.matrix(features)
    say(f"data: train {', '.join(map(str, train_years))} ({len(train)} rows), test "
        f"{', '.join(map(str, test_years))} ({len(test)} rows)")
    drift = DriftMonitor(train, features).check(test)
    nominal = 1.0 - alpha
    out: dict = {"data": str(folder), "train_years": [str(y) for y in train_years],
                 "test_years": [str(y) for y in test_years], "train_rows": len(train), "test_rows": len(test),
                 "train_fingerprint": train.fingerprint(features), "test_fingerprint": test.fingerprint(features),
                 "alpha": alpha, "nominal_coverage": nominal,
                 "streaming": {"window": window, "gamma": gamma, "bias_halflife": bias_halflife, "delay": delay},
                 "input_drift": drift, "targets": {}}
    arrays: dict = {}
    for target in targets:
        y, yt = train.column(target), test.column(target)
        tres: dict = {"models": {}}
        for name in [estimator] + ([baseline] if baseline else []):
            say(f"{target}: fitting {name} on {int(len(y) * (1 - calibration_share))} rows, exporting to ONNX")
            f = fit_onnx(X, y, features, target, estimator=name, alpha=alpha, calibration_share=calibration_share,
                         units=GAS_TURBINE_UNITS)
            say(f"{target}: {name} parity {'pass' if f.parity['passed'] else 'FAIL'}; streaming {len(yt)} rows")
            res, static_iv, st, _ = _run_modes(f, Xt, yt, alpha=alpha, window=window, gamma=gamma,
                                               bias_halflife=bias_halflife, delay=delay)
            res["over_time"] = {"static": windowed(yt, st.raw, static_iv, series_window),
                                "streaming": windowed(yt, st.point, st.interval, series_window)}
            tres["models"][name] = res
            arrays[(target, name)] = {"y": yt, "static_interval": static_iv, "stream": st, "fit": f}
            say(f"{target}: {name} MAE static {res['static']['mae']:.3f} streaming {res['streaming']['mae']:.3f}; "
                f"coverage static {res['static']['coverage']:.3f} streaming {res['streaming']['coverage']:.3f}")
        main = tres["models"][estimator]
        bars = {"streaming_coverage": main["streaming"]["coverage"],
                "streaming_coverage_within_2_points": abs(main["streaming"]["coverage"] - nominal) <= 0.02 + 1e-12}
        if baseline:
            base = tres["models"][baseline]
            for mode in ("static", "streaming"):
                gain = 1.0 - main[mode]["mae"] / base[mode]["mae"]
                bars[f"{mode}_mae_reduction_vs_{baseline}"] = gain
            bars["streaming_mae_30pct_below_baseline"] = bars[f"streaming_mae_reduction_vs_{baseline}"] >= 0.30
        tres["bars"] = bars
        out["targets"][target] = tres
    if keep:
        out["_arrays"] = {"test": test, "train": train, "features": features, "by_model": arrays}
    return out
