"""Soak: `valvoja run` at a steady 2,000 readings/s for a long time; is the gateway's memory flat?

MQTT (20 messages/s of 100 samples over 1,000 tags, QoS 1, source time = publish time) -> the real gateway
process (service loop, watchdog, spool, forwarder) -> TimescaleDB. Every few seconds the gateway's RSS,
spool depth and stored count are sampled; after a warm-up the RSS is fitted with a least-squares line and
the slope is reported in MB per hour, with the first/last/peak RSS (peak of the samples, and the kernel's
high-water mark VmHWM, which no sampling interval misses). At the end the gateway is stopped
with SIGTERM and every published reading must be in the database.

Servers are private (tests/servers.py): PostgreSQL 15 + TimescaleDB and mosquitto on free ports.
Not part of the test suite. Run:

    .venv/bin/python bench/bench_soak.py                 # 30 minutes
    .venv/bin/python bench/bench_soak.py --minutes 3     # a quick look

Writes bench/results/soak.json (samples included). The whole gateway (simulated plant over OPC UA and MQTT,
analytics, alerts, notifications, rollups, emissions): bench/bench_soak_plant.py, which reuses `fit_series`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from bench_ingest import SAMPLES_PER_MSG, Publisher, count, start_gateway  # noqa: E402
from results_io import peak_rss_kb, write_results  # noqa: E402
from servers import MosquittoServer, PostgresServer  # noqa: E402

RESULTS = ROOT / "bench/results/soak.json"


def fit_series(samples: list[dict], warmup_s: float, key: str) -> dict:
    """Least-squares slope of ``key`` per hour over the samples after the warm-up (those that have it), with its
    standard error and the fitted first and last values."""
    pts = [(s["t_s"], s[key]) for s in samples if s["t_s"] >= warmup_s and s.get(key) is not None]
    if len(pts) < 3:
        return {"slope_per_h": None, "points": len(pts)}
    t = np.array([p[0] for p in pts]) / 3600.0
    y = np.array([p[1] for p in pts], dtype=float)
    (slope, intercept), cov = np.polyfit(t, y, 1, cov=True)
    return {"slope_per_h": round(float(slope), 3), "stderr_per_h": round(float(np.sqrt(cov[0, 0])), 3),
            "points": len(pts), "from_s": round(float(pts[0][0]), 1), "to_s": round(float(pts[-1][0]), 1),
            "fit_start": round(float(intercept + slope * t[0]), 2),
            "fit_end": round(float(intercept + slope * t[-1]), 2)}


def fit_slope(samples: list[dict], warmup_s: float) -> dict:
    """Least-squares RSS slope (MB/h) over the samples after the warm-up, with its standard error."""
    f = fit_series(samples, warmup_s, "rss_mb")
    if f["slope_per_h"] is None:
        return {"slope_mb_per_h": None, "points": f["points"]}
    return {"slope_mb_per_h": round(f["slope_per_h"], 2), "slope_stderr_mb_per_h": round(f["stderr_per_h"], 2),
            "points": f["points"], "from_s": f["from_s"], "to_s": f["to_s"],
            "rss_fit_start_mb": round(f["fit_start"], 1), "rss_fit_end_mb": round(f["fit_end"], 1)}


def soak_arguments(doc: str, minutes: float, warmup_cap_s: float, out: Path) -> argparse.ArgumentParser:
    """The options every soak has: duration, sampling interval, warm-up, results file."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=minutes, help=f"soak duration (default {minutes:g})")
    ap.add_argument("--sample-s", type=float, default=5.0, help="sampling interval (default 5 s)")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help=f"samples before this are not fitted (default: 20%% of the run, at most {warmup_cap_s:g} s)")
    ap.add_argument("--out", type=Path, default=out)
    return ap


def warmup_of(args: argparse.Namespace, warmup_cap_s: float) -> float:
    return args.warmup_s if args.warmup_s is not None else min(warmup_cap_s, 0.2 * args.minutes * 60)


@contextlib.contextmanager
def soak_servers(prefix: str) -> Iterator[tuple[Path, PostgresServer, MosquittoServer, str]]:
    """A temp folder, private PostgreSQL (TimescaleDB, no fsync) and mosquitto servers, and a database ``soak``."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir, \
            PostgresServer(fsync=False) as pg, MosquittoServer(tls=False, password=False) as mq:
        yield Path(tmpdir), pg, mq, pg.create_database("soak", timescaledb=True)


def main() -> int:
    ap = soak_arguments(__doc__, 30.0, 300.0, RESULTS)
    ap.add_argument("--rate", type=float, default=2000.0, help="readings per second (default 2000)")
    ap.add_argument("--tags", type=int, default=1000)
    args = ap.parse_args()
    seconds = args.minutes * 60
    warmup = warmup_of(args, 300.0)

    with soak_servers("valvoja-soak-") as (tmp, _pg, mq, dsn):
        topic = "bench/soak"
        gw = start_gateway(tmp, "soak", dsn, mq, topic, args.tags)
        proc = psutil.Process(gw.proc.pid)
        pub = Publisher(mq.port, topic, args.tags)
        stop = threading.Event()
        th = threading.Thread(target=pub.steady, args=(args.rate, seconds, True, stop), daemon=True)
        samples: list[dict] = []
        t0 = time.monotonic()
        th.start()
        print(f"soak: {args.rate:,.0f} readings/s over {args.tags} tags for {args.minutes:g} min; "
              f"RSS every {args.sample_s:g} s (fit after {warmup:.0f} s)")
        try:
            next_print = 0.0
            while th.is_alive():
                h = gw.health()
                s = {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                     "published": pub.g, "stored": h["readings_stored"], "spool": h["spool"]["readings"],
                     "threads": proc.num_threads(), "fds": proc.num_fds()}
                samples.append(s)
                if s["t_s"] >= next_print:
                    print(f"  t={s['t_s']:7.0f} s  rss={s['rss_mb']:7.1f} MB  published={s['published']:>10,}  "
                          f"stored={s['stored']:>10,}  spool={s['spool']:>6}  threads={s['threads']}")
                    next_print += 60
                th.join(args.sample_s)
        except KeyboardInterrupt:
            stop.set()
            th.join()
        elapsed = time.monotonic() - t0
        published = pub.g
        deadline = time.monotonic() + 120
        while gw.health()["readings_stored"] < published and time.monotonic() < deadline:
            time.sleep(0.2)
        pub.close()
        health = gw.health()
        hwm_mb = round(peak_rss_kb(gw.proc.pid) / 1024, 2)  # the true peak: a 5 s sample can miss a spike
        t_stop = time.monotonic()
        code = gw.terminate(timeout_s=30)
        stop_s = time.monotonic() - t_stop
        in_db = count(dsn)

    fit = fit_slope(samples, warmup)
    # Bounded caches (e.g. the forwarder's 200,000-sample latency reservoir) fill during the first minutes:
    # the second half of the run shows the steady state on its own.
    fit_late = fit_slope(samples, max(warmup, elapsed / 2))
    rss = [s["rss_mb"] for s in samples]
    result = {
        "rate_readings_per_s": args.rate, "tags": args.tags, "samples_per_message": SAMPLES_PER_MSG,
        "minutes": round(elapsed / 60, 2), "published": published, "stored_in_db": in_db,
        "lost": published - in_db, "achieved_rate": round(published / elapsed, 1),
        "rss_first_mb": rss[0] if rss else None, "rss_last_mb": rss[-1] if rss else None,
        "rss_peak_mb": max(rss) if rss else None, "rss_peak_vmhwm_mb": hwm_mb,
        "warmup_s": warmup, "fit": fit, "fit_second_half": fit_late,
        "latency_s": health.get("latency_s"), "exit_code": code, "stop_s": round(stop_s, 2),
        "threads_last": samples[-1]["threads"] if samples else None,
        "fds_first_last": [samples[0]["fds"], samples[-1]["fds"]] if samples else None,
        "samples": samples,
    }
    write_results(result, args.out)
    print(f"published {published:,} in {elapsed / 60:.1f} min ({result['achieved_rate']:,.0f}/s); "
          f"in the database {in_db:,} (lost {published - in_db})")
    print(f"RSS first {result['rss_first_mb']} MB, last {result['rss_last_mb']} MB, peak {result['rss_peak_mb']} MB "
          f"sampled, {hwm_mb} MB VmHWM; "
          f"slope after warm-up {fit.get('slope_mb_per_h')} ± {fit.get('slope_stderr_mb_per_h')} MB/h "
          f"({fit.get('points')} samples); second half {fit_late.get('slope_mb_per_h')} "
          f"± {fit_late.get('slope_stderr_mb_per_h')} MB/h")
    print(f"SIGTERM -> exit {code} in {stop_s:.2f} s; written to {args.out}")
    return 0 if code == 0 and published == in_db else 1


if __name__ == "__main__":
    sys.exit(main())
