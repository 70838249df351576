"""Export a fitted RUL model through the models/ lifecycle: ONNX (``models.export``), parity, card.

The ONNX graph is the gradient-boosting estimator on the history features (inputs named as in
`rul.history_features`, schema from ``models.schema``). The feature steps before it — per-condition
normalisation and exponentially weighted means over each asset's history — are stateful per asset and
stay in Python; their fitted parameters are in the card so the runtime reproduces them exactly.
The export is refused (``models.export.ParityError``) when ONNX and scikit-learn disagree beyond the
models/ tolerance on the test engines' feature rows.

Registration in the model registry (``models.registry``) is the registry's job; this writes the version
directory it expects (``model.onnx`` + ``card.json``) so it can be registered as it stands.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sklearn.pipeline import Pipeline

from maintenance.rul import RulModel
from models.export import ParityError, check_parity, sha256, to_onnx
from models.schema import InputSchema


def export(result: dict, out_dir: Path, model_id: str | None = None) -> dict:
    """Write ``model.onnx`` and ``card.json`` for the model of a `rul_eval.evaluate` result."""
    model: RulModel = result["model"]
    m = result["metrics"]
    model_id = model_id or f"rul-cmapss-{m['subset'].lower()}"
    pipeline = Pipeline([("gbm", model.estimator_)])
    schema = InputSchema.of(model.feature_names_, {"cycle": "cycles"})
    onnx_bytes = to_onnx(pipeline, schema, metadata={"model_id": model_id, "target": "rul_capped"})
    parity = check_parity(pipeline, onnx_bytes, result["features"])
    if not parity.passed:
        raise ParityError(parity.describe())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    n = model.normaliser_
    c = model.config
    card = {
        "model_id": model_id, "sha256": sha256(onnx_bytes), "created": datetime.now(UTC).isoformat(),
        "kind": "rul", "target": f"remaining useful life in cycles, capped at {c.cap:g}",
        "inputs": schema.to_dict(),
        "preprocessing": {
            "sensors": list(c.sensors) if c.sensors is not None else None, "spans": list(c.spans),
            "conditions": {"centres": n.centres_.tolist(), "settings_scale": n.settings_scale_.tolist(),
                           "mean": n.mean_.tolist(), "std": n.std_.tolist(), "keep": n.keep_.tolist()},
            "output": f"clip to [0, {c.cap:g}]",
        },
        "estimator": {"class": "HistGradientBoostingRegressor", "max_iter": c.max_iter,
                      "learning_rate": c.learning_rate, "max_leaf_nodes": c.max_leaf_nodes,
                      "min_samples_leaf": c.min_samples_leaf, "seed": c.seed},
        "conformal": result["conformal"].to_dict(),
        "metrics": {k: v for k, v in m.items() if k not in ("config", "export")},
        "parity": parity.to_dict(),
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return {"path": str(out_dir / "model.onnx"), "sha256": card["sha256"], "parity": parity.describe()}
