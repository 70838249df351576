"""C-MAPSS evaluation of the RUL model: grouped CV on training engines, conformal intervals, test metrics.

Protocol (data README): train on ``train_FD00x`` with the run-to-failure target capped, one prediction per
test engine at its last observed cycle, compared with ``RUL_FD00x`` as given. Metrics: RMSE, PHM08 score,
and the empirical coverage of the 90 % intervals.

- **Model selection** by grouped K-fold CV over *training engines* only: each validation engine is
  truncated at random cycles (``truncations`` per engine, uniform over the cycles with at least
  ``min_history`` seen), as the test set is. History features are causal, so a truncated history's
  features are the full history's row at that cycle. Two stages, both on the same folds and truncations:
  1. the features (EWM spans, sensor set; `CANDIDATES`) at the conventional cap of 125, by the CV RMSE
     against the truth capped at 125 (how well the wear is tracked);
  2. the cap (`CAPS`) for those features, by the CV RMSE against the *true* RUL at the truncations, the
     quantity the test reports. A low cap predicts every healthy-looking engine at the cap however far from
     failure it is; a high cap asks the model to tell long lives apart from age alone. Where the balance
     lies is a property of the fleet, so it is chosen on the training engines like any other parameter.
  The test files are read once, after every choice is made.
- **Intervals**: the out-of-fold residuals of the selected configuration (held-out engines, random
  truncations) are the conformal calibration set, binned by predicted RUL (errors grow with the
  predicted life); the final model is refitted on all training engines.
- **Open-ended intervals**: where the interval of the capped RUL reaches the cap, the upper end is
  infinite ("at least ``lower`` cycles"): exactly what a capped model knows (`rul_intervals`).
- **Truth**: the RUL file as given (``rmse``), and also capped at the selected cap (``rmse_capped``) and at
  125 (``rmse_capped_125``), the convention of the published results the README lists.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from maintenance import cmapss
from maintenance.rul import RulConfig, RulModel
from maintenance.rul_intervals import BinnedConformal

# Sensors that carry degradation in C-MAPSS (1-based names s2, s3, ... as in Saxena et al.); the
# other seven are constant or nearly so in every condition. Used only as a candidate in selection.
INFORMATIVE = tuple(i - 1 for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21))
CANDIDATES = (
    {"spans": (3, 10, 20, 40), "sensors": INFORMATIVE},
    {"spans": (5, 15, 30, 60), "sensors": INFORMATIVE},
    {"spans": (10, 30, 60, 120), "sensors": INFORMATIVE},
    {"spans": (20, 60, 120, 240), "sensors": INFORMATIVE},
    {"spans": (3, 10, 20, 40), "sensors": None},
)
# Caps of the training target tried in stage 2 (the first is the stage-1 cap: the usual 125).
CAPS = (125.0, 140.0, 160.0, 180.0, 200.0)


def conditions_of(settings: np.ndarray, max_k: int = 10) -> int:
    """Number of operating conditions: distinct rounded setting combinations that cover >= 1 % of rows."""
    scale = settings.std(axis=0) + 1e-9
    _, counts = np.unique(np.round(settings / scale, 1), axis=0, return_counts=True)
    k = int((counts >= 0.01 * len(settings)).sum())
    return max(1, min(k, max_k))


def truncation_rows(unit: np.ndarray, cycle: np.ndarray, rng: np.random.Generator, per_unit: int,
                    min_history: int) -> np.ndarray:
    """Row indices of random truncation points (uniform over each unit's cycles >= min_history)."""
    rows = []
    for u in np.unique(unit):
        idx = np.flatnonzero(unit == u)
        ok = idx[cycle[idx] >= min(min_history, cycle[idx].max())]
        rows.extend(rng.choice(ok, size=min(per_unit, ok.size), replace=False).tolist())
    return np.asarray(sorted(rows))


def cross_validate(train: cmapss.Fleet, cfg: RulConfig, *, folds: int, truncations: int, min_history: int,
                   seed: int) -> dict:
    """Out-of-fold predictions at random truncations of held-out engines."""
    rng = np.random.default_rng(seed)
    units = train.units()
    order = rng.permutation(units)
    y_all = train.rul(None)
    preds, truth, rows_all = [], [], []
    for k in range(folds):
        val_units = order[k::folds]
        vmask = np.isin(train.unit, val_units)
        fit = train.select(~vmask)
        model = RulModel(cfg).fit(fit.unit, fit.cycle, fit.settings, fit.sensors, fit.rul(None))
        val = train.select(vmask)
        rows = truncation_rows(val.unit, val.cycle, rng, truncations, min_history)
        x = model.features(val.unit, val.cycle, val.settings, val.sensors)[rows]
        preds.append(model.predict_features(x))
        truth.append(y_all[vmask][rows])
        rows_all.append(np.flatnonzero(vmask)[rows])
    p, t = np.concatenate(preds), np.concatenate(truth)
    tc = np.minimum(t, cfg.cap)
    return {"pred": p, "truth": t, "rows": np.concatenate(rows_all), "rmse_capped": cmapss.rmse(p, tc),
            "rmse": cmapss.rmse(p, t)}


def _describe(cfg: RulConfig) -> str:
    return (f"spans={cfg.spans} sensors={'informative' if cfg.sensors else 'all varying'} cap={cfg.cap:g}")


def evaluate(data: str | Path, subset: str, *, folds: int = 5, truncations: int = 5, min_history: int = 20,
             coverage: float = 0.9, select: bool = True, caps: tuple[float, ...] | None = None, seed: int = 0,
             max_iter: int = 300, progress: Callable[[str], None] = print) -> dict:
    """Train, select, calibrate and test on one C-MAPSS subset; returns metrics and the fitted pieces.

    Selection (training engines only, grouped CV, validation engines truncated at random cycles):
    stage 1 chooses the features among `CANDIDATES` at the first cap by the CV RMSE against the capped
    truth (how well wear is tracked); stage 2 chooses the cap among ``caps`` for those features by the CV
    RMSE against the true, uncapped RUL at the truncations (the quantity the test reports). ``caps``
    defaults to `CAPS` with ``select`` and to (125,) without.
    """
    data = Path(data)
    t0 = time.time()
    train = cmapss.load(data / f"train_{subset}.txt")
    n_units = len(train.units())
    # Each was a traceback (or, for a cap of 0, figures of a model that predicts 0 everywhere).
    if not 2 <= folds <= n_units:
        raise ValueError(f"{folds} folds for {n_units} training engines: need 2 to {n_units} (every fold holds out "
                         "at least one engine)")
    if truncations < 1 or not 0.0 < coverage < 1.0 or (caps is not None and min(caps) <= 0):
        raise ValueError(f"truncations {truncations} (at least 1), coverage {coverage} (between 0 and 1), caps "
                         f"{caps} (above 0): one is out of range")
    k = conditions_of(train.settings)
    progress(f"{subset}: {len(train.units())} training engines, {k} operating condition(s)")
    caps = tuple(float(c) for c in (caps or (CAPS if select else (float(cmapss.RUL_CAP),))))
    base = RulConfig(conditions=k, max_iter=max_iter, seed=seed, cap=caps[0])
    feats = [replace(base, **c) for c in CANDIDATES] if select else [replace(base, **CANDIDATES[0])]

    def run(cfg: RulConfig) -> dict:
        cv = cross_validate(train, cfg, folds=folds, truncations=truncations, min_history=min_history, seed=seed)
        cv["config"] = cfg
        progress(f"  {_describe(cfg)} -> CV RMSE {cv['rmse_capped']:.2f} (truth capped at {cfg.cap:g}), "
                 f"{cv['rmse']:.2f} (true RUL), {time.time() - t0:.0f} s")
        return cv

    progress(f" stage 1, features at cap {caps[0]:g} (CV RMSE against the capped truth):")
    stage1 = [run(cfg) for cfg in feats]
    best_f = min(range(len(stage1)), key=lambda i: stage1[i]["rmse_capped"])
    stage2 = [stage1[best_f]]
    if len(caps) > 1:
        progress(f" stage 2, cap for candidate {best_f} (CV RMSE against the true RUL):")
        stage2 += [run(replace(feats[best_f], cap=c)) for c in caps[1:]]
    best_c = min(range(len(stage2)), key=lambda i: stage2[i]["rmse"])
    cv = stage2[best_c]
    cfg = cv["config"]
    progress(f" selected {_describe(cfg)}")
    conformal = BinnedConformal(coverage=coverage, cap=cfg.cap).fit(cv["pred"], np.minimum(cv["truth"], cfg.cap))
    model = RulModel(cfg).fit(train.unit, train.cycle, train.settings, train.sensors, train.rul(None))
    fit_seconds = time.time() - t0

    # The test files: read here, once, after every choice is made.
    test = cmapss.load(data / f"test_{subset}.txt")
    true = cmapss.load_rul(data / f"RUL_{subset}.txt")
    last = np.r_[np.diff(test.unit) != 0, True]
    if last.sum() != len(true):
        raise ValueError(f"{subset}: {last.sum()} test engines but {len(true)} values in RUL_{subset}.txt")
    x = model.features(test.unit, test.cycle, test.settings, test.sensors)[last]
    pred = model.predict_features(x)
    lower, upper = conformal.interval(pred)
    true_c = np.minimum(true, cfg.cap)
    true_125 = np.minimum(true, float(cmapss.RUL_CAP))
    metrics = {
        "subset": subset, "engines": len(pred), "conditions": k, "selected": best_f,
        "training_engines": len(train.units()), "training_rows": len(train.unit),
        "config": {k_: v for k_, v in asdict(cfg).items() if k_ not in ("extra", "threads")},
        "selection": {
            "method": f"grouped {folds}-fold CV over {len(train.units())} training engines, {truncations} random "
                      f"truncations per validation engine (>= {min_history} cycles seen)",
            "features": [{"spans": list(c["config"].spans), "sensors": "informative" if c["config"].sensors else "all",
                          "cap": c["config"].cap, "cv_rmse_capped": c["rmse_capped"], "cv_rmse": c["rmse"]}
                         for c in stage1],
            "caps": [{"cap": c["config"].cap, "cv_rmse": c["rmse"], "cv_rmse_capped": c["rmse_capped"]}
                     for c in stage2],
            "cap": cfg.cap, "cv_rmse": cv["rmse"], "cv_rmse_capped": cv["rmse_capped"],
        },
        "cv_rmse_capped": {str(i): c["rmse_capped"] for i, c in enumerate(stage1)},
        "rmse": cmapss.rmse(pred, true), "phm08": cmapss.phm08_score(pred, true),
        "coverage": float(np.mean((true >= lower) & (true <= upper))),
        "rmse_capped": cmapss.rmse(pred, true_c), "phm08_capped": cmapss.phm08_score(pred, true_c),
        "coverage_capped": float(np.mean((true_c >= lower) & (true_c <= upper))),
        "rmse_capped_125": cmapss.rmse(pred, true_125),
        "nominal_coverage": coverage, "open_ended": float(np.mean(np.isinf(upper))),
        "mean_width_capped": float(np.mean(np.minimum(upper, cfg.cap) - lower)),
        "fit_seconds": fit_seconds, "seconds": time.time() - t0,
    }
    sources = [{"path": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
               for f in (data / f"train_{subset}.txt", data / f"test_{subset}.txt", data / f"RUL_{subset}.txt")]
    return {"metrics": metrics, "model": model, "conformal": conformal, "pred": pred, "lower": lower,
            "upper": upper, "true": true, "features": x, "cv": cv, "sources": sources}

