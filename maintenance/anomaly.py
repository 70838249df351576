"""Anomaly detection per asset, trained on healthy operation, with conformal p-values (DESIGN.md §6, §7).

One `AnomalyDetector` per asset:

- inputs are the asset's signals smoothed by a causal rolling mean of ``window`` samples (a valve
  closing or a bearing warming shows as a shift that persists; single-sample noise does not);
- the healthy history is split in time: the first ``fit_fraction`` fits the signal means, scales and
  correlation, the rest is the **calibration** set whose scores make the p-values;
- the score is the squared Mahalanobis distance of the standardised vector (``score="mahalanobis"``,
  ridge-regularised correlation) or the largest squared z-score (``score="max_z"``);
- the p-value of a live score is the conformal p-value against the calibration scores
  (``models.conformal``): with exchangeable healthy data, P(p <= alpha) <= alpha, so flagging at
  ``p <= alpha`` controls the false alarm rate per scored sample at ``alpha`` *on data like the
  calibration period*. Slow drifts (warm-up, seasons) break exchangeability: signals that drift within
  healthy data are left out (`drift_screen`), and the measured FAR on held-out data is what we report.
  The calibration scores are taken on **non-overlapping** windows lying wholly inside the calibration part
  (`calibration_scores` of them): rolling means at every sample overlap, their largest values cluster and
  the threshold came out low (FAR 0.0116 at alpha 0.01 on i.i.d. data; maintenance/README.md);
- a signal without any variation in the fit part (a fixed speed, a setpoint) is left out too: it has no scale;
- the p-values hold per sample; an alarm is a run of ``confirm`` flags, and healthy signals that wander slowly flag
  in runs as long as their wander: the fit measures each signal's `correlation_time` (``decorrelation_``), and
  `default_confirm` makes the run at least twice the slowest one's, a run of one signal's own flags twice its own
  (`confirmed_by_signal`; false alarms per day are measured, not guaranteed);
- each score is split into per-signal contributions ``z_i (P z)_i`` (they sum to the score), so an
  alert names the signals that contributed most.

`AnomalyBank` scores many assets at once (numpy across assets) for the live gateway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from maintenance import uncertainty as conformal


@dataclass(frozen=True)
class AnomalyConfig:
    window: int = 10  # samples in the causal rolling mean
    alpha: float = 0.01  # flag when p <= alpha (false alarm rate per sample, on healthy data)
    # 0.4, not more: the calibration windows are disjoint, (1 - fit_fraction) * 1,800 / 10 = 108 at the live
    # defaults, enough for alpha 0.01 (`min_scores`: 99); 0.6 left 72.
    fit_fraction: float = 0.4
    score: Literal["mahalanobis", "max_z"] = "max_z"
    ridge: float = 0.1  # added to the correlation matrix's diagonal
    max_drift: float | None = 0.5  # `drift_screen` threshold (None: keep every signal)
    confirm: int = 1  # consecutive flagged samples before the alarm goes on (debounce)
    hold: int = 30  # samples an alarm is held after the last flagged sample (alert clear hysteresis)


def calibration_scores(n: int, window: int, fit_fraction: float) -> int:
    """How many calibration scores `AnomalyDetector.fit` takes from ``n`` healthy samples: one per whole,
    non-overlapping ``window`` after the first ``int(n * fit_fraction)`` (the fit part). The alpha resolution
    (`maintenance.uncertainty.min_scores`) is checked against this count, by fit and by ``[maintenance]``."""
    return max(0, n - int(n * fit_fraction)) // max(1, window)


def correlation_time(x: np.ndarray, cutoff: float = 0.05) -> np.ndarray:
    """Per signal (column): the integrated autocorrelation time of healthy samples, in samples, ``1 + 2 sum_k
    acf(k)`` over the lags before the autocorrelation first falls to ``cutoff`` (at most a quarter of the samples;
    1 for independent samples and for a signal without variation). About how many consecutive samples hold as much
    as one independent sample: an AR(1) signal of coefficient phi has ``(1 + phi) / (1 - phi)`` (19 at 0.9, 66 at
    0.97, 199 at 0.99); from 1,800 samples the estimate comes out lower (18, 55, 126 as medians: the autocorrelation
    of a short record is biased low)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    out = np.ones(x.shape[1])
    if n < 8:
        return out
    d = x - x.mean(axis=0)
    f = np.fft.rfft(d, 2 * n, axis=0)
    ac = np.fft.irfft(f * np.conj(f), axis=0)[:n // 4]
    for j in range(x.shape[1]):
        if ac[0, j] <= 0:
            continue  # no variation: nothing to correlate
        r = ac[1:, j] / ac[0, j]
        below = np.flatnonzero(r <= cutoff)
        out[j] = 1.0 + 2.0 * float(r[:below[0] if below.size else r.size].sum())
    return out


def default_confirm(window: int, decorrelation: float | np.ndarray | None) -> int:
    """Consecutive flagged samples before an alarm when ``confirm`` is not configured: twice the dependence of
    consecutive scores, at least 5. A flag must outlast it, so that a new, independent stretch of the healthy signal
    is flagged too before an alarm: the rolling mean makes scores ``window`` samples dependent, and a signal that
    wanders slowly makes them ``decorrelation`` samples dependent (`correlation_time`, measured on the training
    samples, per signal: the slowest counts; None for a detector saved before it was measured: 2 x window as then).
    On healthy AR(1) signals the confirmed false alarms per asset-day went from 2.6 / 17.3 / 48.6 (phi 0.9 / 0.97 /
    0.99, confirm 20) to 0 / 0 / 0.48 in 200 asset-hours each, faults being confirmed later
    (bench/bench_false_alarms.py, maintenance/README.md)."""
    n = max(5, 2 * window)
    return n if decorrelation is None else max(n, math.ceil(2 * float(np.max(decorrelation))))


SEPARATE = 2  # `own_runs`: how much faster a signal's own confirmation must be for it to count on its own


def signal_confirms(window: int, decorrelation: np.ndarray | None) -> np.ndarray | None:
    """Per signal, `default_confirm` of its own correlation time: how long a run of flags *that signal alone* raises
    must last (`confirmed_by_signal`), so that one slow signal (a temperature) does not make a fault on a fast one (a
    vibration) wait for the slow signal's confirmation. None when not measured."""
    if decorrelation is None:
        return None
    return np.array([default_confirm(window, t) for t in np.atleast_1d(decorrelation)], dtype=np.int64)


def confirmed_by_signal(flag: np.ndarray, signal_flags: np.ndarray | None, confirm: int,
                        per_signal: np.ndarray | None) -> np.ndarray:
    """An alarm (before `hold`) where the last ``confirm`` samples were all flagged, or where one signal's own flags
    (`AnomalyDetector.signal_flags`, columns) ran its own ``per_signal`` confirmation. Without per-signal flags or
    confirmations, `confirmed` alone. The live alert does the same, sample by sample (`maintenance.live`)."""
    out = confirmed(flag, confirm)
    if signal_flags is None or per_signal is None:
        return out
    for j, n in enumerate(own_runs(confirm, per_signal)):
        if n:
            out |= confirmed(signal_flags[:, j], int(n))
    return out


def own_runs(confirm: int, per_signal: np.ndarray) -> np.ndarray:
    """Per signal, the run of its own flags that confirms an alarm, 0 where none does but the asset's: only a signal
    whose own confirmation is at most 1/`SEPARATE` of the asset's has one (time scales clearly apart, a vibration
    beside a temperature). Correlation times estimated from one training period vary by tens of percent: with every
    signal alike (AR(1), phi 0.9), letting each confirm on its own estimate raised 0.36 false alarms per asset-day
    where the asset's confirmation raised none (bench/bench_false_alarms.py)."""
    return np.where(np.asarray(per_signal) * SEPARATE <= confirm, per_signal, 0)


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Causal rolling mean along axis 0 (shorter windows at the start)."""
    x = np.asarray(x, dtype=float)
    if window <= 1:
        return x.copy()
    c = np.cumsum(np.vstack([np.zeros((1, *x.shape[1:])), x]), axis=0)
    i = np.arange(len(x))
    j = np.maximum(0, i - window + 1)
    return (c[i + 1] - c[j]) / (i + 1 - j).reshape((-1,) + (1,) * (x.ndim - 1))


def drift(x: np.ndarray) -> np.ndarray:
    """Per signal: shift of the mean between the two halves of healthy data, in standard deviations."""
    h = len(x) // 2
    return np.abs(x[h:].mean(axis=0) - x[:h].mean(axis=0)) / (x.std(axis=0) + 1e-12)


def drift_screen(healthy: Sequence[np.ndarray], max_drift: float | None) -> np.ndarray:
    """Indices of signals stationary enough to score: median `drift` over healthy periods <= max_drift.

    Several healthy periods (e.g. training windows of several runs of the same machine) give a more
    robust decision than one; a signal that warms up or follows the weather is not an anomaly signal
    for a stationary model (it would be for a model that explains it, which this is not).
    """
    n = healthy[0].shape[1]
    if max_drift is None:
        return np.arange(n)
    d = np.median(np.vstack([drift(h) for h in healthy]), axis=0)
    keep = np.flatnonzero(d <= max_drift)
    return keep if keep.size else np.array([int(np.argmin(d))])


@dataclass
class Scored:
    score: np.ndarray  # (n,)
    p_value: np.ndarray  # (n,)
    flag: np.ndarray  # (n,) bool: p <= alpha
    alarm: np.ndarray  # (n,) bool: flag held for `hold` samples (what the alert shows)
    contributions: np.ndarray  # (n, signals used)
    signals: list[str] = field(default_factory=list)

    def top(self, i: int, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` signals that contributed most to sample ``i``'s score, with their share."""
        c = self.contributions[i]
        total = float(np.sum(np.clip(c, 0, None))) or 1.0
        order = np.argsort(-c)[:k]
        return [(self.signals[j], float(max(c[j], 0.0) / total)) for j in order]


class AnomalyDetector:
    """Fit on healthy samples of one asset; score new samples with p-values and contributions."""

    decorrelation_: np.ndarray | None = None  # `correlation_time` of each signal scored (None: not measured)

    def __init__(self, config: AnomalyConfig | None = None, signals: Sequence[str] | None = None,
                 use: Sequence[int] | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.signal_names = list(signals) if signals is not None else None
        self.use = None if use is None else np.asarray(use, dtype=int)

    def fit(self, healthy: np.ndarray) -> AnomalyDetector:
        c = self.config
        healthy = np.asarray(healthy, dtype=float)
        names = self.signal_names or [f"x{i}" for i in range(healthy.shape[1])]
        self.use_ = self.use if self.use is not None else drift_screen([healthy], c.max_drift)
        if self.use is None and c.max_drift is not None:
            # A signal that never moved while the fit part was recorded (a fixed-speed drive's 1,480 rpm, a setpoint)
            # has no scale to standardise by: with the 1e-9 floor below, a change of 0.5 rpm scored 2.5e17 and every
            # score after it flagged (an alert naming that signal at 100 %), and a change inside the calibration part
            # made every calibration score huge (the detector blind to the other signals). Left out, as a drifting
            # signal is, unless it is all there is.
            still = np.ptp(healthy[:int(len(healthy) * c.fit_fraction), self.use_], axis=0) == 0
            if still.any() and not still.all():
                self.use_ = self.use_[~still]
        self.signals_ = [names[i] for i in self.use_]
        # Of the raw samples, all of them: how slowly each healthy signal wanders sets the default confirmation of
        # a run of its flags (`default_confirm`, `signal_confirms`).
        self.decorrelation_ = correlation_time(healthy[:, self.use_])
        x = rolling_mean(healthy[:, self.use_], c.window)
        n_fit = int(len(x) * c.fit_fraction)
        if n_fit < 10 or len(x) - n_fit < 10:
            raise ValueError(f"need at least 10 fit and 10 calibration samples, got {n_fit} and {len(x) - n_fit}")
        fit = x[c.window - 1:n_fit] if n_fit > 2 * c.window else x[:n_fit]  # skip the short warm-up windows
        self.mean_ = fit.mean(axis=0)
        self.scale_ = fit.std(axis=0) + 1e-9
        z = (fit - self.mean_) / self.scale_
        k = z.shape[1]
        corr = np.atleast_2d(np.cov(z.T)) if len(z) > 1 else np.eye(k)
        self.precision_ = np.linalg.inv(corr + c.ridge * np.eye(k))
        # One score per whole window inside the calibration part, windows not overlapping: scores of overlapping
        # windows are dependent and their largest come in clusters, so the p <= alpha threshold came out low (FAR
        # above alpha even on i.i.d. data), and the first window - 1 would have averaged in fit samples.
        # Disjoint windows of exchangeable samples give exchangeable scores, each distributed as a live score.
        w = max(1, c.window)
        self.calibration_ = self._raw_scores(x[n_fit + w - 1::w])[0]
        n_cal = len(self.calibration_)
        if n_cal < conformal.min_scores(c.alpha):
            # The smallest conformal p-value is 1/(n+1): a smaller alpha could never flag anything.
            raise ValueError(f"alpha {c.alpha} is below the p-value resolution 1/(n+1) = {1 / (n_cal + 1):.4f} of "
                             f"{n_cal} calibration scores (one per {w} samples of the last {len(x) - n_fit}; alpha "
                             f"{c.alpha} needs {conformal.min_scores(c.alpha)}): train on more healthy data, "
                             "shorten window or raise alpha")
        return self

    def _raw_scores(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (xs - self.mean_) / self.scale_
        if self.config.score == "max_z":
            contrib = z * z
            return contrib.max(axis=1), contrib
        pz = z @ self.precision_
        contrib = z * pz
        return contrib.sum(axis=1), contrib

    def signal_flags(self, contributions: np.ndarray) -> np.ndarray | None:
        """Per signal, whether its own contribution would be flagged as the score (p <= alpha): with ``max_z`` the
        score is the largest contribution, so a sample is flagged exactly when one of its signals is. None for
        ``mahalanobis``, whose contributions are shares of a sum, not scores."""
        if self.config.score != "max_z":
            return None
        return conformal.p_values(self.calibration_, contributions) <= self.config.alpha

    def score(self, x: np.ndarray) -> Scored:
        """Score consecutive samples (rows in time order; the rolling mean runs over them)."""
        xs = rolling_mean(np.asarray(x, dtype=float)[:, self.use_], self.config.window)
        s, contrib = self._raw_scores(xs)
        p = conformal.p_values(self.calibration_, s)
        flag = p <= self.config.alpha
        return Scored(s, p, flag, alarm(flag, self.config.confirm, self.config.hold), contrib, self.signals_)


def confirmed(flag: np.ndarray, n: int) -> np.ndarray:
    """True where the last ``n`` samples were all flagged (a debounce: one stray sample is not an alarm)."""
    if n <= 1:
        return flag.copy()
    c = np.cumsum(np.r_[0, flag.astype(int)])
    i = np.arange(1, len(flag) + 1)
    return (c[i] - c[np.maximum(0, i - n)]) >= n


def alarm(flag: np.ndarray, confirm: int, n_hold: int) -> np.ndarray:
    """What the alert shows: confirmed flags, held ``n_hold`` samples after the last one."""
    return hold(confirmed(flag, confirm), n_hold)


def hold(flag: np.ndarray, n: int) -> np.ndarray:
    """An alarm stays on for ``n`` samples after the last flagged sample (the alert's clear delay)."""
    if n <= 0:
        return flag.copy()
    idx = np.where(flag, np.arange(len(flag)), -(10**12))
    last = np.maximum.accumulate(idx)
    return np.arange(len(flag)) - last <= n


class AnomalyBank:
    """Detectors of many assets (same signal count) scored together: one numpy call per second.

    ``push(values, marks, active)`` takes the newest sample of every asset, shape (assets, signals), NaN for
    missing, and returns scores, p-values and contributions. An asset is scored only on a full window: every
    signal with a value in each of its ``window`` samples, as every calibration score was (a mean of ``window``
    complete healthy samples). A mean of fewer is noisier than any calibration score: after a gap (a stopped
    machine, the gateway off) the first scores were means of one or two samples and half of the assets flagged
    (`test_a_gap_in_readings_raises_no_anomaly_alert`). Otherwise all NaN (no score, rather than a healthy or an
    anomalous one). ``active`` (bool per asset, default all): the assets that have a sample this period; the
    others keep their window as it is and are not scored.
    ``marks`` (same shape, bool) are values out of the sensor's range (`maintenance.quality`), kept for the
    window so `window_quality` can say which scores rest on them.
    """

    def __init__(self, detectors: Sequence[AnomalyDetector]) -> None:
        if not detectors:
            raise ValueError("no detectors")
        self.window = max(d.config.window for d in detectors)
        ks = {len(d.use_) for d in detectors}
        if len(ks) != 1:
            raise ValueError("every asset in a bank must use the same number of signals")
        self.use = np.stack([d.use_ for d in detectors])
        self.mean = np.stack([d.mean_ for d in detectors])
        self.scale = np.stack([d.scale_ for d in detectors])
        self.precision = np.stack([d.precision_ for d in detectors])
        self.max_z = np.array([d.config.score == "max_z" for d in detectors])
        self.alpha = np.array([d.config.alpha for d in detectors])
        self.calibration = [d.calibration_ for d in detectors]
        n = len(detectors)
        self.buf = np.full((n, self.window, self.use.shape[1]), np.nan)
        self.marks = np.zeros(self.buf.shape, bool)
        self.pos = np.zeros(n, np.int64)  # samples pushed per asset (an asset without a sample keeps its window)

    def push(self, values: np.ndarray, marks: np.ndarray | None = None, active: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(len(self.pos)) if active is None else np.flatnonzero(active)
        cols = self.pos[rows] % self.window
        v = np.take_along_axis(np.asarray(values, dtype=float), self.use, axis=1)
        self.buf[rows, cols, :] = v[rows]
        marked = marks is not None and marks.any()  # rarely: most samples have no value out of range
        self.marks[rows, cols, :] = np.take_along_axis(marks, self.use, axis=1)[rows] if marked else False
        self.pos[rows] += 1
        xs = self.buf.mean(axis=1)  # NaN wherever a sample of the window lacks the signal
        missing = np.isnan(xs).any(axis=1)
        if active is not None:
            missing |= ~np.asarray(active, bool)
        z = np.nan_to_num((xs - self.mean) / self.scale)
        pz = np.einsum("aij,aj->ai", self.precision, z)
        contrib = np.where(self.max_z[:, None], z * z, z * pz)
        score = np.where(self.max_z, contrib.max(axis=1), contrib.sum(axis=1))
        p = conformal.p_values_many(self.calibration, score)
        score[missing], p[missing], contrib[missing] = np.nan, np.nan, np.nan
        return score, p, contrib

    def oldest_first(self) -> tuple[np.ndarray, np.ndarray]:
        """Each asset's window of samples and out-of-range marks, oldest first (to carry them into a new bank)."""
        k = (np.arange(self.window)[None, :] + self.pos[:, None]) % self.window
        rows = np.arange(len(self.pos))[:, None]
        return self.buf[rows, k], self.marks[rows, k]

    def window_quality(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per asset, the share of the window's values (samples x signals) that are good and out of range (the
        rest is missing or left out), and per signal whether an out-of-range value is in the window."""
        finite = np.isfinite(self.buf)
        oor = self.marks & finite
        total = self.buf.shape[1] * self.buf.shape[2]
        return (finite & ~oor).sum(axis=(1, 2)) / total, oor.sum(axis=(1, 2)) / total, oor.any(axis=1)
