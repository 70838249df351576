"""SKAB outlier-detection evaluation of the anomaly detector, with honest hyper-parameter choice.

Protocol (data README): in every file the first 400 rows are healthy training data, the rest is
scored; F1 / FAR / MAR are point-wise, pooled over the test rows of all files. The detector's alarm
(p <= alpha, held ``hold`` samples, as the alert would show it) is the prediction.

Hyper-parameters are never chosen on the rows they are scored on: **nested leave-files-out**. The
files are split into ``folds`` groups; for each group, every configuration of a small grid is run
on the *other* files and the one with the best pooled F1 there (optionally with FAR <= ``max_far``)
is applied to the held-out group. The held-out predictions of all groups are pooled for the
reported figures. Signal selection (`anomaly.drift_screen`) uses only the training rows (first 400)
of the training files: no labels.

A configuration whose alpha is below the p-value resolution of its calibration scores (400 rows leave
``anomaly.calibration_scores(400, window, fit_fraction)`` disjoint windows: 48 at window 5, 24 at 10) could
never flag: it is skipped as infeasible and counted (``infeasible`` in the result), never scored.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from maintenance.anomaly import AnomalyConfig, AnomalyDetector, alarm, calibration_scores, drift_screen
from maintenance.skab import TRAIN_ROWS, SkabFile, score
from maintenance.uncertainty import min_scores

GRID = {
    "window": (5, 10, 15, 30),
    "alpha": (0.05, 0.02, 0.01),
    "max_drift": (0.5, 1.0, None),
    "score": ("mahalanobis", "max_z"),
    "confirm": (1, 5),
    "hold": (0, 10, 30),
}


def _flags(files: Sequence[SkabFile], cfg: AnomalyConfig, use: np.ndarray) -> list[np.ndarray]:
    """Per file: p-values of every row from a detector fitted on that file's first 400 rows."""
    out = []
    for f in files:
        det = AnomalyDetector(replace(cfg, hold=0), f.columns, use=use).fit(f.x[:TRAIN_ROWS])
        out.append(det.score(f.x).p_value)
    return out


def _pooled(files: Sequence[SkabFile], pvals: list[np.ndarray], alpha: float, confirm: int, n_hold: int):
    truth = np.concatenate([f.anomaly[TRAIN_ROWS:] for f in files])
    pred = np.concatenate([alarm(p <= alpha, confirm, n_hold)[TRAIN_ROWS:] for p in pvals])
    return truth, pred


def _before_first_anomaly(files: Sequence[SkabFile]) -> np.ndarray:
    """Test rows before each file's first anomalous row (normal operation not yet disturbed)."""
    out = []
    for f in files:
        a = f.anomaly[TRAIN_ROWS:]
        first = int(np.argmax(a)) if a.any() else len(a)
        out.append(np.arange(len(a)) < first)
    return np.concatenate(out)


def far_split(truth: np.ndarray, pred: np.ndarray, before: np.ndarray) -> dict:
    """FAR (%) on normal rows before the first anomaly of each file and on normal rows after one
    (after a valve closes and reopens the process need not return to where it was trained)."""
    def far(mask):
        normal = mask & ~truth.astype(bool)
        return 100.0 * float(np.sum(pred[normal])) / max(1, int(normal.sum()))
    return {"far_before_first_anomaly": far(before), "far_after_an_anomaly": far(~before)}


def feasible(window: int, alpha: float) -> bool:
    """Whether a detector fitted on SKAB's training rows at ``window`` can flag at ``alpha`` (its calibration
    scores reach the p-value resolution; `AnomalyDetector.fit` refuses it otherwise)."""
    return calibration_scores(TRAIN_ROWS, window, AnomalyConfig.fit_fraction) >= min_scores(alpha)


def grid_search(files: Sequence[SkabFile], grid: dict = GRID, max_far: float | None = None):
    """Best configuration on ``files`` by pooled F1 (FAR <= max_far if given), skipping the infeasible (`feasible`);
    returns (config, use, scores, how many configurations were infeasible)."""
    best = None
    cache: dict = {}
    infeasible = 0
    for window, max_drift, sc in itertools.product(grid["window"], grid["max_drift"], grid["score"]):
        alphas = [a for a in grid["alpha"] if feasible(window, a)]
        infeasible += (len(grid["alpha"]) - len(alphas)) * len(grid["confirm"]) * len(grid["hold"])
        if not alphas:
            continue
        use = drift_screen([f.x[:TRAIN_ROWS] for f in files], max_drift)
        key = (window, tuple(use), sc)
        if key not in cache:  # the p-values do not depend on alpha; fitted at a feasible one
            cache[key] = _flags(files, AnomalyConfig(window=window, alpha=max(alphas), score=sc, max_drift=max_drift),
                                use)
        for alpha, n_confirm, n_hold in itertools.product(alphas, grid["confirm"], grid["hold"]):
            s = score(*_pooled(files, cache[key], alpha, n_confirm, n_hold))
            if max_far is not None and s.far > max_far:
                continue
            if best is None or s.f1 > best[2].f1:
                cfg = AnomalyConfig(window=window, alpha=alpha, score=sc, max_drift=max_drift, confirm=n_confirm,
                                    hold=n_hold)
                best = (cfg, use, s)
    if best is None:
        if infeasible and not cache:
            raise ValueError(f"no configuration of the grid can flag: every alpha is below the p-value resolution of "
                             f"its window's calibration scores ({TRAIN_ROWS} training rows)")
        raise ValueError(f"no configuration keeps FAR <= {max_far} % on the training files")
    return (*best, infeasible)


def check_files(files: Sequence[SkabFile]) -> None:
    """Refuse what would make the figures untrue: a file without labels (nothing to score; it was dropped silently
    while the command still counted it), fewer than two files, or the same data twice (under two names, or one name
    given twice): its copy among the other files would choose the configuration it is scored with. A file without a
    row after the first ``TRAIN_ROWS`` has nothing to score either, and files must have the same signal columns (in
    any order: `aligned`)."""
    unlabelled = [f.name for f in files if f.anomaly is None]
    if unlabelled:
        raise ValueError(f"{', '.join(unlabelled)}: no anomaly column (an anomaly-free file has nothing to score)")
    short = [f"{f.name} ({len(f.anomaly)} rows)" for f in files if len(f.anomaly) <= TRAIN_ROWS]
    if short:
        raise ValueError(f"{', '.join(short)}: no rows after the first {TRAIN_ROWS} (the training rows) to score")
    if len(files) < 2:
        raise ValueError(f"{len(files)} SKAB file(s): need at least two labelled files (one held out at a time)")
    other = [f.name for f in files if sorted(f.columns) != sorted(files[0].columns)]
    if other:
        raise ValueError(f"{', '.join(other)}: signal columns differ from {files[0].name}'s "
                         f"({', '.join(files[0].columns)})")
    seen: dict[bytes, str] = {}
    names = [f.name for f in files]
    if len(set(names)) < len(names):  # the results are keyed by name
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{', '.join(twice)}: named twice (the same file, or files of the same folder and number)")
    for f in files:
        key = hashlib.sha256(f.x.tobytes() + f.anomaly.tobytes() + f.time.tobytes()).digest()
        if key in seen:
            raise ValueError(f"{f.name} holds the same rows as {seen[key]}: a file held out would have its copy among "
                             "the files its configuration is chosen on")
        seen[key] = f.name


def aligned(files: Sequence[SkabFile]) -> list[SkabFile]:
    """The files with their signal columns in the first file's order. A signal is chosen by its column index across
    files (`drift_screen`, ``use``): a file of the same format with two columns swapped had the wrong signals scored
    (valve1/1 with Current and Temperature swapped: its F1 0.917 -> 0.271, the pooled F1 0.837 -> 0.807)."""
    names = files[0].columns
    return [f if f.columns == names else replace(f, columns=list(names), x=f.x[:, [f.columns.index(c) for c in names]])
            for f in files]


def _alarm_rows(files: Sequence[SkabFile], pred: np.ndarray) -> dict[str, str]:
    """Per file, the alarm of every scored row (after the first ``TRAIN_ROWS``) as '0'/'1' characters: the pooled
    figures can be recounted from these and the files' ``anomaly`` column without this code."""
    out, i = {}, 0
    for f in files:
        n = len(f.anomaly) - TRAIN_ROWS
        out[f.name] = "".join("1" if v else "0" for v in pred[i:i + n])
        i += n
    return out


def evaluate(files: Sequence[SkabFile], *, folds: int | None = None, grid: dict = GRID, max_far: float | None = None,
             config: AnomalyConfig | None = None) -> dict:
    """Nested leave-files-out evaluation (``folds`` groups of files, default one file per group), or a
    fixed ``config`` applied to every file without selection."""
    check_files(files)
    files = aligned(files)
    if folds is not None and folds < 2:
        raise ValueError(f"folds {folds}: need at least 2 groups (one to choose on, one to score)")
    if config is not None:
        use = drift_screen([f.x[:TRAIN_ROWS] for f in files], config.max_drift)
        t, p = _pooled(files, _flags(files, config, use), config.alpha, config.confirm, config.hold)
        return {"mode": "fixed", "config": asdict(config), "signals": [files[0].columns[i] for i in use],
                "pooled": score(t, p).as_dict() | far_split(t, p, _before_first_anomaly(files)),
                "files": [f.name for f in files], "alarms": _alarm_rows(files, p)}
    folds = len(files) if folds is None else min(folds, len(files))
    groups = [list(range(k, len(files), folds)) for k in range(folds)]
    truth_all, pred_all, before_all, per_fold, alarms = [], [], [], [], {}
    for g in groups:
        train = [files[i] for i in range(len(files)) if i not in g]
        test = [files[i] for i in g]
        cfg, use, s_train, infeasible = grid_search(train, grid, max_far)
        t, p = _pooled(test, _flags(test, cfg, use), cfg.alpha, cfg.confirm, cfg.hold)
        truth_all.append(t)
        pred_all.append(p)
        before_all.append(_before_first_anomaly(test))
        alarms |= _alarm_rows(test, p)
        per_fold.append({"test_files": [f.name for f in test], "config": asdict(cfg),
                         "signals": [files[0].columns[i] for i in use], "train_f1": s_train.f1,
                         "infeasible": infeasible, "test": score(t, p).as_dict()})
    t, p = np.concatenate(truth_all), np.concatenate(pred_all)
    pooled = score(t, p).as_dict() | far_split(t, p, np.concatenate(before_all))
    return {"mode": "nested-leave-files-out", "folds": per_fold, "pooled": pooled,
            "files": [f.name for f in files], "max_far": max_far,
            "infeasible": per_fold[0]["infeasible"] if per_fold else 0,
            "alarms": {f.name: alarms[f.name] for f in files}}
