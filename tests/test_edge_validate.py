"""Validation sets quality flags without dropping the raw value."""

from __future__ import annotations

import math
from datetime import timedelta

from edge.records import Flag, Quality, Reading, utcnow
from edge.settings import Tag, Validation
from edge.validate import Validator, rule_names


def _r(tag, value, dt_s=0.0, now=None, quality=Quality.GOOD):
    now = now or utcnow()
    return Reading(tag=tag, time=now + timedelta(seconds=dt_s), value=value, receive_time=now, quality=quality)


def make(**tags) -> Validator:
    return Validator({n: Tag(name=n, **kw) for n, kw in tags.items()}, Validation())


def test_nan_and_inf_are_bad_and_kept():
    v = make(a={"range": (0, 10)})
    now = utcnow()
    rs = [_r("a", math.nan, now=now), _r("a", math.inf, now=now), _r("a", 5.0, now=now)]
    assert v.apply_readings(rs, now) == 2
    assert rs[0].quality == Quality.BAD and rs[0].flags & Flag.NOT_FINITE and math.isnan(rs[0].value)
    assert rs[1].quality == Quality.BAD and rs[1].value == math.inf
    assert rs[2].quality == Quality.GOOD and rs[2].flags == 0
    assert rs[0].status_name == "not_finite"


def test_out_of_range_is_uncertain_with_value_kept():
    v = make(a={"range": (0, 10)})
    now = utcnow()
    rs = [_r("a", -0.1, now=now), _r("a", 10.0, now=now), _r("a", 11, now=now)]
    v.apply_readings(rs, now)
    assert [r.quality for r in rs] == [Quality.UNCERTAIN, Quality.GOOD, Quality.UNCERTAIN]
    assert rs[2].value == 11 and rule_names(rs[2].flags) == ["out_of_range"]


def test_frozen_value_flagged_after_its_window():
    v = make(a={"frozen_after_s": 10})
    now = utcnow()
    rs = [_r("a", 1.0, dt_s=-30 + i, now=now) for i in range(25)]
    v.apply_readings(rs, now)
    assert all(r.quality == Quality.GOOD for r in rs[:11])
    assert all(r.flags & Flag.FROZEN for r in rs[11:])
    change = [_r("a", 2.0, now=now)]
    v.apply_readings(change, now)
    assert change[0].quality == Quality.GOOD


def test_future_and_stale_timestamps():
    v = make(a={})
    now = utcnow()
    rs = [_r("a", 1.0, dt_s=60, now=now), _r("a", 1.0, dt_s=-8 * 86400, now=now), _r("a", 1.0, dt_s=3, now=now)]
    v.apply_readings(rs, now)
    assert rs[0].flags & Flag.FUTURE_TIME and rs[0].quality == Quality.UNCERTAIN
    assert rs[1].flags & Flag.STALE_TIME
    assert rs[2].flags == 0  # within the 5 s tolerance


def test_device_bad_quality_is_never_upgraded():
    v = make(a={})
    now = utcnow()
    r = _r("a", 1.0, now=now, quality=Quality.BAD)
    v.apply_readings([r], now)
    assert r.quality == Quality.BAD


def test_unknown_tag_flagged_but_quality_kept_and_type_mismatch_bad():
    v = make(a={"kind": "float"})
    now = utcnow()
    rs = [_r("zz", 1.0, now=now), _r("a", "hello", now=now)]
    v.apply_readings(rs, now)
    assert rs[0].flags & Flag.UNKNOWN_TAG and rs[0].quality == Quality.GOOD
    assert rs[1].flags & Flag.TYPE_MISMATCH and rs[1].quality == Quality.BAD and rs[1].value == "hello"


def test_text_that_is_not_utf8_is_replaced_flagged_and_spoolable(tmp_path):
    """asyncua decodes a server's Latin-1 bytes with surrogateescape: "25 \\udcb0C". The spool could not store
    it, and ingest retried that group for ever; now the text keeps its readable part, flagged."""
    from edge.columns import Columns
    from edge.spool import Spool

    now = utcnow()
    cols = Columns.from_readings([_r("a", b"25 \xb0C".decode("utf-8", "surrogateescape"), now=now),
                                  _r("b", "fine", now=now)])
    make().apply(cols, now)
    assert cols.other[0] == "25 \ufffdC" and cols.flags[0] & Flag.TYPE_MISMATCH and cols.quality[0] == Quality.UNCERTAIN
    assert cols.other[1] == "fine" and not cols.flags[1] & Flag.TYPE_MISMATCH
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 20)
    spool.append_many([(cols, [])])
    assert [r[2] for r in spool.peek(10)[0].rows] == ["25 \ufffdC", "fine"]
    spool.close()


def test_tags_outside_the_registry_keep_no_state_each():
    """A wildcard subscription over ever new device ids must not grow the validator's memory per tag."""
    v = make(a={"range": (0, 10), "frozen_after_s": 60})
    now = utcnow()
    v.apply_readings([_r(f"dev{i}.x", float(i), now=now) for i in range(10_000)] + [_r("a", 1.0, now=now)], now)
    assert len(v._state) == 1  # only the configured tag, which has a frozen-value window to follow


def test_frozen_runs_are_written_once_per_run_and_a_new_validator_goes_on_from_them(caplog):
    """A run of repeated values is one spool row, written once it has lasted a quarter of the window and deleted when
    the value moves; a healthy value (changing at every reading, or in runs far shorter) writes nothing. A validator
    given the rows (a reload, a restart) flags the same run at once; rows of tags without a frozen window any more, or
    unreadable ones, are deleted."""
    from edge.validate import FROZEN_STATE_SOURCE

    v = make(a={"frozen_after_s": 10}, b={"frozen_after_s": 10})
    now = utcnow()
    v.apply_readings([_r("b", float(i), dt_s=-100 + i, now=now) for i in range(50)], now)
    assert v.take_state_ops() == []  # a healthy value: nothing to write
    v.apply_readings([_r("b", float(i // 2), dt_s=-50 + i, now=now) for i in range(50)], now)
    assert v.take_state_ops() == []  # a quantised one, repeated every other reading: runs too short to keep
    v.apply_readings([_r("a", 1.0, dt_s=-30 + i, now=now) for i in range(5)], now)
    [(source, key, value)] = v.take_state_ops()
    assert (source, key) == (FROZEN_STATE_SOURCE, b"a")
    rows = {key: value, b"gone": value, b"b": b"\xc1"}  # a tag no longer watched, a row that cannot be read
    again = Validator({n: Tag(name=n, frozen_after_s=10) for n in "ab"}, Validation(), frozen_runs=rows)
    assert "frozen_state_unreadable" in [getattr(r, "event", None) for r in caplog.records]
    assert sorted(k for _, k, val in again.take_state_ops() if val is None) == [b"b", b"gone"]
    later = [_r("a", 1.0, dt_s=-10, now=now)]  # 20 s after the run began, in the new validator
    again.apply_readings(later, now)
    assert later[0].flags & Flag.FROZEN and later[0].quality == Quality.UNCERTAIN
    assert again.take_state_ops() == []  # the run is in the spool already
    moved = [_r("a", 2.0, dt_s=-9, now=now)]
    again.apply_readings(moved, now)
    assert moved[0].quality == Quality.GOOD and again.take_state_ops() == [(FROZEN_STATE_SOURCE, b"a", None)]


def test_a_late_reading_from_before_a_run_neither_ends_nor_restarts_it():
    """A device's buffered sample (store and forward after a reconnect), an OPC UA backfill behind live values: a
    reading older than the run of a stuck value, with another value, started a new run at its own time, and the stuck
    value's next readings were a run of their own again: GOOD for ``frozen_after_s``."""
    v = make(a={"frozen_after_s": 10})
    now = utcnow()
    stuck = [_r("a", 1.0, dt_s=-60 + i, now=now) for i in range(21)]
    v.apply_readings(stuck, now)
    assert [bool(r.flags & Flag.FROZEN) for r in stuck] == [False] * 11 + [True] * 10
    late = [_r("a", 0.5, dt_s=-120, now=now)]
    more = [_r("a", 1.0, dt_s=-39 + i, now=now) for i in range(10)]
    v.apply_readings(late + more, now)
    assert late[0].quality == Quality.GOOD and not late[0].flags
    assert all(r.flags & Flag.FROZEN and r.quality == Quality.UNCERTAIN for r in more), [r.flags for r in more]


def test_a_bad_reading_inside_a_stuck_run_does_not_end_it():
    """A device's Bad reading carries whatever value it has (many PLCs send 0 with a Bad status on a glitch): it is no
    measurement, as NaN is none, and taken as a change it ended a stuck value's run: GOOD again for the window."""
    v = make(a={"frozen_after_s": 10, "kind": "float"})
    now = utcnow()
    v.apply_readings([_r("a", 1.0, dt_s=-60 + i, now=now) for i in range(21)], now)
    glitch = [_r("a", 0.0, dt_s=-39.5, now=now, quality=Quality.BAD), _r("a", "n/a", dt_s=-39.2, now=now)]
    more = [_r("a", 1.0, dt_s=-39 + i, now=now) for i in range(10)]
    v.apply_readings(glitch + more, now)
    assert [r.quality for r in glitch] == [Quality.BAD, Quality.BAD]
    assert all(r.flags & Flag.FROZEN for r in more), [r.flags for r in more]


def test_the_rules_at_their_edges():
    """What the audit checked and found right, pinned: limits are inclusive and -0.0 is 0; an integer beyond 2**53
    (kept exactly, not as a float) is range-checked; a time before 1970 is stale, one exactly at the future
    tolerance is not flagged; a NaN from a device already Bad stays Bad and is counted once per rule."""
    from datetime import UTC, datetime

    flagged: list[tuple[str, int]] = []
    v = Validator({"a": Tag(name="a", range=(0.0, 10.0)), "i": Tag(name="i", kind="int", range=(0, 1e6)),
                   "b": Tag(name="b", kind="bool")}, Validation(), on_flagged=lambda rule, n: flagged.append((rule, n)))
    now = utcnow()
    rs = [_r("a", -0.0, now=now), _r("a", 0.0, now=now), _r("a", 10.0, now=now), _r("i", 2**60 + 1, now=now),
          _r("i", 10**6, now=now), _r("b", True, now=now), _r("b", 2, now=now),
          Reading("a", datetime(1969, 12, 31, tzinfo=UTC), 1.0, now), _r("a", 1.0, dt_s=5.0, now=now),
          _r("a", math.nan, now=now, quality=Quality.BAD)]
    v.apply_readings(rs, now)
    assert [rule_names(r.flags) for r in rs] == [[], [], [], ["out_of_range"], [], [], ["type_mismatch"],
                                                 ["stale_time"], [], ["not_finite"]]
    assert rs[3].value == 2**60 + 1 and rs[9].quality == Quality.BAD
    assert sorted(flagged) == [("not_finite", 1), ("out_of_range", 1), ("stale_time", 1), ("type_mismatch", 1)]
