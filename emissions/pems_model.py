"""PEMS models through the model lifecycle of ``models/``: nothing here fits, exports or calibrates by itself.

- `spec` / `train_target`: a `models.train.TrainSpec` per pollutant (the gas-turbine process inputs, units,
  90 % split-conformal intervals), trained by `models.train.train` on the **training years only** (rows split
  in time order into train / calibration / holdout; ONNX export refused unless it passes parity).
- `train_and_register`: each trained model is registered as a candidate in a `models.registry.Registry`;
  the first version of a model id becomes champion through the normal promotion gate, later versions stay
  candidates (their gate comparison is printed) unless ``promote="always"`` asks the gate to promote them.
- `fit_from_model`: a registered (or just trained) ONNX model as the `emissions.pems_eval.PemsFit` the
  evaluation runs; `evaluate` trains (or takes the registry's champions) and evaluates on the test years.

Model ids are ``<prefix><target>`` in lower case: ``pems-nox``, ``pems-co`` by default; a stack's
``pems.model_id`` names one of them for live PEMS (`emissions.pems_live`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from emissions.pems_eval import PemsFit

TARGETS = ("NOX", "CO")
DEFAULT_PREFIX = "pems-"


def model_id(target: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}{target.lower()}"


def spec(target: str, *, prefix: str = DEFAULT_PREFIX, estimator: str = "hgb", alpha: float = 0.1,
         calibration_fraction: float = 0.2, holdout_fraction: float = 0.2):
    """The `models.train.TrainSpec` of one gas-turbine PEMS target."""
    from models.data import GAS_TURBINE_INPUTS, GAS_TURBINE_UNITS
    from models.train import TrainSpec

    return TrainSpec(model_id(target, prefix), list(GAS_TURBINE_INPUTS), target, estimator=estimator, alpha=alpha,
                     calibration_fraction=calibration_fraction, holdout_fraction=holdout_fraction,
                     units=dict(GAS_TURBINE_UNITS),
                     description=f"PEMS {target} (CEN/TS 17198) from gas-turbine process parameters")


def train_target(folder: str | Path, train_years: Sequence[str | int], target: str, *,
                 progress: Callable[[str], None] | None = None, **spec_kw):
    """`models.train.train` of ``spec(target)`` on the files ``gt_<year>.csv`` of the training years."""
    from models.data import load_gas_turbine
    from models.train import train

    return train(spec(target, **spec_kw), load_gas_turbine(folder, list(train_years)), progress=progress)


def train_and_register(folder: str | Path, train_years: Sequence[str | int], registry, *,
                       targets: Sequence[str] = TARGETS, promote: str = "first", actor: str = "system",
                       progress: Callable[[str], None] | None = None, **spec_kw) -> list[dict]:
    """Train each target, register it as a candidate and run the gate as ``promote`` says:

    ``first``: promote only when the model id has no champion yet (the first version); otherwise report the
    gate's comparison with the champion and leave the candidate for `valvoja models promote`.
    ``always``: run the gate (a worse candidate is refused and stays a candidate). ``never``: register only.
    Returns one dict per target: model id, version, status, sha256, holdout metrics and the comparison."""
    from models.registry import GateRefused

    if promote not in ("first", "always", "never"):
        raise ValueError(f"promote must be first, always or never, not {promote!r}")
    out = []
    for target in targets:
        tm = train_target(folder, train_years, target, progress=progress, **spec_kw)
        mv = registry.register(tm, actor=actor)
        res = {"target": target, "model_id": mv.model_id, "version": mv.version, "sha256": mv.sha256,
               "holdout": mv.metrics.get("holdout", {}), "promoted": False, "comparison": None}
        has_champion = registry.champion(mv.model_id) is not None
        if promote == "always" or (promote == "first" and not has_champion):
            try:
                cmp = registry.promote(mv.model_id, mv.version, actor=actor)
                res["promoted"] = True
            except GateRefused as exc:
                cmp = exc.comparison
            res["comparison"] = cmp
        elif promote == "first":
            res["comparison"] = registry.compare(mv.model_id, mv.version)
        res["status"] = registry.get(mv.model_id, mv.version).status
        out.append(res)
    return out


def fit_from_model(model) -> PemsFit:
    """A `models.runtime.OnnxModel` (a registry version's ``.load()``) as what the evaluation needs: ONNX
    predictions, the card's calibration scores (they seed the adaptive interval) and its static interval."""
    cal = model.card.get("calibration") or {}
    if model.kind != "regression" or not cal.get("scores"):
        raise ValueError(f"{model.model_id}: a PEMS model must be a regressor with conformal calibration scores")
    features = list(model.schema.names)

    def predict(X: np.ndarray) -> np.ndarray:
        return model.run_raw(np.asarray(X, dtype=np.float64))[:, 0]

    def static_interval(yhat: np.ndarray) -> np.ndarray:
        return model.calibrator.interval(yhat)

    return PemsFit(model.card.get("target") or "", features, predict, np.asarray(cal["scores"], dtype=np.float64),
                   static_interval, model.sha256)


def evaluate(folder: str | Path, train_years: Sequence[str | int], test_years: Sequence[str | int], *,
             targets: Sequence[str] = TARGETS, registry=None, prefix: str = DEFAULT_PREFIX,
             progress: Callable[[str], None] | None = None, **spec_kw) -> dict:
    """`emissions.pems_eval.evaluate_target` per target on ``test_years``.

    Without ``registry`` each target is trained on ``train_years`` with `models.train` (not registered);
    with one, its champions ``<prefix><target>`` are evaluated (refused when a test year was in their training
    data). The result carries each model's card summary: version, parity, holdout metrics, training span."""
    from emissions.pems_eval import evaluate_target
    from models.data import load_gas_turbine
    from models.runtime import OnnxModel

    train_years, test_years = [str(y) for y in train_years], [str(y) for y in test_years]
    overlap = sorted(set(train_years) & set(test_years))
    if overlap:
        raise ValueError(f"year(s) {', '.join(overlap)} both in training and test: the protocol keeps them apart")
    alpha = spec_kw.get("alpha", 0.1)
    test = load_gas_turbine(folder, test_years)
    out = {"train_years": train_years, "test_years": test_years, "alpha": alpha,
           "source": "registry" if registry is not None else "trained", "targets": {}}
    for target in targets:
        if registry is None:
            tm = train_target(folder, train_years, target, progress=progress, prefix=prefix, **spec_kw)
            model, version = OnnxModel(tm.onnx_bytes, tm.card), None
        else:
            mv = registry.champion(model_id(target, prefix))
            if mv is None:
                raise LookupError(f"no champion of {model_id(target, prefix)} in {registry}: run `valvoja emissions "
                                  "pems train` first")
            model, version = mv.load(), mv.version
            seen = [s.get("path", "") for s in mv.card.get("training_data", {}).get("sources", [])]
            leaked = [p for p in seen for y in test_years if Path(p).name == f"gt_{y}.csv"]
            if leaked:
                raise ValueError(f"{mv.model_id} v{mv.version} was trained on {', '.join(leaked)}: not a test year")
            if alpha != model.alpha:
                alpha = model.alpha
        f = fit_from_model(model)
        res = evaluate_target(f, test.matrix(f.features), test.column(target), alpha=alpha)
        card = model.card
        out["targets"][target] = {
            "model_id": card.get("model_id"), "registry_version": version,
            "card": {"estimator": card.get("estimator"), "parity": card.get("parity"),
                     "holdout": (card.get("metrics") or {}).get("holdout"),
                     "training_span": (card.get("training_data") or {}).get("span"),
                     "training_split": (card.get("training_data") or {}).get("split"),
                     "training_fingerprint": (card.get("training_data") or {}).get("fingerprint")},
            **res}
    return out
