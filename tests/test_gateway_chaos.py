"""Combined faults ("chaos"): one real gateway process collecting from four sources at once while a seeded random
plan SIGKILLs / SIGTERMs and restarts it, restarts the broker, stops or kills PostgreSQL and cuts the gateway's links
to the OPC UA server and to the broker, the outages overlapping as the dice fall. Then everything drains and the
database is counted per source.

Sources (all into one `valvoja run`, its own PostgreSQL + TimescaleDB and its own mosquitto):

- OPC UA: tests/opcua_counter.py (3 variables counting every 100 ms) through a `CutProxy`;
- MQTT, through another `CutProxy` (the publisher connects to the broker directly):
  - JSON with a source time (value k at origin + k x 25 ms), QoS 1;
  - without a source time, QoS 1 on the gateway's persistent session: plain ``k``, and JSON arrays
    ``[2k, 2k+1]`` (one tag, a microsecond apart), told apart by the number they carry;
  - Sparkplug B NDATA by alias with metric timestamps (births on each publisher session), QoS 1.

What must hold at the end:

- nothing lost: every MQTT message whose PUBACK the publisher got is stored (the publisher never re-sends, see
  `ChaosPublisher`); for OPC UA, every value the counter wrote from the first one stored on. That is OPC UA's
  guarantee here, which holds while the gateway resumes its session: each time the gateway has no Publish request
  at the server (process down, link cut, reconnecting) must be shorter than ``queue_size`` x the counter's period
  (per-item queue, discard-oldest: 1000 x 100 ms = 100 s), than the session timeout (120 s) and than the
  subscription lifetime (600 x 200 ms = 120 s), and at most 500 unacknowledged notification messages may wait
  (asyncua's retransmission queue). Every outage of the plan is at most ~10 s, so it holds throughout, and the test
  also checks its premise: no resume fell back to a new session and no notification message was reported lost;
- nothing twice: no value stored under two times (source-timed values exactly at their own time);
- the 1-minute and 1-hour rollups equal to the raw readings of every bucket; the spool empty.

``VALVOJA_CHAOS_SEED`` replays a plan (the seed is printed; the timing of real processes still varies) and
``VALVOJA_CHAOS_S`` sets how long faults are made (default 70 s).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import secrets
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from chaos_support import (
    ChaosPublisher,
    Fault,
    array_stream,
    check_timed,
    check_untimed,
    json_stream,
    plain_stream,
    plan,
    rollup_differences,
    sparkplug_stream,
)
from gateway_proc import GatewayProcess
from opcua_support import CounterProcess, CutProxy, free_port
from ops_support import new_run, site_config, wait_for
from test_opcua_restart import PERIOD_S, TAGS, differences, produced, stored

from collectors.mqtt.sparkplug_encode import EdgeNode

# Under pytest-xdist (scripts/test.sh) the long fault tests share one worker: two at once on 2 cores slowed
# each other's gateways past what they wait for.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]

JSON_STEP = timedelta(milliseconds=25)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TICK_S = 0.05  # publisher tick: JSON every tick (20/s), plain every tick, arrays and Sparkplug every other

EXTRA = """
[[collectors.subscriptions]]
topic = "plain/@RUN@/+asset/+signal"
format = "plain"
tag = "{asset}.{signal}"

[[collectors.subscriptions]]
topic = "spBv1.0/@GROUP@/#"
format = "sparkplug"

[[collectors]]
kind = "opcua"
name = "opc"
endpoint = "@ENDPOINT@"
publishing_interval_ms = 200.0
sampling_interval_ms = 0.0
queue_size = 1000
lifetime_count = 600
session_timeout_s = 120.0
connect_timeout_s = 3.0
watchdog_interval_s = 0.5
reconnect_max_delay_s = 1.0
nodes = [@NODES@]
"""


# Log lines none of these faults may cause. The premise of OPC UA's guarantee: every resume succeeded
# (opcua_session_not_resumed) and the server lost no notification message (opcua_messages_lost).
LOG_PROBLEMS = ("event=opcua_session_not_resumed", "event=opcua_messages_lost", "event=mqtt_session_lost",
                "event=task_died", "event=drain_gave_up", "event=stop_timeout", "event=ack_error", "Traceback",
                "Task was destroyed")
RECORD_START = re.compile(r"\d\d:\d\d:\d\d ")  # edge/logs.py TextFormatter: a new record, not a traceback line


class Chaos:
    """Carries out `Fault`s on the real processes and keeps a timeline of what was done when."""

    def __init__(self, gw: GatewayProcess, broker, pg, proxies: dict[str, CutProxy], t0: float) -> None:
        self.gw, self.broker, self.pg, self.proxies, self.t0 = gw, broker, pg, proxies, t0
        self.timeline: list[str] = []
        self.exit_codes: list[int] = []  # of the SIGTERMed gateways
        self.counts: Counter[str] = Counter()  # what each gateway process counted, added up at its end

    def count(self) -> None:
        """Add up the counters of the running gateway process (before it goes, and at the end)."""
        try:
            h = self.gw.health()
        except OSError:  # starting or stopping
            return
        c = h["collectors"]
        self.counts.update({"duplicates skipped": h["duplicates_skipped"],
                            "MQTT redeliveries matched": c["plant"]["redeliveries_matched"],
                            "OPC UA sessions resumed": c["opc"]["sessions_resumed"],
                            "OPC UA messages republished": c["opc"]["republished"]})

    def _note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:6.1f} s {what}")

    async def part(self, faults: list[Fault]) -> None:
        """One part's faults, one after the other, each at its planned time or as soon as the one before is over."""
        for f in faults:
            await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
            self._note(f"{f.part} {f.action} for {f.down_s} s")
            await getattr(self, f"_{f.part}")(f.action, f.down_s)
            self._note(f"{f.part} back")

    async def _gateway(self, action: str, down_s: float) -> None:
        await asyncio.to_thread(self.count)
        if action == "sigkill":
            await asyncio.to_thread(self.gw.kill)
        else:
            self.exit_codes.append(await asyncio.to_thread(self.gw.terminate, 30))
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.gw.start, 60, wait_database=False)

    async def _broker(self, action: str, down_s: float) -> None:
        await asyncio.to_thread(self.broker.stop)  # orderly: mosquitto saves what it acknowledged
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.broker.start)

    async def _postgres(self, action: str, down_s: float) -> None:
        await asyncio.to_thread(self.pg.stop if action == "stop" else self.pg.kill)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.pg.start)

    async def _opcua(self, action: str, down_s: float) -> None:
        await self.proxies["opcua"].cut(down_s)

    async def _mqtt(self, action: str, down_s: float) -> None:
        await self.proxies["mqtt"].cut(down_s)


class Sources:
    """The four sources' publishers and what the database must hold of what they sent."""

    def __init__(self, port: int, run: str, group: str, origin: datetime) -> None:
        self.group, self.origin = group, origin
        self.node = EdgeNode(group, "N1")
        self.json = json_stream(run, origin, JSON_STEP, 1)
        self.plain, self.array = plain_stream(run, 1), array_stream(run, 2)
        self.sparkplug = sparkplug_stream(self.node, self.sparkplug_ms, 2)
        self.streams = [self.json, self.plain, self.array, self.sparkplug]
        self.publisher = ChaosPublisher(port, f"chaos-pub-{run}", self.streams, TICK_S,
                                        (self.node, self.sparkplug, self.sparkplug_ms))
        self.opcua_last = -1  # the counter's last value, once it has finished

    def sparkplug_ms(self, k: int) -> int:
        return round(self.origin.timestamp() * 1000) + 100 * k

    def problems(self, dsn: str) -> list[str]:
        """What the database lacks, holds twice or holds that was never sent (empty: all as it must be)."""
        try:
            got = stored(dsn)
        except psycopg.OperationalError:  # the database is restarting
            return ["database not reachable"]
        out: list[str] = []
        for tag in TAGS:
            rows = got.get(tag, [])
            want = produced(self.origin, range(int(min((v for _, v in rows), default=0)), self.opcua_last + 1))
            if rows != want:
                out.append(f"OPC UA {tag}: {differences(rows, want)}")
        check_timed("J-1.v", got.get("J-1.v", []), self.json.acked(), self.json.next,
                    lambda k: self.origin + k * JSON_STEP, out)
        check_timed(f"{self.group}.N1.C", got.get(f"{self.group}.N1.C", []), self.sparkplug.acked(),
                    self.sparkplug.next, lambda k: EPOCH + timedelta(milliseconds=self.sparkplug_ms(k)), out)
        check_untimed("U-1.seq", got.get("U-1.seq", []), self.plain.acked(), set(range(self.plain.next)), out)
        check_untimed("U-2.arr", got.get("U-2.arr", []), {v for k in self.array.acked() for v in (2 * k, 2 * k + 1)},
                      set(range(2 * self.array.next)), out)
        return out

    def summary(self) -> str:
        return (", ".join(f"{s.name} {s.next} ({len(s.acked())} acknowledged)" for s in self.streams)
                + f"; OPC UA values up to {self.opcua_last}; publisher connections {self.publisher.connections}")


def left_behind(gw: GatewayProcess, dsn: str, health: dict) -> list[str]:
    """After the final clean stop: what the spool, the rollups, the dead letters and the log say is amiss."""
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        if diff := rollup_differences(conn):
            out.append(f"rollups differing from their raw readings: {diff[:10]}")
        if dead := conn.execute("SELECT source, topic, error FROM dead_letters").fetchall():
            out.append(f"dead letters: {dead[:5]}")
    spool = sqlite3.connect(gw.workdir / "var" / "spool.db")
    try:
        left = {t: spool.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("batches", "rollup_pending")}
        held = [int.from_bytes(v[16:24], "big", signed=True)  # the receive time (collectors/mqtt/redelivery.py)
                for (v,) in spool.execute("SELECT value FROM source_state")]
    finally:
        spool.close()
    if health["spool"]["readings"] or any(left.values()):
        out.append(f"spool not empty: {health['spool']}, {left}")
    # Receive times remembered for MQTT messages the broker may send again: those of earlier processes or
    # connections may stay (the broker may have had their PUBACKs or not: collectors/mqtt/README.md), but the final
    # connection ended with a clean stop, whose barrier confirms every PUBACK it sent.
    since = health["collectors"]["plant"]["connected_since"]
    final = sum(t >= round(datetime.fromisoformat(since).timestamp() * 1e6) for t in held) if since else 0
    print(f"receive times left in the spool: {len(held)}, of the final connection {final}")
    if final:
        out.append(f"{final} receive times of the final connection not confirmed at its clean stop")
    return out + log_problems(gw.log.read_text(errors="replace").splitlines())


def log_problems(lines: list[str]) -> list[str]:
    """The log lines no fault may cause; a traceback whole, so that a rare failure says what raised."""
    out = []
    for i, line in enumerate(lines):
        if not any(m in line for m in LOG_PROBLEMS):
            continue
        if line.startswith("Traceback") and i:
            out.append(lines[i - 1])  # the record it belongs to
        out.append(line)
        if line.startswith("Traceback"):
            out += itertools.takewhile(lambda s: not RECORD_START.match(s), lines[i + 1:i + 60])
    return out


@pytest.mark.timeout(300)
async def test_combined_faults_lose_nothing_acknowledged_store_nothing_twice_and_keep_rollups_right(
        tmp_path, own_pg_server, own_mosquitto):
    seed = int(os.environ.get("VALVOJA_CHAOS_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    duration_s = float(os.environ.get("VALVOJA_CHAOS_S") or 70)
    faults = plan(seed, duration_s)
    print(f"\nchaos seed {seed} (VALVOJA_CHAOS_SEED={seed} replays this plan), {duration_s:g} s of faults:")
    print("\n".join(f"  {f}" for f in faults))

    dsn = own_pg_server.create_database("chaos", timescaledb=True)
    run, group = new_run(), f"chaos{secrets.token_hex(3)}"
    origin = datetime.now(UTC).replace(microsecond=0)
    count = int((duration_s + 8) / PERIOD_S)  # the counter goes on a little longer than the faults
    counter = CounterProcess(f"opc.tcp://127.0.0.1:{free_port()}/counter", tmp_path, "--tags", str(len(TAGS)),
                             "--period", str(PERIOD_S), "--origin", origin.isoformat(), "--count", str(count)).start()
    proxies = {"opcua": await CutProxy(counter.port).start(), "mqtt": await CutProxy(own_mosquitto.port).start()}
    nodes = ", ".join(f'{{ node_id = "ns=2;s={t}", tag = "{t}" }}' for t in TAGS)
    site = site_config(dsn, proxies["mqtt"].port, run=run).replace("connect_timeout_s = 3",
                                                                    "connect_timeout_s = 3\nrollup_interval_s = 1", 1)
    gw = GatewayProcess(tmp_path / "gw", site + EXTRA.replace("@RUN@", run).replace("@GROUP@", group)
                        .replace("@ENDPOINT@", proxies["opcua"].endpoint("/counter")).replace("@NODES@", nodes))
    sources = Sources(own_mosquitto.port, run, group, origin)
    try:
        await asyncio.to_thread(gw.start, 60)
        await asyncio.to_thread(wait_for, lambda: all(c.get("connected") for c in gw.health()["collectors"].values()),
                                30, 0.1, "both collectors connected")
        sources.publisher.start()
        t0 = time.monotonic()
        chaos = Chaos(gw, own_mosquitto, own_pg_server, proxies, t0)
        await asyncio.gather(*(chaos.part([f for f in faults if f.part == p]) for p in {f.part for f in faults}))
        await asyncio.sleep(max(0.0, t0 + duration_s - time.monotonic()))
        sources.publisher.stop()
        chaos_s = time.monotonic() - t0

        # Drain: the counter finishes, then everything acknowledged reaches the database.
        await asyncio.to_thread(wait_for, lambda: counter.last() >= count - 1, 30, 0.2, "the counter's last value")
        sources.opcua_last = counter.last()
        try:
            await asyncio.to_thread(wait_for, lambda: not sources.problems(dsn), 60, 1.0,
                                    "everything acknowledged stored")
        except TimeoutError:
            pass  # said below, with the details
        drain_s = time.monotonic() - t0 - chaos_s
        await asyncio.sleep(1.0)  # nothing more (a late duplicate) may come
        found = sources.problems(dsn)

        def drained() -> bool:
            if gw.health()["spool"]["batches"]:
                return False
            with psycopg.connect(dsn, autocommit=True) as conn:
                return not rollup_differences(conn)

        try:
            await asyncio.to_thread(wait_for, drained, 30, 0.5, "spool empty and rollups current")
        except TimeoutError:
            pass  # said below
        health = gw.health()
        chaos.count()
        exit_code = await asyncio.to_thread(gw.terminate, 30)
        found += left_behind(gw, dsn, health)
    finally:
        sources.publisher.halt.set()
        gw.kill()
        for proxy in proxies.values():
            await proxy.stop()
        counter.stop()

    print("timeline:\n" + "\n".join(f"  {line}" for line in chaos.timeline))
    print(f"{chaos_s:.0f} s of faults, drained in {drain_s:.0f} s; published {sources.summary()}; gateway processes: "
          + ", ".join(f"{k} {v}" for k, v in chaos.counts.items()))
    if exit_code or any(chaos.exit_codes):
        found.append(f"gateway exit codes after SIGTERM: {chaos.exit_codes} and at the end {exit_code}")
    assert not found, "\n".join(found)
