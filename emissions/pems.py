"""Predictive emission monitoring (CEN/TS 17198): analyser cross-check against the PEMS interval.

The PEMS model itself (training, ONNX export, conformal intervals) comes from ``models/``
(`emissions.pems_model` uses it); its predictions are stored as readings on the tags of a pollutant's
``pems`` link, in the analyser's own unit and basis. Two uses:

- **substitution** (`emissions.normalise`): while the analyser is invalid, the point prediction takes
  its place, flagged substituted in every average and report;
- **cross-check** (`crosscheck` here): the analyser is flagged when, over a sliding window, at least
  ``min_outside_share`` of its values lie outside the prediction interval. With a 90 % interval an
  analyser that agrees with the model is outside about 10 % of the time, so a persistent majority
  outside points at the analyser (drift, a stuck value) -- or at a model that no longer fits the
  plant, which the models' drift monitoring reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emissions.config import PemsLink


def interval_level(coverage: float | None) -> str:
    """An interval's nominal coverage as text ("90 % interval"), or that it was not stated: the share of the
    analyser's values expected outside, and so ``min_outside_share``, only means something against it."""
    if coverage is None or not math.isfinite(coverage):
        return "interval, level not stated"
    return f"{coverage * 100:g} % interval"


@dataclass(frozen=True)
class Deviation:
    """A stretch of time in which the analyser stayed outside the PEMS interval."""

    start: int  # first flagged primary value (Unix seconds); the deviation began up to a window earlier
    end: int
    max_outside_share: float
    mean_analyser: float
    mean_pems: float


def rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of the last ``w`` values at each position (fewer at the start)."""
    c = np.cumsum(x, dtype=np.float64)
    out = c.copy()
    out[w:] = c[w:] - c[:-w]
    return out


def crosscheck(times: np.ndarray, step_s: int, analyser: np.ndarray, point: np.ndarray, lower: np.ndarray,
               upper: np.ndarray, link: PemsLink) -> tuple[np.ndarray, list[Deviation]]:
    """Flag each primary value where the analyser has stayed outside the interval; return the flags and the
    flagged stretches."""
    w = max(link.window_s // step_s, 1)
    both = np.isfinite(analyser) & np.isfinite(lower) & np.isfinite(upper)
    outside = both & ((analyser < lower) | (analyser > upper))
    n_both = rolling_sum(both, w)
    n_out = rolling_sum(outside, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_both > 0, n_out / np.maximum(n_both, 1), 0.0)
    flag = (n_both >= link.min_pairs_share * w - 1e-9) & (share >= link.min_outside_share - 1e-9)
    out: list[Deviation] = []
    edges = np.flatnonzero(np.diff(np.r_[0, flag.astype(np.int8), 0]))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        lo = max(a - w + 1, 0)  # the values that made the first flag
        seg = slice(lo, b)
        ok = both[seg]
        out.append(Deviation(int(times[a]), int(times[b - 1]) + step_s, float(share[a:b].max()),
                             float(np.mean(analyser[seg][ok])) if ok.any() else float("nan"),
                             float(np.mean(point[seg][ok & np.isfinite(point[seg])]))
                             if (ok & np.isfinite(point[seg])).any() else float("nan")))
    return flag, out
