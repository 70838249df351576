"""The simulator publishing to a real mosquitto; payloads decoded by the MQTT collector's own decoders."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import datetime

import paho.mqtt.client as mqtt
import pytest

from collectors.mqtt.config import Subscription
from collectors.mqtt.decode import make_decoder
from collectors.simulator import SimOptions, Simulator
from collectors.simulator.mqtt_publisher import MqttOptions
from edge.records import Quality, Reading


class Listener:
    """A paho subscriber that keeps every message in arrival order."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.ready.wait(10), "listener not subscribed"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decode(sub: Subscription, messages: list[tuple[str, bytes]], prefix: str) -> list[Reading]:
    decoder = make_decoder(sub)
    now = datetime.now().astimezone()
    return [r for topic, payload in messages if topic.startswith(prefix) for r in decoder(payload, topic, now)]


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


async def test_json_plain_and_sparkplug_carry_the_same_values(mosquitto):
    listener = Listener(mosquitto.host, mosquitto.port, ["valvoja/sim/#", "spBv1.0/#"])
    sim = Simulator(SimOptions(
        opcua_endpoint=None, seed=3,
        faults=["P-103.vib_de:sensor_failure", "P-101.bearing_temp:uncertain", "K1.CO:nan,p=1"],
        mqtt=MqttOptions(host=mosquitto.host, port=mosquitto.port, formats=("json", "plain", "sparkplug"),
                         client_id="sim-under-test")))
    published: list[tuple[datetime, str, object, int]] = []
    sim.on_samples = lambda ts, samples: published.extend((ts, s.tag, s.value, s.status) for s in samples)
    try:
        await sim.start()
        for _ in range(3):
            await sim.tick()
    finally:
        await sim.stop()
    n_tags = len(sim.tags)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with listener.lock:
            spb = [m for m in listener.messages if m[0].startswith("spBv1.0/KIP/NDEATH")]
        if spb:
            break
        await asyncio.sleep(0.1)
    listener.close()
    messages = list(listener.messages)
    # start() publishes every tag; the three ticks all but the QAL3 checks (every 6 simulated hours).
    assert len(published) == n_tags + 3 * (n_tags - 2)

    # JSON: one message per asset and step, with the source timestamp (ms) and nulls for Bad values.
    readings = decode(Subscription(topic="valvoja/sim/json/+", format="json", tag="{field}",
                                   json={"samples": "samples", "tag": "tag", "value": "value", "time": "ts"}),
                      messages, "valvoja/sim/json/")
    assert len(readings) == len(published)
    by_key = {(r.tag, r.time): r for r in readings}
    for ts, tag, value, status in published:
        r = by_key[(tag, ts.replace(microsecond=ts.microsecond // 1000 * 1000))]
        if status & 0x80000000:
            assert r.value is None and r.quality is Quality.BAD
        else:
            assert same(r.value, value), tag

    # Plain: one message per tag and step, nothing for a Bad sensor.
    plain = decode(Subscription(topic="valvoja/sim/plain/+/+", format="plain", tag="{3}.{4}"),
                   messages, "valvoja/sim/plain/")
    assert len(plain) == len([p for p in published if not p[3] & 0x80000000])  # P-103.vib_de is Bad
    assert {r.tag for r in plain} == {t.name for t in sim.tags} - {"P-103.vib_de"}
    last_plain = {r.tag: r.value for r in plain}
    assert math.isnan(last_plain["K1.CO"]) and last_plain["P-101.running"] in (1, True)

    # Sparkplug B: births, data by alias, quality property, NDEATH at the end.
    kinds = [t.split("/")[2] for t, _ in messages if t.startswith("spBv1.0/")]
    assert kinds[0] == "NBIRTH" and kinds.count("DBIRTH") == 5 and kinds[-1] == "NDEATH"
    assert kinds.count("DDATA") == 3 * 5
    spb = decode(Subscription(topic="spBv1.0/KIP/+/simulator/#", format="sparkplug", tag="{device}.{field}"),
                 messages, "spBv1.0/")
    last, dead = {}, set()
    for r in spb:
        if r.status_name == "NDEATH":  # the node's goodbye marks every metric as no longer live
            dead.add(r.tag)
        else:
            last[r.tag] = r
    assert dead == set(last)
    final = {tag: (value, status) for ts, tag, value, status in published}
    assert set(final) == set(last)
    for tag, (value, status) in final.items():
        r = last[tag]
        if status & 0x80000000:
            assert r.quality is Quality.BAD and r.value is None, tag
        elif status:
            assert r.quality is Quality.UNCERTAIN and same(r.value, value), tag
        else:
            assert r.quality is Quality.GOOD and same(r.value, value), tag


@pytest.mark.parametrize("formats", [("bogus",), ()])
def test_unknown_formats_are_refused(formats):
    with pytest.raises(ValueError, match="choose from json, plain, sparkplug"):
        MqttOptions(formats=formats)


def test_the_readme_site_fragment_is_a_valid_configuration():
    import re
    import tomllib
    from pathlib import Path

    from collectors.mqtt import Config as MqttConfig
    from collectors.opcua import Config as OpcUaConfig

    text = (Path(__file__).resolve().parents[1] / "collectors" / "simulator" / "README.md").read_text()
    block = re.search(r"## Collecting from it.*?```toml\n(.*?)```", text, re.S).group(1)
    kinds = []
    for entry in tomllib.loads(block)["collectors"]:
        kind = entry.pop("kind")
        entry.pop("name")
        {"mqtt": MqttConfig, "opcua": OpcUaConfig}[kind].model_validate(entry)
        kinds.append(kind)
    assert kinds == ["opcua", "mqtt"]


async def test_the_simulated_edge_node_answers_a_rebirth_request(mosquitto):
    """A gateway started after the simulator sees its data by alias only and asks for a rebirth (NCMD
    Node Control/Rebirth): the simulator sends its NBIRTH and DBIRTHs again with the next values."""
    from collectors.mqtt.rebirth import rebirth_request

    listener = Listener(mosquitto.host, mosquitto.port, ["spBv1.0/#"])
    sim = Simulator(SimOptions(opcua_endpoint=None, seed=3, mqtt=MqttOptions(
        host=mosquitto.host, port=mosquitto.port, formats=("sparkplug",), client_id="sim-rebirth")))
    host = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="host-asking")
    host.connect(mosquitto.host, mosquitto.port)
    host.loop_start()

    def births() -> list[str]:
        with listener.lock:
            return [t.split("/")[2] for t, _ in listener.messages if t.split("/")[2] in ("NBIRTH", "DBIRTH")]

    try:
        await sim.start()
        await sim.tick()
        for _ in range(200):  # the listener's copy arrives a moment later
            if births():
                break
            await asyncio.sleep(0.05)
        assert births().count("NBIRTH") == 1
        await sim.tick()
        assert births().count("NBIRTH") == 1  # no rebirth unasked
        host.publish("spBv1.0/KIP/NCMD/simulator", rebirth_request(), qos=0).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while births().count("NBIRTH") < 2 and time.monotonic() < deadline:
            await sim.tick()
            await asyncio.sleep(0.1)
    finally:
        await sim.stop()
        host.loop_stop()
        host.disconnect()
        listener.close()
    assert births().count("NBIRTH") == 2 and births().count("DBIRTH") == 10


async def test_json_timestamps_are_the_instants_whatever_offset_start_was_given_in(mosquitto):
    """``--timestamps sim --start 2026-03-01T12:00:00+02:00``: the JSON ``ts`` said 12:00Z, two hours after the instant
    the OPC UA server and Sparkplug stamped, so every reading over MQTT JSON was stored two hours late."""
    from datetime import timedelta, timezone

    start = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    listener = Listener(mosquitto.host, mosquitto.port, ["valvoja/tz/#"])
    sim = Simulator(SimOptions(opcua_endpoint=None, timestamps="sim", start=start, speed=60.0, mqtt=MqttOptions(
        host=mosquitto.host, port=mosquitto.port, prefix="valvoja/tz", client_id="sim-tz")))
    try:
        await sim.start()
        await sim.tick()
        for _ in range(200):  # the listener's copies arrive a moment later: 5 assets x 2 steps
            if len(listener.messages) >= 10:
                break
            await asyncio.sleep(0.05)
    finally:
        await sim.stop()
        listener.close()
    readings = decode(Subscription(topic="valvoja/tz/json/+", format="json", tag="{field}",
                                   json={"samples": "samples", "tag": "tag", "value": "value", "time": "ts"}),
                      listener.messages, "valvoja/tz/json/")
    times = sorted({r.time for r in readings if r.tag == "K1.NOx"})
    assert times == [start, start + timedelta(minutes=1)]  # 10:00Z and 10:01Z


async def test_a_stop_delivers_what_was_published_first(mosquitto):
    """stop() disconnected at once, and paho dropped what it still held: of one step of 5,047 plain messages (5,000
    synthetic tags) the broker had 1,468 (the rest of a replay's last rows, a benchmark's last step)."""
    from datetime import UTC

    from collectors.simulator.plant import Sample

    listener = Listener(mosquitto.host, mosquitto.port, ["valvoja/drain/#"])
    sim = Simulator(SimOptions(opcua_endpoint=None, synthetic_tags=5000, mqtt=MqttOptions(
        host=mosquitto.host, port=mosquitto.port, prefix="valvoja/drain", formats=("plain",), client_id="sim-drain")))
    try:
        await sim.start()
        await sim.mqtt.publish(datetime.now(UTC), [Sample(n, 1.0) for n in sim.synthetic.names])
    finally:
        await sim.stop()
    published = sim.mqtt.published
    assert published == 5000 + len(sim.plant.tags)
    for _ in range(200):  # the listener's copies arrive a moment after the broker's acknowledgements
        if len(listener.messages) >= published:
            break
        await asyncio.sleep(0.05)
    listener.close()
    assert len(listener.messages) == published and sim.mqtt.acknowledged == published
