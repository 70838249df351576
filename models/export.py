"""ONNX export (skl2onnx) and the parity check that decides whether an export may be registered.

Parity: the ONNX graph and the scikit-learn pipeline are run on the same held-out rows; the export
passes when every output satisfies ``|onnx - sklearn| <= atol * s + rtol * |sklearn|`` with
``s = min(1, max |sklearn|)`` over those rows (defaults ``atol = rtol = 1e-4``; float32 inference against
float64 scikit-learn differs by ~1e-6 of the outputs' scale on these models, while a wrongly converted tree
or graph differs by whole leaf values). ``s`` keeps the absolute part on the outputs' scale: a bare 1e-4 passed
a graph with every leaf doubled on a target of magnitude 1e-5 (m/s); for outputs of magnitude 1 or more the
tolerance is ``atol + rtol * |sklearn|`` as it always was. Both sides see the
same float32 inputs, because that is what the runtime feeds the graph: a threshold that splits two
float64 values which round to the same float32 is an input-precision effect, not a conversion fault.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx as _skl_to_onnx
from skl2onnx import update_registered_converter
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.common import tree_ensemble as _tree_ensemble
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from edge.errors import DataError
from models.estimators import (
    IsolationForestScorer,
    MahalanobisScorer,
    PCAResidualScorer,
    QuantileBandRegressor,
    model_output,
)
from models.schema import InputSchema

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "X"
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


class ParityError(DataError):
    """The ONNX export does not reproduce the scikit-learn model within tolerance: it is not registered."""


@dataclass(frozen=True)
class ParityReport:
    """Result of one parity check; ``passed`` iff every output is within ``atol * scale + rtol * |sklearn|``."""

    rows: int
    max_abs: float
    max_rel: float
    worst_excess: float  # max of |d| - (atol * scale + rtol |ref|); <= 0 means within tolerance
    atol: float
    rtol: float
    passed: bool
    scale: float = 1.0  # min(1, max |sklearn|) on the rows; cards written before it was recorded used 1

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        s, scale = ("", "") if self.scale == 1.0 else ("·s", f", s = min(1, max |sklearn|) = {self.scale:.3g}")
        return (f"parity {verdict}: {self.rows} rows, max |onnx - sklearn| = {self.max_abs:.3g}, max relative = "
                f"{self.max_rel:.3g} (tolerance {self.atol:g}{s} + {self.rtol:g}·|sklearn|{scale})")


# ---------------------------------------------------------------- skl2onnx compatibility

def _patch_tree_missing_flags() -> None:
    """Two fixes to skl2onnx 1.20's tree nodes, applied where it adds each node (idempotent):

    - it passes Python/numpy booleans for ``nodes_missing_value_tracks_true`` when it converts a
      HistGradientBoosting model; onnx 1.23's ``make_attribute`` rejects booleans in an int list ("Expected an
      int, got a boolean"). Cast them to int before they reach onnx.
    - a split's float64 threshold is stored as the *nearest* float32 (``nodes_values`` is a float list), while
      scikit-learn compares the float32 input with the float64 threshold. A HistGradientBoosting threshold is
      the midpoint of two adjacent bin values; for adjacent float32 values (1018.39996 and 1018.4 in a pressure
      column) the midpoint rounds onto the upper one, so rows at exactly that value took the other branch in
      the graph: a whole leaf off on real data, and parity refused the export. Stored instead as the largest
      float32 not above the threshold (skl2onnx's own `sklearn_threshold`), for which ``x <= t32`` holds
      exactly when ``x <= t64`` for every float32 ``x``: the graph routes every input as scikit-learn does."""
    if getattr(_tree_ensemble.add_node, "_valvoja_patched", False):
        return
    original = _tree_ensemble.add_node

    @functools.wraps(original)
    def add_node(attr_pairs, is_classifier, tree_id, tree_weight, node_id, feature_id, mode, value, *args,
                 nodes_missing_value_tracks_true=0, **kwargs):
        if mode == "BRANCH_LEQ":
            value = float(_tree_ensemble.sklearn_threshold(value, np.float32, mode))
        return original(attr_pairs, is_classifier, tree_id, tree_weight, node_id, feature_id, mode, value, *args,
                        nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    add_node._valvoja_patched = True
    _tree_ensemble.add_node = add_node


def _shape_n_by(width: int):
    def shape(operator):
        n = operator.inputs[0].type.shape[0]
        operator.outputs[0].type = FloatTensorType([n, width])
    return shape


def _convert_band(scope, operator, container):
    """Point, lower, upper sub-models on the same input, concatenated into ``(n, 3)``."""
    from skl2onnx.algebra.onnx_ops import OnnxConcat

    op, opv, X = operator.raw_operator, container.target_opset, operator.inputs[0]
    subs = [OnnxSubEstimator(m, X, op_version=opv) for m in (op.point_, op.lower_, op.upper_)]
    OnnxConcat(*subs, axis=1, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)


def _convert_quadratic(scope, operator, container):
    """``sum(((x - location) @ L)^2)`` as Sub, Sub, MatMul, Mul, MatMul(ones). The location is subtracted in two
    float32 parts, its nearest float32 and then what that rounding left: ``x - hi`` is exact for inputs near it, so
    ``x - location`` is as exact as the float32 input itself. In one part, a location of 1000.3 was off by up to
    3e-5, which the scorers' small residual directions magnified to 1 % of the score."""
    from skl2onnx.algebra.onnx_ops import OnnxMatMul, OnnxMul, OnnxSub

    op, opv, X = operator.raw_operator, container.target_opset, operator.inputs[0]
    loc = np.asarray(op.location_, dtype=np.float64).reshape(1, -1)
    hi = loc.astype(np.float32)
    lo = (loc - hi.astype(np.float64)).astype(np.float32)
    L = op.L_.astype(np.float32)
    ones = np.ones((L.shape[1], 1), dtype=np.float32)
    centred = OnnxSub(OnnxSub(X, hi, op_version=opv), lo, op_version=opv)
    z = OnnxMatMul(centred, L, op_version=opv)
    OnnxMatMul(OnnxMul(z, z, op_version=opv), ones, op_version=opv,
               output_names=operator.outputs[:1]).add_to(scope, container)


def _convert_iforest(scope, operator, container):
    """IsolationForest's ``scores`` output (decision_function), negated: larger = more anomalous."""
    from skl2onnx.algebra.onnx_ops import OnnxNeg

    op, opv, X = operator.raw_operator, container.target_opset, operator.inputs[0]
    scores = OnnxSubEstimator(op.forest_, X, op_version=opv)[1]
    OnnxNeg(scores, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)


@functools.cache
def _register_converters() -> None:
    _patch_tree_missing_flags()
    update_registered_converter(QuantileBandRegressor, "ValvojaQuantileBand", _shape_n_by(3), _convert_band)
    for cls, name in ((MahalanobisScorer, "ValvojaMahalanobis"), (PCAResidualScorer, "ValvojaPCAResidual")):
        update_registered_converter(cls, name, _shape_n_by(1), _convert_quadratic)
    update_registered_converter(IsolationForestScorer, "ValvojaIsolationForest", _shape_n_by(1), _convert_iforest)


# ---------------------------------------------------------------- export

def _fold_scaler(pipeline: Pipeline):
    """A StandardScaler + quadratic scorer pipeline as one scorer in raw input units (the same function:
    ``((x - m) / s - loc) @ L = (x - (m + loc s)) @ (L / s)``), so its graph subtracts the centre in two float32 parts
    (`_convert_quadratic`). The scaler's own graph subtracted the mean rounded to float32: on signals of 1000 ± 1
    parity failed (max |onnx - sklearn| 0.003 of a pca score, 1 %) and such a detector could not be exported.
    Any other pipeline is returned as it is."""
    from sklearn.preprocessing import StandardScaler

    steps = [step for _, step in pipeline.steps] if isinstance(pipeline, Pipeline) else []
    if len(steps) != 2 or not isinstance(steps[0], StandardScaler) \
            or not isinstance(steps[1], MahalanobisScorer | PCAResidualScorer):
        return pipeline
    scaler, scorer = steps
    k = np.asarray(scorer.location_).size
    mean = scaler.mean_ if scaler.with_mean else np.zeros(k)
    scale = scaler.scale_ if scaler.with_std else np.ones(k)
    folded = copy.copy(scorer)
    folded.location_ = np.asarray(mean, dtype=np.float64) + np.asarray(scorer.location_, dtype=np.float64) * scale
    folded.L_ = np.asarray(scorer.L_, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[:, None]
    return folded


def to_onnx(pipeline: Pipeline, schema: InputSchema, *, metadata: dict | None = None) -> bytes:
    """Serialised ONNX model of ``pipeline``: input ``X`` float32 ``(n, len(schema))``, one float output.

    The schema and ``metadata`` are stored in the model's ``metadata_props`` so the file describes itself.
    """
    _register_converters()
    model = _skl_to_onnx(_fold_scaler(pipeline), initial_types=[(INPUT_NAME, FloatTensorType([None, len(schema)]))],
                         target_opset=TARGET_OPSET)
    props = {"valvoja.schema": json.dumps(schema.to_dict()), **{f"valvoja.{k}": str(v) for k, v in
                                                                (metadata or {}).items()}}
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session(onnx_bytes: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; one intra-op thread by default (single rows are fastest that way and a
    gateway runs many models side by side)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def check_parity(pipeline: Pipeline, onnx_bytes: bytes, X, *, atol: float = DEFAULT_ATOL,
                 rtol: float = DEFAULT_RTOL) -> ParityReport:
    """Compare the ONNX graph with ``pipeline`` on rows ``X`` (float, ``(n, k)``)."""
    X32 = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    ref = model_output(pipeline, X32.astype(np.float64))
    got = session(onnx_bytes).run(None, {INPUT_NAME: X32})[0].astype(np.float64).reshape(ref.shape)
    d = np.abs(got - ref)
    # The outputs' own scale, capped at 1 so that targets of magnitude 1 or more keep the tolerance they always had;
    # floored at the smallest normal float32 so that all-zero outputs still allow float32 rounding.
    scale = float(min(1.0, max(float(np.abs(ref).max(initial=0.0)), float(np.finfo(np.float32).tiny))))
    if not np.all(np.isfinite(got)):
        return ParityReport(len(X32), float("inf"), float("inf"), float("inf"), atol, rtol, False, scale)
    excess = d - (atol * scale + rtol * np.abs(ref))
    rel = d / np.maximum(np.abs(ref), 1e-12)
    return ParityReport(len(X32), float(d.max(initial=0.0)), float(rel.max(initial=0.0)),
                        float(excess.max(initial=-np.inf)), atol, rtol, bool(np.all(excess <= 0)), scale)
