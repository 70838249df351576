"""PEMS models for the gas-turbine NOx and CO, built with ``models/`` (estimators, ONNX export with the
parity check, split-conformal calibration); inference runs on the exported ONNX graph with onnxruntime.

Training rows are the training years in time order: the first ``1 - calibration_share`` fit the
pipeline, the last ``calibration_share`` (the end of the last training year, never seen by the fit)
calibrate the 90 % interval. A model whose ONNX graph does not reproduce scikit-learn within the
models' tolerance is refused (`models.export.ParityError`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from emissions.pems_eval import PemsFit


def fit(folder: str | Path, train_years: list[str], target: str, *, estimator: str = "hgb", alpha: float = 0.1,
        calibration_share: float = 0.2, save_dir: Path | None = None) -> tuple[PemsFit, dict]:
    """Train, export, parity-check and calibrate one target; returns the fit and a model card (dict)."""
    from models.conformal import SplitConformal
    from models.data import GAS_TURBINE_INPUTS, GAS_TURBINE_UNITS, load_gas_turbine
    from models.estimators import make_pipeline
    from models.export import INPUT_NAME, ParityError, check_parity, session, sha256, to_onnx
    from models.schema import InputSchema

    table = load_gas_turbine(folder, train_years)
    features = list(GAS_TURBINE_INPUTS)
    # The ONNX graph takes float32 inputs: train on float32-representable values so no tree threshold
    # falls between a value and its float32 rounding.
    X, y = table.matrix(features).astype(np.float32).astype(np.float64), table.column(target)
    k = int(len(y) * (1 - calibration_share))
    pipe = make_pipeline(estimator)
    with threadpool_limits(1):  # OpenMP on a busy 2-core machine is far slower than one thread
        pipe.fit(X[:k], y[:k])
    schema = InputSchema.of(features, GAS_TURBINE_UNITS)
    onnx_bytes = to_onnx(pipe, schema, metadata={"target": target, "purpose": "pems"})
    parity = check_parity(pipe, onnx_bytes, X[k:])
    if not parity.passed:
        raise ParityError(f"PEMS {target}: {parity.describe()}")
    sess = session(onnx_bytes)

    def predict(rows: np.ndarray) -> np.ndarray:
        out = sess.run(None, {INPUT_NAME: np.ascontiguousarray(rows, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)[:, 0]

    sc = SplitConformal(alpha=alpha).fit(y[k:], predict(X[k:]))
    version = sha256(onnx_bytes)
    card = {"target": target, "estimator": estimator, "features": features, "train_years": list(train_years),
            "fit_rows": k, "calibration_rows": len(y) - k, "training_fingerprint": table.fingerprint(features),
            "onnx_sha256": version, "parity": parity.to_dict(), "conformal": sc.to_dict()}
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / f"pems_{target.lower()}.onnx").write_bytes(onnx_bytes)
        # The card keeps the calibration scores: a live PEMS starts its adaptive intervals from them.
        (save_dir / f"pems_{target.lower()}.json").write_text(json.dumps(
            {**card, "calibration_scores": [float(x) for x in sc.scores_]}, indent=1))
    return PemsFit(target, features, predict, sc.scores_, sc.interval, version), card


def evaluate(folder: str | Path, train_years: list[str], test_years: list[str], *, targets=("NOX", "CO"),
             estimator: str = "hgb", alpha: float = 0.1, save_dir: Path | None = None) -> dict:
    """Train on ``train_years`` and run `emissions.pems_eval.evaluate_target` on ``test_years``, per target."""
    from emissions.pems_eval import evaluate_target
    from models.data import load_gas_turbine

    test = load_gas_turbine(folder, test_years)
    out = {"train_years": list(train_years), "test_years": list(test_years), "alpha": alpha, "targets": {}}
    for target in targets:
        f, card = fit(folder, train_years, target, estimator=estimator, alpha=alpha, save_dir=save_dir)
        res = evaluate_target(f, test.matrix(f.features), test.column(target), alpha=alpha)
        out["targets"][target] = {"card": card, **res}
    return out
