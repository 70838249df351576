"""Sparkplug B: encoder, decoder (births, aliases, deaths, datatypes, quality), birth state on disk."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta

import pytest

from collectors.mqtt.config import Subscription
from collectors.mqtt.decode import make_decoder
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload
from collectors.mqtt.sparkplug_encode import EdgeNode, Metric, encode_payload, topic
from collectors.mqtt.sparkplug_state import SparkplugStore
from edge.errors import DataError
from edge.records import Flag, Quality

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def decoder(**kw):
    return make_decoder(Subscription.model_validate({"topic": "spBv1.0/#", "format": "sparkplug", **kw}))


def by_tag(readings):
    return {r.tag: r for r in readings}


def test_birth_then_alias_data_decode_with_default_tags():
    d, n = decoder(), EdgeNode("KIP", "gw1")
    birth = d(*_swap(n.birth({"P-101/flow": 12.5, "P-101/running": True}, timestamp_ms=T0_MS)), NOW)
    assert {r.tag: r.value for r in birth} == {"KIP.gw1.P-101/flow": 12.5, "KIP.gw1.P-101/running": True}
    assert all(r.time == T0 and r.flags == 0 for r in birth)
    t, p = n.data({"P-101/flow": 13.0}, timestamp_ms=T0_MS + 1000)
    assert Payload.FromString(p).metrics[0].name == ""  # sent by alias only
    [r] = d(p, t, NOW)
    assert (r.tag, r.value, r.time) == ("KIP.gw1.P-101/flow", 13.0, T0 + timedelta(seconds=1))
    d(*_swap(n.device_birth("pump7", {"vib": 1.0})), NOW)
    [r] = d(*_swap(n.data([("vib", 2.0, T0_MS + 5)], device="pump7")), NOW)
    assert (r.tag, r.value, r.time) == ("KIP.gw1.pump7.vib", 2.0, T0 + timedelta(milliseconds=5))
    assert d.stats["seq_gaps"] == 0


def _swap(tp):
    """EdgeNode returns (topic, payload); decoders take (payload, topic)."""
    return tp[1], tp[0]


def test_datatypes_signed_unsigned_float_string_datetime():
    d = decoder()
    metrics = [
        Metric("i8", -5, datatype=DataType.Int8), Metric("i16", -300, datatype=DataType.Int16),
        Metric("i32", -70000, datatype=DataType.Int32), Metric("i64", -(2**40), datatype=DataType.Int64),
        Metric("u8", 250, datatype=DataType.UInt8), Metric("u32", 2**32 - 1, datatype=DataType.UInt32),
        Metric("u64", 2**64 - 1, datatype=DataType.UInt64), Metric("f", 1.5, datatype=DataType.Float),
        Metric("d", math.pi, datatype=DataType.Double), Metric("b", False, datatype=DataType.Boolean),
        Metric("s", "läuft", datatype=DataType.String), Metric("txt", "x", datatype=DataType.Text),
        Metric("dt", T0_MS, datatype=DataType.DateTime), Metric("nan", math.nan, datatype=DataType.Double),
    ]
    got = {r.tag.split(".")[-1]: r.value for r in d(encode_payload(metrics, seq=0, timestamp_ms=T0_MS),
                                                      topic("G", "NBIRTH", "N"), NOW)}
    nan = got.pop("nan")
    assert math.isnan(nan)
    assert got == {"i8": -5, "i16": -300, "i32": -70000, "i64": -(2**40), "u8": 250, "u32": 2**32 - 1,
                   "u64": 2**64 - 1, "f": 1.5, "d": math.pi, "b": False, "s": "läuft", "txt": "x", "dt": T0_MS}


def test_int8_sent_as_full_32_bit_twos_complement_is_sign_extended():
    # Tahu's Java encoder puts (int) -1 into the uint32 field: 0xFFFFFFFF.
    p = Payload(seq=0)
    m = p.metrics.add(name="x", datatype=DataType.Int8)
    m.int_value = 0xFFFFFFFF
    [r] = decoder()(p.SerializeToString(), topic("G", "NBIRTH", "N"), NOW)
    assert r.value == -1


def test_datatype_comes_from_the_birth_when_data_omits_it():
    d = decoder()
    d(encode_payload([Metric("t", -1, alias=9, datatype=DataType.Int16)], seq=0), topic("G", "NBIRTH", "N"), NOW)
    p = Payload(seq=1)
    p.metrics.add(alias=9, int_value=(-2) & 0xFFFFFFFF)  # no datatype in the data message
    [r] = d(p.SerializeToString(), topic("G", "NDATA", "N"), NOW)
    assert r.value == -2


def test_is_null_quality_property_and_missing_timestamps():
    d = decoder()
    payload = encode_payload([Metric("a", None, datatype=DataType.Double), Metric("b", 1.0, quality=192),
                              Metric("c", 2.0, quality=64 + 8), Metric("e", 3.0, quality=0)], seq=0)
    got = by_tag(d(payload, topic("G", "NBIRTH", "N"), NOW))
    a, b, c, e = (got[f"G.N.{k}"] for k in "abce")
    assert a.value is None and a.quality == Quality.BAD and a.status_name == "is_null"
    assert a.time == NOW and a.flags & Flag.NO_SOURCE_TIME
    assert b.quality == Quality.GOOD and b.flags == Flag.NO_SOURCE_TIME
    assert c.quality == Quality.UNCERTAIN and c.status == 72 and c.flags & Flag.SOURCE_STATUS
    assert e.quality == Quality.BAD and e.status_name == "Quality=0"


def test_stale_quality_500_is_stored_uncertain_and_kept_out_of_machine_conditions():
    """Sparkplug 3.0's quality codes are 0 BAD, 192 GOOD and 500 STALE. 500 was read as an OPC DA code (beyond a
    byte: bad) and stored BAD; a STALE value is the last known one, which the source stands by but cannot refresh:
    UNCERTAIN, as the OPC UA collector stores Uncertain_LastUsableValue."""
    from maintenance.quality import SOURCE, classify_reading

    d = decoder()
    payload = encode_payload([Metric("s", 4.5, quality=500), Metric("g", 1.0, quality=192),
                              Metric("b", 2.0, quality=0)], seq=0, timestamp_ms=1_700_000_000_000)
    got = by_tag(d(payload, topic("G", "NBIRTH", "N"), NOW))
    stale = got["G.N.s"]
    assert (stale.value, stale.quality, stale.status, stale.status_name) == (4.5, Quality.UNCERTAIN, 500,
                                                                              "Quality=500 STALE")
    assert stale.flags == Flag.SOURCE_STATUS  # its own time, the source's statement
    assert (got["G.N.g"].quality, got["G.N.b"].quality) == (Quality.GOOD, Quality.BAD)
    # Maintenance leaves it out of machine conditions, as a device's own doubt (what BAD got before too); the
    # sensor alert counts it as flagged.
    assert classify_reading(stale, stale.value) == SOURCE


def test_node_death_marks_every_metric_of_node_and_devices_bad():
    d, n = decoder(), EdgeNode("G", "N", bd_seq=3)
    will_topic, will = n.death()
    d(*_swap(n.birth({"a": 1.0})), NOW)
    d(*_swap(n.device_birth("D", {"x": 1.0, "y": 2})), NOW)
    dead = by_tag(d(will, will_topic, NOW))
    assert set(dead) == {"G.N.a", "G.N.D.x", "G.N.D.y"}  # bdSeq is protocol, not a tag
    assert all(r.value is None and r.quality == Quality.BAD and r.status_name == "NDEATH" for r in dead.values())
    # A will of an older session (other bdSeq) arriving late is ignored.
    n.rebirth_after_reconnect()
    d(*_swap(n.birth({"a": 1.0})), NOW)
    assert d(will, will_topic, NOW) == []
    assert d.stats["stale_deaths"] == 1


def test_a_death_marks_bad_only_the_metrics_that_are_stored():
    """A DataSet, Template, Bytes or array metric and a transient one are never stored; the NDEATH / DDEATH gave each a
    bad null reading all the same, a tag of nulls only, in the database at every death (and kept across a restart)."""
    d, n = decoder(), EdgeNode("G", "N", bd_seq=3)
    will_topic, will = n.death()
    birth = Payload.FromString(n.birth({"a": 1.0, "t": 2.0})[1])
    for m in birth.metrics:
        m.is_transient = m.name == "t"
    ds = birth.metrics.add(name="table", datatype=DataType.DataSet)
    ds.dataset_value.num_of_columns = 0
    birth.metrics.add(name="blob", datatype=DataType.Bytes, bytes_value=b"x")
    birth.metrics.add(name="arr", datatype=DataType.Int32Array, bytes_value=b"\x01\x00\x00\x00")
    assert [r.tag for r in d(birth.SerializeToString(), "spBv1.0/G/NBIRTH/N", NOW)] == ["G.N.a"]
    dbirth = Payload.FromString(n.device_birth("D", {"x": 1.0, "y": 2.0})[1])
    dbirth.metrics[1].is_transient = True
    dbirth.metrics.add(name="tpl", datatype=DataType.Template)
    assert [r.tag for r in d(dbirth.SerializeToString(), "spBv1.0/G/DBIRTH/N/D", NOW)] == ["G.N.D.x"]
    restarted = decoder()
    restarted.load_node("G", "N", json.loads(json.dumps(d.nodes[("G", "N")].to_json())))
    for dec in (d, restarted):
        assert sorted(r.tag for r in dec(will, will_topic, NOW)) == ["G.N.D.x", "G.N.a"]
    d(*_swap(n.birth({"a": 1.0})), NOW)
    d(dbirth.SerializeToString(), "spBv1.0/G/DBIRTH/N/D", NOW)
    assert [r.tag for r in d(*_swap(n.device_death("D")), NOW)] == ["G.N.D.x"]


def test_a_second_ndeath_of_one_session_marks_nothing_again():
    """An edge node that publishes its NDEATH on shutdown and then drops the connection without DISCONNECT makes the
    broker send its will too: the same bdSeq again. Each gave every metric a null reading, at two times."""
    d, n = decoder(), EdgeNode("G", "N", bd_seq=5)
    will_topic, will = n.death()
    d(*_swap(n.birth({"a": 1.0}, timestamp_ms=T0_MS)), NOW)
    d(*_swap(n.device_birth("D", {"x": 1.0})), NOW)
    shutdown = Payload.FromString(will)
    shutdown.timestamp = T0_MS + 60_000  # stamped when sent, after the birth
    dead = d(shutdown.SerializeToString(), will_topic, NOW)
    assert sorted(r.tag for r in dead) == ["G.N.D.x", "G.N.a"] and {r.time for r in dead} == {T0 + timedelta(minutes=1)}
    assert d(will, will_topic, NOW + timedelta(seconds=45)) == []
    assert d.stats["stale_deaths"] == 1
    # A node known only from a DBIRTH (its NBIRTH was missed): its NDEATH still marks the devices.
    d2 = decoder()
    d2(*_swap(n.device_birth("D", {"x": 1.0})), NOW)
    assert [r.tag for r in d2(will, will_topic, NOW)] == ["G.N.D.x"]


def test_device_death():
    d, n = decoder(), EdgeNode("G", "N")
    d(*_swap(n.birth({})), NOW)
    d(*_swap(n.device_birth("D", {"x": 1.0})), NOW)
    [r] = d(*_swap(n.device_death("D")), NOW)
    assert (r.tag, r.value, r.quality, r.status_name) == ("G.N.D.x", None, Quality.BAD, "DDEATH")


def test_unknown_alias_is_a_dead_letter_but_named_metrics_decode_without_birth():
    d = decoder()
    with pytest.raises(DataError, match=r"alias 4 unknown for edge node G/N.*must rebirth"):
        d(encode_payload([Metric(None, 1.0, alias=4)], seq=5), topic("G", "NDATA", "N"), NOW)
    [r] = d(encode_payload([Metric("named", 1.0)], seq=6), topic("G", "NDATA", "N"), NOW)
    assert r.tag == "G.N.named"


def test_sequence_gaps_are_counted_not_errors():
    d, n = decoder(), EdgeNode("G", "N")
    d(*_swap(n.birth({"a": 1.0})), NOW)
    n.data({"a": 2.0})  # lost on the way
    assert len(d(*_swap(n.data({"a": 3.0})), NOW)) == 1
    assert d.stats["seq_gaps"] == 1
    for _ in range(300):  # wraps at 255 without gaps
        d(*_swap(n.data({"a": 3.0})), NOW)
    assert d.stats["seq_gaps"] == 1


def test_commands_and_state_are_not_measurements():
    d = decoder()
    assert d(encode_payload([Metric("Node Control/Rebirth", True)]), topic("G", "NCMD", "N"), NOW) == []
    assert d(b'{"online": true}', "spBv1.0/STATE/host1", NOW) == []
    assert d.stats["ignored_messages"] == 2


@pytest.mark.parametrize(("payload", "where", "message"), [
    (b"\xff\xff\xff", "spBv1.0/G/NDATA/N", "not a Sparkplug B payload"),
    (b"", "spBv1.0/G/NDATA", "unknown Sparkplug message type or topic shape"),
    (b"", "spBv1.0/G/DDATA/N", "topic shape"),
    (b"", "spBv1.0/G/XDATA/N", "unknown Sparkplug message type"),
    (b"", "spBv1.0/G//N", "empty message type level"),
    (b"", "spBv1.0/G/", "empty message type level"),
    (b"", "spBv1.0//NDATA/N", "empty group, edge node or device id"),
    (b"", "spBv1.0/G/NDATA/", "empty group, edge node or device id"),
    (b"", "spBv1.0/G/DDATA/N/", "empty group, edge node or device id"),
    (b"", "other/G/NDATA/N", "not a Sparkplug B topic"),
    (encode_payload([Metric(None, 1.0)]), "spBv1.0/G/NBIRTH/N", "a birth certificate metric needs a name"),
    (encode_payload([Metric(None, 1.0)]), "spBv1.0/G/NDATA/N", "neither name nor alias"),
    (encode_payload([Metric("a", 1.0, timestamp_ms=2**63)]), "spBv1.0/G/NDATA/N", "out of range"),
])
def test_malformed_sparkplug_is_a_data_error(payload, where, message):
    with pytest.raises(DataError, match=message):
        decoder()(payload, where, NOW)


def test_invalid_utf8_in_names_and_strings():
    good = encode_payload([Metric("ab", "cd")])
    with pytest.raises(DataError, match="not valid UTF-8"):
        decoder()(good.replace(b"ab", b"\xff\xfe"), "spBv1.0/G/NDATA/N", NOW)
    with pytest.raises(DataError, match="not valid UTF-8"):
        decoder()(good.replace(b"cd", b"\xff\xfe"), "spBv1.0/G/NDATA/N", NOW)


def test_non_scalar_and_protocol_metrics_are_skipped_and_counted():
    p = Payload(seq=0)
    p.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0)
    p.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=False)
    p.metrics.add(name="blob", datatype=DataType.Bytes, bytes_value=b"x")
    p.metrics.add(name="v", datatype=DataType.Double, double_value=1.0)
    d = decoder()
    assert [r.tag for r in d(p.SerializeToString(), topic("G", "NBIRTH", "N"), NOW)] == ["G.N.v"]
    assert d.stats["skipped_metrics"] == 1


def test_custom_tag_template_applies_to_node_and_device_metrics():
    d, n = decoder(tag="{node}/{device}/{field}"), EdgeNode("G", "N")
    assert [r.tag for r in d(*_swap(n.birth({"a": 1.0})), NOW)] == ["N//a"]
    assert [r.tag for r in d(*_swap(n.device_birth("D", {"x": 1.0})), NOW)] == ["N/D/x"]


def test_birth_state_survives_a_restart_through_the_store(tmp_path):
    store = SparkplugStore(tmp_path / "sparkplug")
    d, n = decoder(), EdgeNode("Plant~1", "gw%1 ä")
    store.attach(d)
    d(*_swap(n.birth({"a": 1.0})), NOW)
    d(*_swap(n.device_birth("D", {"x": -1}, timestamp_ms=T0_MS)), NOW)
    assert len(list((tmp_path / "sparkplug").glob("*.json"))) == 1
    # A new gateway process: the births were acknowledged and will not come again.
    restarted = decoder()
    SparkplugStore(tmp_path / "sparkplug").attach(restarted)
    [r] = restarted(*_swap(n.data({"x": -7}, device="D")), NOW)
    assert (r.tag, r.value) == ("Plant~1.gw%1 ä.D.x", -7)
    assert restarted.stats["seq_gaps"] == 0  # the saved sequence number is not trusted after a restart


def test_unreadable_state_files_are_ignored(tmp_path):
    (tmp_path / "G~N.json").write_text("{broken")
    d = decoder()
    SparkplugStore(tmp_path).attach(d)
    assert d.nodes == {}


def test_node_death_time_is_the_receive_time_unless_the_death_is_stamped_after_the_birth():
    d, n = decoder(), EdgeNode("G", "N", bd_seq=1)
    d(*_swap(n.birth({"a": 1.0}, timestamp_ms=T0_MS)), NOW)
    will = encode_payload([Metric("bdSeq", 1, datatype=DataType.Int64)], timestamp_ms=T0_MS - 5)  # set at CONNECT
    [r] = d(will, topic("G", "NDEATH", "N"), NOW)
    assert r.time == NOW and r.flags & Flag.NO_SOURCE_TIME
    d(*_swap(n.birth({"a": 1.0}, timestamp_ms=T0_MS)), NOW)
    orderly = encode_payload([Metric("bdSeq", 1, datatype=DataType.Int64)], timestamp_ms=T0_MS + 60_000)
    [r] = d(orderly, topic("G", "NDEATH", "N"), NOW)
    assert r.time == T0 + timedelta(minutes=1) and not r.flags & Flag.NO_SOURCE_TIME


def test_the_decoder_says_when_an_edge_node_should_rebirth_and_why(tmp_path):
    """Sparkplug 3.0: a host that receives DATA it cannot place (no birth seen, an alias no birth defined) or
    misses messages (a sequence gap) sends a Rebirth Request. The decoder names the node and the reason; the
    message itself is handled as before."""
    asked: list[tuple[str, str, str]] = []
    d, n = decoder(), EdgeNode("G", "N")
    d.on_rebirth = lambda group, node, why: asked.append((group, node, why))
    n.birth({"a": 1.0})  # published before the gateway listened
    n.device_birth("D", {"x": 1})
    with pytest.raises(DataError, match="alias 1 unknown"):
        d(*_swap(n.data({"a": 2.0})), NOW)  # still a dead letter
    with pytest.raises(DataError, match="alias 2 unknown"):
        d(*_swap(n.data({"x": 2}, device="D")), NOW)
    assert d(encode_payload([Metric("named", 1.0)], seq=9), topic("G", "NDATA", "N"), NOW)[0].value == 1.0
    assert asked == [("G", "N", "NDATA from an edge node whose NBIRTH was not seen"),
                     ("G", "N", "DDATA from an edge node whose NBIRTH was not seen"),
                     ("G", "N", "NDATA from an edge node whose NBIRTH was not seen")]
    asked.clear()
    # After the births: nothing to ask, until a device's data comes without its DBIRTH, an alias is unknown,
    # or a message is missing.
    d(*_swap(n.birth({"a": 1.0})), NOW)
    d(*_swap(n.device_birth("D", {"x": 1})), NOW)
    assert len(d(*_swap(n.data({"a": 3.0})), NOW)) == 1
    assert len(d(*_swap(n.data({"x": 3}, device="D")), NOW)) == 1
    assert asked == []
    d(*_swap(n.device_death("D")), NOW)
    with pytest.raises(DataError, match="alias 2 of device G/N/D is from a birth before its death"):
        d(*_swap(n.data({"x": 4}, device="D")), NOW)
    with pytest.raises(DataError, match="alias 7 unknown"):
        d(encode_payload([Metric(None, 1.0, alias=7)], seq=n._next_seq()), topic("G", "NDATA", "N"), NOW)
    n.data({"a": 4.0})  # lost on the way
    assert [r.value for r in d(*_swap(n.data({"a": 5.0})), NOW)] == [5.0]  # decoded as before
    seq = n.seq - 1
    assert asked == [("G", "N", "DDATA from device D whose DBIRTH was not seen since its DDEATH"),
                     ("G", "N", "metric 0: alias 7 unknown for edge node G/N (no birth certificate seen with it: "
                                "the edge node must rebirth)"),
                     ("G", "N", f"sequence gap: {seq} after {seq - 2}")]
    asked.clear()
    # An NDEATH ends the session: DATA after it means its next NBIRTH was missed.
    d(*_swap(n.death()), NOW)
    with pytest.raises(DataError, match="alias 1 of edge node G/N is from a birth before its death"):
        d(*_swap(n.data({"a": 6.0})), NOW)
    assert asked == [("G", "N", "NDATA from an edge node whose NBIRTH was not seen since its NDEATH")]
    # A birth state restored after a gateway restart is a birth seen: nothing to ask.
    asked.clear()
    store = SparkplugStore(tmp_path / "sparkplug")
    store.attach(d)
    d(*_swap(n.birth({"a": 1.0})), NOW)
    restarted = decoder()
    restarted.on_rebirth = d.on_rebirth
    SparkplugStore(tmp_path / "sparkplug").attach(restarted)
    assert len(restarted(*_swap(n.data({"a": 7.0})), NOW)) == 1
    assert asked == []
    # A DBIRTH without the NBIRTH before it: ask, and keep asking on the node's data (its NBIRTH is still missing).
    asked.clear()
    m = EdgeNode("G", "M")
    m.birth({"b": 1.0})
    assert len(d(*_swap(m.device_birth("E", {"y": 1})), NOW)) == 1
    d(encode_payload([Metric("b", 2.0)], seq=m._next_seq()), topic("G", "NDATA", "M"), NOW)
    assert asked == [("G", "M", "DBIRTH from an edge node whose NBIRTH was not seen"),
                     ("G", "M", "NDATA from an edge node whose NBIRTH was not seen")]


def test_births_of_ever_new_nodes_and_devices_are_bounded_in_memory_and_on_disk(tmp_path, monkeypatch):
    """Every birth is kept (memory) and written (``<state_dir>/sparkplug/<group>~<node>.json``, the node's whole
    state, synced, on the network thread) and read back at every start. Anyone who may publish on spBv1.0/# could
    send births of new edge nodes and devices without end: memory, files and the time of each birth grew for ever
    (measured: the 3,000th device birth of one node took 20 ms, each on the thread that receives every message).
    Beyond a bound (NODES_MAX per subscription, DEVICES_MAX per node) a birth of a new one is a dead letter; the
    known ones go on."""
    import datetime as dt

    from collectors.mqtt import sparkplug
    from collectors.mqtt.router import Router

    monkeypatch.setattr(sparkplug, "NODES_MAX", 3)
    monkeypatch.setattr(sparkplug, "DEVICES_MAX", 2)
    router = Router("mq", [Subscription.model_validate({"topic": "spBv1.0/#", "format": "sparkplug"})], tmp_path)
    now = dt.datetime.now(dt.UTC)

    def send(t: str, p: bytes) -> tuple[list, list]:
        readings, dead, _ = router.handle(t, t.encode(), p, now)
        return readings, dead

    nodes = [EdgeNode("G", f"N{i}") for i in range(5)]
    outcome = [bool(send(*n.birth({"m": 1.0}))[1]) for n in nodes]
    assert outcome == [False, False, False, True, True]  # two births refused: dead letters
    _, dead = send(*nodes[4].birth({"m": 1.0}))
    assert "3 edge nodes are known" in dead[0].error
    devices = [bool(send(*nodes[0].device_birth(f"D{i}", {"x": 2.0}))[1]) for i in range(4)]
    assert devices == [False, False, True, True]
    assert sorted(p.name for p in (tmp_path / "sparkplug").iterdir()) == ["G~N0.json", "G~N1.json", "G~N2.json"]
    readings, dead = send(*nodes[0].data({"m": 5.0}))  # a known node goes on
    assert not dead and [r.value for r in readings] == [5.0]
    readings, dead = send(*nodes[0].device_birth("D0", {"x": 3.0}))  # a known device is born again
    assert not dead and [r.value for r in readings] == [3.0]


def test_a_node_id_longer_than_a_file_name_is_saved_and_restored(tmp_path):
    """The state file was named ``<group>~<node>.json`` with the ids quoted: a 300-character node id (MQTT allows
    65,535 bytes per topic) made a name longer than the file system's 255 bytes, and the save failed with
    ENAMETOOLONG after the birth had been taken into memory (a dead letter "decoder bug"; aliases lost at the next
    restart). A long id now gets a shortened name with a hash of both ids, which the file itself names."""
    from collectors.mqtt.router import Router

    router = Router("mq", [Subscription.model_validate({"topic": "spBv1.0/#", "format": "sparkplug"})], tmp_path)
    long_a, long_b = "n" * 299 + "a", "n" * 299 + "b"  # one long prefix: two files all the same
    nodes = [EdgeNode("G", long_a), EdgeNode("G" * 300, long_b), EdgeNode("G", "short")]
    for n in nodes:
        t, p = n.birth({"m": 1.0})
        readings, dead, _ = router.handle(t, t.encode(), p, NOW)
        assert not dead and len(readings) == 1, dead
    files = sorted(p.name for p in (tmp_path / "sparkplug").iterdir())
    assert len(files) == 3 and "G~short.json" in files and max(len(f.encode()) for f in files) <= 200, files
    old = EdgeNode("H", "old%1")  # a file from before the ids were in it: named by them alone
    older = decoder()
    SparkplugStore(tmp_path / "older").attach(older)
    older(*_swap(old.birth({"m": 1.0})), NOW)
    [saved] = (tmp_path / "older").iterdir()
    state = json.loads(saved.read_text())
    assert (state.pop("group"), state.pop("node")) == ("H", "old%1")
    (tmp_path / "sparkplug" / saved.name).write_text(json.dumps(state))
    nodes.append(old)
    restarted = decoder()
    SparkplugStore(tmp_path / "sparkplug").attach(restarted)
    for n in nodes:
        [r] = restarted(*_swap(n.data({"m": 2.0})), NOW)  # alias-only: the saved birth placed it
        assert (r.tag, r.value) == (f"{n.group}.{n.node}.m", 2.0)


def test_a_birth_that_could_not_be_saved_is_not_kept_in_memory(tmp_path):
    """A birth whose state could not be written (here: the state folder is a file) was a dead letter, but the node
    stayed in memory with its new aliases: its data were stored until the next restart, then undecodable, with no
    rebirth asked for meanwhile. Now the node (device) whose birth was not saved is forgotten: its data ask for a
    rebirth, which tries the save again."""
    asked: list[tuple[str, str, str]] = []
    (tmp_path / "sparkplug").write_text("not a folder")
    d, n = decoder(), EdgeNode("G", "N")
    d.on_rebirth = lambda group, node, why: asked.append((group, node, why))
    SparkplugStore(tmp_path / "sparkplug").attach(d)
    with pytest.raises(OSError):
        d(*_swap(n.birth({"a": 1.0})), NOW)
    assert d.nodes == {}
    with pytest.raises(DataError, match="alias 1 unknown"):
        d(*_swap(n.data({"a": 2.0})), NOW)
    assert asked and asked[0][:2] == ("G", "N")  # the node is asked to rebirth
    (tmp_path / "sparkplug").unlink()
    d(*_swap(n.birth({"a": 1.0})), NOW)
    n.device_birth("D", {"x": 1})
    (tmp_path / "sparkplug" / "G~N.json").unlink()
    (tmp_path / "sparkplug" / "G~N.json").mkdir()  # the next save fails
    with pytest.raises(OSError):
        d(*_swap(n.device_birth("D", {"x": 1})), NOW)
    assert d.nodes[("G", "N")].devices == {} and d.nodes[("G", "N")].aliases == {1: "a"}


def test_a_death_is_saved_and_a_copy_the_broker_sends_again_gives_the_same_readings(tmp_path):
    """A death was kept in memory only: after a gateway restart the dead node (device) counted as live, and the
    data of its next session, whose birth the gateway had missed, were named by the dead session's aliases. Saved
    now; so that a gateway killed after the save and before its readings were stored still stores them, a copy the
    broker sends again (DUP) gives the same readings at the same time (the database keeps one of each)."""
    d, n = decoder(), EdgeNode("G", "N", bd_seq=2)
    SparkplugStore(tmp_path).attach(d)
    will_topic, will = n.death()
    d(*_swap(n.birth({"a": 1.0, "b": 2.0}, timestamp_ms=T0_MS)), NOW)
    d(*_swap(n.device_birth("D", {"x": 1.0}, timestamp_ms=T0_MS)), NOW)
    d(*_swap(n.device_birth("E", {"y": 1.0}, timestamp_ms=T0_MS)), NOW)
    e_death = n.device_death("E")
    [gone] = d(*_swap(e_death), NOW)  # E died before the node, at the DDEATH's timestamp
    assert gone.tag == "G.N.E.y" and not gone.flags & Flag.NO_SOURCE_TIME
    dead = d(will, will_topic, NOW + timedelta(seconds=1))
    assert sorted(r.tag for r in dead) == ["G.N.D.x", "G.N.a", "G.N.b"]

    restarted = decoder()
    SparkplugStore(tmp_path).attach(restarted)
    node = restarted.nodes[("G", "N")]
    assert not node.online and not node.devices["D"].online and not node.devices["E"].online
    with pytest.raises(DataError, match="alias 1 of edge node G/N is from a birth before its death"):
        restarted(*_swap(n.data({"a": 5.0})), NOW + timedelta(seconds=2))
    again = restarted(will, will_topic, NOW + timedelta(seconds=30), redelivered=True)
    assert sorted((r.tag, r.time, r.flags, r.status_name) for r in again) == \
        sorted((r.tag, r.time, r.flags, r.status_name) for r in dead)
    assert all(r.time == NOW + timedelta(seconds=1) and r.flags & Flag.NO_SOURCE_TIME for r in again)
    [gone_again] = restarted(*_swap(e_death), NOW + timedelta(seconds=40), redelivered=True)
    assert (gone_again.tag, gone_again.time) == ("G.N.E.y", gone.time)
    # Not a copy: a second death of the same session marks nothing (its nulls would be a second death).
    assert restarted(will, will_topic, NOW + timedelta(seconds=50)) == []
    assert restarted(*_swap(n.device_death("D")), NOW + timedelta(seconds=50)) == []


def test_data_after_a_death_are_not_named_by_the_dead_sessions_aliases():
    """The aliases of a birth belong to its session. After an NDEATH (DDEATH) the next session's birth hands out its
    own: measured before, the node's NDATA by alias 1 (now "temp") was stored as "flow", alias 1 in the dead
    session, because that birth was published (QoS 0) while the gateway was away."""
    asked: list[str] = []
    d, n = decoder(), EdgeNode("KIP", "gw")
    d.on_rebirth = lambda group, node, why: asked.append(why)
    d(*_swap(n.birth({"flow": 10.0, "temp": 80.0})), NOW)
    d(*_swap(n.device_birth("pump", {"speed": 1480})), NOW)
    for v in (11.0, 12.0, 13.0):
        d(*_swap(n.data({"flow": v})), NOW)  # sequence numbers 2, 3, 4
    d(*_swap(n.death()), NOW)
    n.rebirth_after_reconnect()
    n.birth({"temp": 81.0, "flow": 11.0})  # not seen by the gateway
    n.device_birth("pump", {"current": 12.0, "speed": 1490})
    with pytest.raises(DataError, match=r"alias 1 of edge node KIP/gw is from a birth before its death certificate "
                                        r"\('flow' then\).*must rebirth"):
        d(*_swap(n.data({"temp": 82.0})), NOW)
    with pytest.raises(DataError, match=r"alias 4 unknown"):  # speed was 3, 4 is new
        d(*_swap(n.data({"speed": 1500}, device="pump")), NOW)
    assert asked == ["NDATA from an edge node whose NBIRTH was not seen since its NDEATH",
                     "DDATA from an edge node whose NBIRTH was not seen since its NDEATH"]
    # Nor is the new session's number 2 a gap after the dead one's last, 4 ("at least 253 message(s) missed").
    assert d.stats["seq_gaps"] == 0
    # Named metrics still decode (the name is the edge node's own), and a birth seen makes its aliases good again.
    [r] = d(encode_payload([Metric("temp", 83.0)], seq=n._next_seq()), topic("KIP", "NDATA", "gw"), NOW)
    assert (r.tag, r.value) == ("KIP.gw.temp", 83.0)
    d(*_swap(n.birth({"temp": 81.0, "flow": 11.0})), NOW)
    assert [(r.tag, r.value) for r in d(*_swap(n.data({"temp": 84.0})), NOW)] == [("KIP.gw.temp", 84.0)]


def test_a_death_whose_state_cannot_be_saved_is_still_stored_logged_and_counted(tmp_path, caplog):
    d, n = decoder(), EdgeNode("G", "N")
    SparkplugStore(tmp_path / "sparkplug").attach(d)
    d(*_swap(n.birth({"a": 1.0})), NOW)
    (tmp_path / "sparkplug" / "G~N.json").unlink()
    (tmp_path / "sparkplug" / "G~N.json").mkdir()  # the save fails
    [r] = d(*_swap(n.death()), NOW)
    assert (r.tag, r.value, r.quality) == ("G.N.a", None, Quality.BAD)
    assert d.stats["state_save_errors"] == 1
    [line] = [rec for rec in caplog.records if getattr(rec, "event", None) == "sparkplug_state_not_saved"]
    assert "NDEATH of edge node G/N" in line.getMessage() and "IsADirectoryError" in line.getMessage()


def test_an_alias_a_birth_gives_to_two_metrics_names_neither(tmp_path):
    """Aliases are unique per edge node (Sparkplug 3.0, tck-id-payloads-alias-uniqueness). A birth that gave alias 1
    to both "flow" and "temp" made every value sent by alias 1 a "temp" value, silently, also those of "flow". Now
    data by that alias are dead letters that say why (a rebirth would not help: nothing is asked); the birth's values
    (by name) and the other aliases are stored; and a restart keeps it so."""
    asked: list[str] = []
    d = decoder()
    d.on_rebirth = lambda group, node, why: asked.append(why)
    SparkplugStore(tmp_path).attach(d)
    birth = encode_payload([Metric("flow", 1.0, alias=1), Metric("temp", 20.0, alias=1), Metric("level", 3.0, alias=2),
                            Metric("speed", 9.0, alias=1)], seq=0)
    assert [(r.tag, r.value) for r in d(birth, topic("G", "NBIRTH", "N"), NOW)] == [
        ("G.N.flow", 1.0), ("G.N.temp", 20.0), ("G.N.level", 3.0), ("G.N.speed", 9.0)]
    restarted = decoder()
    restarted.on_rebirth = d.on_rebirth
    SparkplugStore(tmp_path).attach(restarted)
    for dec, seq in ((d, 1), (restarted, 2)):
        with pytest.raises(DataError, match=r"alias 1 of edge node G/N was given to 'flow', 'temp', 'speed' in its "
                                            r"birth \(an alias must name one metric"):
            dec(encode_payload([Metric(None, 2.0, alias=1, datatype=DataType.Double)], seq=seq),
                topic("G", "NDATA", "N"), NOW)
    [r] = restarted(encode_payload([Metric(None, 4.0, alias=2, datatype=DataType.Double)], seq=3),
                    topic("G", "NDATA", "N"), NOW)
    assert (r.tag, r.value) == ("G.N.level", 4.0)
    assert asked == []


def test_a_metric_that_is_not_stored_is_named_in_the_log_once(caplog):
    """Datasets, arrays and bytes are not stored: they were counted in status() only, so a site whose edge node
    publishes them saw no value and no word of why. (Templates, Ignition's UDTs, are stored member by member since:
    tests/test_mqtt_sparkplug_templates.py.)"""
    caplog.set_level(logging.WARNING, logger="collectors.mqtt")
    d = decoder()
    birth = Payload(seq=0)
    birth.metrics.add(name="flow", datatype=DataType.Double, double_value=1.0)
    birth.metrics.add(name="speeds", datatype=DataType.Int32Array, bytes_value=b"\x01\x00\x00\x00")
    birth.metrics.add(name="table", datatype=DataType.DataSet).dataset_value.num_of_columns = 0
    assert [r.tag for r in d(birth.SerializeToString(), topic("KIP", "NBIRTH", "gw1"), NOW)] == ["KIP.gw1.flow"]
    data = Payload(seq=1)
    data.metrics.add(name="speeds", bytes_value=b"\x02\x00\x00\x00")
    assert d(data.SerializeToString(), topic("KIP", "NDATA", "gw1"), NOW) == []
    assert d.stats["skipped_metrics"] == 3
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "sparkplug_metric_skipped"]
    assert lines == [
        "Sparkplug metric 'speeds' of edge node KIP/gw1: a Int32Array (bytes_value), not stored (only scalar and "
        "Template metrics are: flatten datasets and arrays into scalar metrics on the edge node); counted in status() "
        "sparkplug.skipped_metrics, logged once per metric name",
        "Sparkplug metric 'table' of edge node KIP/gw1: a DataSet (dataset_value), not stored (only scalar and "
        "Template metrics are: flatten datasets and arrays into scalar metrics on the edge node); counted in status() "
        "sparkplug.skipped_metrics, logged once per metric name"]
