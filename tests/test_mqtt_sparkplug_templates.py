"""Sparkplug B Template (UDT) metrics: instances flattened into one reading per member, tagged
``<metric name>/<member>`` (nested instances joined with ``/``), definitions kept with the birth state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collectors.mqtt.config import Subscription
from collectors.mqtt.decode import make_decoder
from collectors.mqtt.sparkplug import PartlyRead
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload
from collectors.mqtt.sparkplug_encode import EdgeNode, Metric, Template, encode_payload, now_ms, topic
from collectors.mqtt.sparkplug_state import SparkplugStore
from edge.errors import DataError
from edge.records import Flag, Quality

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)

BEARING = Template([Metric("Temp", 0.0), Metric("Vibration", 0.0, datatype=DataType.Float)], definition=True)
MOTOR = Template([Metric("Speed", 0.0), Metric("Running", False), Metric("Fault", 0, datatype=DataType.Int8),
                  Metric("Bearing", Template([Metric("Temp", 0.0), Metric("Vibration", 0.0, datatype=DataType.Float)],
                                             ref="Bearing"))],
                 definition=True, parameters={"MaxSpeed": 1500, "Plc": "PLC-7"})
DEFINITIONS = {"Bearing": BEARING, "Motor": MOTOR}


def motor(speed=1480.0, running=True, fault=-3, temp=41.5, vibration=0.25, **kw) -> Template:
    return Template([Metric("Speed", speed), Metric("Running", running), Metric("Fault", fault, datatype=DataType.Int8),
                     Metric("Bearing", Template([Metric("Temp", temp),
                                                 Metric("Vibration", vibration, datatype=DataType.Float)],
                                                ref="Bearing"))],
                    ref="Motor", parameters={"MaxSpeed": 1400, "Plc": "PLC-7"}, **kw)


def decoder(**kw):
    return make_decoder(Subscription.model_validate({"topic": "spBv1.0/#", "format": "sparkplug", **kw}))


def swap(tp):
    return tp[1], tp[0]


def values(readings) -> dict:
    return {r.tag: r.value for r in readings}


def born(d=None, n=None):
    d, n = d or decoder(), n or EdgeNode("G", "N")
    readings = d(*swap(n.birth({"Line1/M1": motor(), "flow": 2.5}, definitions=DEFINITIONS, timestamp_ms=T0_MS)), NOW)
    return d, n, readings


def test_an_instance_in_a_birth_gives_one_reading_per_member_nested_members_joined_with_a_slash():
    """Before, the whole Template metric was skipped (counted, logged): none of a UDT's values were stored."""
    d, _, readings = born()
    assert values(readings) == {"G.N.Line1/M1/Speed": 1480.0, "G.N.Line1/M1/Running": True,
                                "G.N.Line1/M1/Fault": -3,  # Int8 sign-extended, as a top-level metric's
                                "G.N.Line1/M1/Bearing/Temp": 41.5, "G.N.Line1/M1/Bearing/Vibration": 0.25,
                                "G.N.flow": 2.5}
    # Definitions are types, not values; parameters (the UDT's configuration) are not stored either.
    assert all(r.time == T0 and r.quality == Quality.GOOD and r.flags == 0 for r in readings)
    assert d.stats["skipped_metrics"] == 0
    node = d.nodes[("G", "N")]
    assert node.definitions == {"Bearing": {"Temp": DataType.Double, "Vibration": DataType.Float},
                                "Motor": {"Speed": DataType.Double, "Running": DataType.Boolean,
                                          "Fault": DataType.Int8, "Bearing": "Bearing"}}
    assert node.refs == {"Line1/M1": "Motor", "Line1/M1/Bearing": "Bearing"}


def test_data_carry_the_instance_by_alias_with_only_the_changed_members():
    d, n, _ = born()
    partial = Template([Metric("Speed", 1490.0), Metric("Bearing", Template([Metric("Temp", 42.0)], ref="Bearing"))],
                       ref="Motor")
    assert values(d(*swap(n.data({"Line1/M1": partial})), NOW)) == {"G.N.Line1/M1/Speed": 1490.0,
                                                                    "G.N.Line1/M1/Bearing/Temp": 42.0}
    # DATA should not repeat a member's datatype: the birth's gives it (signedness included); the template_ref may be
    # left out too (the birth's instance says which definition).
    p = Payload(seq=n._next_seq(), timestamp=T0_MS)
    m = p.metrics.add(alias=1, datatype=DataType.Template)
    m.template_value.metrics.add(name="Fault", int_value=0xFE)
    [r] = d(p.SerializeToString(), topic("G", "NDATA", "N"), NOW)
    assert (r.tag, r.value) == ("G.N.Line1/M1/Fault", -2)


def test_member_timestamp_is_its_own_else_the_instances_else_the_payloads():
    d, n, _ = born()
    inst = Template([Metric("Speed", 1.0, timestamp_ms=T0_MS + 1000), Metric("Running", False),
                     Metric("Bearing", Template([Metric("Temp", 2.0)], ref="Bearing"))], ref="Motor")
    got = {r.tag: r.time for r in d(*swap(n.data([("Line1/M1", inst, T0_MS + 2000)], timestamp_ms=T0_MS + 3000)),
                                     NOW)}
    assert got == {"G.N.Line1/M1/Speed": T0 + timedelta(seconds=1), "G.N.Line1/M1/Running": T0 + timedelta(seconds=2),
                   "G.N.Line1/M1/Bearing/Temp": T0 + timedelta(seconds=2)}
    [r] = d(*swap(n.data({"Line1/M1": Template([Metric("Speed", 3.0)])}, timestamp_ms=T0_MS + 3000)), NOW)
    assert r.time == T0 + timedelta(seconds=3)


def test_member_quality_and_null_are_decoded_as_a_top_level_metrics():
    d, n, _ = born()
    inst = Template([Metric("Speed", 1.0, quality=0), Metric("Running", True, quality=500),
                     Metric("Fault", None, datatype=DataType.Int8),
                     Metric("Bearing", Template([Metric("Temp", 2.0, quality=192)], ref="Bearing"))], ref="Motor")
    got = {r.tag.rsplit("M1/", 1)[1]: (r.value, r.quality, r.status, r.status_name, r.flags & Flag.SOURCE_STATUS)
           for r in d(*swap(n.data({"Line1/M1": inst})), NOW)}
    assert got == {"Speed": (1.0, Quality.BAD, 0, "Quality=0", Flag.SOURCE_STATUS),
                   "Running": (True, Quality.UNCERTAIN, 500, "Quality=500 STALE", Flag.SOURCE_STATUS),
                   "Fault": (None, Quality.BAD, 0, "is_null", Flag.SOURCE_STATUS),
                   "Bearing/Temp": (2.0, Quality.GOOD, 192, "", 0)}  # as a top-level metric
    # The instance's own Quality holds for the members without one.
    p = Payload(seq=n._next_seq(), timestamp=T0_MS)
    m = p.metrics.add(alias=1, datatype=DataType.Template)
    m.properties.keys.append("Quality")
    m.properties.values.add(type=DataType.Int32, int_value=0)
    m.template_value.metrics.add(name="Speed", datatype=DataType.Double, double_value=5.0)
    [r] = d(p.SerializeToString(), topic("G", "NDATA", "N"), NOW)
    assert (r.tag, r.quality, r.status_name) == ("G.N.Line1/M1/Speed", Quality.BAD, "Quality=0")


def test_an_unknown_definition_instance_or_member_in_data_is_a_dead_letter_and_asks_for_a_rebirth():
    asked = []
    d, n, _ = born()
    d.on_rebirth = lambda group, node, why: asked.append(why)
    with pytest.raises(DataError, match="definition 'Pump'"):
        d(*swap(n.data({"Line1/M1": Template([Metric("Speed", 1.0)], ref="Pump")})), NOW)
    with pytest.raises(DataError, match="no member 'Torque'"):
        d(*swap(n.data({"Line1/M1": Template([Metric("Speed", 1.0), Metric("Torque", 9.0)])})), NOW)
    with pytest.raises(DataError, match="no member 'Pressure'"):
        d(*swap(n.data({"Line1/M1": Template([Metric("Bearing", Template([Metric("Pressure", 1.0)]))])})), NOW)
    named = encode_payload([Metric("Line1/M2", motor())], seq=n._next_seq())
    with pytest.raises(DataError, match="template instance 'Line1/M2' of edge node G/N is in no birth"):
        d(named, topic("G", "NDATA", "N"), NOW)
    assert len(asked) == 4 and all("the edge node must rebirth" in why for why in asked)


def test_a_birth_whose_instance_names_no_definition_stores_its_members_and_names_it():
    d, n = decoder(), EdgeNode("G", "N")
    got = d(*swap(n.birth({"M1": motor()}, definitions={"Bearing": BEARING})), NOW)
    assert isinstance(got, PartlyRead) and "definition 'Motor', which the NBIRTH did not define" in got.errors[0]
    assert len(got) == 5


def test_a_rebirth_with_a_changed_definition_takes_the_new_members():
    d, n, _ = born()
    v2 = Template([*MOTOR.members, Metric("Torque", 0.0)], definition=True)
    inst = motor()
    inst.members.append(Metric("Torque", 12.0))
    readings = d(*swap(n.birth({"Line1/M1": inst}, definitions={"Bearing": BEARING, "Motor": v2})), NOW)
    assert values(readings)["G.N.Line1/M1/Torque"] == 12.0
    assert values(d(*swap(n.data({"Line1/M1": Template([Metric("Torque", 13.0)])})), NOW)) == \
        {"G.N.Line1/M1/Torque": 13.0}
    # A definition losing a member: data naming it are no longer placed.
    v3 = Template([Metric("Speed", 0.0)], definition=True)
    d(*swap(n.birth({"Line1/M1": Template([Metric("Speed", 1.0)], ref="Motor")}, definitions={"Motor": v3})), NOW)
    with pytest.raises(DataError, match="no member 'Running'"):
        d(*swap(n.data({"Line1/M1": Template([Metric("Running", True)])})), NOW)


def test_device_instances_use_the_nbirth_definitions_and_a_death_marks_every_member(tmp_path):
    d, n, _ = born()
    readings = d(*swap(n.device_birth("D", {"M9": motor(speed=7.0)})), NOW)
    assert values(readings)["G.N.D.M9/Speed"] == 7.0 and len(readings) == 5
    deaths = d(*swap(n.device_death("D")), NOW)
    assert sorted(r.tag for r in deaths) == sorted(r.tag for r in readings)
    assert all(r.value is None and r.quality == Quality.BAD for r in deaths)


def test_definitions_and_instances_survive_a_gateway_restart(tmp_path):
    d, n = decoder(), EdgeNode("G", "N")
    SparkplugStore(tmp_path).attach(d)
    born(d, n)
    restarted = decoder()
    SparkplugStore(tmp_path).attach(restarted)
    partial = Template([Metric("Bearing", Template([Metric("Vibration", 0.5, datatype=DataType.Float)]))])
    assert values(restarted(*swap(n.data({"Line1/M1": partial})), NOW)) == {"G.N.Line1/M1/Bearing/Vibration": 0.5}
    with pytest.raises(DataError, match="definition 'Pump'"):
        restarted(*swap(n.data({"Line1/M1": Template([Metric("Speed", 1.0)], ref="Pump")})), NOW)


def test_a_state_saved_before_templates_were_stored_asks_for_a_rebirth_instead_of_guessing(tmp_path):
    """A state file from before (no definitions, no instances: the template metric was only a skipped type)."""
    (tmp_path / "G~N.json").write_text('{"aliases": {"1": "Line1/M1"}, "types": {"Line1/M1": 19}, "online": true, '
                                       '"bd_seq": 0, "seq": 3, "devices": {}, "group": "G", "node": "N"}')
    asked = []
    d = decoder()
    SparkplugStore(tmp_path).attach(d)
    d.on_rebirth = lambda group, node, why: asked.append(why)
    data = encode_payload([Metric(None, Template([Metric("Speed", 1.0)]), alias=1)], seq=4)
    with pytest.raises(DataError, match="template instance 'Line1/M1' of edge node G/N is in no birth"):
        d(data, topic("G", "NDATA", "N"), NOW)
    assert len(asked) == 1


def test_transient_members_and_a_null_instance():
    d = decoder()
    p = Payload(seq=0, timestamp=T0_MS)
    p.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0)
    defn = p.metrics.add(name="T", datatype=DataType.Template).template_value
    defn.is_definition = True
    defn.metrics.add(name="a", datatype=DataType.Double, double_value=0.0)
    defn.metrics.add(name="scratch", datatype=DataType.Double, double_value=0.0)
    inst = p.metrics.add(name="I", alias=1, datatype=DataType.Template).template_value
    inst.template_ref = "T"
    inst.metrics.add(name="a", datatype=DataType.Double, double_value=1.0)
    inst.metrics.add(name="scratch", datatype=DataType.Double, double_value=2.0, is_transient=True)
    assert values(d(p.SerializeToString(), topic("G", "NBIRTH", "N"), NOW)) == {"G.N.I/a": 1.0}
    assert d.stats["transient_metrics"] == 1
    [r] = d(encode_payload([Metric(None, None, alias=1, datatype=DataType.Template)], seq=1),
            topic("G", "NDATA", "N"), NOW)
    assert (r.tag, r.value, r.quality) == ("G.N.I/a", None, Quality.BAD)
    # A definition outside the NBIRTH (against the specification) carries no value: skipped and counted.
    assert d(encode_payload([Metric("T", Template([Metric("a", 5.0)], definition=True))], seq=2),
             topic("G", "NDATA", "N"), NOW) == []
    assert d.stats["skipped_metrics"] == 1


# -- end to end: real mosquitto, the gateway's ingest and spool, PostgreSQL -------------------------------------------

async def test_udt_instances_reach_the_database_member_by_member_through_a_gateway_restart(mosquitto, tmp_path, pg_dsn):
    """An edge node publishing UDTs as Sparkplug templates (as Ignition's MQTT Transmission does): births with
    definitions and nested instances, partial DATA with a bad-quality member, a gateway restart between birth and
    data, an instance of a definition no birth gave (a dead letter and a rebirth request), and a rebirth whose
    definition gained a member. Counted and compared in PostgreSQL."""
    import asyncio
    import uuid

    from test_mqtt_collector import apublish, config, spooling, until
    from test_mqtt_untimed import forward_spool, rows

    node = f"udt{uuid.uuid4().hex[:8]}"
    n = EdgeNode("KIP", node)
    t = (now_ms() // 1000 - 60) * 1000  # recent: the gateway's validation marks values from years ago
    first = [swap(n.birth({"Line1/M1": motor(), "flow": 2.5}, definitions=DEFINITIONS, timestamp_ms=t)),
             swap(n.device_birth("D", {"M9": motor(speed=7.0)}, timestamp_ms=t)),
             swap(n.data({"Line1/M1": Template([Metric("Speed", 1490.0, quality=0),
                                                Metric("Bearing", Template([Metric("Temp", 42.0)]))])},
                         timestamp_ms=t + 1000)),
             swap(n.data({"M9": Template([Metric("Bearing", Template([Metric("Vibration", 0.5,
                                                                             datatype=DataType.Float)]))])},
                         device="D", timestamp_ms=t + 1000))]
    cfg = config(mosquitto.port)  # one client id: the restarted gateway resumes its MQTT session
    async with spooling(cfg, tmp_path) as (ingest, _, worker, _):
        await apublish(mosquitto.port, [(tp, p) for p, tp in first])
        await until(lambda: ingest.accepted >= 14)
    await forward_spool(worker, pg_dsn)

    # The gateway restarts: the births were acknowledged and do not come again; the saved state places the data.
    torque = Template([*MOTOR.members, Metric("Torque", 0.0)], definition=True)
    reborn = motor(speed=1500.0)
    reborn.members.append(Metric("Torque", 11.0))
    second = [swap(n.data({"Line1/M1": Template([Metric("Running", False)])}, timestamp_ms=t + 2000)),
              swap(n.data({"Line1/M1": Template([Metric("Speed", 1.0)], ref="Pump")}, timestamp_ms=t + 3000))]
    built: list = []
    async with spooling(cfg, tmp_path, built) as (ingest, _, worker, metrics):
        await apublish(mosquitto.port, [(tp, p) for p, tp in second])
        await until(lambda: ingest.accepted >= 1 and metrics.dead_letters.labels("mq")._value.get() == 1)
        after = [swap(n.birth({"Line1/M1": reborn, "flow": 2.5}, definitions={"Bearing": BEARING, "Motor": torque},
                              timestamp_ms=t + 4000)),
                 swap(n.data({"Line1/M1": Template([Metric("Torque", 12.0)])}, timestamp_ms=t + 5000))]
        await apublish(mosquitto.port, [(tp, p) for p, tp in after])
        await until(lambda: ingest.accepted >= 1 + 7 + 1)
        status = built[0].status()["sparkplug"]
        stored = await worker.call(worker.spool.peek, 1000)
    [dead] = [d for b in stored for d in b.dead_letters]
    assert dead[1] == f"spBv1.0/KIP/NDATA/{node}" and "definition 'Pump'" in dead[3]
    assert status["rebirths_requested"] == 1
    await forward_spool(worker, pg_dsn)

    got = await asyncio.to_thread(
        rows, pg_dsn, "SELECT t.name, r.time, r.value, r.quality FROM readings r JOIN tags t ON t.id = r.tag_id "
                      "WHERE t.name LIKE %s ORDER BY r.time, t.name", f"KIP.{node}.%")
    at = {s: datetime.fromtimestamp(t / 1000 + s, UTC) for s in range(6)}
    pre = f"KIP.{node}."
    good, bad = int(Quality.GOOD), int(Quality.BAD)
    want = sorted([
        *[(pre + k, at[0], v, good) for k, v in {
            "Line1/M1/Speed": 1480.0, "Line1/M1/Running": 1.0, "Line1/M1/Fault": -3.0, "Line1/M1/Bearing/Temp": 41.5,
            "Line1/M1/Bearing/Vibration": 0.25, "flow": 2.5, "D.M9/Speed": 7.0, "D.M9/Running": 1.0,
            "D.M9/Fault": -3.0, "D.M9/Bearing/Temp": 41.5, "D.M9/Bearing/Vibration": 0.25}.items()],
        (pre + "Line1/M1/Speed", at[1], 1490.0, bad), (pre + "Line1/M1/Bearing/Temp", at[1], 42.0, good),
        (pre + "D.M9/Bearing/Vibration", at[1], 0.5, good),
        (pre + "Line1/M1/Running", at[2], 0.0, good),
        *[(pre + k, at[4], v, good) for k, v in {
            "Line1/M1/Speed": 1500.0, "Line1/M1/Running": 1.0, "Line1/M1/Fault": -3.0, "Line1/M1/Bearing/Temp": 41.5,
            "Line1/M1/Bearing/Vibration": 0.25, "Line1/M1/Torque": 11.0, "flow": 2.5}.items()],
        (pre + "Line1/M1/Torque", at[5], 12.0, good)], key=lambda r: (r[1], r[0]))
    assert [(name, when, value, quality) for name, when, value, quality in got] == want
    assert len(got) == 14 + 1 + 7 + 1
