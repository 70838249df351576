"""The MQTT collector as a Sparkplug Primary Host Application (``primary_host_id``), against a real mosquitto.

A store-and-forward edge node (its own paho connection, the project's encoder) is configured with the gateway as its
Primary Host, and behaves as Sparkplug 3.0 asks of one: it publishes its births only while the host's retained STATE
says online, holds its measurements while it says offline (after an NDEATH, a DISCONNECT and a new connection with the
next bdSeq), and when the host is back publishes its births and then the held values, flagged ``is_historical``, with
their own timestamps. Of two STATE messages it keeps the newer by their timestamps. The gateway (``valvoja run``,
PostgreSQL) is killed (SIGKILL: its will must say offline, retained) and restarted; every value the node measured
must be stored once, at its own time.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from gateway_proc import GatewayProcess
from ops_support import new_run, site_config, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_collector import Sink, config, publish, running, until

from collectors.mqtt.primary_host import PrimaryHost, parse_state, state_payload
from collectors.mqtt.rebirth import REBIRTH_METRIC
from collectors.mqtt.sparkplug_b_pb2 import Payload
from collectors.mqtt.sparkplug_encode import EdgeNode, now_ms
from edge.errors import ConfigError
from edge.settings import load

SPARKPLUG = [{"topic": "spBv1.0/#", "format": "sparkplug"}]


# -- configuration and payloads ---------------------------------------------------------------------------

SITE_HEAD = """\
[site]
name = "x"
gateway_id = "gw"

[[collectors]]
kind = "mqtt"
name = "sp"
client_id = "gw-sp"
"""


def site_error(tmp_path: Path, collector: str, subscriptions: str = 'topic = "spBv1.0/#"\nformat = "sparkplug"') -> str:
    path = tmp_path / "site.toml"
    path.write_text(f"{SITE_HEAD}{collector}\n[[collectors.subscriptions]]\n{subscriptions}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    return str(err.value)


def test_primary_host_id_is_refused_with_the_file_the_key_and_why(tmp_path):
    where = f"{tmp_path / 'site.toml'}: collectors[0] (sp).primary_host_id: "
    for bad, why in (("scada/1", "contains '/'"), ("a+b", "contains '+'"), ("#", "contains '#'"),
                     ("tab\there", r"contains '\t'"), ("", "is empty")):
        text = site_error(tmp_path, f"clean_session = true\nprimary_host_id = {json.dumps(bad)}")
        assert where in text and why in text and "the last level of the topic spBv1.0/STATE/<id>" in text, text
    text = site_error(tmp_path, 'primary_host_id = "scada1"')  # clean_session defaults to false
    assert where in text and "set clean_session = true" in text, text
    text = site_error(tmp_path, 'clean_session = true\nprimary_host_id = "scada1"',
                      'topic = "spBv1.0/#"\nformat = "sparkplug"\n[[collectors.subscriptions]]\ntopic = "plant/#"')
    assert where in text and 'plant/# are not format = "sparkplug"' in text, text
    ok = tmp_path / "ok.toml"
    ok.write_text(f'{SITE_HEAD}clean_session = true\nprimary_host_id = "scada-1.é"\n[[collectors.subscriptions]]\n'
                  'topic = "spBv1.0/#"\nformat = "sparkplug"\n')
    assert load(ok).collectors[0]["primary_host_id"] == "scada-1.é"


def test_state_payloads_are_sparkplug_3_json_with_the_connect_time():
    host = PrimaryHost("sp", "scada1")
    topic, will = host.will()
    assert topic == "spBv1.0/STATE/scada1"
    ts = json.loads(will)["timestamp"]
    assert json.loads(will) == {"online": False, "timestamp": ts} and abs(ts - now_ms()) < 60_000
    assert json.loads(host.birth()) == {"online": True, "timestamp": ts}  # the will's timestamp, not a new one
    assert parse_state(state_payload(True, 5)) == (True, 5)
    for bad in (b"ONLINE", b"[1]", b'{"online": 1, "timestamp": 5}', b'{"online": true, "timestamp": "5"}',
                b'{"online": true}'):
        with pytest.raises(ValueError):
            parse_state(bad)
    # Its own STATE: an offline delivered live asks for the birth again; the retained one at subscribe does not
    # (the birth after the subscription replaces it), nor does an online one.
    assert host.delivered(state_payload(False, ts - 1000), retained=False)
    assert not host.delivered(state_payload(False, ts - 1000), retained=True)
    assert not host.delivered(state_payload(True, ts), retained=False)
    assert host.delivered(b"garbage", retained=False) and host.unreadable == 1
    # A clean stop: its own death, delivered back before the DISCONNECT, asks for no birth.
    assert json.loads(host.death()) == {"online": False, "timestamp": ts}
    assert not host.delivered(host.death(), retained=False)
    # The next connection has a later timestamp, even within the same millisecond.
    assert host.will() and host.timestamp_ms > ts and host.delivered(state_payload(False, ts), retained=False)


# -- a STATE observer ------------------------------------------------------------------------------------

@pytest.fixture
def host_id(mosquitto):
    """A host id of this test; its retained STATE is cleared afterwards (the broker is shared: a test reading
    spBv1.0/# would get it first)."""
    hid = f"h{new_run()}"
    yield hid
    publish(mosquitto.port, [(f"spBv1.0/STATE/{hid}", b"")], retain=True)


def retained_state(port: int, topic: str, timeout_s: float = 5.0) -> tuple[bool, int] | None:
    """The STATE the broker retains on ``topic`` (a new subscriber's view), or None."""
    got: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.put(m)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        try:
            msg = got.get(timeout=timeout_s)
        except queue.Empty:
            return None
        assert msg.retain
        return parse_state(msg.payload)
    finally:
        client.disconnect()
        client.loop_stop()


def session_present(port: int, client_id: str, protocol: str) -> bool:
    """Whether the broker kept a session for ``client_id`` (asked with a non-clean connect, then cleaned up)."""
    v5 = protocol == "5"
    acked: queue.Queue = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=None if v5 else False,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    client.on_connect = lambda c, u, flags, rc, p: acked.put(flags.session_present)
    client.connect("127.0.0.1", port, **({"clean_start": False} if v5 else {}))
    client.loop_start()
    try:
        return acked.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()
        # Leave no session behind (3.1.1: this connect made one): a clean connect and disconnect ends it.
        cleaner = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        cleaner.connect("127.0.0.1", port)
        cleaner.disconnect()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_the_host_connects_clean_and_says_online_then_offline_retained(mosquitto, tmp_path, protocol, host_id):
    """Birth after the subscriptions, retained, with the will's timestamp; a clean stop publishes the death (a
    DISCONNECT discards the will); the broker keeps no session for the host (clean session / clean start with
    session expiry 0: the specification's rule)."""
    cfg = config(mosquitto.port, protocol=protocol, clean_session=True, primary_host_id=host_id,
                 subscriptions=SPARKPLUG)
    topic = f"spBv1.0/STATE/{host_id}"
    async with running(cfg, Sink(), tmp_path) as collector:
        online = await asyncio.to_thread(retained_state, mosquitto.port, topic)
        ts = collector.host.timestamp_ms
        assert online == (True, ts)
        assert collector.status()["primary_host"]["births"] == 1
        assert collector.session_present is False
    assert await asyncio.to_thread(retained_state, mosquitto.port, topic) == (False, ts)
    assert collector.host.deaths == 1
    assert await asyncio.to_thread(session_present, mosquitto.port, cfg.client_id, protocol) is False


async def test_an_offline_state_delivered_live_is_answered_with_the_birth_again(mosquitto, tmp_path, host_id):
    """The will of the host's previous connection, published late (retained), replaces the retained birth: the
    collector publishes its birth again, so an edge node that connects later finds the host online."""
    cfg = config(mosquitto.port, clean_session=True, primary_host_id=host_id, subscriptions=SPARKPLUG)
    topic = f"spBv1.0/STATE/{host_id}"
    async with running(cfg, Sink(), tmp_path) as collector:
        ts = collector.host.timestamp_ms
        await until(lambda: collector.host.births == 1)
        await asyncio.to_thread(publish, mosquitto.port, [(topic, state_payload(False, ts - 5000))], retain=True)
        await until(lambda: collector.host.rebirths == 1)
        await until(lambda: retained_state(mosquitto.port, topic, 1.0) == (True, ts), 10)


async def test_after_a_clean_session_an_earlier_birth_is_not_trusted_the_node_is_asked_to_rebirth(mosquitto,
                                                                                                     tmp_path, host_id):
    """A clean session (a Primary Host's) gets nothing of what was published while the gateway was away. An edge node
    that is not waiting for this host re-births meanwhile with a metric added, which shifts its aliases. Before, the
    restarted collector decoded its data by the aliases saved from the first birth: the node's temp (alias 1 now)
    was stored as flow (alias 1 then). Now the first message asks for a rebirth, and alias data are dead letters
    until it comes."""
    from test_mqtt_rebirth import SimulatedNode

    cfg = config(mosquitto.port, clean_session=True, primary_host_id=host_id,
                 subscriptions=[{"topic": "spBv1.0/KIP/#", "format": "sparkplug"}])
    node = SimulatedNode(mosquitto.port)
    try:
        first = Sink()
        async with running(cfg, first, tmp_path):
            node.births()
            await until(lambda: any(r.tag == node.tag("flow") for b in first.batches for r in b.readings))
        node.values = {"temp": 20.0, **node.values}  # temp takes alias 1, flow (alias 1 before) 2
        node.born_unseen()  # nobody listens: lost with the clean session
        again = Sink()
        async with running(cfg, again, tmp_path) as collector:
            node.send(("temp", 21.5))
            await until(lambda: any(b.readings or b.dead_letters for b in again.batches))
            first_got = [(r.tag, r.value) for b in again.batches for r in b.readings]
            assert (node.tag("flow"), 21.5) not in first_got  # before: stored under flow, nothing asked
            await until(lambda: node.births_sent == 3)  # asked, and answered
            node.send(("temp", 22.0))
            await until(lambda: any(r.value == 22.0 for b in again.batches for r in b.readings))
            status = collector.status()["sparkplug"]
    finally:
        node.close()
    got = [(r.tag, r.value) for b in again.batches for r in b.readings]
    assert (node.tag("flow"), 21.5) not in got  # before: stored under flow
    assert (node.tag("temp"), 22.0) in got and (node.tag("temp"), 20.0) in got  # after the birth, and its value
    dead = [d.error for b in again.batches for d in b.dead_letters]
    assert len(dead) == 1 and "before the gateway's MQTT session began" in dead[0], dead
    assert status["rebirths_requested"] == 1


# -- a store-and-forward edge node ------------------------------------------------------------------------

class StoreAndForwardNode:
    """A Sparkplug edge node whose Primary Host is ``host_id`` (see the module docstring).

    ``sample(value)`` measures one value of metric ``flow`` now (a distinct millisecond each): published at once while
    born, else held. A worker thread reacts to STATE messages in arrival order (paho's thread only queues them).
    """

    def __init__(self, port: int, group: str, node: str, host_id: str, first_value: float) -> None:
        self.port, self.group = port, group
        self.state_topic = f"spBv1.0/STATE/{host_id}"
        self.edge = EdgeNode(group, node)
        self.lock = threading.RLock()
        self.born = False
        self.births = self.connects = self.ignored_older = 0
        self.last_state_ts: int | None = None
        self.states: list[tuple[bool, int, bool]] = []  # (online, timestamp, taken)
        self.held: list[tuple[float, int]] = []
        self.samples: list[tuple[float, int]] = []  # every value measured, with its time (ms)
        self.live = self.historical = 0
        self._last_ms = 0
        self._events: queue.Queue = queue.Queue()
        self.client: mqtt.Client | None = None
        self.sample(first_value)  # measured before the host is known to be online: held, sent with the first birth
        self._connect()
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    # -- MQTT --------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        if self.connects:
            self.edge.rebirth_after_reconnect()  # a new MQTT session: the next bdSeq
        self.connects += 1
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.edge.node}-{self.connects}")
        client.will_set(*self.edge.death(), qos=1)
        client.on_message = lambda c, u, m: self._events.put(m)
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        client.subscribe([(self.state_topic, 1), (f"spBv1.0/{self.group}/NCMD/{self.edge.node}", 1)])
        assert subscribed.wait(5), "the edge node got no SUBACK"
        self.client = client

    def _publish(self, topic_payload: tuple[str, bytes], qos: int = 0) -> None:
        info = self.client.publish(*topic_payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        if qos:
            info.wait_for_publish(5)

    def _work(self) -> None:
        while True:
            msg = self._events.get()
            if msg is None:
                return
            with self.lock:
                if msg.topic == self.state_topic:
                    self._on_state(*parse_state(msg.payload))
                elif self.born and any(m.name == REBIRTH_METRIC for m in Payload.FromString(msg.payload).metrics):
                    self._birth()

    def _on_state(self, online: bool, ts: int) -> None:
        # Sparkplug 3.0: a STATE older than the last one taken is not taken (a late will of an earlier connection).
        taken = self.last_state_ts is None or ts >= self.last_state_ts
        self.states.append((online, ts, taken))
        if not taken:
            self.ignored_older += 1
            return
        self.last_state_ts = ts
        if online and not self.born:
            self._birth()
            history = [("flow", v, t) for v, t in self.held]
            for i in range(0, len(history), 10):
                self._publish(self.edge.data(history[i:i + 10], historical=True))
            self.historical += len(history)
            self.held.clear()
        elif not online and self.born:
            # The host is gone: NDEATH, DISCONNECT, a new connection; hold everything until it is back.
            self.born = False
            self._publish(self.edge.death(), qos=1)
            self.client.disconnect()
            self.client.loop_stop()
            self._connect()

    def _birth(self) -> None:
        # The birth states the current value: the last one measured, at its own time (the payload's timestamp).
        value, ts = self.samples[-1]
        self._publish(self.edge.birth({"flow": value}, timestamp_ms=ts))
        self.births += 1
        self.born = True

    # -- the test's side ---------------------------------------------------------------------------------

    def sample(self, value: float) -> None:
        with self.lock:
            ts = max(now_ms(), self._last_ms + 1)
            self._last_ms = ts
            self.samples.append((value, ts))
            if self.born:
                self._publish(self.edge.data([("flow", value, ts)]))
                self.live += 1
            else:
                self.held.append((value, ts))

    def close(self) -> None:
        self._events.put(None)
        self._worker.join(5)
        with self.lock:
            self.client.disconnect()
            self.client.loop_stop()


COLLECTOR = """\
[[collectors]]
kind = "mqtt"
name = "sp"
host = "127.0.0.1"
port = @MQTT_PORT@
client_id = "valvoja-@RUN@"
clean_session = true
primary_host_id = "@HOST@"
keepalive_s = 5
connect_timeout_s = 3

[[collectors.subscriptions]]
topic = "spBv1.0/@RUN@/#"
format = "sparkplug"
"""


def stored(dsn: str, tag: str) -> list[tuple]:
    """(value, time in ms, quality) of every stored reading of ``tag``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT r.value, (extract(epoch FROM r.time) * 1000)::bigint, r.quality FROM readings r "
                            "JOIN tags t ON t.id = r.tag_id WHERE t.name = %s ORDER BY r.time", (tag,)).fetchall()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_store_and_forward_node_loses_nothing_and_doubles_nothing_across_a_killed_host(tmp_path, pg_dsn,
                                                                                          mosquitto):
    run = new_run()
    host_id = f"valvoja-{run}"
    topic = f"spBv1.0/STATE/{host_id}"
    # The site of the operations tests with this collector alone (a Primary Host reads Sparkplug only).
    site = site_config(pg_dsn, mosquitto.port, run=run).split("[[collectors]]")[0] + (
        COLLECTOR.replace("@MQTT_PORT@", str(mosquitto.port)).replace("@RUN@", run).replace("@HOST@", host_id))
    gw = GatewayProcess(tmp_path / "gw", site)
    tag = f"{run}.pump.flow"
    node = None

    def host() -> dict:
        return gw.health()["collectors"]["sp"]["primary_host"] or {}

    try:
        gw.start()
        gw.wait_for(lambda: host().get("births") == 1)
        t1 = host()["timestamp"]
        assert retained_state(mosquitto.port, topic) == (True, t1)

        node = StoreAndForwardNode(mosquitto.port, run, "pump", host_id, 0.0)
        wait_for(lambda: node.born, 10, what="the node's birth after the host's online STATE")
        for i in range(1, 10):
            node.sample(float(i))
        wait_for(lambda: len(stored(pg_dsn, tag)) == 10, 30, what="10 live values stored")

        # SIGKILL: the broker publishes the will, {"online": false} with the connection's timestamp, retained.
        gw.kill()
        wait_for(lambda: not node.born, 10, what="the node seeing the host offline")
        assert retained_state(mosquitto.port, topic) == (False, t1)
        assert node.connects == 2  # NDEATH, DISCONNECT, a new connection with the next bdSeq
        for i in range(10, 30):
            node.sample(float(i))
        assert (len(node.held), node.live) == (20, 9)  # held: nothing is published while the host is away

        gw.start()
        wait_for(lambda: node.historical == 21, 30, what="the held values sent again as is_historical")
        t2 = host()["timestamp"]
        assert t2 > t1 and node.births == 2
        for i in range(30, 40):
            node.sample(float(i))

        # A late will of the first connection (older timestamp), retained: the node keeps the newer STATE; the
        # gateway publishes its birth again, so the broker's retained STATE says online once more.
        publish(mosquitto.port, [(topic, state_payload(False, t1))], retain=True)
        gw.wait_for(lambda: host().get("rebirths") == 1)
        wait_for(lambda: retained_state(mosquitto.port, topic, 1.0) == (True, t2), 10, what="the birth again")
        wait_for(lambda: node.ignored_older >= 1, 10, what="the node ignoring the older STATE")
        assert node.born and node.births == 2
        for i in range(40, 50):
            node.sample(float(i))
        wait_for(lambda: len(stored(pg_dsn, tag)) >= 50, 30, what="50 values stored")

        # A clean stop publishes the death itself (DISCONNECT discards the will).
        assert gw.terminate() == 0
        assert retained_state(mosquitto.port, topic) == (False, t2)
        wait_for(lambda: not node.born, 10, what="the node seeing the host's death")
        rows = stored(pg_dsn, tag)
    finally:
        if node is not None:
            node.close()
        gw.terminate()
        publish(mosquitto.port, [(topic, b"")], retain=True)  # no retained STATE left on the shared broker
    assert [(v, t) for v, t, _ in rows] == node.samples  # each once, at its own time, in order: none lost
    assert {q for _, _, q in rows} == {0}
    assert (node.live, node.historical) == (29, 21)  # the first value was measured before the first birth
