"""Plain and JSON decoders and timestamp parsing (pure functions, no broker)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from collectors.mqtt.config import Subscription
from collectors.mqtt.decode import make_decoder, parse_plain, parse_time
from edge.errors import DataError
from edge.records import Flag, Quality

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def dec(topic: str = "plant/+asset/+signal", **kw):
    return make_decoder(Subscription.model_validate({"topic": topic, **kw}))


def values(readings):
    return [(r.tag, r.time, r.value) for r in readings]


# -- plain ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    (b"21.5", 21.5), (b" -3 \n", -3), (b"1e-3", 0.001), (b"true", True), (b"FALSE", False), (b"0", 0),
    (b"+7", 7), (b"18446744073709551615", 2**64 - 1), (b"99999999999999999999999", 1e23),
])
def test_plain_numbers_and_booleans(text, value):
    got = parse_plain(text)
    assert got == value and type(got) is type(value)


def test_plain_nan_and_inf_are_readings_not_errors():
    assert math.isnan(parse_plain(b"nan"))
    assert parse_plain(b"-inf") == -math.inf


@pytest.mark.parametrize(("text", "message"), [
    (b"", "empty payload"), (b"  ", "empty payload"), (b"abc", "not a number or true/false: 'abc'"),
    (b"\xff\xfe", "not ASCII text"), (b"1,5", "not a number"), (b"9" * 400, "beyond the float range"),
    # Python's int()/float() take digit-group underscores: a garbled "1_5" was stored as 15, "2_0.5" as 20.5.
    (b"1_5", "not a number or true/false: '1_5'"), (b"2_0.5", "not a number"),
])
def test_plain_errors_say_what_is_wrong(text, message):
    with pytest.raises(DataError, match=message):
        parse_plain(text)


def test_plain_reading_uses_receive_time_and_topic_tag():
    [r] = dec(format="plain", tag="{asset}.{signal}")(b"42", "plant/P-101/flow", NOW)
    assert (r.tag, r.value, r.time, r.receive_time) == ("P-101.flow", 42, NOW, NOW)
    assert r.flags == Flag.NO_SOURCE_TIME and r.quality == Quality.GOOD


# -- JSON shapes -----------------------------------------------------------------------------------

def test_json_single_object_with_iso_time():
    [r] = dec(tag="{asset}.{signal}")(b'{"value": 1.5, "time": "2024-05-01T12:00:00Z"}', "plant/P-1/t", NOW)
    assert values([r]) == [("P-1.t", T0, 1.5)] and r.flags == 0 and r.receive_time == NOW


def test_json_bare_values_and_missing_time():
    d = dec(tag="{signal}")
    assert values(d(b"7", "plant/a/x", NOW)) == [("x", NOW, 7)]
    assert values(d(b'"RUN"', "plant/a/x", NOW)) == [("x", NOW, "RUN")]
    [r] = d(b'{"value": true}', "plant/a/x", NOW)
    assert r.value is True and r.time == NOW and r.flags == Flag.NO_SOURCE_TIME


def test_json_array_of_samples_with_custom_fields():
    d = dec(tag="{asset}", json={"value": "v", "time": "t", "time_format": "epoch_ms"})
    got = d(b'[{"t": %d, "v": 1}, {"t": %d, "v": 2.5}]' % (T0_MS, T0_MS + 1), "plant/P-2/x", NOW)
    assert values(got) == [("P-2", T0, 1), ("P-2", T0 + timedelta(milliseconds=1), 2.5)]


def test_json_batched_multi_tag_message_with_message_level_defaults():
    d = dec(topic="batch/+line", tag="{line}.{field}",
            json={"samples": "data.samples", "value": "v", "time": "t", "tag": "tag"})
    payload = (b'{"tag": "flow", "t": "2024-05-01T12:00:00Z", "data": {"samples": ['
               b'{"v": 1}, {"v": 2, "tag": "temp"}, {"v": 3, "t": "2024-05-01T12:00:01+00:00"}]}}')
    assert values(d(payload, "batch/L1", NOW)) == [
        ("L1.flow", T0, 1), ("L1.temp", T0, 2), ("L1.flow", T0 + timedelta(seconds=1), 3)]


def test_json_nested_paths():
    d = dec(topic="x/#", tag="{field}", json={"value": "m.val", "time": "m.ts", "tag": "meta.id"})
    [r] = d(b'{"meta": {"id": "K1.NOx"}, "m": {"val": 42.0, "ts": 1714564800}}', "x/y", NOW)
    assert values([r]) == [("K1.NOx", T0, 42.0)]


def test_json_wide_object_gives_one_reading_per_key():
    d = dec(topic="wide/+asset", tag="{asset}.{field}", json={"value": "*", "time": "ts"})
    got = d(b'{"ts": "2024-05-01T12:00:00Z", "temp": 21.5, "run": false, "mode": "auto"}', "wide/P-3", NOW)
    assert values(got) == [("P-3.temp", T0, 21.5), ("P-3.run", T0, False), ("P-3.mode", T0, "auto")]


def test_json_null_value_is_a_bad_reading():
    [r] = dec(tag="{signal}")(b'{"value": null, "time": 1714564800}', "plant/a/x", NOW)
    assert r.value is None and r.quality == Quality.BAD and r.time == T0


# -- json quality (json.quality, json.quality_format) --------------------------------------------

def quality_of(readings):
    return [(r.tag, r.value, r.quality, r.status, bool(r.flags & Flag.SOURCE_STATUS)) for r in readings]


def test_json_quality_a_device_states_is_kept():
    """Kepware's IoT gateway sends {"id", "v", "q": true/false, "t"}: "q": false was stored GOOD (no key read it),
    a failed sensor's last value passing into averages and models as a measurement."""
    d = dec(topic="kep/+dev", tag="{dev}.{field}", json={"samples": "values", "tag": "id", "value": "v", "time": "t",
                                                          "quality": "q"})
    got = d(b'{"timestamp": 1, "values": [{"id": "a", "v": 1.5, "q": true, "t": 1714564800000},'
            b' {"id": "b", "v": 2.5, "q": false, "t": 1714564800000}, {"id": "c", "v": 3.5, "t": 1714564800000}]}',
            "kep/d1", NOW)
    assert quality_of(got) == [("d1.a", 1.5, Quality.GOOD, 0, False), ("d1.b", 2.5, Quality.BAD, 0, True),
                               ("d1.c", 3.5, Quality.GOOD, 0, False)]


@pytest.mark.parametrize(("fmt", "stated", "quality", "status"), [
    ("auto", '"Good"', Quality.GOOD, 0), ("auto", '"UNCERTAIN_SUB_NORMAL"', Quality.UNCERTAIN, 0),
    ("text", '"bad_comm_failure"', Quality.BAD, 0), ("bool", "false", Quality.BAD, 0),
    ("opcua", "0", Quality.GOOD, 0), ("opcua", "2150891520", Quality.BAD, 0x8034_0000),
    ("opcua", '{"Code": 1083310080, "Symbol": "UncertainLastUsableValue"}', Quality.UNCERTAIN, 1083310080),
    ("opcua", '"BadSensorFailure"', Quality.BAD, 0),
    ("opcda", "192", Quality.GOOD, 192), ("opcda", "68", Quality.UNCERTAIN, 68), ("opcda", "0", Quality.BAD, 0),
    ("opcda", "24", Quality.BAD, 24),
])
def test_json_quality_formats(fmt, stated, quality, status):
    d = dec(tag="{signal}", json={"quality": "q", "quality_format": fmt})
    [r] = d(b'{"value": 7.0, "q": ' + stated.encode() + b"}", "plant/a/x", NOW)
    assert (r.value, r.quality, r.status, bool(r.flags & Flag.SOURCE_STATUS)) == (
        7.0, quality, status, quality != Quality.GOOD)


@pytest.mark.parametrize(("fmt", "stated", "message"), [
    ("auto", "192", 'a number: set json.quality_format to "opcua"'),  # 0 is good in one convention, bad in the other
    ("auto", '"maybe"', "'maybe' at 'q' is none json.quality_format = 'auto' reads"),
    ("bool", "1", "'1' at 'q' is none json.quality_format = 'bool' reads"),
    ("opcda", "65536", "'65536' at 'q'"), ("opcua", "-1", "'-1' at 'q'"), ("opcua", "[0]", "'[0]' at 'q'"),
])
def test_json_quality_that_cannot_be_read_leaves_the_sample_out_and_keeps_the_others(fmt, stated, message):
    d = dec(tag="{signal}", json={"quality": "q", "quality_format": fmt})
    rows = d.rows(b'[{"value": 1.0}, {"value": 2.0, "q": ' + stated.encode() + b'}]', "plant/a/x", NOW)
    assert [r.value for r in rows] == [1.0]
    assert len(rows.errors) == 1 and message in rows.errors[0], rows.errors


def test_json_quality_in_wide_objects_and_at_message_level():
    """A wide object's quality key names no tag and applies to its every value; a message-level quality to the
    samples without their own."""
    wide = dec(topic="wide/+asset", tag="{asset}.{field}", json={"value": "*", "time": "ts", "quality": "q"})
    got = wide(b'{"ts": 1714564800, "q": "bad", "temp": 21.5, "run": true}', "wide/P-3", NOW)
    assert quality_of(got) == [("P-3.temp", 21.5, Quality.BAD, 0, True), ("P-3.run", True, Quality.BAD, 0, True)]
    batch = dec(topic="b/+line", tag="{line}.{field}", json={"samples": "s", "tag": "tag", "quality": "q"})
    got = batch(b'{"q": false, "s": [{"tag": "x", "value": 1}, {"tag": "y", "value": 2, "q": true}]}', "b/L1", NOW)
    assert [(r.tag, r.quality) for r in got] == [("L1.x", Quality.BAD), ("L1.y", Quality.GOOD)]


def test_json_null_value_stays_bad_whatever_quality_is_stated():
    [r] = dec(tag="{signal}", json={"quality": "q"})(b'{"value": null, "q": true}', "plant/a/x", NOW)
    assert r.value is None and r.quality == Quality.BAD


def test_json_quality_path_must_be_its_own_key():
    for bad in ("*", "value"):
        with pytest.raises(ValueError, match="must be a key of its own"):
            dec(json={"quality": bad})
    with pytest.raises(ValueError, match="quality_format"):
        dec(json={"quality": "q", "quality_format": "da"})


def test_json_nan_infinity_and_huge_numbers_are_readings():
    d = dec(tag="{signal}")
    got = d(b'[{"value": NaN}, {"value": Infinity}, {"value": -Infinity}, {"value": 1e400}]', "plant/a/x", NOW)
    v = [r.value for r in got]
    assert math.isnan(v[0]) and v[1:] == [math.inf, -math.inf, math.inf]
    [big] = d(b'{"value": 123456789012345678901234567890}', "plant/a/x", NOW)
    assert big.value == pytest.approx(1.2345678901234568e29)


def test_json_empty_array_is_no_readings():
    assert dec()(b"[]", "plant/a/b", NOW) == []


@pytest.mark.parametrize(("payload", "message"), [
    (b'{"value": 1', "not JSON: unexpected end of data"),
    (b'{"val": 1}', "no value at 'value'"),
    (b'{"value": {"x": 1}}', "value at 'value' is an object, not a number"),
    (b'{"value": [1, 2]}', "value at 'value' is an array"),
    (b'[{"value": 1}, {"value": 2, "time": "yesterday"}]', "sample 1: time 'yesterday' is neither ISO-8601"),
    (b'[{"value": 1}, [1]]', "sample 1: expected an object or a value, got an array"),
    (b'{"value": 1, "time": true}', "time must be text or a number, not a boolean"),
    (b'{"value": 1, "time": 1e30}', "out of range"),
    (b'{"value": 1, "time": "0001-01-01T00:00:00+01:00"}', r"time '0001-01-01T00:00:00\+01:00' is out of range in UTC"),
    (b'{"value": "\\ud800"}', "not JSON"),
    (b'\xff{}', "not JSON"),
])
def test_json_errors_are_precise(payload, message):
    with pytest.raises(DataError, match=message):
        dec(tag="{signal}")(payload, "plant/a/b", NOW)


def test_json_errors_for_mappings():
    with pytest.raises(DataError, match="samples at 'samples': expected an array, got missing"):
        dec(json={"samples": "samples"})(b'{"s": []}', "plant/a/b", NOW)
    with pytest.raises(DataError, match="no tag name at 'tag'"):
        dec(json={"tag": "tag"})(b'{"value": 1}', "plant/a/b", NOW)
    with pytest.raises(DataError, match="tag name at 'tag' is a number, not text"):
        dec(json={"tag": "tag"})(b'{"value": 1, "tag": 5}', "plant/a/b", NOW)
    with pytest.raises(DataError, match="value of 'x' is an object"):
        dec(tag="{field}", json={"value": "*"})(b'{"x": {}}', "plant/a/b", NOW)
    with pytest.raises(DataError, match="expected an object, got a number"):
        dec(tag="{field}", json={"value": "*"})(b"1", "plant/a/b", NOW)


# -- timestamps ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "fmt", "want"), [
    ("2024-05-01T12:00:00Z", "auto", T0),
    ("2024-05-01T14:00:00+02:00", "iso8601", T0),
    ("2024-05-01T12:00:00", "iso8601", T0),  # no offset: UTC
    ("2024-05-01 12:00:00.250Z", "auto", T0 + timedelta(milliseconds=250)),
    ("2024-05-01T12:00:00.123456789Z", "auto", T0 + timedelta(microseconds=123456)),
    (1714564800, "epoch_s", T0), (1714564800.5, "epoch_s", T0 + timedelta(milliseconds=500)),
    (T0_MS + 7, "epoch_ms", T0 + timedelta(milliseconds=7)),
    (T0_MS * 1000 + 7, "epoch_us", T0 + timedelta(microseconds=7)),
    (T0_MS * 1_000_000 + 7999, "epoch_ns", T0 + timedelta(microseconds=7)),
    (1714564800, "auto", T0), (T0_MS + 7, "auto", T0 + timedelta(milliseconds=7)),
    (T0_MS * 1000 + 7, "auto", T0 + timedelta(microseconds=7)),
    (T0_MS * 1_000_000 + 7000, "auto", T0 + timedelta(microseconds=7)),
    ("1714564800", "auto", T0), (str(T0_MS), "epoch_ms", T0), ("1714564800.25", "auto", T0 + timedelta(seconds=0.25)),
    ("0001-01-01T01:00:00+01:00", "auto", datetime(1, 1, 1, tzinfo=UTC)),  # the first instant in range
    ("9999-12-31T22:59:59.999999-01:00", "iso8601", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    # RFC 3339 §5.6 allows a lower-case z (fromisoformat took a lower-case t, not z): such a message was a dead letter.
    ("2024-05-01t12:00:00z", "auto", T0), ("2024-05-01T12:00:00.5z", "iso8601", T0 + timedelta(seconds=0.5)),
])
def test_parse_time_formats(raw, fmt, want):
    got = parse_time(raw, fmt)
    assert got == want and got.tzinfo is UTC


def test_json_epoch_fast_path_is_exact_for_every_unit():
    for fmt, scale in (("epoch_ms", 1000), ("epoch_us", 1_000_000), ("auto", 1000), ("auto", 1_000_000)):
        d = dec(tag="{signal}", json={"time_format": fmt})
        for k in (0, 1, 499, 500, 999_999):
            raw = int(T0.timestamp()) * scale + k
            [r] = d(b'{"value": 1, "time": %d}' % raw, "plant/a/x", NOW)
            assert r.time == T0 + timedelta(seconds=k / scale), (fmt, raw)


def test_auto_time_switches_units_between_samples():
    d = dec(tag="{signal}")
    got = d(b'[{"value": 1, "time": %d}, {"value": 2, "time": 1714564800}, {"value": 3, "time": %d}]'
            % (T0_MS, T0_MS * 1000), "plant/a/x", NOW)
    assert [r.time for r in got] == [T0, T0, T0]


def test_offsets_become_utc():
    got = parse_time("2024-05-01T15:00:00+03:00", "auto")
    assert got == T0 and got.utcoffset() == timedelta(0)
    assert parse_time("2024-05-01T12:00:00-00:30", "auto") == T0.astimezone(timezone(timedelta(0))) + timedelta(
        minutes=30)


@pytest.mark.parametrize(("raw", "fmt", "message"), [
    ("May 1st", "iso8601", "not ISO-8601"), (1714564800, "iso8601", "is a number but time_format is iso8601"),
    (float("nan"), "auto", "not a finite number"), (10**30, "epoch_s", "out of range"), ([1], "auto", "an array"),
    # Valid ISO-8601 whose offset takes it outside datetime's years 1 to 9999 once in UTC.
    ("0001-01-01T00:00:00+01:00", "auto", r"time '0001-01-01T00:00:00\+01:00' is out of range in UTC"),
    ("9999-12-31T23:59:59-01:00", "iso8601", r"time '9999-12-31T23:59:59-01:00' is out of range in UTC"),
    ("0001-01-01T00:59:59.999999+01:00", "iso8601", "out of range in UTC"),
    ("1_714_564_800", "auto", "neither ISO-8601 nor an epoch number"),  # was 2024-05-01T12:00:00 (int() takes "_")
    ("1714_564800.5", "epoch_s", "nor an epoch number"),
])
def test_parse_time_errors(raw, fmt, message):
    with pytest.raises(DataError, match=message):
        parse_time(raw, fmt)
