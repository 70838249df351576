"""Serving: onnxruntime inference with uncertainty on every output, and hot swap to a new champion.

- `OnnxModel`: one registered version: the ONNX graph and its card. ``predict(X)`` checks the input against the
  card's `InputSchema` (missing / unknown / misordered features, NaN, wrong shape -> `InputError`), runs the
  batch, and returns an `Output`: values plus the static conformal interval (regressors) or conformal p-value
  (anomaly scorers), the model id, the registry version and the ONNX sha256.
- `ModelServer`: serves the champion of one model id from a `models.registry.Registry`. ``refresh()`` loads a
  new champion and swaps one reference: a request that already picked up the old version finishes on it (its
  session stays alive), later ones use the new one; nothing is dropped or blocked. Only the served version's
  session is kept (the old one is freed once its last request is done). Regressors served through it get
  adaptive conformal intervals (rolling window of recent scores + ACI level update) once
  ``observe(truth, ...)`` reports what really happened. The same truth feeds a
  `models.drift.PerformanceMonitor` per served version (rolling MAE against the card's holdout MAE, rolling
  coverage of the served intervals against nominal): ``performance()`` is its status.

This module needs numpy and onnxruntime only (no scikit-learn, no scipy), so it is what a gateway imports.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.conformal import AdaptiveConformal, ConformalizedQuantile, ConformalPValue, SplitConformal
from models.drift import PerformanceMonitor
from models.schema import InputError, InputSchema

__all__ = ["GraphError", "InputError", "IntegrityError", "ModelServer", "OnnxModel", "Output", "check_card",
           "check_version_dir"]

INPUT_NAME = "X"  # models.export.INPUT_NAME (not imported: that module pulls in skl2onnx)


class IntegrityError(ValueError):
    """A version's file (``model.onnx`` or ``card.json``) is not the one registered: refused, never served."""


class GraphError(IntegrityError):
    """An ONNX file this onnxruntime cannot run (damaged, or an opset / IR version newer than it supports): refused
    like a changed file, naming the model and the runtime's reason."""


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    """CPU session, one intra-op thread: single rows are fastest so and a gateway runs many models side by side.
    ``InferenceSession.run`` is thread-safe, so one session serves concurrent requests."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


@dataclass
class Output:
    """A batch of predictions with their uncertainty. ``lower``/``upper`` for regressors (nominal ``coverage``),
    ``p_value`` for anomaly scores; ``raw`` is the graph output (point, and the quantiles of CQR models)."""

    value: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    p_value: np.ndarray | None
    coverage: float | None
    model_id: str
    version: int | None  # registry version number
    model_version: str  # sha256 of the ONNX file
    raw: np.ndarray
    adaptive: bool = False

    @property
    def interval(self) -> np.ndarray | None:
        return None if self.lower is None else np.column_stack([self.lower, self.upper])

    def __len__(self) -> int:
        return self.value.size


def check_card(card, source: str = "the model card") -> None:
    """`IntegrityError` naming ``source`` (a file, an option) unless ``card`` is a JSON object with a usable
    ``input_schema``: another JSON file given as a card (a report.json, a truncated card) failed with a traceback
    or a bare KeyError's text (``error: 'input_schema'``) that named neither the file nor what was missing."""
    if not isinstance(card, dict):
        what = {list: "array", str: "string", bool: "true or false", type(None): "null"}.get(type(card), "number")
        raise IntegrityError(f"{source} is not a model card: a JSON {what}, not an object")
    schema = card.get("input_schema")
    if schema is None:
        raise IntegrityError(f"{source} is not a model card: it has no input_schema (the model's inputs, in order)")
    features = schema.get("features") if isinstance(schema, dict) else None
    if not isinstance(features, list):
        raise IntegrityError(f"{source} input_schema: no list of features")
    for i, f in enumerate(features, 1):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise IntegrityError(f"{source} input_schema: feature {i} has no name")
    try:
        InputSchema.from_dict(schema)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"{source} input_schema: {exc}") from None


def check_version_dir(directory: Path) -> None:
    """`IntegrityError` when a version's whole directory is absent: far more often a registry folder other than the
    one it was registered in (a database index names versions relative to ``--registry``, default ``var/models`` in
    the working directory) than files deleted one by one, which "model.onnx is missing ... moved or deleted" sent
    people looking for."""
    if not Path(directory).is_dir():
        raise IntegrityError(f"{directory} does not exist: the version was registered in another registry folder "
                             "(give that one: --registry DIR, or the `registry` of the site configuration), or its "
                             "directory was moved or deleted after registration")


class OnnxModel:
    """One model version: ONNX graph + card (``input_schema``, ``kind``, ``calibration``, ``sha256``...)."""

    def __init__(self, onnx_bytes: bytes, card: dict, *, source: str = "the model card"):
        """``source`` names the card in errors (its file, or the option that gave it)."""
        check_card(card, source)
        self.card = card
        self.sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        if card.get("sha256") and card["sha256"] != self.sha256:
            raise ValueError(f"{card.get('model_id')}: ONNX file sha256 {self.sha256[:12]} does not match the card's "
                             f"{card['sha256'][:12]}: the file is not the one this card describes (changed after "
                             "registration, or another version's)")
        self.model_id = card.get("model_id", "")
        self.version = card.get("version")
        self.kind = card.get("kind", "regression")
        self.schema = InputSchema.from_dict(card["input_schema"])
        try:
            self.session = _session(onnx_bytes)
        except Exception as exc:  # onnxruntime's own classes (Fail, InvalidProtobuf, InvalidGraph ...) are bare
            # Exceptions: callers that keep the served version on a ValueError let them through (a PEMS not
            # started for good, a gateway that did not start).
            why = re.sub(r"\S+\.(?:h|cc):\d+ .*?\)\s+", "", str(exc)).strip()  # the C++ source line and signature
            raise GraphError(f"{self.model_id} v{self.version}: onnxruntime {ort.__version__} cannot load the ONNX "
                             f"graph: {why[:400]}") from None
        self._output = self.session.get_outputs()[0].name
        cal = card.get("calibration")
        self.calibrator = None
        if cal:
            if self.kind == "anomaly":
                self.calibrator = ConformalPValue.from_dict(cal)
            elif cal.get("method") == "cqr":
                self.calibrator = ConformalizedQuantile.from_dict(cal)
            else:
                self.calibrator = SplitConformal.from_dict(cal)

    @classmethod
    def load(cls, directory: str | Path, *, sha256: str | None = None, card_sha256: str | None = None) -> OnnxModel:
        """A version directory (``model.onnx`` + ``card.json``); ``sha256`` and ``card_sha256`` (from the registry)
        must be those of the files (`IntegrityError` otherwise). The card is parsed from the bytes that were hashed."""
        import json

        d = Path(directory)
        check_version_dir(d)

        def read(name: str) -> bytes:
            # A deleted or moved file is refused like a changed one (the gate records a refusal, a server keeps
            # its version), not a bare FileNotFoundError that names neither the version nor the remedy.
            try:
                return (d / name).read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"{d / name} is missing: the version's files were moved or deleted after "
                                     "registration; restore them, or register the model again") from None

        data, card_bytes = read("model.onnx"), read("card.json")
        for name, content, expected in (("model.onnx", data, sha256), ("card.json", card_bytes, card_sha256)):
            digest = hashlib.sha256(content).hexdigest()
            if expected and digest != expected:
                raise IntegrityError(f"{d / name}: sha256 {digest[:12]} is not the registered {expected[:12]}: "
                                     "the file was changed after registration")
        try:
            card = json.loads(card_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # only without a registered card sha256
            raise IntegrityError(f"{d / 'card.json'} is not a JSON model card ({exc})") from None
        return cls(data, card, source=str(d / "card.json"))

    @property
    def alpha(self) -> float | None:
        cal = self.card.get("calibration") or {}
        return cal.get("alpha")

    def matrix(self, X, columns: Sequence[str] | None = None) -> np.ndarray:
        return self.schema.to_matrix(X, columns=columns)

    def run_raw(self, X) -> np.ndarray:
        """Graph output for a checked float matrix: ``(n, 1)`` or ``(n, 3)`` float64."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        out = np.asarray(self.session.run([self._output], {INPUT_NAME: X32})[0], dtype=np.float64)
        # The graphs give (n, width); reshape(n, -1) cannot infer the width of an empty batch, so keep 2-D as is.
        return out if out.ndim == 2 else out.reshape(-1, 1)

    def _check_output(self, raw: np.ndarray) -> None:
        # Finite float32 inputs can still overflow inside a graph (a scaler and a linear model on a value of 3e38):
        # an inf or NaN value gives an interval of [inf, inf] or NaN, or a NaN p-value, that would be stored and
        # shown as a prediction. Refused like a bad input, naming the rows.
        bad = ~np.isfinite(raw).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if rows.size > 5 else "")
            raise InputError(f"{self.model_id} v{self.version}: the model's output is NaN or infinite for row {shown} "
                             f"({rows.size} of {raw.shape[0]}): its inputs are far outside what it can handle")

    def predict(self, X, *, columns: Sequence[str] | None = None) -> Output:
        """Checked batch inference with the static conformal interval or p-value (`InputError` on bad input, and
        on a graph output that is NaN or infinite: never served as a prediction)."""
        raw = self.run_raw(self.matrix(X, columns))
        self._check_output(raw)
        value = raw[:, 0]
        lower = upper = p = cov = None
        if self.kind == "anomaly":
            if self.calibrator is not None:
                p = self.calibrator.p_value(value)
        elif self.calibrator is not None:
            if isinstance(self.calibrator, ConformalizedQuantile):
                iv = enclosing(self.calibrator.interval(raw[:, 1], raw[:, 2]), value)
            else:
                iv = self.calibrator.interval(value)
            lower, upper, cov = iv[:, 0], iv[:, 1], 1.0 - self.calibrator.alpha
        return Output(value, lower, upper, p, cov, self.model_id, self.version, self.sha256, raw)


def enclosing(iv: np.ndarray, value: np.ndarray) -> np.ndarray:
    """A CQR interval widened, where needed, to hold its own point prediction. The bounds come from the quantile
    models and the point from the median one, fitted apart: now and then (5 of 596 NOx rows of the gas-turbine
    holdout) the point fell outside, and a plant engineer shown "412 [415, 470]" rightly stops trusting either.
    Widening keeps the coverage guarantee (a wider interval covers whatever the narrower one did)."""
    v = np.asarray(value, dtype=np.float64).ravel()
    return np.column_stack([np.minimum(iv[:, 0], v), np.maximum(iv[:, 1], v)])


@dataclass(frozen=True)
class _Serving:
    """What one request uses, taken as a single reference so a swap can never mix two versions."""

    version: int
    model: OnnxModel
    adaptive: AdaptiveConformal | None
    lock: threading.Lock
    performance: PerformanceMonitor | None = None  # this version's performance drift (None: anomaly / no MAE)


class ModelServer:
    """Serves the champion of ``model_id``; ``refresh()`` hot-swaps to a new champion.

    ``adaptive=True`` gives regressors adaptive conformal intervals: a rolling window of the last ``window``
    nonconformity scores (seeded from the card's calibration scores) with the ACI step ``gamma``; ``observe``
    feeds it the truth as it arrives, so the intervals widen when recent errors grow (drift). Anomaly models
    always use their card's p-value calibration.

    ``observe`` also feeds a `models.drift.PerformanceMonitor` of the served version (regressors whose card has a
    holdout MAE): the last ``performance_window`` revealed rows' MAE against that holdout MAE and the coverage of
    the intervals as served against nominal; ``performance()`` gives its status (``ok`` / ``warn`` / ``drift`` /
    ``unknown``). A new champion starts a new monitor: the old one's errors say nothing about it.
    """

    def __init__(self, registry, model_id: str, *, adaptive: bool = True, window: int = 500, gamma: float = 0.005,
                 performance_window: int = 168, performance_min_rows: int = 24,
                 accept: Callable[[object], None] | None = None):
        self.registry = registry
        self.model_id = model_id
        # Called with the registry version about to be served (a `models.registry.ModelVersion`); raising refuses it
        # and the served version goes on. A consumer's own check of the champion (its inputs mapped to tags) is a
        # separate registry read: a promotion or a rollback between the two put an unchecked version in service.
        self.accept = accept
        self.adaptive = adaptive
        self.window = window
        self.gamma = gamma
        self.performance_window = performance_window
        self.performance_min_rows = performance_min_rows
        self._models: dict[int, OnnxModel] = {}  # the served version's session (older ones are released on a swap)
        self._swap_lock = threading.Lock()
        self._serving: _Serving | None = None
        self.swaps = 0
        if not self.refresh():
            raise LookupError(f"model {model_id!r} has no champion to serve (promote a version first)")

    # ---------------------------------------------------------------- versions

    @property
    def version(self) -> int:
        return self._serving.version

    @property
    def model(self) -> OnnxModel:
        return self._serving.model

    def _load(self, mv) -> OnnxModel:
        m = self._models.get(mv.version)
        if m is None or m.sha256 != mv.sha256:  # a version number the index reused for other files
            m = mv.load()  # models.registry.ModelVersion: both files checked against the registry
            self._models[mv.version] = m
        return m

    def refresh(self) -> bool:
        """Serve the registry's current champion; True when it changed. The new session is built before the
        swap, and the swap is one reference assignment: in-flight calls finish on the version they started on."""
        with self._swap_lock:
            mv = self.registry.champion(self.model_id)
            if mv is None:
                return False
            current = self._serving
            # The number alone is not the version: an index that lost rows (restored from a backup) numbers the
            # next registration as an old one, and the champion under that number is then another graph.
            if current is not None and current.version == mv.version and current.model.sha256 == mv.sha256:
                return False
            if self.accept is not None:
                self.accept(mv)
            model = self._load(mv)
            ac = None
            cal = model.card.get("calibration") or {}
            if self.adaptive and model.kind == "regression" and cal.get("scores"):
                ac = AdaptiveConformal(cal["alpha"], window=self.window, gamma=self.gamma,
                                       score=cal.get("score", "absolute")).start(cal["scores"])
            self._serving = _Serving(mv.version, model, ac, threading.Lock(), self._performance_monitor(model))
            # Only the served version stays cached: a gateway that runs for months through weekly promotions kept
            # every version's session and card (5,000 scores, the drift reference) for good. A request still on the
            # old version holds its own reference until it finishes; a rollback to it loads it again.
            for v in [v for v in self._models if v != mv.version]:
                del self._models[v]
            if current is not None:
                self.swaps += 1
            return True

    def _performance_monitor(self, model: OnnxModel) -> PerformanceMonitor | None:
        if model.kind != "regression":
            return None
        mae = ((model.card.get("metrics") or {}).get("holdout") or {}).get("mae")
        if mae is None or not np.isfinite(mae) or mae <= 0:
            return None
        return PerformanceMonitor(float(mae), alpha=model.alpha if model.alpha is not None else 0.1,
                                  window=self.performance_window, min_rows=self.performance_min_rows)

    def performance(self) -> dict:
        """Performance drift of the served version from the truth `observe` was given: `PerformanceMonitor.status`
        (``status`` ok / warn / drift / unknown, rolling MAE and its ratio to the holdout MAE, rolling coverage)
        plus ``model_id`` and ``version``. ``unknown`` with a ``reason`` when the model has no monitor."""
        s = self._serving
        head = {"model_id": self.model_id, "version": s.version}
        if s.performance is None:
            why = ("anomaly scorers have no error to track" if s.model.kind != "regression"
                   else "the model card has no holdout MAE")
            return {**head, "status": "unknown", "reason": why}
        with s.lock:
            return {**head, **s.performance.status()}

    # ---------------------------------------------------------------- inference

    def infer(self, X, *, columns: Sequence[str] | None = None) -> Output:
        """`OnnxModel.predict` on the champion, with adaptive intervals for regressors when enabled."""
        return self._infer(self._serving, X, columns)  # one read: the whole request uses this version

    @staticmethod
    def _infer(s: _Serving, X, columns) -> Output:
        out = s.model.predict(X, columns=columns)
        if s.adaptive is not None:
            with s.lock:
                if s.adaptive.score == "cqr":
                    iv = enclosing(s.adaptive.interval(lower=out.raw[:, 1], upper=out.raw[:, 2]), out.value)
                else:
                    iv = s.adaptive.interval(out.value)
            out.lower, out.upper, out.adaptive = iv[:, 0], iv[:, 1], True
        return out

    def predict(self, X, *, columns: Sequence[str] | None = None, return_interval: bool = False,
                return_pvalue: bool = False):
        """Values; with ``return_interval`` ``(values, (n, 2) interval)``; with ``return_pvalue``
        ``(scores, p_values)``. `infer` gives everything including the version."""
        out = self.infer(X, columns=columns)
        if return_interval:
            if out.lower is None:
                raise ValueError(f"model {self.model_id} is an anomaly scorer: it gives p-values, not intervals")
            return out.value, out.interval
        if return_pvalue:
            if out.p_value is None:
                raise ValueError(f"model {self.model_id} is a regressor: it gives intervals, not p-values")
            return out.value, out.p_value
        return out.value

    def predict_records(self, X, *, asset: str, times: Sequence[datetime], target: str | None = None,
                        columns: Sequence[str] | None = None) -> list:
        """`edge.records.Prediction` per row: value, interval or p-value, model id and ONNX sha256; the registry
        version number, for CQR models the predicted quantiles, and for anomaly scorers the card's ``alpha`` are in
        ``details``."""
        from edge.records import Prediction

        s = self._serving
        out = self._infer(s, X, columns)
        if len(times) != len(out):
            raise InputError(f"{len(times)} timestamps for {len(out)} input rows")
        kind = s.model.kind
        target = target if target is not None else (s.model.card.get("target") or "")
        preds = []
        for i, t in enumerate(times):
            details = {"registry_version": out.version, "adaptive": out.adaptive}
            if out.raw.shape[1] == 3:
                details["lower_quantile"], details["upper_quantile"] = float(out.raw[i, 1]), float(out.raw[i, 2])
            if out.p_value is not None:
                # The false-alarm level of the card, as maintenance's detectors store it: without it a stored
                # p-value does not say whether it was an alarm (console threshold line, review list).
                if s.model.alpha is not None:
                    details["alpha"] = s.model.alpha
                preds.append(Prediction(out.model_id, out.model_version, asset, t, float(out.value[i]),
                                        p_value=float(out.p_value[i]), kind="anomaly", target=target,
                                        details=details))
            else:
                preds.append(Prediction(out.model_id, out.model_version, asset, t, float(out.value[i]),
                                        lower=None if out.lower is None else float(out.lower[i]),
                                        upper=None if out.upper is None else float(out.upper[i]),
                                        coverage=out.coverage, kind=kind, target=target, details=details))
        return preds

    def observe(self, y_true, predictions) -> int:
        """The truth of earlier predictions arrived (in time order): update the adaptive intervals and the
        performance monitor (`performance`). ``predictions`` is an `Output` or a list of `Prediction`. Truth for
        another version than the one now served is ignored (its errors say nothing about the new model).
        Returns how many rows were used."""
        s = self._serving
        if s.adaptive is None and s.performance is None:
            return 0
        y = np.asarray(y_true, dtype=np.float64).ravel()
        if isinstance(predictions, Output):
            if predictions.model_version != s.model.sha256:
                return 0
            value, raw, iv = predictions.value, predictions.raw, predictions.interval
        else:
            keep = [i for i, p in enumerate(predictions) if p.model_version == s.model.sha256]
            if not keep:
                return 0
            if y.size != len(predictions):
                raise InputError(f"{y.size} true values for {len(predictions)} predictions")
            y = y[keep]
            ps = [predictions[i] for i in keep]
            value = np.array([p.value for p in ps])
            iv = (None if all(p.lower is None for p in ps)
                  else np.array([[p.lower, p.upper] for p in ps], dtype=np.float64))
            if s.adaptive is not None and s.adaptive.score == "cqr":
                raw = np.array([[p.value, p.details["lower_quantile"], p.details["upper_quantile"]] for p in ps])
            else:
                raw = value.reshape(-1, 1)
        if y.size != value.size:
            raise InputError(f"{y.size} true values for {value.size} predictions")
        with s.lock:
            if s.adaptive is not None:
                if s.adaptive.score == "cqr":
                    s.adaptive.update(y, lower=raw[:, 1], upper=raw[:, 2], interval=iv)
                else:
                    s.adaptive.update(y, value, interval=iv)
            if s.performance is not None:
                s.performance.update(y, value, interval=iv)
        return int(y.size)
