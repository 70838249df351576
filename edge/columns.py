"""Readings as columns: the form the spool stores and the sink COPYs.

Turning a batch of `Reading` objects into numpy columns once (a few attribute reads per
reading) lets everything after it run in C: the spool stores the columns as raw bytes
(no per-value packing), and the sink builds the PostgreSQL binary COPY stream of the
common rows (a float value, no server time) with one structured-array conversion.
Values that are not floats (None, strings, integers beyond 2**53) are kept exactly in a
sparse side table, as are server timestamps, which most protocols do not send.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from edge.records import Quality, Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_EXACT_INT = 2**53  # integers beyond this are not exact as float8: kept as text
# The datetime range (years 1..9999): a reading's time must be representable as a datetime everywhere.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999


def to_us(dt: datetime) -> int:
    """Exact microseconds since the Unix epoch of an aware datetime."""
    return (dt - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _value_column(values: list) -> tuple[np.ndarray, dict[int, object]]:
    """Floats (and integers exact as float8) into one float64 array; everything else into a side table."""
    other: dict[int, object] = {}
    if all(v.__class__ is float for v in values):
        return np.array(values, dtype=np.float64), other
    value = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        c = v.__class__
        if c is float:
            value[i] = v
        elif c is int and -_EXACT_INT <= v <= _EXACT_INT:
            value[i] = v
        else:
            value[i] = np.nan
            other[i] = v if isinstance(v, bool | int | float | str) or v is None else str(v)
    return value, other


@dataclass(slots=True)
class Columns:
    tags: list[str]  # distinct tag names; tag_idx points into it
    tag_idx: np.ndarray  # int32
    time_us: np.ndarray  # int64, microseconds since the Unix epoch
    value: np.ndarray  # float64; for rows in `other` the value is there instead
    recv_us: np.ndarray  # int64
    quality: np.ndarray  # int16
    flags: np.ndarray  # int32
    status: np.ndarray  # int64
    other: dict[int, object] = field(default_factory=dict)  # row -> None | str | bool | int
    server_us: dict[int, int] = field(default_factory=dict)  # row -> server timestamp

    def __len__(self) -> int:
        return int(self.time_us.size)

    def __iter__(self):
        """The readings as `Reading` objects (tools, tests, analytics); the hot path stays in columns."""
        return iter(self.readings())

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_readings(cls, readings: list[Reading]) -> Columns:
        n = len(readings)
        index: dict[str, int] = {}
        setdefault = index.setdefault
        tag_idx = np.fromiter((setdefault(r.tag, len(index)) for r in readings), np.int32, n)
        # round(timestamp * 1e6) is exact to the microsecond for dates within centuries of now.
        time_us = np.rint(np.fromiter((r.time.timestamp() for r in readings), np.float64, n) * 1e6).astype(np.int64)
        recv_us = np.rint(np.fromiter((r.receive_time.timestamp() for r in readings), np.float64, n)
                          * 1e6).astype(np.int64)
        value, other = _value_column([r.value for r in readings])
        quality = np.fromiter((r.quality for r in readings), np.int16, n)
        flags = np.fromiter((r.flags for r in readings), np.int32, n)
        status = np.fromiter((r.status for r in readings), np.int64, n)
        server = {i: round(r.server_time.timestamp() * 1e6) for i, r in enumerate(readings)
                  if r.server_time is not None}
        return cls(list(index), tag_idx, time_us, value, recv_us, quality, flags, status, other, server)

    @classmethod
    def from_rows(cls, blocks: list[Rows]) -> Columns:
        """One Columns of many decoders' `Rows` (a commit group): the numpy work is paid once, not per message."""
        n = sum(len(b.tags) for b in blocks)
        index: dict[str, int] = {}
        setdefault = index.setdefault
        chain = itertools.chain.from_iterable
        tag_idx = np.fromiter((setdefault(t, len(index)) for t in chain(b.tags for b in blocks)), np.int32, n)
        time_us = np.fromiter(chain(b.times for b in blocks), np.int64, n)
        value, other = _value_column(list(chain(b.values for b in blocks)))
        recv_us = np.repeat(np.array([b.recv_us for b in blocks], np.int64), [len(b.tags) for b in blocks])
        flags = np.fromiter(chain(b.flags for b in blocks), np.int32, n)
        quality = np.zeros(n, np.int16)
        status = np.zeros(n, np.int64)
        offset, bad = 0, []
        for b in blocks:
            if b.bad:
                bad += [offset + i for i in b.bad]
            for i, (q, code) in b.source.items():
                quality[offset + i], status[offset + i] = q, code
            offset += len(b.tags)
        if bad:
            quality[bad] = int(Quality.BAD)
        return cls(list(index), tag_idx, time_us, value, recv_us, quality, flags, status, other)

    @classmethod
    def concat(cls, parts: list[Columns]) -> Columns:
        """One Columns of several (tag names merged; side tables re-indexed)."""
        if len(parts) == 1:
            return parts[0]
        index: dict[str, int] = {}
        idx, other, server, offset = [], {}, {}, 0
        for p in parts:
            remap = np.array([index.setdefault(t, len(index)) for t in p.tags], dtype=np.int32)
            idx.append(remap[p.tag_idx] if p.tags else p.tag_idx)
            other.update({offset + i: v for i, v in p.other.items()})
            server.update({offset + i: v for i, v in p.server_us.items()})
            offset += len(p)
        cat = np.concatenate
        return cls(list(index), cat(idx), cat([p.time_us for p in parts]), cat([p.value for p in parts]),
                   cat([p.recv_us for p in parts]), cat([p.quality for p in parts]), cat([p.flags for p in parts]),
                   cat([p.status for p in parts]), other, server)

    def take(self, which) -> Columns:
        """The rows ``which`` (row numbers, in that order) as a Columns of their own, naming only their tags."""
        rows = np.asarray(which, dtype=np.int64)
        used, idx = np.unique(self.tag_idx[rows], return_inverse=True)
        pos = {int(r): k for k, r in enumerate(rows.tolist())}
        return Columns([self.tags[i] for i in used.tolist()], idx.astype(np.int32), self.time_us[rows],
                       self.value[rows], self.recv_us[rows], self.quality[rows], self.flags[rows], self.status[rows],
                       {pos[i]: v for i, v in self.other.items() if i in pos},
                       {pos[i]: v for i, v in self.server_us.items() if i in pos})

    # -- spool payload -----------------------------------------------------------------------
    def to_payload(self) -> list:
        return [self.tags, self.tag_idx.tobytes(), self.time_us.tobytes(), self.value.tobytes(),
                self.recv_us.tobytes(), self.quality.tobytes(), self.flags.tobytes(), self.status.tobytes(),
                list(self.other.items()), list(self.server_us.items())]

    @classmethod
    def from_payload(cls, p) -> Columns:
        tags, ti, t, v, rt, q, f, s, other, server = p
        return cls(list(tags), np.frombuffer(ti, np.int32), np.frombuffer(t, np.int64), np.frombuffer(v, np.float64),
                   np.frombuffer(rt, np.int64), np.frombuffer(q, np.int16), np.frombuffer(f, np.int32),
                   np.frombuffer(s, np.int64), dict(other), dict(server))

    # -- reading back (tools and tests; the sink works on the columns) ----------------------------
    def value_at(self, i: int):
        return self.other[i] if i in self.other else float(self.value[i])

    def rows(self, which=None) -> list[tuple]:
        """``(tag, time_us, value, receive_us, quality, flags, status, server_us)`` per reading (``which``: these
        row numbers only, in that order)."""
        tags = self.tags
        return [(tags[self.tag_idx[i]], int(self.time_us[i]), self.value_at(i), int(self.recv_us[i]),
                 int(self.quality[i]), int(self.flags[i]), int(self.status[i]), self.server_us.get(i))
                for i in (range(len(self)) if which is None else (int(i) for i in which))]

    def readings(self, which=None) -> list[Reading]:
        """The readings as `Reading` objects (``which``: these row numbers only)."""
        def dt(us):
            return None if us is None else from_us(us)

        return [Reading(tag=t, time=dt(ts), value=v, receive_time=dt(rt), quality=Quality(q), flags=f, status=s,
                        server_time=dt(st)) for t, ts, v, rt, q, f, s, st in self.rows(which)]


class Rows:
    """A decoder's output for one message, before it becomes columns: parallel lists and one receive time.

    Appending to lists is all a decoder does per sample; the ingest task turns a whole commit group of
    these into one `Columns` (`Columns.from_rows`), so numpy's per-call cost is paid once per group.
    ``bad`` holds the rows of bad quality (null values); ``source`` the rows whose device stated their quality, as
    row -> (quality, status code) (JSON's ``json.quality``); ``errors`` what the decoder could not read of the message
    (one line per malformed sample or value) while it kept the rest.
    """

    __slots__ = ("bad", "errors", "flags", "recv_us", "source", "tags", "times", "values")

    def __init__(self, recv_us: int) -> None:
        self.recv_us = recv_us
        self.tags: list[str] = []
        self.times: list[int] = []
        self.values: list = []
        self.flags: list[int] = []
        self.bad: list[int] = []
        self.source: dict[int, tuple[int, int]] = {}
        self.errors: list[str] | tuple = ()

    def __len__(self) -> int:
        return len(self.tags)

    def __iter__(self):
        """The rows as `Reading` objects (tools and tests)."""
        return iter(Columns.from_rows([self]))
