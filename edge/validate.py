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

The frozen-value rule's runs outlive the process: a run of repeated values that has lasted a quarter of its window
is written to the spool (source ``FROZEN_STATE_SOURCE``) in the commit of its readings and removed in the one that
ends it, and the next `Validator` (a reload, a restart) goes on from it. A stuck sensor's readings were stored GOOD for
``frozen_after_s`` after every SIGHUP reload and restart, and its sensor alert cleared meanwhile.

Two checks are not flags: a text value over ``validation.max_text_bytes`` (`oversized_texts`) and a tag name over
``validation.max_tag_bytes`` (`oversized_tags`) are set aside by the ingest stage as dead letters with their size and
first bytes (`text_prefix`), since a value or name cut short is not what the device sent, a whole one of megabytes
would weigh on the spool, the database and the console, and a name over the database's index limit is refused there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime

import msgpack
import numpy as np

from edge.columns import Columns, to_us
from edge.records import Flag, Quality, Reading
from edge.settings import Tag, Validation

log = logging.getLogger(__name__)

# The spool's source_state rows of the frozen-value rule: tag (UTF-8) -> msgpack [value, since_us] of its run of
# repeated values. Collector names are free text; this one names no collector anyone would configure.
FROZEN_STATE_SOURCE = "edge.validate:frozen-runs"

_RULE_NAMES = {
    Flag.NOT_FINITE: "not_finite",
    Flag.TYPE_MISMATCH: "type_mismatch",
    Flag.OUT_OF_RANGE: "out_of_range",
    Flag.FROZEN: "frozen",
    Flag.FUTURE_TIME: "future_time",
    Flag.STALE_TIME: "stale_time",
    Flag.UNKNOWN_TAG: "unknown_tag",
}

RULE_NAMES = tuple(_RULE_NAMES.values())  # every rule (valvoja_readings_flagged_total's label values)


def rule_names(flags: int) -> list[str]:
    """Names of the validation rules set in a flags bitmask (for logs, API and reports)."""
    return [name for bit, name in _RULE_NAMES.items() if flags & bit]


class _TagState:
    __slots__ = ("frozen_after_us", "hi", "kind", "last_value", "lo", "saved", "since_us")

    def __init__(self, tag: Tag | None):
        self.kind = tag.kind if tag else None
        self.lo, self.hi = (tag.range if tag and tag.range else (-math.inf, math.inf))
        self.frozen_after_us = round(tag.frozen_after_s * 1e6) if tag and tag.frozen_after_s else None
        self.last_value: object = None
        self.since_us: int | None = None
        self.saved = False  # the spool holds this run (FROZEN_STATE_SOURCE)


_UNCONFIGURED = _TagState(None)

_NOT_FINITE, _TYPE, _RANGE, _FROZEN = int(Flag.NOT_FINITE), int(Flag.TYPE_MISMATCH), int(Flag.OUT_OF_RANGE), \
    int(Flag.FROZEN)
_FUTURE, _STALE, _UNKNOWN = int(Flag.FUTURE_TIME), int(Flag.STALE_TIME), int(Flag.UNKNOWN_TAG)
_GOOD, _UNCERTAIN, _BAD = int(Quality.GOOD), int(Quality.UNCERTAIN), int(Quality.BAD)
# Tag kinds as small ints for the per-tag lookup arrays; -1 = not in the registry.
_KIND_CODE = {None: -1, "float": 0, "int": 1, "bool": 2, "string": 3}


class Validator:
    """Applies the rules in place to batches of readings held as `Columns`; keeps per-tag state for FROZEN.

    The rules run as array operations over a batch (the gateway validates hundreds of thousands of
    readings per second); only the few rows that need Python objects (text, booleans, nulls, integers
    beyond 2**53) and the tags with a frozen-value window are visited one by one.
    """

    def __init__(self, tags: dict[str, Tag], cfg: Validation, on_flagged: Callable[[str, int], None] | None = None,
                 frozen_runs: dict[bytes, bytes] | None = None):
        """``on_flagged(rule, n)`` is told of every reading a rule flags (the gateway counts them in metrics).
        ``frozen_runs``: the spool's rows of ``FROZEN_STATE_SOURCE`` (`Spool.load_state`), the runs to go on from."""
        self._tags = tags
        self._on_flagged = on_flagged
        self._cfg = cfg
        self._future_us = round(cfg.future_tolerance_s * 1e6)
        self._max_age_us = round(cfg.max_age_s * 1e6)
        self._state: dict[str, _TagState] = {}
        self._by_flags: dict[int, int] = {}  # flags value -> readings flagged with it
        # Changes of the spool's frozen runs since `take_state_ops`, committed with the readings that made them.
        self._ops: list[tuple[str, bytes, bytes | None]] = []
        self._seeds: dict[str, tuple[object, int]] = self._seeds_of(frozen_runs or {})

    def _seeds_of(self, rows: dict[bytes, bytes]) -> dict[str, tuple[object, int]]:
        """The runs to go on from, by tag; rows of tags without a frozen window any more are deleted."""
        seeds: dict[str, tuple[object, int]] = {}
        unreadable = []
        for key, raw in rows.items():
            try:
                tag = bytes(key).decode()
                value, since_us = msgpack.unpackb(raw, raw=False)
                since_us = int(since_us)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                unreadable.append(f"{bytes(key)[:80]!r}: {type(exc).__name__}: {exc}")
                self._ops.append((FROZEN_STATE_SOURCE, key, None))
                continue
            cfg = self._tags.get(tag)
            if cfg is None or not cfg.frozen_after_s:
                self._ops.append((FROZEN_STATE_SOURCE, key, None))
            else:
                seeds[tag] = (value, since_us)
        if unreadable:
            log.warning("%d frozen-value run(s) in the spool cannot be read and start anew (first: %s)",
                        len(unreadable), unreadable[0], extra={"event": "frozen_state_unreadable"})
        return seeds

    def take_state_ops(self) -> list[tuple[str, bytes, bytes | None]]:
        """The spool's ``(source, key, value)`` changes of the frozen runs since the last call (`Spool.append_many`
        state), for the commit of the readings `apply` just flagged."""
        ops, self._ops = self._ops, []
        return ops

    @property
    def max_text_bytes(self) -> int:
        return self._cfg.max_text_bytes

    @property
    def max_tag_bytes(self) -> int:
        return self._cfg.max_tag_bytes

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
            cfg = self._tags.get(tag)
            if cfg is None:
                # A tag not in the registry has no rules of its own and no frozen-value window: one shared state,
                # so a wildcard subscription over ever new device ids does not grow this dict without bound.
                return _UNCONFIGURED
            st = self._state[tag] = _TagState(cfg)
            seed = self._seeds.pop(tag, None)
            if seed is not None and st.frozen_after_us is not None:
                st.last_value, st.since_us = seed
                st.saved = True
        return st

    def apply(self, cols: Columns, now: datetime) -> int:
        """Flag the readings in ``cols`` in place (flags, quality); returns how many got a significant flag."""
        n = len(cols)
        if n == 0:
            return 0
        states = [self._state_for(t) for t in cols.tags]
        idx = cols.tag_idx
        kind = np.array([_KIND_CODE[st.kind] for st in states], np.int8)[idx]
        lo = np.array([st.lo for st in states], np.float64)[idx]
        hi = np.array([st.hi for st in states], np.float64)[idx]
        v = cols.value
        numeric = np.ones(n, bool)
        if cols.other:
            numeric[list(cols.other)] = False
        flags = np.zeros(n, np.int32)
        worst = np.zeros(n, np.int16)
        if self._cfg.flag_unknown_tags:
            flags[kind < 0] |= _UNKNOWN
        with np.errstate(invalid="ignore"):
            not_finite = numeric & ~np.isfinite(v)
            wrong_type = numeric & ~not_finite & (
                (kind == 3) | ((kind == 1) & (v != np.floor(v))) | ((kind == 2) & (v != 0) & (v != 1)))
            out_of_range = numeric & ~not_finite & ~wrong_type & ((v < lo) | (v > hi))
        flags[not_finite] |= _NOT_FINITE
        flags[wrong_type] |= _TYPE
        flags[out_of_range] |= _RANGE
        worst[not_finite | wrong_type] = _BAD
        worst[out_of_range] = _UNCERTAIN
        for i, val in cols.other.items():  # text, booleans, nulls, big integers
            if val.__class__ is str and not val.isascii() and not _utf8(val):
                # Lone surrogates: asyncua decodes a server's non-UTF-8 bytes with surrogateescape. Neither the
                # spool nor the database can store them, and a group the spool refuses would be retried for ever:
                # keep the text with U+FFFD in their place, flagged.
                val = cols.other[i] = _readable(val)
                flags[i] |= _TYPE
                worst[i] = max(int(worst[i]), _UNCERTAIN)
            k = states[idx[i]].kind
            if val is not None and k is not None and not _type_ok(k, val):
                flags[i] |= _TYPE
                worst[i] = _BAD
            elif val.__class__ in (int, float) and not (lo[i] <= val <= hi[i]):
                flags[i] |= _RANGE
                worst[i] = _UNCERTAIN
        self._frozen(cols, states, not_finite, flags, worst)
        now_us = to_us(now)
        t = cols.time_us
        future = t > now_us + self._future_us
        stale = ~future & (t < now_us - self._max_age_us)
        flags[future] |= _FUTURE
        flags[stale] |= _STALE
        np.maximum(worst, np.where(future | stale, _UNCERTAIN, _GOOD).astype(np.int16), out=worst)
        flagged = flags != 0
        if not flagged.any():
            return 0
        cols.flags |= flags
        kinds, counts = np.unique(flags[flagged], return_counts=True)
        by_flags = self._by_flags
        for f, c in zip(kinds.tolist(), counts.tolist(), strict=True):
            by_flags[f] = by_flags.get(f, 0) + c
            if self._on_flagged is not None:
                for name in rule_names(f):
                    self._on_flagged(name, c)
        significant = (flags & ~_UNKNOWN) != 0
        np.maximum(cols.quality, np.where(significant, worst, _GOOD).astype(np.int16), out=cols.quality)
        return int(significant.sum())

    def _frozen(self, cols: Columns, states: list[_TagState], not_finite: np.ndarray, flags: np.ndarray,
                worst: np.ndarray) -> None:
        """FROZEN: unchanged for longer than the tag's window; sequential per tag, so row by row. A run that has
        lasted a quarter of the window is written to the spool, a change removes it (a healthy value writes
        nothing)."""
        watched = [i for i, st in enumerate(states) if st.frozen_after_us is not None]
        if not watched:
            return
        # Bad readings (the device's status, a wrong type) are no measurements, as NaN is none: they neither end
        # nor extend a run (a PLC sending 0 with a Bad status on a glitch ended a stuck value's run).
        rows = np.flatnonzero(np.isin(cols.tag_idx, watched) & ~not_finite & (cols.quality < _BAD) & (worst < _BAD))
        idx, t = cols.tag_idx, cols.time_us
        ops = self._ops
        for i in rows.tolist():
            val = cols.value_at(i)
            if val is None:
                continue
            st = states[idx[i]]
            ti = int(t[i])
            if st.since_us is not None and ti < st.since_us:
                # Older than the run: a device's buffered sample, a backfill behind live values. Taken as a change it
                # ended a stuck value's run and started another at its own time (GOOD again for the window).
                continue
            if val != st.last_value or st.since_us is None:
                if st.saved:
                    ops.append((FROZEN_STATE_SOURCE, cols.tags[idx[i]].encode(), None))
                    st.saved = False
                st.last_value, st.since_us = val, ti
                continue
            if not st.saved and ti - st.since_us >= st.frozen_after_us // 4:
                # Written once the run has lasted a quarter of the window: a quantised value's short runs (a repeat
                # every other reading) wrote and deleted a row each and made the spool commit 10 times slower; a
                # restart now flags a run younger than that at most a quarter of the window late.
                ops.append((FROZEN_STATE_SOURCE, cols.tags[idx[i]].encode(), _packed_run(val, st.since_us)))
                st.saved = True
            if ti - st.since_us > st.frozen_after_us:
                flags[i] |= _FROZEN
                worst[i] = max(int(worst[i]), _UNCERTAIN)

    def apply_readings(self, readings: list[Reading], now: datetime) -> int:
        """`apply` for a list of `Reading` (tools and tests): flags, quality and a rule name set on each."""
        cols = Columns.from_readings(readings)
        flagged = self.apply(cols, now)
        for r, f, q in zip(readings, cols.flags.tolist(), cols.quality.tolist(), strict=True):
            if f != r.flags:
                new = f & ~r.flags & ~_UNKNOWN
                r.flags = f
                if q > r.quality:
                    r.quality = Quality(q)
                if new and not r.status_name:
                    r.status_name = ",".join(rule_names(new))
        return flagged


def _packed_run(value: object, since_us: int) -> bytes:
    """A frozen run's spool row; a value msgpack cannot hold (an integer beyond 64 bits, which no collector sends:
    they make such numbers floats) as its text, which then never equals the next value: the run starts anew."""
    try:
        return msgpack.packb([value, since_us], use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return msgpack.packb([str(value), since_us], use_bin_type=True)


TEXT_PREFIX_BYTES = 4096  # what a dead letter keeps of a text value over max_text_bytes
TAG_PREFIX_BYTES = 1024  # what a dead letter keeps of a tag name over max_tag_bytes (its topic)


def oversized_texts(cols: Columns, max_bytes: int) -> list[tuple[int, int]]:
    """``(row, size)`` of the text values in ``cols`` longer than ``max_bytes`` in UTF-8, in row order."""
    out = []
    for i, v in cols.other.items():
        if v.__class__ is str:
            size = _over(v, max_bytes)
            if size:
                out.append((i, size))
    return sorted(out)


def oversized_tags(cols: Columns, max_bytes: int) -> list[tuple[int, int]]:
    """``(row, size)`` of the readings in ``cols`` whose tag name is longer than ``max_bytes`` in UTF-8, in row
    order (the size is the name's)."""
    sizes = {j: size for j, name in enumerate(cols.tags) if (size := _over(name, max_bytes))}
    if not sizes:
        return []
    rows = np.flatnonzero(np.isin(cols.tag_idx, list(sizes)))
    return [(i, sizes[int(cols.tag_idx[i])]) for i in rows.tolist()]


def _over(text: str, max_bytes: int) -> int:
    """The UTF-8 size of ``text`` if it is over ``max_bytes``, else 0."""
    if len(text) <= max_bytes // 4:  # a character takes at most 4 bytes: a text this short is within
        return 0
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size if size > max_bytes else 0


def text_prefix(text: str, n: int = TEXT_PREFIX_BYTES) -> bytes:
    """The first ``n`` bytes at most of ``text`` in UTF-8, cut at a character's boundary (undecodable ones as ?)."""
    raw = text[:n].encode("utf-8", "replace")[:n]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _readable(s: str) -> str:
    """``s`` with each undecodable byte (or other lone surrogate) as one U+FFFD."""
    try:
        raw = s.encode("utf-8", "surrogateescape")  # the server's original bytes
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _type_ok(kind: str, v: object) -> bool:
    if kind == "float":
        return isinstance(v, int | float)
    if kind == "int":
        return isinstance(v, int) or (isinstance(v, float) and v.is_integer())
    if kind == "bool":
        return isinstance(v, bool) or v in (0, 1)
    return isinstance(v, str)
