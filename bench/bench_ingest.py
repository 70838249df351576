"""Gateway ingest benchmark: MQTT -> `valvoja run` -> TimescaleDB, against the raw COPY limit.

Phases (each prints its figures; all are written to bench/results/ingest.json):
1. raw:        binary COPY of pre-encoded rows into `readings` (same schema and indexes, a fresh table
               like the gateway's, 20k-row transactions like the gateway), over one connection and over
               `database.writers` (default 2) connections side by side as the gateway writes - the database's
               own limit on this machine. Encoding is not timed (the gateway's is).
2. throughput: 1,000 tags, 100 samples per MQTT message, published as fast as the broker takes them;
               sustained readings/s from the first publish to the last commit, the rows counted in the
               table afterwards. Ratio to raw (the faster of the two raw medians: the real limit).
3. latency:    10,000 readings/s (100 messages/s) with source time = publish time; p50/p99 of
               source time (when the publisher built the message) -> database commit, from the gateway's
               own reservoir (a sample of each committed batch; n said).
4. outage:     the database stopped for --outage-s while 10,000 readings/s flow; then the time from its
               return to the gateway's first commit (its reconnect back-off), and from that commit the rate
               readings are stored at while the spool drains (new readings still arriving at 10,000/s) as a multiple
               of the ingest rate; at the end every published reading must be in the table.
5. rss:        10,000 configured tags, traffic over all of them; peak RSS of the gateway process (the
               kernel's high-water mark, VmHWM: start-up included, no sample missed).
6. analytics:  the throughput phase with live analytics on: a threshold rule on each of --analytics-tags
               of the tags (default 100 of 1,000), never firing; readings/s and its ratio to phase 2 (what
               running analytics costs ingest).

Raw COPY, throughput and analytics run --rounds times (default 3), alternated, each run in a fresh database
dropped afterwards; medians are reported with every run and the load average before and after (the machine
may be shared: one run of each swung by 30 % with the neighbours' load).

Every phase that moves readings checks that the table holds each published reading once, and fails
otherwise. Servers are private (tests/servers.py): PostgreSQL 15 + TimescaleDB and mosquitto on free ports.
Run:  .venv/bin/python bench/bench_ingest.py [--outage-s 300] [--messages 10000] [--rounds 3] [--skip outage]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from gateway_proc import GatewayProcess  # noqa: E402
from ops_support import db_url  # noqa: E402
from results_io import peak_rss_kb, write_results  # noqa: E402
from servers import MosquittoServer, PostgresServer  # noqa: E402

from edge.db.migrate import migrate  # noqa: E402
from edge.settings import Database  # noqa: E402
from edge.sink.pgbinary import COLUMNS, encode_rows  # noqa: E402

SAMPLES_PER_MSG = 100
BATCH_ROWS = 20_000
WRITERS = Database.model_fields["writers"].default  # the gateway here runs with the default
ROLLUP_S = float(os.environ.get("BENCH_ROLLUP_S", "5.0"))


def site(dsn: str, mqtt_port: int, topic: str, tags: int, state: Path, *, register_tags: bool = False,
         rules: int = 0) -> str:
    text = f"""
[site]
name = "bench"
gateway_id = "gw-bench"
state_dir = "{state}"

[database]
url = "{db_url(dsn)}"
batch_rows = {BATCH_ROWS}
flush_interval_s = 0.2
connect_timeout_s = 3
rollup_interval_s = {ROLLUP_S}

[http]
listen = "127.0.0.1:{{HTTP_PORT}}"

[logging]
level = "WARNING"
format = "text"

[service]
collector_silence_s = 0

[[collectors]]
kind = "mqtt"
name = "bench"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "gw-bench-{int(time.time())}"
max_inflight = 1000

[[collectors.subscriptions]]
topic = "{topic}"
tag = "{{field}}"
[collectors.subscriptions.json]
value = "v"
time = "t"
tag = "tag"
samples = "samples"
time_format = "epoch_us"
"""
    if register_tags:
        text += "".join(f'\n[[tags]]\nname = "B.t{i:05d}"\nunit = "1"\nrange = [-1e9, 1e9]\n' for i in range(tags))
    text += "".join(f'\n[[rules]]\nname = "r{i}"\ntag = "B.t{i:05d}"\nkind = "threshold"\nhigh = 1e12\n'
                    for i in range(rules))
    return text


class Publisher:
    """Publishes JSON batches of SAMPLES_PER_MSG samples over the configured tags (QoS 1)."""

    def __init__(self, port: int, topic: str, tags: int):
        self.topic, self.tags = topic, tags
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
        self.c.max_inflight_messages_set(2000)
        self.c.max_queued_messages_set(0)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.g = 0  # global sample index
        self.base_us = int(time.time() * 1e6) - 3_600_000_000

    def payload(self, now_us: int | None = None) -> bytes:
        samples = []
        for _ in range(SAMPLES_PER_MSG):
            g = self.g
            t = now_us if now_us is not None else self.base_us + g // self.tags
            samples.append({"tag": f"B.t{g % self.tags:05d}", "t": t, "v": float(g % 977)})
            self.g += 1
        return orjson.dumps({"samples": samples})

    def burst(self, messages: int, window: int = 500, payloads: list[bytes] | None = None) -> None:
        infos = []
        for i in range(messages):
            infos.append(self.c.publish(self.topic, payloads[i] if payloads else self.payload(), qos=1))
            if len(infos) >= window:
                infos.pop(0).wait_for_publish(60)
        for i in infos:
            i.wait_for_publish(60)

    def steady(self, rate_readings: float, seconds: float, live_time: bool, stop: threading.Event | None = None):
        period = SAMPLES_PER_MSG / rate_readings
        t_next = time.monotonic()
        end = t_next + seconds
        while time.monotonic() < end and not (stop and stop.is_set()):
            now_us = int(time.time() * 1e6) if live_time else None
            self.c.publish(self.topic, self.payload(now_us), qos=1)
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM readings").fetchone()[0]


def _raw_copy(pg: PostgresServer, name: str, n_rows: int, tags: int, connections: int) -> dict:
    dsn = pg.create_database(name, timescaledb=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        ids = {}
        with conn.cursor() as cur:
            for i in range(tags):
                cur.execute("INSERT INTO tags (name) VALUES (%s) RETURNING id", (f"B.t{i:05d}",))
                ids[f"B.t{i:05d}"] = cur.fetchone()[0]
    base = int(time.time() * 1e6) - 3_600_000_000
    rows = [(f"B.t{g % tags:05d}", base + g // tags, float(g % 977), base, 0, 0, 0, None) for g in range(n_rows)]
    chunks = [encode_rows(rows[i:i + BATCH_ROWS], ids) for i in range(0, n_rows, BATCH_ROWS)]
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]
    errors: list[BaseException] = []

    def write(conn: psycopg.Connection, mine: list[bytes]) -> None:
        try:
            for chunk in mine:
                with conn.transaction(), conn.cursor() as cur, cur.copy(
                        f"COPY readings ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(chunk)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    # psycopg releases the GIL while the server works, so threads give the server one process per connection
    threads = [threading.Thread(target=write, args=(c, chunks[k::connections])) for k, c in enumerate(conns)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    stored = count(dsn)
    assert stored == n_rows, f"raw COPY stored {stored} of {n_rows} rows"
    return {"rows": n_rows, "connections": connections, "seconds": round(dt, 3), "rows_per_s": round(n_rows / dt)}


def phase_raw(pg: PostgresServer, n_rows: int, tags: int, writers: int, rounds: int) -> dict:
    """Raw binary COPY over one connection and over ``writers`` side by side, alternated for ``rounds``;
    ``rows_per_s`` is the better of the two medians (the limit the gateway is held to)."""
    runs = []
    for r in range(rounds):
        for conns in dict.fromkeys((1, writers)):
            name = f"raw{conns}_{r}"
            runs.append(_raw_copy(pg, name, n_rows, tags, conns))
            pg.drop_database(name)  # each run starts from the same server state
            print(f"raw COPY over {conns} connection(s): {n_rows} rows in {runs[-1]['seconds']:.2f} s = "
                  f"{runs[-1]['rows_per_s']:,} rows/s")
    medians = {c: round(statistics.median(x["rows_per_s"] for x in runs if x["connections"] == c))
               for c in dict.fromkeys((1, writers))}
    best = max(medians, key=medians.__getitem__)
    return {"rows": n_rows, "rows_per_s": medians[best], "connections": best,
            "median_rows_per_s_by_connections": {str(c): v for c, v in medians.items()}, "runs": runs}


def start_gateway(tmp: Path, name: str, dsn: str, mq: MosquittoServer, topic: str, tags: int,
                  register_tags: bool = False, rules: int = 0) -> GatewayProcess:
    gw = GatewayProcess(tmp / name, site(dsn, mq.port, topic, tags, tmp / name / "var", register_tags=register_tags,
                                         rules=rules))
    gw.start(timeout_s=120)
    deadline = time.monotonic() + 60
    while not gw.health()["collectors"]["bench"].get("connected"):
        if time.monotonic() > deadline:
            raise TimeoutError("collector did not connect")
        time.sleep(0.1)
    return gw


def wait_stored(gw: GatewayProcess, n: int, timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while gw.health()["readings_stored"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"stored {gw.health()['readings_stored']} of {n}")
        time.sleep(0.05)
    return time.perf_counter()


def phase_throughput(tmp, pg, mq, messages: int, tags: int, raw: dict, rules: int = 0, run: int = 0) -> dict:
    """One run: a fresh gateway and database, ``messages`` published at once; dropped afterwards."""
    name = f"tp{rules}_{run}"
    dsn = pg.create_database(f"e2e{rules}_{run}", timescaledb=True)
    topic = f"bench/{name}"
    gw = start_gateway(tmp, name, dsn, mq, topic, tags, rules=rules)
    pub = Publisher(mq.port, topic, tags)
    n = messages * SAMPLES_PER_MSG
    # Built before the clock starts: on two cores, a publisher making JSON in Python while it sends would
    # take CPU from the gateway, which is what this phase measures.
    payloads = [pub.payload() for _ in range(messages)]
    cpu0 = psutil.Process(gw.proc.pid).cpu_times()
    t0 = time.perf_counter()
    pub.burst(messages, payloads=payloads)
    t_pub = time.perf_counter()
    t1 = wait_stored(gw, n)
    cpu1 = psutil.Process(gw.proc.pid).cpu_times()
    pub.close()
    gw.terminate()
    stored = count(dsn)
    assert stored == n, f"stored {stored} of {n} readings"
    pg.drop_database(f"e2e{rules}_{run}")
    rate = n / (t1 - t0)
    out = {"readings": n, "tags": tags, "samples_per_message": SAMPLES_PER_MSG, "seconds": round(t1 - t0, 3),
           "publish_seconds": round(t_pub - t0, 3), "readings_per_s": round(rate),
           "gateway_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
           "ratio_to_raw_copy": round(rate / raw["rows_per_s"], 3)}
    if rules:
        out["analytics_rules"] = rules
    print(f"end to end{f' with {rules} analytics rules' if rules else ''}: {n} readings in {t1 - t0:.2f} s = "
          f"{rate:,.0f} readings/s ({out['ratio_to_raw_copy']:.0%} of raw COPY over {raw['connections']} "
          f"connection(s)); gateway CPU {out['gateway_cpu_s']} s")
    return out


def phase_latency(tmp, pg, mq, tags: int, seconds: float) -> dict:
    dsn = pg.create_database("lat", timescaledb=True)
    topic = "bench/lat"
    gw = start_gateway(tmp, "lat", dsn, mq, topic, tags)
    pub = Publisher(mq.port, topic, tags)
    pub.steady(10_000, seconds, live_time=True)
    n = pub.g
    wait_stored(gw, n)
    lat = gw.health()["latency_s"]
    pub.close()
    gw.terminate()
    stored = count(dsn)
    assert stored == n, f"stored {stored} of {n} readings"
    out = {"rate_readings_per_s": 10_000, "seconds": seconds, "readings": n, **lat}
    print(f"latency at 10k readings/s: p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms, "
          f"max {lat['max'] * 1000:.0f} ms (n={lat['n']})")
    return out


def phase_outage(tmp, mq, tags: int, outage_s: float) -> dict:
    pg = PostgresServer()
    pg.start()
    try:
        dsn = pg.create_database("outage", timescaledb=True)
        topic = "bench/out"
        gw = start_gateway(tmp, "out", dsn, mq, topic, tags)
        pub = Publisher(mq.port, topic, tags)
        rate = 10_000
        stop = threading.Event()
        th = threading.Thread(target=pub.steady, args=(rate, outage_s + 3600, False, stop), daemon=True)
        th.start()
        time.sleep(5)
        pg.stop()
        t_down = time.monotonic()
        while time.monotonic() - t_down < outage_s:
            time.sleep(5)
            h = gw.health()
            print(f"  outage {time.monotonic() - t_down:5.0f} s: spool {h['spool']['readings']:,} readings, "
                  f"{h['spool']['bytes'] / 1e6:.0f} MB", flush=True)
        backlog = gw.health()["spool"]["readings"]
        stored_down = gw.health()["readings_stored"]
        pg.start()
        t_up = time.perf_counter()
        # The gateway's reconnect (back-off) is timed on its own: the drain rate counts from the first commit.
        while (stored_up := gw.health()["readings_stored"]) == stored_down:
            time.sleep(0.05)
        t_first = time.perf_counter()
        while gw.health()["spool"]["readings"] > 2 * rate:  # drained down to ~normal working depth
            time.sleep(0.2)
        t_drained = time.perf_counter()
        stored_drained = gw.health()["readings_stored"]
        stop.set()
        th.join(30)
        published = pub.g
        wait_stored(gw, published)
        pub.close()
        gw.terminate()
        stored = count(dsn)
        assert stored == published, f"stored {stored} of {published} readings after the outage"
        drain_rate = (stored_drained - stored_up) / (t_drained - t_first)
        out = {"outage_s": outage_s, "ingest_readings_per_s": rate, "backlog_readings": backlog,
               "first_commit_after_restart_s": round(t_first - t_up, 2),
               "drain_seconds": round(t_drained - t_first, 2), "drain_readings_per_s": round(drain_rate),
               "drain_over_ingest": round(drain_rate / rate, 2), "published": published, "stored": stored}
        print(f"outage {outage_s:.0f} s at {rate:,}/s: backlog {backlog:,}; first commit "
              f"{out['first_commit_after_restart_s']} s after the database was back, drained in "
              f"{out['drain_seconds']} s "
              f"at {drain_rate:,.0f} readings/s = {out['drain_over_ingest']}x ingest")
        return out
    finally:
        pg.close()


def phase_rss(tmp, pg, mq, seconds: float) -> dict:
    tags = 10_000
    dsn = pg.create_database("rss", timescaledb=True)
    topic = "bench/rss"
    gw = start_gateway(tmp, "rss", dsn, mq, topic, tags, register_tags=True)
    pub = Publisher(mq.port, topic, tags)
    pub.steady(20_000, seconds, False)
    wait_stored(gw, pub.g)
    peak_kb = peak_rss_kb(gw.proc.pid)
    n = pub.g
    pub.close()
    gw.terminate()
    stored = count(dsn)
    assert stored == n, f"stored {stored} of {n} readings"
    out = {"tags": tags, "rate_readings_per_s": 20_000, "seconds": seconds, "readings": n,
           "peak_rss_mb": round(peak_kb / 1024, 1)}
    print(f"10,000 tags at 20k readings/s: peak gateway RSS {out['peak_rss_mb']} MB (VmHWM)")
    return out


def summarise(runs: list[dict], raw: dict) -> dict:
    """The median run's figures of a series of throughput runs, with every run."""
    rate = round(statistics.median(r["readings_per_s"] for r in runs))
    return {"readings_per_s": rate, "ratio_to_raw_copy": round(rate / raw["rows_per_s"], 3),
            "min_readings_per_s": min(r["readings_per_s"] for r in runs),
            "max_readings_per_s": max(r["readings_per_s"] for r in runs), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000, help="messages of 100 samples in the throughput phase")
    ap.add_argument("--tags", type=int, default=1_000)
    ap.add_argument("--latency-s", type=float, default=30)
    ap.add_argument("--outage-s", type=float, default=300)
    ap.add_argument("--rss-s", type=float, default=30)
    ap.add_argument("--analytics-tags", type=int, default=100, help="tags with a rule in the analytics phase")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternated runs of raw COPY and of the throughput/analytics phases (medians reported): "
                         "on a shared 2-core machine one run of each swung 30 %% with the neighbours' load")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["throughput", "latency", "outage", "rss", "analytics"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = ap.parse_args()
    results: dict = {"machine": {"cpus": psutil.cpu_count(), "mem_gb": round(psutil.virtual_memory().total / 2**30)},
                     "parameters": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "samples_per_message": SAMPLES_PER_MSG, "batch_rows": BATCH_ROWS,
                                    "writers": WRITERS},
                     "units": "readings/s and rows/s; seconds; latency in seconds; RSS in MiB"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    pg = PostgresServer()
    # mosquitto's own default autosave interval (1800 s): the test fixture's 1 s rewrites the whole persisted
    # backlog every second, which throttles the broker, not the gateway.
    mq = MosquittoServer(tls=False, password=False, autosave_interval=1800)
    results["machine"]["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    pg.start()
    mq.start()
    try:
        n_raw = args.messages * SAMPLES_PER_MSG
        raw = results["raw_copy"] = phase_raw(pg, n_raw, args.tags, WRITERS, args.rounds)
        print(f"raw COPY limit: {raw['rows_per_s']:,} rows/s (median of {args.rounds}, {raw['connections']} "
              "connection(s))")
        # Throughput and analytics alternate, in turns, so drift in the machine's load hits both alike; the
        # analytics ratio is the median of the ratios within a round.
        series: dict[str, list[dict]] = {k: [] for k in ("throughput", "analytics") if k not in args.skip}
        for r in range(args.rounds):
            for kind in (list(series) if r % 2 == 0 else list(series)[::-1]):
                rules = args.analytics_tags if kind == "analytics" else 0
                series[kind].append(phase_throughput(tmp, pg, mq, args.messages, args.tags, raw, rules=rules, run=r))
        for kind, runs in series.items():
            results[kind] = summarise(runs, raw)
            print(f"{kind}: median {results[kind]['readings_per_s']:,} readings/s of {len(runs)} runs "
                  f"({results[kind]['min_readings_per_s']:,}-{results[kind]['max_readings_per_s']:,}), "
                  f"{results[kind]['ratio_to_raw_copy']:.0%} of raw COPY")
        if len(series) == 2:
            ratios = [a["readings_per_s"] / t["readings_per_s"]
                      for a, t in zip(series["analytics"], series["throughput"], strict=True)]
            a = results["analytics"]
            a["analytics_rules"] = args.analytics_tags
            a["ratio_to_throughput"] = round(statistics.median(ratios), 3)
            a["ratios_to_throughput_by_round"] = [round(x, 3) for x in ratios]
            print(f"analytics on: {a['ratio_to_throughput']:.0%} of the throughput without (median of the rounds' "
                  f"ratios {', '.join(f'{x:.0%}' for x in ratios)})")
        if "latency" not in args.skip:
            results["latency"] = phase_latency(tmp, pg, mq, args.tags, args.latency_s)
        if "outage" not in args.skip:
            results["outage"] = phase_outage(tmp, mq, args.tags, args.outage_s)
        if "rss" not in args.skip:
            results["rss"] = phase_rss(tmp, pg, mq, args.rss_s)
    finally:
        mq.close()
        pg.close()
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
