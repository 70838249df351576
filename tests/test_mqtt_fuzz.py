"""Property tests: thousands of random, malformed and well-formed payloads thrown at every decoder.

Whatever comes in, a decoder either returns readings the spool can store or raises DataError (which the
collector dead-letters); any other exception would be a bug that stops a message stream. Well-formed
payloads built from known readings must decode to exactly those readings.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.mqtt.config import Subscription
from collectors.mqtt.decode import make_decoder, parse_plain
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload
from collectors.mqtt.sparkplug_encode import EdgeNode, Metric, encode_payload
from edge.errors import DataError
from edge.records import Flag, Quality, Reading
from edge.spool import encode_readings

NOW = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
# ~7,000 payloads per run in all; generation, not decoding, is what takes the time.
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(FUZZ, max_examples=2000)
GOOD = settings(FUZZ, max_examples=400)

SUBSCRIPTIONS = [
    {"topic": "p/#", "format": "plain"},
    {"topic": "j/+a/#", "tag": "{a}"},
    {"topic": "j/+a/#", "tag": "{a}.{field}", "json": {"samples": "samples", "value": "v", "time": "t", "tag": "tag"}},
    {"topic": "j/+a/#", "tag": "{field}", "json": {"value": "*", "time": "ts"}},
    {"topic": "j/+a/#", "tag": "{field}", "json": {"value": "d.v", "time": "d.t", "tag": "meta.id",
                                                   "time_format": "iso8601"}},
    {"topic": "j/+a/#", "json": {"time_format": "epoch_ns"}},
    {"topic": "spBv1.0/#", "format": "sparkplug"},
]
JSON_KEYS = ["value", "time", "tag", "samples", "v", "t", "ts", "d", "meta", "id", "x"]
TOPICS = ["p/a/b", "j/A/b", "j/A", "spBv1.0/G/NBIRTH/N", "spBv1.0/G/NDATA/N", "spBv1.0/G/DBIRTH/N/D",
          "spBv1.0/G/DDATA/N/D", "spBv1.0/G/NDEATH/N", "spBv1.0/G/DDEATH/N/D", "spBv1.0/STATE/h", "spBv1.0/G/NCMD/N"]


def decoders():
    return [make_decoder(Subscription.model_validate(s)) for s in SUBSCRIPTIONS]


DECODERS = decoders()  # shared on purpose: Sparkplug state accumulates across examples


def check_storable(readings: list[Reading]) -> None:
    """What the pipeline needs: well-typed readings the spool can encode."""
    assert isinstance(readings, list)
    for r in readings:
        assert type(r.tag) is str and r.tag.encode("utf-8")
        assert r.time.tzinfo is not None and r.receive_time == NOW
        assert r.value is None or type(r.value) in (bool, int, float, str)
        assert r.quality in (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
        if type(r.value) is int:
            assert -(2**63) <= r.value < 2**64
        if r.flags & Flag.NO_SOURCE_TIME:
            assert r.time == NOW
    msgpack.packb(encode_readings(readings), use_bin_type=True)


def throw(payload: bytes, topic: str) -> int:
    """Feed every decoder; return how many accepted it. Only DataError may escape a decoder."""
    ok = 0
    for d in DECODERS:
        try:
            readings = d(payload, topic, NOW)
        except DataError as exc:
            assert str(exc)  # every refusal says why
            continue
        check_storable(readings)
        ok += 1
    return ok


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
                | st.sampled_from(["2024-05-01T12:00:00Z", "1714564800", "2024-13-45", "", "NaN"]))
json_docs = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.sampled_from(JSON_KEYS) | st.text(max_size=5), inner, max_size=6), max_leaves=15)


@MANY
@given(st.binary(max_size=300), st.sampled_from(TOPICS))
def test_random_bytes_never_raise_anything_but_data_error(payload, topic):
    throw(payload, topic)


@FUZZ
@given(json_docs, st.sampled_from(["j/A/b", "j/A", "p/x"]))
def test_random_json_documents_never_raise_anything_but_data_error(doc, topic):
    throw(json.dumps(doc, allow_nan=True).encode(), topic)


@FUZZ
@given(json_docs, st.data())
def test_mutated_json_never_raises_anything_but_data_error(doc, data):
    raw = bytearray(json.dumps(doc).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "junk"]))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:]
        elif op == "dup":
            raw[i:i] = raw[i:i + 3]
        else:
            raw[i:i] = data.draw(st.sampled_from([b"NaN", b"\\ud800", b"\xff", b"1e999", b'"', b"{", b"]"]))
    throw(bytes(raw), "j/A/b")


# -- Sparkplug: random protobuf messages ---------------------------------------------------------

VALUE_FIELDS = {
    "int_value": st.integers(0, 2**32 - 1), "long_value": st.integers(0, 2**64 - 1),
    "float_value": st.floats(width=32), "double_value": st.floats(), "boolean_value": st.booleans(),
    "string_value": st.text(max_size=10), "bytes_value": st.binary(max_size=5),
}


@st.composite
def random_metric(draw, p: Payload) -> None:
    m = p.metrics.add()
    if draw(st.booleans()):
        m.name = draw(st.sampled_from(["a", "b", "bdSeq", "Node Control/Rebirth", ""]) | st.text(max_size=8))
    if draw(st.booleans()):
        m.alias = draw(st.integers(0, 20))
    if draw(st.booleans()):
        m.datatype = draw(st.integers(0, 40))
    if draw(st.booleans()):
        m.timestamp = draw(st.integers(0, 2**64 - 1) | st.integers(10**12, 2 * 10**12))
    if draw(st.booleans()):
        m.is_null = True
    field = draw(st.sampled_from([None, *VALUE_FIELDS]))
    if field is not None:
        setattr(m, field, draw(VALUE_FIELDS[field]))
    if draw(st.integers(0, 5)) == 0:
        m.properties.keys.append("Quality")
        m.properties.values.add().int_value = draw(st.integers(0, 2**32 - 1))


@FUZZ
@given(st.data(), st.sampled_from([t for t in TOPICS if t.startswith("spB")]))
def test_random_sparkplug_messages_never_raise_anything_but_data_error(data, topic):
    p = Payload()
    if data.draw(st.booleans()):
        p.seq = data.draw(st.integers(0, 300))
    if data.draw(st.booleans()):
        p.timestamp = data.draw(st.integers(0, 2**64 - 1))
    for _ in range(data.draw(st.integers(0, 6))):
        data.draw(random_metric(p))
    raw = p.SerializeToString()
    if data.draw(st.integers(0, 3)) == 0 and raw:  # and sometimes a damaged one
        cut = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut] + data.draw(st.binary(max_size=4)) + raw[cut + 1:]
    throw(raw, topic)


# -- well-formed payloads decode to exactly what was encoded ---------------------------------------

tags = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_./ äö", min_size=1, max_size=12)
values = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
          | st.text(max_size=12))
times = st.datetimes(min_value=datetime(1980, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def as_stored(v):
    """The value as the JSON decoder's columns hold it: integers exact as float8 become floats."""
    return float(v) if type(v) is int and -(2**53) <= v <= 2**53 else v


def render_time(t: datetime, how: str):
    us = (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if how == "iso_z":
        return t.isoformat().replace("+00:00", "Z")
    if how == "iso_offset":
        return t.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat()
    if how == "epoch_us":
        return us
    return us // 1000  # epoch ms (times are drawn to the millisecond for it)


@GOOD
@given(st.lists(st.tuples(tags, values, times, st.sampled_from(["iso_z", "iso_offset", "epoch_us", "epoch_ms"])),
                max_size=30))
def test_good_json_batches_decode_exactly(samples):
    d = make_decoder(Subscription.model_validate(SUBSCRIPTIONS[2]))
    body, want = [], []
    for tag, v, t, how in samples:
        if how == "epoch_ms":
            t = t.replace(microsecond=t.microsecond // 1000 * 1000)
        body.append({"tag": tag, "v": v, "t": render_time(t, how)})
        want.append((f"L1.{tag}", v, t))
    got = d(json.dumps({"samples": body}, allow_nan=True).encode(), "j/L1/x", NOW)
    assert len(got) == len(want)
    for r, (tag, v, t) in zip(got, want, strict=True):
        assert r.tag == tag and r.time == t and same(r.value, as_stored(v)) and r.flags == 0


@MANY
@given(st.floats(allow_nan=True) | st.integers(-(2**63), 2**64 - 1) | st.booleans())
def test_good_plain_values_decode_exactly(v):
    text = ("true" if v else "false") if isinstance(v, bool) else repr(v)
    assert same(parse_plain(text.encode()), v)


sp_values = st.sampled_from([DataType.Int8, DataType.Int16, DataType.Int32, DataType.Int64, DataType.UInt8,
                             DataType.UInt16, DataType.UInt32, DataType.UInt64, DataType.Double, DataType.Boolean,
                             DataType.String]).flatmap(lambda dt: st.tuples(st.just(dt), {
                                 DataType.Int8: st.integers(-(2**7), 2**7 - 1),
                                 DataType.Int16: st.integers(-(2**15), 2**15 - 1),
                                 DataType.Int32: st.integers(-(2**31), 2**31 - 1),
                                 DataType.Int64: st.integers(-(2**63), 2**63 - 1),
                                 DataType.UInt8: st.integers(0, 2**8 - 1), DataType.UInt16: st.integers(0, 2**16 - 1),
                                 DataType.UInt32: st.integers(0, 2**32 - 1), DataType.UInt64: st.integers(0, 2**64 - 1),
                                 DataType.Double: st.floats(allow_nan=True), DataType.Boolean: st.booleans(),
                                 DataType.String: st.text(max_size=10)}[dt]))


@GOOD
@given(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda n: n != "bdSeq" and "Control/" not in n),
                       sp_values, min_size=1, max_size=8),
       st.integers(10**12, 2 * 10**12))
def test_good_sparkplug_births_and_alias_data_decode_exactly(metrics, ts):
    d = make_decoder(Subscription.model_validate(SUBSCRIPTIONS[-1]))
    node = EdgeNode("G", "N")
    topic, birth = node.birth({})
    d(birth, topic, NOW)
    topic, payload = node.device_birth("D", {n: v for n, (_, v) in metrics.items()})
    # The encoder infers types from Python values; re-encode the birth with the drawn datatypes.
    payload = encode_payload([Metric(n, v, alias=i + 1, datatype=dt) for i, (n, (dt, v)) in enumerate(metrics.items())],
                             seq=1, timestamp_ms=ts)
    got = {r.tag: r for r in d(payload, topic, NOW)}
    assert set(got) == {f"G.N.D.{n}" for n in metrics}
    for n, (_, v) in metrics.items():
        r = got[f"G.N.D.{n}"]
        assert same(r.value, v) and r.time == datetime.fromtimestamp(ts / 1000, UTC)
    data = encode_payload([Metric(None, v, alias=i + 1, datatype=dt, timestamp_ms=ts + 1)
                           for i, (dt, v) in enumerate(metrics.values())], seq=2)
    got = d(data, "spBv1.0/G/DDATA/N/D", NOW)
    assert [r.tag for r in got] == [f"G.N.D.{n}" for n in metrics]
    assert all(same(r.value, v) for r, (_, v) in zip(got, metrics.values(), strict=True))
