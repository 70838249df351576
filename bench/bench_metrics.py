"""Benchmark: what one scrape of ``/metrics`` costs the gateway (its event loop renders the text).

    .venv/bin/python bench/bench_metrics.py [--collectors 1 10 100] [--repeat 200]

For each number of collectors: a gateway's `Metrics` with the series a running gateway has (each collector's counters
at 0, error kinds of a few failures, the validation rules, two emissions stacks, latency and write-time histograms
with observations), rendered ``--repeat`` times. Prints the samples, bytes and the median and best render time, and
writes bench/results/metrics.json. The series are bounded by the configuration (collectors, stacks, assets), never
by tags, messages or error texts, so these sizes are what a site with that many collectors serves.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from edge.metrics import Metrics  # noqa: E402
from edge.validate import RULE_NAMES  # noqa: E402


def gateway_metrics(collectors: int) -> Metrics:
    """The Metrics of a gateway with ``collectors`` collectors after a while of running."""
    m = Metrics()
    names = [f"line-{i}" for i in range(collectors)]
    m.known(collectors=names, rules=RULE_NAMES)
    m.known_stacks(["K1", "K2"])
    for name in names:
        m.readings_in.labels(name).inc(1_000_000)
        m.connected.labels(name).set(1)
        for kind in ("decoder", "message_too_large", "ConnectionRefusedError", "TimeoutError"):
            m.collector_errors.labels(name, kind).inc()
        m.watchdog_restarts.labels(f"collector:{name}", "died")
    for i in range(10_000):
        m.latency_seconds.observe(0.1 + i % 100 / 10)
        m.db_write_seconds.observe(0.01 + i % 10 / 100)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collectors", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rows = []
    print(f"{'collectors':>10} {'samples':>8} {'bytes':>8} {'median ms':>10} {'best ms':>8}")
    for n in args.collectors:
        m = gateway_metrics(n)
        text = m.render()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            m.render()
            times.append((time.perf_counter() - t0) * 1e3)
        samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        row = {"collectors": n, "samples": samples, "bytes": len(text), "median_ms": round(statistics.median(times), 3),
               "best_ms": round(min(times), 3)}
        rows.append(row)
        print(f"{n:>10} {samples:>8} {len(text):>8} {row['median_ms']:>10.2f} {row['best_ms']:>8.2f}")
    write_results({"python": platform.python_version(), "machine": platform.machine(), "repeat": args.repeat,
                   "cases": rows}, "metrics.json")


if __name__ == "__main__":
    main()
