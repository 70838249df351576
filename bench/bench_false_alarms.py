"""Benchmark: confirmed false alarms per day of the anomaly detector on slowly varying healthy signals, and what the
confirmation costs in detecting real faults.

For each kind of healthy data, ``--runs`` detectors with the live defaults (`AnomalyDetector` with `AnomalyConfig()`:
window 10, alpha 0.01, ``max_z``, fitted on 1,800 samples as `maintenance.live` fits them) each score ``--hours`` of
the same process after their training. Healthy data: 3 signals, each an AR(1) process of coefficient phi (0: independent
samples; 0.9, 0.97, 0.99: wandering over ~10, ~30, ~100 samples), and a mixed asset (two independent signals and one
of phi 0.99, a temperature beside vibrations). Reported per kind:

- flagged: the share of scored samples with p <= alpha (the per-sample rate the conformal p-values speak of);
- false alarms per day: alarms that would raise (or re-open) an alert, a run of ``confirm`` flagged samples, counted
  once until 60 flagged-free samples have passed (the alert's default ``clear_after_s``), per asset-day, with the
  confirmation before (2 x window, at least 5: 20) and now (`maintenance.anomaly.default_confirm`: also twice the
  slowest signal's correlation time measured on the training samples; or a run of one signal's own flags twice its
  own, `confirmed_by_signal`, as the live alert does), and the exact 95 % upper bound of the rate;
- detection: on a fresh stretch of the same healthy process, a step of 4 standard deviations, or a drift of 0.01
  standard deviations per sample, on signal 0 from sample 600 on; the share of detectors that confirm an alarm within
  1,800 samples of the onset and the median delay (in samples, flags before the onset not counted), before and now.

With SKAB's ``anomaly-free.csv`` (``--skab DIR``, default ../shared/data/skab; skipped with a note when absent): the
first 1,800 rows trained, the rest scored, the same counts.

Prints the figures and writes bench/results/bench_false_alarms.json. Run:
``.venv/bin/python bench/bench_false_alarms.py [--runs 200] [--hours 1]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from results_io import write_results

from maintenance import skab
from maintenance.anomaly import (
    AnomalyConfig,
    AnomalyDetector,
    confirmed_by_signal,
    default_confirm,
    hold,
    signal_confirms,
)
from maintenance.uncertainty import proportion_interval

TRAIN = 1800
CLEAR = 60  # samples: the alert's default clear_after_s at period_s 1
ONSET, AFTER = 600, 1800  # faults: from this sample of the fresh stretch, confirmed within this many samples
KINDS = {"independent": (0.0, 0.0, 0.0), "phi 0.9": (0.9,) * 3, "phi 0.97": (0.97,) * 3, "phi 0.99": (0.99,) * 3,
         "mixed (0, 0, 0.99)": (0.0, 0.0, 0.99)}


def ar1(n: int, phis: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of independent AR(1) signals of unit variance (started in their stationary state)."""
    phi = np.asarray(phis)
    e = rng.standard_normal((n, len(phis))) * np.sqrt(1 - phi**2)
    x = np.empty_like(e)
    x[0] = rng.standard_normal(len(phis))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x + np.array([10.0, 5.0, 80.0])[:len(phis)]


class Rule:
    """What confirms an alarm: a run of ``confirm`` flags of the asset, or of one signal's own (``per_signal``)."""

    def __init__(self, det: AnomalyDetector, now: bool) -> None:
        self.det = det
        tau = det.decorrelation_ if now else None
        self.confirm = default_confirm(det.config.window, tau)
        self.per_signal = signal_confirms(det.config.window, tau)

    def on(self, x: np.ndarray, start: int = 0) -> np.ndarray:
        """Confirmed alarms over ``x`` (rows in time order), runs counted from row ``start`` on."""
        s = self.det.score(x)
        sig = self.det.signal_flags(s.contributions)
        return confirmed_by_signal(s.flag[start:], None if sig is None else sig[start:], self.confirm, self.per_signal)


def alarms(on: np.ndarray) -> int:
    """Alarms raised or re-opened: one per confirmed run, until `CLEAR` samples without one."""
    on = hold(on, CLEAR)
    return int(on[0]) + int(np.sum(on[1:] & ~on[:-1]))


def delay(on: np.ndarray) -> int | None:
    """Samples from the onset to the first confirmed alarm within `AFTER` of it (None: none)."""
    hit = np.flatnonzero(on[:AFTER])
    return int(hit[0]) if hit.size else None


def per_day(events: int, samples: int) -> dict:
    days = samples / 86400
    hi = proportion_interval(events, samples)
    return {"alarms": events, "asset_days": round(days, 3), "per_day": round(events / days, 2),
            "per_day_upper95": None if hi is None else round(hi[1] * 86400, 2)}


def detection(delays: list[int | None]) -> dict:
    got = [d for d in delays if d is not None]
    return {"rate": round(len(got) / len(delays), 3), "median_delay": float(np.median(got)) if got else None}


def simulate(phis: tuple[float, ...], runs: int, scored: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    flagged, before, now, confirms = [], 0, 0, []
    faults = {f"{kind} {when}": [] for kind in ("step", "drift") for when in ("before", "now")}
    for _ in range(runs):
        x = ar1(TRAIN + scored, phis, rng)
        det = AnomalyDetector(AnomalyConfig()).fit(x[:TRAIN])
        old, new = Rule(det, now=False), Rule(det, now=True)
        confirms.append(new.confirm)
        flagged.append(det.score(x[TRAIN:]).flag[det.config.window - 1:].mean())
        before += alarms(old.on(x[TRAIN:]))
        now += alarms(new.on(x[TRAIN:]))
        y = ar1(ONSET + AFTER, phis, rng)
        ramp = {"step": np.full(AFTER, 4.0), "drift": 0.01 * np.arange(AFTER)}
        for kind, add in ramp.items():
            z = y.copy()
            z[ONSET:, 0] += add
            faults[f"{kind} before"].append(delay(old.on(z, ONSET)))
            faults[f"{kind} now"].append(delay(new.on(z, ONSET)))
    n = runs * scored
    return {"runs": runs, "flagged": round(float(np.mean(flagged)), 4),
            "confirm_now": {"median": float(np.median(confirms)), "p10": float(np.percentile(confirms, 10)),
                            "p90": float(np.percentile(confirms, 90))},
            "false_alarms_before": per_day(before, n), "false_alarms_now": per_day(now, n),
            **{k: detection(v) for k, v in faults.items()}}


def skab_free(folder: Path) -> dict | str:
    path = folder / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        return f"skipped: {path} not found"
    f = skab.load(path)
    det = AnomalyDetector(AnomalyConfig(), signals=f.columns).fit(f.x[:TRAIN])
    flag = det.score(f.x[TRAIN:]).flag
    old, new = Rule(det, now=False), Rule(det, now=True)
    return {"signals": det.signals_, "decorrelation": [round(float(t), 2) for t in det.decorrelation_],
            "confirm_now": new.confirm, "flagged": round(float(flag[det.config.window - 1:].mean()), 4),
            "false_alarms_before": per_day(alarms(old.on(f.x[TRAIN:])), flag.size),
            "false_alarms_now": per_day(alarms(new.on(f.x[TRAIN:])), flag.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="detectors per kind of healthy data")
    ap.add_argument("--hours", type=float, default=1.0, help="healthy samples scored per detector, in hours at 1 Hz")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skab", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "skab")
    args = ap.parse_args()
    scored = int(args.hours * 3600)
    out: dict = {"runs": args.runs, "scored_per_run": scored, "train": TRAIN, "kinds": {}}
    for i, (name, phis) in enumerate(KINDS.items()):
        r = out["kinds"][name] = simulate(phis, args.runs, scored, args.seed + i)
        fb, fn = r["false_alarms_before"], r["false_alarms_now"]
        print(f"{name:>20}: flagged {r['flagged']:.4f}; confirm now {r['confirm_now']['median']:.0f} "
              f"({r['confirm_now']['p10']:.0f}-{r['confirm_now']['p90']:.0f}); false alarms/day {fb['per_day']} -> "
              f"{fn['per_day']} (<= {fn['per_day_upper95']}); step {r['step before']} -> {r['step now']}; "
              f"drift {r['drift before']} -> {r['drift now']}", flush=True)
    out["skab_anomaly_free"] = s = skab_free(args.skab)
    print(f"SKAB anomaly-free: {s}")
    write_results(out, "bench_false_alarms.json")


if __name__ == "__main__":
    main()
