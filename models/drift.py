"""Drift: input drift per feature against the training data, and performance drift once the truth arrives.

**Input drift** compares the distribution of each input in recent data with the training data:

- `psi` — population stability index over bins fixed on the reference (deciles by default):
  ``PSI = sum_b (c_b - r_b) ln(c_b / r_b)`` with ``r_b``, ``c_b`` the reference and current shares of bin ``b``
  (floored at ``eps`` so an empty bin does not give infinity). Usual reading: < 0.1 stable, 0.1-0.25 a
  moderate shift, > 0.25 a significant shift. It is symmetric and grows with the shift; a mean shift
  of ``d`` standard deviations of a normal variable gives PSI ~ ``d²`` for small ``d``.
- `ks` — two-sample Kolmogorov-Smirnov statistic ``D = sup |F_ref - F_cur|`` (0..1) and its p-value. With
  thousands of rows the p-value flags differences too small to matter, so the status uses ``D``.

Both statistics are biased upwards on few rows: PSI over deciles is about ``(bins - 1) / rows`` under no drift at
all (plus ~0.7 for every bin a small sample leaves empty), and the KS D of 30 unchanged rows is ~0.16. A reading
therefore counts (``warn`` / ``drift``) only when it is also beyond sampling noise at
`DriftThresholds.significance` (1 % for a whole check: each of its readings, PSI and KS of each feature, is held
to 1 % / (2 × features)): KS p below that, and PSI above the value that as many rows drawn from the reference
shares themselves exceed that rarely (`psi_chance`). With thousands of rows the thresholds decide.

`DriftMonitor` keeps what it needs of the reference (bin edges and shares for PSI, at most
``max_reference`` order statistics per feature for KS) so it can be stored with a model card
(`to_dict` / `from_dict`) and checks a batch of recent rows: per feature PSI, KS, means and a status
``ok`` / ``warn`` / ``drift`` (the worse of the PSI and KS readings against `DriftThresholds`).

**Performance drift** (`PerformanceMonitor`): when ground truth arrives later (a lab result, an analyser
back from maintenance), the rolling error over the last ``window`` revealed rows is compared with the
error on the training holdout, and the rolling interval coverage with the nominal one (a binomial
tolerance: ``warn`` below ``nominal - 2σ``, ``drift`` below ``nominal - 3σ``, ``σ = sqrt(p(1-p)/n)``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["STATUSES", "DriftMonitor", "DriftThresholds", "PerformanceMonitor", "ks", "psi", "psi_chance", "psi_edges"]

STATUSES = ("ok", "warn", "drift")  # in order of severity; "unknown" when there are too few rows to tell
PSI_NULL_DRAWS = 2000  # samples of the PSI of unchanged data (`psi_chance`): its 99th percentile to ~10 %;
# more for smaller levels (at least 20 draws beyond the quantile), so that a check of many features is as exact


def _worst(statuses) -> str:
    known = [s for s in statuses if s in STATUSES]
    if not known:
        return "unknown"
    return max(known, key=STATUSES.index)


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def psi_edges(reference, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's quantiles at ``1/bins .. (bins-1)/bins``, duplicates removed.

    The outer bins are open (``-inf``, ``+inf``), so current values outside the reference range still count.
    """
    ref = _finite(reference)
    if ref.size == 0:
        raise ValueError("PSI needs a non-empty reference")
    if bins < 2:
        raise ValueError(f"PSI needs at least 2 bins, got {bins}")
    return np.unique(np.quantile(ref, np.arange(1, bins) / bins))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # bin i holds edges[i-1] < v <= edges[i]  (right-closed, so a value equal to an edge is binned stably)
    idx = np.searchsorted(edges, values, side="left")
    return np.bincount(idx, minlength=edges.size + 1) / max(values.size, 1)


def _psi_from_shares(r: np.ndarray, c: np.ndarray, eps: float) -> float:
    r = np.maximum(r, eps)
    c = np.maximum(c, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(reference, current, bins: int | Sequence[float] = 10, *, eps: float = 1e-4) -> float | np.ndarray:
    """Population stability index of ``current`` against ``reference``.

    1-D inputs give a float; 2-D ``(n, k)`` inputs give one PSI per column. ``bins`` is a count (quantile
    bins of the reference) or explicit inner edges. Non-finite values are ignored; NaN if ``current`` is empty.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim == 2:
        if cur.ndim != 2 or cur.shape[1] != ref.shape[1]:
            raise ValueError(f"reference has {ref.shape[1]} columns, current has shape {cur.shape}")
        return np.array([psi(ref[:, j], cur[:, j], bins, eps=eps) for j in range(ref.shape[1])])
    r, c = _finite(ref), _finite(cur)
    if c.size == 0:
        return math.nan
    edges = psi_edges(r, bins) if np.isscalar(bins) else np.unique(np.asarray(bins, dtype=np.float64))
    return _psi_from_shares(_shares(r, edges), _shares(c, edges), eps)


def psi_chance(ref_shares, rows: int, level: float = 0.01, *, eps: float = 1e-4) -> float:
    """The PSI that ``rows`` rows drawn from the reference distribution itself (bin shares ``ref_shares``) exceed
    with probability ``level``: the sampling noise of a PSI reading on that many rows. Simulated (multinomial
    draws, fixed seed so a check is repeatable), because the eps floor of bins a small sample leaves empty puts
    the PSI of few rows far from its chi-square approximation. The reference's own sampling noise, about
    ``(bins - 1) / n_reference``, is left out: it is far below the thresholds for any training set."""
    r = np.asarray(ref_shares, dtype=np.float64)
    if rows <= 0 or r.size < 2:
        return 0.0
    draws = min(200_000, max(PSI_NULL_DRAWS, math.ceil(20 / level)))
    counts = np.random.default_rng(0).multinomial(int(rows), r / r.sum(), size=draws)
    c = np.maximum(counts / rows, eps)
    rf = np.maximum(r, eps)
    return float(np.quantile(np.sum((c - rf) * np.log(c / rf), axis=1), 1.0 - level))


def ks(reference, current) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov ``(statistic D, p-value)``; per column for 2-D inputs.

    Non-finite values are ignored; ``(nan, nan)`` if either side is empty.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim == 2:
        if cur.ndim != 2 or cur.shape[1] != ref.shape[1]:
            raise ValueError(f"reference has {ref.shape[1]} columns, current has shape {cur.shape}")
        pairs = [ks(ref[:, j], cur[:, j]) for j in range(ref.shape[1])]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    r, c = _finite(ref), _finite(cur)
    if r.size == 0 or c.size == 0:
        return math.nan, math.nan
    from scipy import stats  # here, not at import: models.runtime uses PerformanceMonitor on scipy-less gateways

    res = stats.ks_2samp(r, c, method="asymp" if r.size * c.size > 1_000_000 else "auto")
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class DriftThresholds:
    """Where ``warn`` and ``drift`` start, per reading; ``min_rows``: fewer current rows give ``unknown``;
    ``significance``: a check of unchanged data reads ``warn`` or ``drift`` at most this often, over all its features
    and both statistics (`DriftMonitor.check` holds each reading to ``significance / (2 × features)``)."""

    psi_warn: float = 0.1
    psi_drift: float = 0.25
    ks_warn: float = 0.1
    ks_drift: float = 0.2
    min_rows: int = 30
    significance: float = 0.01

    def psi_status(self, v: float, chance: float = 0.0) -> str:
        """``chance``: the PSI unchanged data of as many rows exceeds at ``significance`` (`psi_chance`)."""
        if not math.isfinite(v):
            return "unknown"
        if v <= chance:  # within the sampling noise of this many rows: no evidence of a shift
            return "ok"
        return "drift" if v >= self.psi_drift else "warn" if v >= self.psi_warn else "ok"

    def ks_status(self, d: float, p: float = 0.0, level: float | None = None) -> str:
        """``p``: the KS p-value of ``d`` (a D this large is common by chance on few rows); ``level``: the
        significance this reading is held to (default ``significance``)."""
        if not math.isfinite(d):
            return "unknown"
        if p >= (self.significance if level is None else level):  # sampling noise of this many rows: no evidence
            return "ok"
        return "drift" if d >= self.ks_drift else "warn" if d >= self.ks_warn else "ok"


def _names_and_matrix(data, names: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """``data``: a FeatureTable, a mapping name -> column, or a 2-D array (columns in ``names`` order)."""
    if hasattr(data, "matrix") and hasattr(data, "columns"):  # models.data.FeatureTable
        names = list(names) if names is not None else data.names
        return names, data.matrix(names)
    if isinstance(data, dict):
        names = list(names) if names is not None else list(data)
        return names, np.column_stack([np.asarray(data[n], dtype=np.float64) for n in names])
    a = np.asarray(data, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if names is None:
        names = [f"x{j}" for j in range(a.shape[1])]
    if a.shape[1] != len(names):
        raise ValueError(f"data has {a.shape[1]} columns for {len(names)} features ({', '.join(names)})")
    return list(names), a


class DriftMonitor:
    """Input drift of each feature against a reference (the training data).

    ``DriftMonitor(reference, schema)``: ``reference`` is a `models.data.FeatureTable`, a mapping
    name -> column or an ``(n, k)`` array; ``schema`` an `models.schema.InputSchema` or a list of names
    (which columns, in which order; default: all columns of a table). ``check(current)`` takes the same
    kinds of input and returns a dict::

        {"status": "ok|warn|drift|unknown", "rows": n, "features": [{"feature", "psi", "psi_chance", "ks",
         "ks_p", "psi_status", "ks_status", "status", "mean_ref", "mean_cur", "std_ref"}, ...]}
    """

    def __init__(self, reference, schema=None, *, bins: int = 10, thresholds: DriftThresholds | None = None,
                 max_reference: int = 5000, eps: float = 1e-4):
        names = getattr(schema, "names", schema)
        self.features, ref = _names_and_matrix(reference, names)
        self.bins = bins
        self.eps = eps
        self.thresholds = thresholds or DriftThresholds()
        self.n_reference = int(ref.shape[0])
        self._chance: dict[tuple[int, int], float] = {}  # (feature, rows) -> psi_chance
        self.edges: list[np.ndarray] = []
        self.ref_shares: list[np.ndarray] = []
        self.ref_sample: list[np.ndarray] = []  # sorted; order statistics when subsampled
        self.ref_mean: list[float] = []
        self.ref_std: list[float] = []
        for j in range(ref.shape[1]):
            col = _finite(ref[:, j])
            if col.size == 0:  # psi_edges' "PSI needs a non-empty reference" named no feature (a report's reference)
                raise ValueError(f"feature {self.features[j]!r}: no finite value in the {ref.shape[0]} reference rows "
                                 "to measure drift against")
            e = psi_edges(col, bins)
            self.edges.append(e)
            self.ref_shares.append(_shares(col, e))
            s = np.sort(col)
            if s.size > max_reference:  # evenly spaced order statistics: the ECDF to within 1/max_reference
                s = s[np.linspace(0, s.size - 1, max_reference).round().astype(int)]
            self.ref_sample.append(s)
            self.ref_mean.append(float(col.mean()))
            self.ref_std.append(float(col.std()))

    def check(self, current) -> dict:
        _, cur = _names_and_matrix(current, self.features)
        th = self.thresholds
        # Bonferroni over the features and the two statistics: at 1 % per reading, 10 features of unchanged data read
        # as drift in 23 % of 30-row checks and warn or drift in 25 % of 100-row checks (a weekly report flagging
        # one week in four); the check as a whole is held to `significance`.
        level = th.significance / (2 * len(self.features))
        out = []
        for j, name in enumerate(self.features):
            c = _finite(cur[:, j])
            if c.size < th.min_rows:
                p, d, pv, chance = math.nan, math.nan, math.nan, math.nan
            else:
                p = _psi_from_shares(self.ref_shares[j], _shares(c, self.edges[j]), self.eps)
                d, pv = ks(self.ref_sample[j], c)
                chance = self._psi_chance(j, c.size)
            ps, kst = th.psi_status(p, chance), th.ks_status(d, pv, level)
            out.append({"feature": name, "psi": p, "psi_chance": chance, "ks": d, "ks_p": pv, "psi_status": ps,
                        "ks_status": kst,
                        "status": _worst([ps, kst]), "mean_ref": self.ref_mean[j],
                        "mean_cur": float(c.mean()) if c.size else math.nan, "std_ref": self.ref_std[j],
                        "rows": int(c.size)})
        return {"status": _worst(f["status"] for f in out), "rows": int(cur.shape[0]), "features": out}

    def _psi_chance(self, j: int, rows: int) -> float:
        key = (j, rows)
        if key not in self._chance:  # windows of one size share it (over_time)
            level = self.thresholds.significance / (2 * len(self.features))  # as `check`
            self._chance[key] = psi_chance(self.ref_shares[j], rows, level, eps=self.eps)
        return self._chance[key]

    def over_time(self, current, window: int, step: int | None = None) -> dict:
        """PSI and KS per feature on consecutive windows of ``current`` (rows in time order); the last window
        ends at the last row (it overlaps the one before when the rows are not a whole number of steps).

        Returns ``{"start": [...], "end": [...], "psi": {feature: [...]}, "ks": {...}, "status": [...]}``.
        """
        _, cur = _names_and_matrix(current, self.features)
        step = step or window
        res: dict = {"start": [], "end": [], "psi": {f: [] for f in self.features},
                     "ks": {f: [] for f in self.features}, "status": []}
        n = cur.shape[0]
        starts = list(range(0, max(n - window, 0) + 1, step)) if n >= window else ([0] if n else [])
        if starts and starts[-1] + window < n:
            # The rows after the last whole window are the newest: a last window of full size ends at the last row
            # (overlapping the one before) rather than leaving recent drift out of the series.
            starts.append(n - window)
        for a in starts:
            b = min(a + window, n)
            r = self.check(cur[a:b])
            res["start"].append(a)
            res["end"].append(b)
            res["status"].append(r["status"])
            for f in r["features"]:
                res["psi"][f["feature"]].append(f["psi"])
                res["ks"][f["feature"]].append(f["ks"])
        return res

    def to_dict(self) -> dict:
        return {"features": self.features, "bins": self.bins, "eps": self.eps, "n_reference": self.n_reference,
                "thresholds": asdict(self.thresholds), "edges": [e.tolist() for e in self.edges],
                "ref_shares": [s.tolist() for s in self.ref_shares],
                "ref_sample": [s.tolist() for s in self.ref_sample], "ref_mean": self.ref_mean,
                "ref_std": self.ref_std}

    @classmethod
    def from_dict(cls, d: dict) -> DriftMonitor:
        obj = cls.__new__(cls)
        obj.features = list(d["features"])
        obj.bins = int(d["bins"])
        obj.eps = float(d.get("eps", 1e-4))
        obj.n_reference = int(d["n_reference"])
        obj.thresholds = DriftThresholds(**d.get("thresholds", {}))
        obj.edges = [np.asarray(e, dtype=np.float64) for e in d["edges"]]
        obj.ref_shares = [np.asarray(s, dtype=np.float64) for s in d["ref_shares"]]
        obj.ref_sample = [np.asarray(s, dtype=np.float64) for s in d["ref_sample"]]
        obj.ref_mean = [float(v) for v in d["ref_mean"]]
        obj.ref_std = [float(v) for v in d["ref_std"]]
        obj._chance = {}
        return obj


class PerformanceMonitor:
    """Performance drift when the truth arrives after the prediction.

    ``baseline_mae``: the model's MAE on its training holdout (the model card's metric). ``update(y_true,
    y_pred, interval=None)`` in time order; ``status()`` compares the last ``window`` revealed rows: the
    rolling MAE against ``baseline_mae`` (``warn`` from ``ratio_warn``×, ``drift`` from ``ratio_drift``×)
    and, when intervals are given, the rolling coverage against ``1 - alpha`` (binomial 2σ / 3σ bands).
    Fewer than ``min_rows`` revealed rows give ``unknown``.
    """

    def __init__(self, baseline_mae: float, *, alpha: float = 0.1, window: int = 168, ratio_warn: float = 1.25,
                 ratio_drift: float = 1.5, min_rows: int = 24):
        if not baseline_mae > 0:
            raise ValueError(f"baseline_mae must be positive, got {baseline_mae}")
        self.baseline_mae = float(baseline_mae)
        self.alpha = float(alpha)
        self.window = int(window)
        self.ratio_warn = float(ratio_warn)
        self.ratio_drift = float(ratio_drift)
        self.min_rows = int(min_rows)
        self.errors: deque[float] = deque(maxlen=self.window)
        self.hits: deque[bool] = deque(maxlen=self.window)
        self.n_seen = 0

    def update(self, y_true, y_pred, interval=None) -> None:
        y = np.asarray(y_true, dtype=np.float64).ravel()
        p = np.asarray(y_pred, dtype=np.float64).ravel()
        iv = None if interval is None else np.asarray(interval, dtype=np.float64).reshape(-1, 2)
        for i in range(y.size):
            if not (math.isfinite(y[i]) and math.isfinite(p[i])):
                continue
            self.errors.append(abs(y[i] - p[i]))
            if iv is not None:
                self.hits.append(bool(iv[i, 0] <= y[i] <= iv[i, 1]))
            self.n_seen += 1

    def status(self) -> dict:
        n = len(self.errors)
        mae = float(np.mean(self.errors)) if n else math.nan
        ratio = mae / self.baseline_mae if n else math.nan
        if n < self.min_rows:
            err_status = "unknown"
        else:
            err_status = "drift" if ratio >= self.ratio_drift else "warn" if ratio >= self.ratio_warn else "ok"
        nominal = 1.0 - self.alpha
        m = len(self.hits)
        cov = float(np.mean(self.hits)) if m else math.nan
        if m < self.min_rows:
            cov_status = "unknown"
        else:
            sigma = math.sqrt(nominal * (1 - nominal) / m)
            cov_status = "drift" if cov < nominal - 3 * sigma else "warn" if cov < nominal - 2 * sigma else "ok"
        overall = _worst([err_status, cov_status])
        return {"status": overall, "rows": n, "seen": self.n_seen, "rolling_mae": mae,
                "baseline_mae": self.baseline_mae, "mae_ratio": ratio, "error_status": err_status,
                "coverage": cov, "nominal_coverage": nominal, "coverage_status": cov_status}
