"""Validation: quality flags on readings, never dropping the raw value (DESIGN.md §2, §5).

Rules, each a bit in `edge.records.Flag` and a lowered quality:
- value NaN or infinite           -> NOT_FINITE,   BAD
- value type not the tag's kind   -> TYPE_MISMATCH, BAD
- outside the tag's expected range -> OUT_OF_RANGE, UNCERTAIN
- unchanged for longer than the tag's ``frozen_after_s`` -> FROZEN, UNCERTAIN
- source time ahead of the gateway clock by more than the tolerance -> FUTURE_TIME, UNCERTAIN
- source time older than ``max_age_s`` -> STALE_TIME, UNCERTAIN
- tag not in the registry -> UNKNOWN_TAG (quality unchanged: wildcard topics may add tags)

Quality only ever gets worse here: a device's Bad status is never upgraded.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from edge.records import Flag, Quality, Reading
from edge.settings import Tag, Validation

_RULE_NAMES = {
    Flag.NOT_FINITE: "not_finite",
    Flag.TYPE_MISMATCH: "type_mismatch",
    Flag.OUT_OF_RANGE: "out_of_range",
    Flag.FROZEN: "frozen",
    Flag.FUTURE_TIME: "future_time",
    Flag.STALE_TIME: "stale_time",
    Flag.UNKNOWN_TAG: "unknown_tag",
}


def rule_names(flags: int) -> list[str]:
    """Names of the validation rules set in a flags bitmask (for logs, API and reports)."""
    return [name for bit, name in _RULE_NAMES.items() if flags & bit]


class _TagState:
    __slots__ = ("frozen_after", "hi", "kind", "last_value", "lo", "since")

    def __init__(self, tag: Tag | None):
        self.kind = tag.kind if tag else None
        self.lo, self.hi = (tag.range if tag and tag.range else (-math.inf, math.inf))
        self.frozen_after = timedelta(seconds=tag.frozen_after_s) if tag and tag.frozen_after_s else None
        self.last_value: object = None
        self.since: datetime | None = None


# Plain ints on the hot path: enum arithmetic costs several microseconds per reading.
_NOT_FINITE, _TYPE, _RANGE, _FROZEN = int(Flag.NOT_FINITE), int(Flag.TYPE_MISMATCH), int(Flag.OUT_OF_RANGE), \
    int(Flag.FROZEN)
_FUTURE, _STALE, _UNKNOWN = int(Flag.FUTURE_TIME), int(Flag.STALE_TIME), int(Flag.UNKNOWN_TAG)
_GOOD, _UNCERTAIN, _BAD = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD


class Validator:
    """Applies the rules in place to batches of readings; keeps per-tag state for FROZEN."""

    def __init__(self, tags: dict[str, Tag], cfg: Validation):
        self._tags = tags
        self._cfg = cfg
        self._future = timedelta(seconds=cfg.future_tolerance_s)
        self._max_age = timedelta(seconds=cfg.max_age_s)
        self._state: dict[str, _TagState] = {}
        self._by_flags: dict[int, int] = {}  # flags value -> readings flagged with it
        self._names: dict[int, str] = {}

    @property
    def counts(self) -> dict[str, int]:
        """Readings per rule since start."""
        out: dict[str, int] = {}
        for flags, n in self._by_flags.items():
            for name in rule_names(flags):
                out[name] = out.get(name, 0) + n
        return out

    def _state_for(self, tag: str) -> _TagState:
        st = self._state.get(tag)
        if st is None:
            st = self._state[tag] = _TagState(self._tags.get(tag))
        return st

    def apply(self, readings: list[Reading], now: datetime) -> int:
        """Flag ``readings`` in place; returns how many got a new flag."""
        latest = now + self._future
        oldest = now - self._max_age
        unknown = _UNKNOWN if self._cfg.flag_unknown_tags else 0
        state = self._state
        by_flags = self._by_flags
        flagged = 0
        for r in readings:
            st = state.get(r.tag) or self._state_for(r.tag)
            flags = 0
            worst = _GOOD
            v = r.value
            if st.kind is None:
                flags = unknown
            if v.__class__ is float and not math.isfinite(v):
                flags |= _NOT_FINITE
                worst = _BAD
            elif v is not None:
                if st.kind is not None and not _type_ok(st.kind, v):
                    flags |= _TYPE
                    worst = _BAD
                elif v.__class__ in (int, float) and not (st.lo <= v <= st.hi):
                    flags |= _RANGE
                    worst = _UNCERTAIN
                if st.frozen_after is not None:
                    if v != st.last_value or st.since is None:
                        st.last_value, st.since = v, r.time
                    elif r.time - st.since > st.frozen_after:
                        flags |= _FROZEN
                        worst = max(worst, _UNCERTAIN)
            t = r.time
            if t > latest:
                flags |= _FUTURE
                worst = max(worst, _UNCERTAIN)
            elif t < oldest:
                flags |= _STALE
                worst = max(worst, _UNCERTAIN)
            if flags:
                r.flags |= flags
                by_flags[flags] = by_flags.get(flags, 0) + 1
                significant = flags & ~_UNKNOWN
                if significant:
                    flagged += 1
                    if worst > r.quality:
                        r.quality = Quality(worst)
                    if not r.status_name:
                        name = self._names.get(significant)
                        if name is None:
                            name = self._names[significant] = ",".join(rule_names(significant))
                        r.status_name = name
        return flagged


def _type_ok(kind: str, v: object) -> bool:
    if kind == "float":
        return isinstance(v, int | float)
    if kind == "int":
        return isinstance(v, int) or (isinstance(v, float) and v.is_integer())
    if kind == "bool":
        return isinstance(v, bool) or v in (0, 1)
    return isinstance(v, str)
