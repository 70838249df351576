"""C-MAPSS evaluation of the RUL model: grouped CV on training engines, conformal intervals, test metrics.

Protocol (data README): train on ``train_FD00x`` (target capped at 125), one prediction per test
engine at its last observed cycle, compared with ``RUL_FD00x``. Metrics: RMSE, PHM08 score, and the
empirical coverage of the 90 % intervals.

- **Model selection** by grouped K-fold CV over *training engines*: each validation engine is
  truncated at random cycles (``truncations`` per engine, at least ``min_history`` cycles seen), as
  the test set is. History features are causal, so a truncated history's features are the full
  history's row at that cycle.
- **Intervals**: the out-of-fold residuals of the selected configuration (held-out engines, random
  truncations) are the conformal calibration set, binned by predicted RUL (errors grow with the
  predicted life); the final model is refitted on all training engines.
- **Open-ended intervals**: where the interval of the capped RUL reaches the cap, the upper end is
  infinite ("at least ``lower`` cycles"): exactly what a capped model knows (`rul_intervals`).
- **Truth**: the RUL file as given (``rmse``), and also capped at the training cap (``rmse_capped``),
  the convention of the published results the README lists: a model of capped RUL cannot know how
  far beyond the cap a healthy engine's life goes (for FD002, 57 of 259 test engines have a true RUL
  above 125, which alone puts a floor of 18.3 under the uncapped RMSE of any capped model).
"""

from __future__ import annotations

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
    {"spans": (3, 10, 20, 40), "sensors": None},
)


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


def evaluate(data: str | Path, subset: str, *, folds: int = 5, truncations: int = 5, min_history: int = 20,
             coverage: float = 0.9, select: bool = True, seed: int = 0, max_iter: int = 300,
             progress: Callable[[str], None] = print) -> dict:
    """Train, select, calibrate and test on one C-MAPSS subset; returns metrics and the fitted pieces."""
    data = Path(data)
    t0 = time.time()
    train = cmapss.load(data / f"train_{subset}.txt")
    test = cmapss.load(data / f"test_{subset}.txt")
    true = cmapss.load_rul(data / f"RUL_{subset}.txt")
    k = conditions_of(train.settings)
    progress(f"{subset}: {len(train.units())} training engines, {len(test.units())} test engines, "
             f"{k} operating condition(s)")
    base = RulConfig(conditions=k, max_iter=max_iter, seed=seed)
    candidates = [replace(base, **c) for c in CANDIDATES] if select else [replace(base, **CANDIDATES[0])]
    results = []
    for i, cfg in enumerate(candidates):
        cv = cross_validate(train, cfg, folds=folds, truncations=truncations, min_history=min_history, seed=seed)
        results.append((cv["rmse_capped"], i, cfg, cv))
        progress(f"  candidate {i}: spans={cfg.spans} sensors={'informative' if cfg.sensors else 'all varying'}"
                 f" -> CV RMSE {cv['rmse_capped']:.2f} (capped truth), {time.time() - t0:.0f} s")
    _, best_i, cfg, cv = min(results, key=lambda r: r[0])
    conformal = BinnedConformal(coverage=coverage, cap=cfg.cap).fit(cv["pred"], np.minimum(cv["truth"], cfg.cap))
    model = RulModel(cfg).fit(train.unit, train.cycle, train.settings, train.sensors, train.rul(None))
    last = np.r_[np.diff(test.unit) != 0, True]
    x = model.features(test.unit, test.cycle, test.settings, test.sensors)[last]
    pred = model.predict_features(x)
    lower, upper = conformal.interval(pred)
    true_c = np.minimum(true, cfg.cap)
    metrics = {
        "subset": subset, "engines": len(pred), "conditions": k, "selected": best_i,
        "config": {k_: v for k_, v in asdict(cfg).items() if k_ not in ("extra", "threads")},
        "cv_rmse_capped": {str(i): r[0] for r, i in zip(results, range(len(results)), strict=True)},
        "rmse": cmapss.rmse(pred, true), "phm08": cmapss.phm08_score(pred, true),
        "coverage": float(np.mean((true >= lower) & (true <= upper))),
        "rmse_capped": cmapss.rmse(pred, true_c), "phm08_capped": cmapss.phm08_score(pred, true_c),
        "coverage_capped": float(np.mean((true_c >= lower) & (true_c <= upper))),
        "nominal_coverage": coverage, "open_ended": float(np.mean(np.isinf(upper))),
        "mean_width_capped": float(np.mean(np.minimum(upper, cfg.cap) - lower)),
        "seconds": time.time() - t0,
    }
    return {"metrics": metrics, "model": model, "conformal": conformal, "pred": pred, "lower": lower,
            "upper": upper, "true": true, "features": x}
