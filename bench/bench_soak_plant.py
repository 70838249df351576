"""Soak of the whole gateway: the simulated plant over OPC UA and MQTT -> `valvoja run` with edge/demo.toml
(condition indicators, anomaly scoring, rules, the alert lifecycle with webhook and MQTT notifications, rollups and
housekeeping, the emissions job) -> TimescaleDB. Does anything grow over hours?

The plant simulator (``python -m collectors.simulator``) and the gateway run as child processes; mosquitto and
PostgreSQL + TimescaleDB are private servers on free ports (tests/servers.py); a webhook receiver in this process
answers 200. Faults recur through the run (a bearing defect on P-102, and every ``--fault-every-s`` a CO analyser
failure, a stopped pump and NaN vibration) so that alerts are raised, notified and cleared again and again.

Every ``--sample-s`` the gateway's RSS, open file descriptors, threads, asyncio tasks (``valvoja_asyncio_tasks``),
spool file bytes, Prometheus series on /metrics (per family), log lines and bytes, and its database connections are
sampled; every ``--db-sample-s`` the size of each table (hypertables whole) and the rows of the small ones. After the
warm-up each series is fitted with a least-squares line (`bench_soak.fit_series`): slope per hour with its standard
error, also over the second half alone. Not part of the test suite. Run:

    .venv/bin/python bench/bench_soak_plant.py --minutes 20 --speed 60

Writes bench/results/soak_plant.json (samples included).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import psutil  # noqa: E402
import psycopg  # noqa: E402
from bench_soak import fit_series, soak_arguments, soak_servers, warmup_of  # noqa: E402
from gateway_proc import GatewayProcess  # noqa: E402
from results_io import peak_rss_kb, write_results  # noqa: E402
from servers import free_port  # noqa: E402

DEMO = ROOT / "edge/demo.toml"
RESULTS = ROOT / "bench/results/soak_plant.json"
SMALL_TABLES = ("alerts", "alert_events", "dead_letters", "emission_averages", "emission_events", "emission_runs",
                "emission_compliance", "emission_qal", "model_events")
SERIES_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


class Webhook:
    """A receiver that takes every POST with 200 and counts them."""

    def __init__(self) -> None:
        hook = self
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --churn: rules on signals that cross them every few seconds, and an alert policy that clears after 3 s, never
# re-opens and escalates after 30 s: a new alert (a new id: rows, events, notifications) every few seconds.
CHURN_POLICY = ("clear_after_s = 60.0\nescalate_after_s = 3600.0",
                "clear_after_s = 3.0\nescalate_after_s = 30.0\nreopen_within_s = 0.0")
CHURN_RULES = (("K1.NOx", "high", 78.0), ("K1.load", "high", 76.0), ("P-101.flow", "low", 150.0),
               ("SITE.ambient_temp", "high", 1.5))


def site_config(state: Path, db_url: str, opcua_port: int, mqtt_port: int, webhook: str,
                churn: bool = False) -> str:
    """edge/demo.toml with this run's servers, state folder and notification receivers."""
    text = DEMO.read_text()
    for old, new in (*((CHURN_POLICY,) if churn else ()),
                     ('state_dir = "../var/demo/gateway"', f'state_dir = "{state}"'),
                     ('listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:{HTTP_PORT}"'),
                     ("opc.tcp://127.0.0.1:4840/valvoja/sim", f"opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim"),
                     ("port = 1883", f"port = {mqtt_port}"),
                     ("[database]\n", f'[database]\nurl = "{db_url}"\nconnect_timeout_s = 3\n')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    for tag, side, limit in CHURN_RULES if churn else ():
        text += f'\n[[rules]]\nname = "churn {tag}"\ntag = "{tag}"\nkind = "threshold"\n{side} = {limit}\n'
    return text + f"""
[maintenance.notify.mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[[maintenance.notify.webhooks]]
url = "{webhook}"
"""


ALERT_BY_S = 480.0  # the bearing defect starts 360 s in; its anomaly alert comes within a minute (README)


def faults(speed: float, seconds: float, every_s: float) -> list[str]:
    """The demo's bearing defect on P-102 (after 6 min, as `valvoja demo`), and recurring short faults."""
    out = [f"P-102:bearing@{360 * speed:.0f},severity=0.8"]
    k = 1
    while k * every_s < seconds:
        t = k * every_s * speed
        out += [f"K1.CO:sensor_failure@{t:.0f}+{every_s / 4 * speed:.0f}",
                f"P-101:stop@{t:.0f}+{every_s / 3 * speed:.0f}",
                f"P-103.vib_de:nan@{t + every_s / 2 * speed:.0f}+{every_s / 4 * speed:.0f}"]
        k += 1
    return out


def metric_series(text: str) -> tuple[int, dict[str, int], float | None]:
    """Series on /metrics, per family, and valvoja_asyncio_tasks."""
    fam: dict[str, int] = {}
    tasks = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES_RE.match(line)
        name = m.group(1) if m else "?"
        for suffix in ("_bucket", "_count", "_sum", "_created", "_total"):
            name = name.removesuffix(suffix)
        fam[name] = fam.get(name, 0) + 1
        if line.startswith("valvoja_asyncio_tasks "):
            tasks = float(line.split()[1])
    return sum(fam.values()), fam, tasks


def db_sizes(dsn: str) -> dict:
    """Bytes of every table in public (a hypertable with its chunks), rows of the small ones, connections."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        hyper = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        sizes = {}
        for t in tables:
            q = "SELECT hypertable_size(%s)" if t in hyper else "SELECT pg_total_relation_size(%s)"
            sizes[t] = conn.execute(q, (t,)).fetchone()[0] or 0
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SMALL_TABLES if t in tables}
        conns = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND pid <> pg_backend_pid()").fetchone()[0]
    return {"bytes": sizes, "rows": rows, "connections": conns}


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def main() -> int:
    ap = soak_arguments(__doc__, 20.0, 420.0, RESULTS)
    ap.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second (default 60)")
    ap.add_argument("--interval", type=float, default=0.2,
                    help="real seconds between plant steps (default 0.2: ~250 readings/s)")
    ap.add_argument("--fault-every-s", type=float, default=120.0, help="recurring faults, real seconds (120)")
    ap.add_argument("--churn", action="store_true",
                    help="rules crossed every few seconds, alerts cleared after 3 s and never re-opened: a new alert "
                         "every few seconds (the alert lifecycle, notifications and their tables under load)")
    ap.add_argument("--db-sample-s", type=float, default=30.0, help="table sizes every this many s (30)")
    args = ap.parse_args()
    seconds = args.minutes * 60
    warmup = warmup_of(args, 420.0)

    with soak_servers("valvoja-soak-plant-") as (tmp, pg, mq, dsn):
        hook = Webhook()
        opcua_port = free_port()
        simlog = open(tmp / "simulator.log", "wb")
        sim = subprocess.Popen(
            [sys.executable, "-m", "collectors.simulator", "--opcua", f"opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim",
             "--mqtt", f"127.0.0.1:{mq.port}", "--speed", str(args.speed), "--interval", str(args.interval),
             *[a for f in faults(args.speed, seconds, args.fault_every_s) for a in ("--fault", f)]],
            cwd=ROOT, stdout=simlog, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(3)
        state = tmp / "gw" / "var"
        gw = GatewayProcess(tmp / "gw", site_config(state, pg.url("soak"), opcua_port, mq.port, hook.url, args.churn))
        gw.start(timeout_s=120)
        deadline = time.monotonic() + 60
        while not all(c.get("connected") for c in gw.health()["collectors"].values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"collectors did not connect: {gw.health()['collectors']}")
            time.sleep(0.2)
        proc = psutil.Process(gw.proc.pid)
        samples: list[dict] = []
        db_samples: list[dict] = []
        families_first: dict[str, int] = {}
        families_last: dict[str, int] = {}
        t0 = time.monotonic()
        next_db = 0.0
        next_print = 0.0
        print(f"soak (plant): speed {args.speed:g}, plant step {args.interval:g} s, {args.minutes:g} min; "
              f"samples every {args.sample_s:g} s, tables every {args.db_sample_s:g} s (fit after {warmup:.0f} s)")
        try:
            while (now := time.monotonic() - t0) < seconds:
                if sim.poll() is not None:
                    raise RuntimeError(f"simulator exited with {sim.returncode}")
                h = gw.health()
                try:
                    series, fam, tasks = metric_series(gw.metrics())
                except OSError:
                    series, fam, tasks = None, {}, None
                if fam:
                    families_first = families_first or fam
                    families_last = fam
                logb = gw.log.read_bytes()
                s = {"t_s": round(now, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                     "fds": proc.num_fds(), "threads": proc.num_threads(), "tasks": tasks,
                     "metric_series": series, "log_bytes": len(logb), "log_lines": logb.count(b"\n"),
                     "spool_file_bytes": dir_bytes(state, "spool*"), "state_bytes": dir_bytes(state, "**/*"),
                     "spool_readings": h["spool"]["readings"], "stored": h["readings_stored"],
                     "webhook_posts": hook.posts, "healthy": h.get("ok", h.get("healthy"))}
                if now >= next_db:
                    d = db_sizes(dsn)
                    db_samples.append({"t_s": s["t_s"], **d})
                    s["db_connections"] = d["connections"]
                    s["db_bytes"] = sum(d["bytes"].values())
                    for t, b in d["bytes"].items():
                        s[f"bytes_{t}"] = b
                    next_db += args.db_sample_s
                samples.append(s)
                if now >= next_print:
                    print(f"  t={now:6.0f} s rss={s['rss_mb']:6.1f} MB fds={s['fds']} threads={s['threads']} "
                          f"tasks={tasks} series={series} log={s['log_lines']} lines stored={s['stored']:,} "
                          f"spool={s['spool_readings']} hooks={hook.posts} db={s.get('db_bytes')}", flush=True)
                    next_print += 60
                time.sleep(args.sample_s)
        finally:
            elapsed = time.monotonic() - t0
            final_db = db_sizes(dsn)
            hwm_mb = round(peak_rss_kb(gw.proc.pid) / 1024, 2) if gw.proc.poll() is None else None
            t_stop = time.monotonic()
            code = gw.terminate(timeout_s=60)
            stop_s = time.monotonic() - t_stop
            sim.terminate()
            sim.wait(30)
            simlog.close()
            hook.close()
            log_tail = gw.log.read_text(errors="replace").splitlines()

    tables = sorted({k for s in samples for k in s if k.startswith("bytes_")})
    keys = ["rss_mb", "fds", "threads", "tasks", "metric_series", "log_bytes", "log_lines", "spool_file_bytes",
            "state_bytes", "db_connections", "db_bytes", *tables]
    fits = {k: fit_series(samples, warmup, k) for k in keys}
    fits_late = {k: fit_series(samples, max(warmup, elapsed / 2), k) for k in keys}

    def first_last_peak(k):
        v = [s[k] for s in samples if s.get(k) is not None]
        return {"first": v[0], "last": v[-1], "peak": max(v)} if v else None

    # What the log says most often (a message repeated every cycle is a soak problem of its own).
    counts: dict[str, int] = {}
    for line in log_tail:
        key = re.sub(r"\d+(\.\d+)?", "N", line.split(" ", 3)[-1])[:120]
        counts[key] = counts.get(key, 0) + 1
    grown = {f: [families_first.get(f, 0), n] for f, n in families_last.items() if n != families_first.get(f, 0)}
    result = {
        "minutes": round(elapsed / 60, 2), "speed": args.speed, "plant_step_s": args.interval, "warmup_s": warmup,
        "fault_every_s": args.fault_every_s, "churn": args.churn, "exit_code": code, "stop_s": round(stop_s, 2),
        "webhook_posts": hook.posts, "rss_peak_vmhwm_mb": hwm_mb, "summary": {k: first_last_peak(k) for k in keys},
        "log_lines_per_min_after_warmup": (fits["log_lines"]["slope_per_h"] or 0) / 60,
        "log_bytes_per_min_after_warmup": (fits["log_bytes"]["slope_per_h"] or 0) / 60,
        "fit": fits, "fit_second_half": fits_late, "metric_families_changed": grown,
        "metric_families_last": families_last, "db_final": final_db,
        "log_top": sorted(counts.items(), key=lambda kv: -kv[1])[:15],
        "samples": samples, "db_samples": db_samples,
    }
    write_results(result, args.out)
    for k in keys:
        f, fl, flp = fits[k], fits_late[k], first_last_peak(k)
        print(f"{k:28s} first/last/peak {flp and [flp['first'], flp['last'], flp['peak']]}  slope/h "
              f"{f['slope_per_h']} ± {f.get('stderr_per_h')}  "
              f"(2nd half {fl['slope_per_h']} ± {fl.get('stderr_per_h')})")
    print(f"metric families changed: {grown}")
    print(f"log: {result['log_lines_per_min_after_warmup']:.1f} lines/min, "
          f"{result['log_bytes_per_min_after_warmup']:.0f} bytes/min; top: {result['log_top'][:5]}")
    print(f"tables at the end: {final_db}")
    print(f"SIGTERM -> exit {code} in {stop_s:.2f} s; webhook posts {hook.posts}; peak RSS {hwm_mb} MB (VmHWM)")
    # P-102's bearing defect (6 min in, real time) must have raised and notified an alert by 8 min: a soak in which
    # analytics did nothing shows flat curves for the wrong reason. A shorter run does not reach it.
    silent = elapsed >= ALERT_BY_S and not hook.posts
    if silent:
        print(f"FAILED: no alert notified in {elapsed / 60:.1f} min: the analytics did not run as the soak needs")
    elif elapsed < ALERT_BY_S:
        print(f"(run shorter than {ALERT_BY_S / 60:.0f} min: the bearing defect's alert is not checked)")
    return 0 if code == 0 and not silent else 1


if __name__ == "__main__":
    sys.exit(main())
