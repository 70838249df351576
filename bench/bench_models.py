"""Benchmark: onnxruntime vs scikit-learn inference for the model kinds of `models.estimators`.

Same fitted pipeline, same rows, in one run. For each estimator (regressors: ``hgb`` (the default),
``hgb-cqr``, ``linear``; anomaly scorers: ``mahalanobis`` (the default), ``pca``, ``isolationforest``):

- fit time and ONNX conversion time (``models.export.to_onnx``), ONNX size, session creation time;
- per batch size (1, 100, 1,000, 10,000 rows): latency of one call p50 / p99 and throughput in rows/s,
  for ``onnxruntime.InferenceSession.run`` (float32 input, one intra-op thread, as `models.runtime` serves)
  and for scikit-learn computing what the ONNX graph computes (``models.estimators.model_output``: ``predict``,
  and for ``hgb-cqr`` the whole band, not the point alone; float64 input, one thread via threadpoolctl);
- parity: the ONNX outputs against scikit-learn's on the 10,000 benchmarked rows (``models.export.check_parity``,
  its tolerances); a model that fails it fails the run (exit 1): a fast wrong answer is no figure;
- the issue's bars: single-row ONNX p50 <= 100 µs for the regressors, ONNX >= 5x faster than scikit-learn
  on single rows; peak RSS of the process.

Rows: the gas-turbine files (`../shared/data/gas-turbine`, 2011-2012, 9 inputs, NOX target) when present,
else synthetic rows of the same shape. Each case runs ``--repeats`` calls or until ``--budget`` seconds,
whichever comes first (at least 20 calls), after a warm-up.

Prints a table and writes bench/results/bench_models.json (or ``--out``). Run:
``.venv/bin/python bench/bench_models.py [--models hgb mahalanobis] [--budget 2]``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
from results_io import write_results
from threadpoolctl import threadpool_limits

from models.estimators import ESTIMATORS, make_pipeline, model_output
from models.export import INPUT_NAME, check_parity, session, to_onnx
from models.schema import InputSchema

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gas-turbine"
DEFAULT_MODELS = ["hgb", "hgb-cqr", "linear", "mahalanobis", "pca", "isolationforest"]
BATCHES = [1, 100, 1000, 10000]
REPEATS = {1: 3000, 100: 1000, 1000: 300, 10000: 50}


def load_rows(data: Path) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    if (data / "gt_2011.csv").is_file():
        from models.data import GAS_TURBINE_INPUTS, load_gas_turbine

        t = load_gas_turbine(data, [2011, 2012])
        names = list(GAS_TURBINE_INPUTS)
        return t.matrix(names), t.column("NOX"), names, f"gas-turbine 2011-2012 ({len(t)} rows)"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(15000, 9))
    y = 60 + 8 * X[:, 0] - 5 * X[:, 3] * X[:, 5] + 3 * np.sin(X[:, 7]) + rng.normal(size=15000)
    return X, y, [f"x{j}" for j in range(9)], "synthetic (15000 rows x 9)"


def timed(fn, repeats: int, budget: float) -> np.ndarray:
    for _ in range(min(20, repeats)):
        fn()
    out = []
    t_end = time.perf_counter() + budget
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        if i >= 19 and time.perf_counter() > t_end:
            break
    return np.array(out)


def stats(lat_s: np.ndarray, rows: int) -> dict:
    us = lat_s * 1e6
    return {"calls": int(lat_s.size), "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), "rows_per_s": float(rows / np.median(lat_s))}


def bench_model(name: str, X: np.ndarray, y: np.ndarray, names: list[str], budget: float) -> dict:
    spec = ESTIMATORS[name]
    pipe = make_pipeline(name)
    X64 = X.astype(np.float32).astype(np.float64)
    t = time.perf_counter()
    with threadpool_limits(1):
        pipe.fit(X64, y if spec.kind == "regression" else None)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    onnx_bytes = to_onnx(pipe, InputSchema.of(names))
    convert_s = time.perf_counter() - t
    t = time.perf_counter()
    sess = session(onnx_bytes)
    session_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    res: dict = {"kind": spec.kind, "fit_s": fit_s, "convert_s": convert_s, "session_s": session_s,
                 "onnx_bytes": len(onnx_bytes), "batches": {}}
    for b in BATCHES:
        idx = rng.integers(0, len(X64), size=b)
        x64 = np.ascontiguousarray(X64[idx])
        x32 = np.ascontiguousarray(x64, dtype=np.float32)
        feed = {INPUT_NAME: x32}
        onnx_lat = timed(lambda feed=feed: sess.run(None, feed), REPEATS[b], budget)
        with threadpool_limits(1):
            skl_lat = timed(lambda x=x64: model_output(pipe, x), REPEATS[b], budget)
        o, s = stats(onnx_lat, b), stats(skl_lat, b)
        res["batches"][str(b)] = {"onnx": o, "sklearn": s, "onnx_speedup_p50": s["p50_us"] / o["p50_us"]}
    res["parity"] = check_parity(pipe, onnx_bytes, x64).to_dict()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(ESTIMATORS))
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per case at most (default 2)")
    ap.add_argument("--data", type=Path, default=DATA,
                    help="gas-turbine folder (default ../shared/data/gas-turbine beside the checkout; a git worktree "
                         "elsewhere finds none and falls back to synthetic rows, which the first line says)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_models.json")
    args = ap.parse_args()
    X, y, names, source = load_rows(args.data)
    import onnxruntime
    import sklearn

    out: dict = {"rows": source, "features": len(names), "batches": BATCHES, "threads": 1,
                 "python": platform.python_version(), "sklearn": sklearn.__version__,
                 "onnxruntime": onnxruntime.__version__, "machine": platform.machine(), "models": {}}
    print(f"rows: {source}; one thread each; latency per call, throughput = rows / median call time")
    print(f"{'model':<16}{'batch':>6}  {'onnx p50 µs':>12}{'p99 µs':>10}{'rows/s':>12}   "
          f"{'sklearn p50 µs':>14}{'p99 µs':>10}{'rows/s':>12}{'speedup':>9}")
    for name in args.models:
        r = bench_model(name, X, y, names, args.budget)
        out["models"][name] = r
        for b, v in r["batches"].items():
            o, s = v["onnx"], v["sklearn"]
            print(f"{name:<16}{b:>6}  {o['p50_us']:>12.1f}{o['p99_us']:>10.1f}{o['rows_per_s']:>12.0f}   "
                  f"{s['p50_us']:>14.1f}{s['p99_us']:>10.1f}{s['rows_per_s']:>12.0f}{v['onnx_speedup_p50']:>8.1f}x")
        print(f"{'':<16}fit {r['fit_s']:.2f} s, ONNX conversion {r['convert_s'] * 1000:.0f} ms, "
              f"{r['onnx_bytes'] / 1024:.0f} KiB, session {r['session_s'] * 1000:.0f} ms; parity on "
              f"{r['parity']['rows']} rows: max |d| {r['parity']['max_abs']:.2g}, "
              f"{'pass' if r['parity']['passed'] else 'FAIL'}")
    regs = [m for m in out["models"] if out["models"][m]["kind"] == "regression"]
    bars = {}
    for m, r in out["models"].items():
        one = r["batches"]["1"]
        bars[m] = {"single_row_p50_us": one["onnx"]["p50_us"], "speedup_single_row": one["onnx_speedup_p50"],
                   "speedup_at_least_5x": one["onnx_speedup_p50"] >= 5.0}
        if m in regs:
            bars[m]["p50_at_most_100us"] = one["onnx"]["p50_us"] <= 100.0
    out["bars"] = bars
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for m, b in bars.items():
        p50 = "" if "p50_at_most_100us" not in b else (" (<= 100 µs: ok)" if b["p50_at_most_100us"] else " (> 100 µs)")
        print(f"single row {m}: ONNX p50 {b['single_row_p50_us']:.1f} µs{p50}, {b['speedup_single_row']:.1f}x "
              f"scikit-learn ({'>= 5x: ok' if b['speedup_at_least_5x'] else 'below 5x'})")
    print(f"peak RSS {out['peak_rss_mb']:.0f} MB")
    write_results(out, args.out)
    failed = [m for m, r in out["models"].items() if not r["parity"]["passed"]]
    for m in failed:
        print(f"PARITY FAILED: {m}: {out['models'][m]['parity']}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
