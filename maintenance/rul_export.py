"""A fitted RUL model through the models/ lifecycle: ONNX (``models.export``), parity, card, registry.

`trained_model` turns a `rul_eval.evaluate` result into a ``models.train.TrainedModel``, so
``models.registry.Registry.register`` takes it as it takes any other model (files, index row, events,
promotion gate, rollback); `register` does that in one call and `export` writes the same ``model.onnx`` +
``card.json`` to a folder.

- **ONNX graph**: the gradient-boosting estimator on the history features (inputs named as in
  `rul.history_features`, schema from ``models.schema``). The feature steps before it — per-condition
  normalisation and exponentially weighted means over each asset's history — are stateful per asset and
  stay in Python; their fitted parameters are in the card (``preprocessing``) so they can be reproduced.
  The export is refused (``models.export.ParityError``) when ONNX and scikit-learn disagree beyond the
  models/ tolerance on the test engines' feature rows.
- **Calibration** (``card["calibration"]``): split conformal (``models.conformal.SplitConformal``) on the
  out-of-fold residuals of the cross-validation (held-out engines at random truncations, target capped),
  the form ``models.runtime`` serves (symmetric interval, with the scores that seed adaptive intervals).
  The RUL model's own intervals, binned by predicted RUL and open-ended at the cap
  (`rul_intervals.BinnedConformal`), are ``card["rul_intervals"]`` (also ``card["conformal"]``).
- **Metrics** (``card["metrics"]``): ``holdout`` = the served ONNX outputs on the test engines' last-cycle
  rows against the RUL file (the rows stored as the version's ``holdout.npz``, on which the gate compares
  versions, metric ``rmse``), ``cmapss`` = the evaluation's metrics (RMSE, PHM08, coverage, selection by CV).
  The evaluation never uses the test rows for a choice (selection is by CV on the training engines); but a
  *promotion* between two C-MAPSS versions by the registry gate would compare them on these test rows, i.e.
  choose on the test set: register the configuration the evaluation selected (maintenance/README.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from edge.jsontext import json_safe
from maintenance.rul import RulModel
from models.conformal import SplitConformal
from models.data import FeatureTable
from models.export import ParityError, check_parity, sha256, to_onnx
from models.schema import InputSchema
from models.train import MAX_CARD_SCORES, TrainedModel, TrainSpec, holdout_metrics

TARGET = "rul"


def trained_model(result: dict, model_id: str | None = None) -> TrainedModel:
    """The model of a `rul_eval.evaluate` result as a ``TrainedModel`` for ``Registry.register``."""
    from models.runtime import OnnxModel

    model: RulModel = result["model"]
    m = result["metrics"]
    c = model.config
    model_id = model_id or f"rul-cmapss-{m['subset'].lower()}"
    names = list(model.feature_names_)
    if TARGET in names:
        raise ValueError(f"a feature is named {TARGET!r}, the target column")
    pipeline = Pipeline([("gbm", model.estimator_)])
    schema = InputSchema.of(names, {"cycle": "cycles"})
    onnx_bytes = to_onnx(pipeline, schema, metadata={"model_id": model_id, "kind": "regression",
                                                     "target": f"{TARGET}_capped_{c.cap:g}"})
    parity = check_parity(pipeline, onnx_bytes, result["features"])
    if not parity.passed:
        raise ParityError(f"{model_id}: ONNX export refused, {parity.describe()}")
    digest = sha256(onnx_bytes)
    alpha = 1.0 - result["conformal"].coverage
    cv = result["cv"]
    sc = SplitConformal(alpha=alpha).fit(np.minimum(cv["truth"], c.cap), cv["pred"])
    calibration = {**sc.to_dict(), "score": "absolute", "scores": sc.scores_[-MAX_CARD_SCORES:].tolist(),
                   "source": "out-of-fold residuals of the grouped CV (held-out engines, random truncations), "
                             f"target capped at {c.cap:g}"}
    n = model.normaliser_
    spec = TrainSpec(model_id, names, TARGET, estimator="hgb", alpha=alpha, metric="rmse",
                     units={"cycle": "cycles"},
                     params={"max_iter": c.max_iter, "learning_rate": c.learning_rate,
                             "max_leaf_nodes": c.max_leaf_nodes, "min_samples_leaf": c.min_samples_leaf,
                             "random_state": c.seed},
                     description=f"remaining useful life (cycles) of C-MAPSS {m['subset']} engines, trained on "
                                 f"the run-to-failure target capped at {c.cap:g}")
    card: dict = {
        "model_id": model_id, "version": None, "parent_version": None, "kind": "regression", "estimator": "hgb",
        "params": dict(spec.params), "description": spec.description, "target": TARGET, "label": None,
        "created_at": datetime.now(UTC).isoformat(), "sha256": digest, "onnx_bytes": len(onnx_bytes),
        "input_schema": schema.to_dict(), "output": {"columns": ["value"]},
        "calibration": calibration, "parity": parity.to_dict(),
        "rul": {"cap": c.cap, "unit": "cycles",
                "served_value": f"clip the graph output to [0, {c.cap:g}]; a value at the cap means 'no wear seen'"},
        "preprocessing": {
            "sensors": list(c.sensors) if c.sensors is not None else None, "spans": list(c.spans),
            "conditions": {"centres": n.centres_.tolist(), "settings_scale": n.settings_scale_.tolist(),
                           "mean": n.mean_.tolist(), "std": n.std_.tolist(), "keep": n.keep_.tolist(),
                           "z_min": n.z_min_.tolist(), "z_max": n.z_max_.tolist()},
            "features": "per asset: cycle, causal bias-corrected EWM of each kept normalised sensor per span, "
                        "EWM(span 2) - EWM(last span) (maintenance.rul.history_features)",
            "output": f"clip to [0, {c.cap:g}]",
        },
        "rul_intervals": result["conformal"].to_dict(),
        "conformal": result["conformal"].to_dict(),
    }
    # Holdout: the test engines' last-cycle rows with the RUL file's truth; metrics from the ONNX outputs.
    x = np.asarray(result["features"], dtype=np.float32).astype(np.float64)
    holdout = FeatureTable({**{nm: x[:, j] for j, nm in enumerate(names)}, TARGET: np.asarray(result["true"], float)},
                           None, [(f"test_{m['subset']} last cycles", 0, len(x))])
    # As the gate computes them (models.runtime output, its split-conformal interval), so versions compare
    # like with like; the RUL intervals' figures (clipped value, binned, open-ended) next to them.
    out = OnnxModel(onnx_bytes, card).predict(x)
    hm = holdout_metrics(card, holdout, out.value, out.lower, out.upper)
    value = np.clip(out.value, 0.0, c.cap)
    lower, upper = result["conformal"].interval(value)
    truth = holdout.column(TARGET)
    hm["rul_rmse"] = float(np.sqrt(np.mean((value - truth) ** 2)))
    hm["rul_intervals_coverage"] = float(np.mean((truth >= lower) & (truth <= upper)))
    hm["rul_intervals_open_ended"] = float(np.mean(np.isinf(upper)))
    hm["rul_intervals_mean_width_capped"] = float(np.mean(np.minimum(upper, c.cap) - lower))
    card["metrics"] = {"holdout": hm, "gate": {"metric": "rmse", "direction": "lower"},
                       "cmapss": {k: v for k, v in m.items() if k not in ("export", "registry")}}
    sources = result.get("sources", [])
    card["training_data"] = {
        "fingerprint": hashlib.sha256("".join(s.get("sha256", "") for s in sources).encode()).hexdigest(),
        "span": {"rows": int(m.get("training_rows", 0)), "segments": []}, "sources": sources,
        "split": {"method": "engines: train file for fitting, grouped CV over its engines for selection and "
                            "calibration, test file's last cycles as holdout"},
        "holdout_fingerprint": holdout.fingerprint(),
    }
    card["spec"] = {k: v for k, v in asdict(spec).items() if k not in ("params", "units")}
    return TrainedModel(spec, pipeline, schema, onnx_bytes, digest, calibration, parity, hm, card, holdout)


def export(result: dict, out_dir: Path, model_id: str | None = None) -> dict:
    """Write ``model.onnx`` and ``card.json`` (as the registry would store them) for a `rul_eval.evaluate` result."""
    tm = trained_model(result, model_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(tm.onnx_bytes)
    (out_dir / "card.json").write_text(json.dumps(json_safe(tm.card), indent=2) + "\n", encoding="utf-8")
    return {"path": str(out_dir / "model.onnx"), "sha256": tm.sha256, "parity": tm.parity.describe()}


def register(result: dict, root: str | Path, *, dsn: str | None = None, model_id: str | None = None,
             actor: str = "system") -> dict:
    """Register the model as a candidate in the registry at ``root`` (``dsn``: its database, else index.json)."""
    from models.registry import Registry

    tm = trained_model(result, model_id)
    mv = Registry(root, dsn).register(tm, actor=actor)
    return {"model_id": mv.model_id, "version": mv.version, "status": mv.status, "sha256": mv.sha256,
            "path": str(mv.path)}
