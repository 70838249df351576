"""Helpers for the combined-fault test (tests/test_gateway_chaos.py): MQTT publishers that count what the broker
acknowledged through broker restarts, a seeded fault plan, and what the database must hold afterwards.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
import paho.mqtt.client as mqtt

from collectors.mqtt.sparkplug_encode import EdgeNode

# -- publishers -----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One kind of MQTT message, sent every ``every`` ticks; message k (0, 1, ...) carries its number k."""

    name: str
    every: int
    message: Callable[[int], tuple[str, bytes]]
    next: int = 0
    sent: list[tuple[int, mqtt.MQTTMessageInfo]] = field(default_factory=list)

    def acked(self) -> set[int]:
        """Numbers of the messages the broker acknowledged (PUBACK)."""
        return {k for k, info in self.sent if _published(info)}


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (ValueError, RuntimeError):  # never queued, or refused by a client that was not connected
        return False


class ChaosPublisher(threading.Thread):
    """Publishes ``streams`` at QoS 1 every ``tick_s`` through broker restarts; a Sparkplug edge node among them.

    A connection that drops is replaced by a new client, and what was in flight on the old one is not sent again:
    paho would re-send it on its reconnect, and the broker takes that copy as a new message (at least once at the
    publisher's side, not the gateway's doing). So each number is published once, and every number the broker
    acknowledged must reach the database exactly once. While the broker is away nothing is published.
    """

    def __init__(self, port: int, client_id: str, streams: list[Stream], tick_s: float,
                 sparkplug: tuple[EdgeNode, Stream, Callable[[int], int]] | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.client_id, self.streams, self.tick_s = port, client_id, streams, tick_s
        self.sparkplug = sparkplug  # (node, its stream, number -> timestamp in ms)
        self.halt = threading.Event()
        self.connections = 0

    def run(self) -> None:
        client, tick, due = None, 0, time.monotonic()
        while not self.halt.is_set():
            if client is None or not client.is_connected():
                if client is not None:
                    client.loop_stop()
                client = self._connect()
                due = time.monotonic()
                continue
            for s in self.streams:
                if tick % s.every == 0:
                    k, s.next = s.next, s.next + 1
                    s.sent.append((k, client.publish(*s.message(k), qos=1)))
            tick += 1
            due += self.tick_s
            time.sleep(max(0.0, due - time.monotonic()))
        if client is not None:
            time.sleep(1.0)  # the last PUBACKs
            client.disconnect()
            client.loop_stop()

    def _connect(self) -> mqtt.Client | None:
        while not self.halt.is_set():
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 reconnect_on_failure=False)
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            try:
                client.connect("127.0.0.1", self.port, keepalive=10)
            except OSError:
                time.sleep(0.2)
                continue
            client.loop_start()
            deadline = time.monotonic() + 3.0
            while not client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.02)
            if client.is_connected():
                self.connections += 1
                self._birth(client)
                return client
            client.loop_stop()
        return None

    def _birth(self, client: mqtt.Client) -> None:
        """A Sparkplug node is born on each MQTT session (a new bdSeq), with the last number sent as its value and
        that number's time: the same reading as the data message had, so it adds nothing the data did not."""
        if self.sparkplug is None:
            return
        node, stream, ts_ms = self.sparkplug
        if self.connections > 1:
            node.rebirth_after_reconnect()
        k = max(stream.next - 1, 0)
        stream.next = max(stream.next, 1)
        stream.sent.append((k, client.publish(*node.birth({"C": float(k)}, timestamp_ms=ts_ms(k)), qos=1)))

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def json_stream(run: str, origin: datetime, step: timedelta, every: int) -> Stream:
    """JSON with a source time: value k at ``origin + k x step`` on ``ops/<run>/J-1/v`` (tag J-1.v)."""
    def message(k: int) -> tuple[str, bytes]:
        t = (origin + k * step).isoformat().replace("+00:00", "Z")
        return f"ops/{run}/J-1/v", orjson.dumps({"value": float(k), "time": t})
    return Stream("json", every, message)


def plain_stream(run: str, every: int) -> Stream:
    """Plain text without a source time: ``k`` on ``plain/<run>/U-1/seq`` (tag U-1.seq)."""
    return Stream("plain", every, lambda k: (f"plain/{run}/U-1/seq", str(k).encode()))


def array_stream(run: str, every: int) -> Stream:
    """A JSON array of two values without a source time (one tag, a microsecond apart): ``[2k, 2k+1]``."""
    return Stream("array", every, lambda k: (f"ops/{run}/U-2/arr", f"[{2 * k}, {2 * k + 1}]".encode()))


def sparkplug_stream(node: EdgeNode, ts_ms: Callable[[int], int], every: int) -> Stream:
    """Sparkplug B NDATA by alias: metric C = k with the metric timestamp ``ts_ms(k)``."""
    return Stream("sparkplug", every, lambda k: node.data([("C", float(k), ts_ms(k))]))


# -- the fault plan -------------------------------------------------------------------------------------------

# Per part: the actions with their weights, and how long the part stays down (s). Outages of one part follow each
# other; those of different parts overlap as the dice say.
FAULTS = {
    "gateway": ([("sigkill", 4), ("sigterm", 1)], (0.3, 3.0)),
    "broker": ([("restart", 1)], (0.3, 3.0)),
    "postgres": ([("stop", 3), ("sigkill", 2)], (1.0, 10.0)),
    "opcua": ([("cut", 1)], (0.5, 5.0)),
    "mqtt": ([("cut", 1)], (0.3, 3.0)),  # the gateway's link to the broker: PUBACKs in flight are lost
}
GAP_S = (2.0, 12.0)  # between the end of one outage of a part and its next


@dataclass(frozen=True)
class Fault:
    at_s: float
    part: str
    action: str
    down_s: float

    def __str__(self) -> str:
        return f"{self.at_s:5.1f} s {self.part} {self.action} for {self.down_s:.1f} s"


def plan(seed: int, duration_s: float) -> list[Fault]:
    """The faults of a run, in time order: the same seed gives the same plan."""
    rng = random.Random(seed)
    out = []
    for part, (actions, (lo, hi)) in FAULTS.items():
        t = rng.uniform(1.0, GAP_S[1])
        while t < duration_s:
            action = rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            down = round(rng.uniform(lo, hi), 1)
            out.append(Fault(round(t, 1), part, action, down))
            t += down + rng.uniform(*GAP_S)
    return sorted(out, key=lambda f: f.at_s)


# -- what the database must hold ----------------------------------------------------------------------------------

Rows = list[tuple[datetime, float | None]]  # (time, value) of one tag, in time order


def check_timed(name: str, rows: Rows, acked: set[int], published: int, time_of: Callable[[int], datetime],
                problems: list[str]) -> None:
    """Values with a source time: every acknowledged k stored, each once and at its own time; nothing else."""
    values = Counter(v for _, v in rows)
    twice = sorted(v for v, c in values.items() if c > 1)
    missing = sorted(k for k in acked if values[float(k)] == 0)
    wrong = [(t, v) for t, v in rows if v is None or v != int(v) or not 0 <= v < published or t != time_of(int(v))]
    _report(name, twice, missing, wrong, problems)


def check_untimed(name: str, rows: Rows, expected: set[int], possible: set[int], problems: list[str]) -> None:
    """Values without a source time (told apart by their number): every expected one stored once, none else."""
    values = Counter(v for _, v in rows)
    twice = sorted((v, [t.isoformat() for t, w in rows if w == v]) for v, c in values.items() if c > 1)
    missing = sorted(k for k in expected if values[float(k)] == 0)
    wrong = [(t, v) for t, v in rows if v is None or v != int(v) or int(v) not in possible]
    _report(name, twice, missing, wrong, problems)


def _report(name: str, twice: list, missing: list, wrong: list, problems: list[str]) -> None:
    if twice:
        problems.append(f"{name}: {len(twice)} values stored more than once: {twice[:5]}")
    if missing:
        problems.append(f"{name}: {len(missing)} acknowledged values missing: {missing[:20]}")
    if wrong:
        problems.append(f"{name}: {len(wrong)} rows that were never sent (or at another time): {wrong[:5]}")


# The rollups the gateway keeps, computed again from the raw readings (same notion of a good value as
# edge/sink/rollups.py); a full outer join leaves the buckets where the two differ.
ROLLUP_DIFF = """
WITH good AS (SELECT *, quality < 2 AND value IS NOT NULL AND value <> 'NaN'::float8 AS ok FROM readings),
raw AS (
  SELECT tag_id, date_trunc('{unit}', time) AS bucket, count(*) FILTER (WHERE ok) AS count,
         count(*) FILTER (WHERE NOT ok) AS bad_count, min(value) FILTER (WHERE ok) AS min,
         max(value) FILTER (WHERE ok) AS max, sum(value) FILTER (WHERE ok) AS sum,
         (array_agg(value ORDER BY time DESC) FILTER (WHERE ok))[1] AS last, max(time) FILTER (WHERE ok) AS last_time
  FROM good GROUP BY 1, 2)
SELECT coalesce(r.tag_id, m.tag_id), coalesce(r.bucket, m.bucket), r.count, m.count, r.bad_count, m.bad_count,
       r.sum, m.sum, r.last, m.last
FROM raw r FULL JOIN {table} m ON m.tag_id = r.tag_id AND m.bucket = r.bucket
WHERE r.tag_id IS NULL OR m.tag_id IS NULL OR r.count <> m.count OR r.bad_count <> m.bad_count
   OR r.min IS DISTINCT FROM m.min OR r.max IS DISTINCT FROM m.max OR r.last IS DISTINCT FROM m.last
   OR r.last_time IS DISTINCT FROM m.last_time
   OR abs(coalesce(r.sum, 0) - coalesce(m.sum, 0)) > 1e-6 * greatest(1, abs(r.sum))
ORDER BY 1, 2
"""


def rollup_differences(conn) -> list[tuple]:
    """Buckets of readings_1m and readings_1h that do not equal their raw readings (empty: all equal)."""
    return [("1m", *row) for row in conn.execute(ROLLUP_DIFF.format(unit="minute", table="readings_1m"))] + \
        [("1h", *row) for row in conn.execute(ROLLUP_DIFF.format(unit="hour", table="readings_1h"))]
