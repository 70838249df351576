"""PostgreSQL binary COPY encoding of spool rows, without I/O (so it is testable on its own).

Writing the COPY stream ourselves with precompiled `struct` formats is several times
faster than adapting every value through the driver, and the readings path is the
hottest loop of the gateway. Layout: the readings table columns
(time, tag_id, value, value_text, quality, flags, status, receive_time, server_time).
"""

from __future__ import annotations

import math
import struct

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
PG_EPOCH_US = 946_684_800_000_000

COLUMNS = ("time", "tag_id", "value", "value_text", "quality", "flags", "status", "receive_time",
           "server_time")

_NFIELDS = struct.pack("!h", len(COLUMNS))
_TS = struct.Struct("!iq")
_INT4 = struct.Struct("!ii")
_FLOAT8 = struct.Struct("!id")
_INT2 = struct.Struct("!ih")
_INT8 = struct.Struct("!iq")
_NULL = struct.pack("!i", -1)
# Fast path: numeric value, no text, no server time.
_ROW_NUM = struct.Struct("!h iq ii id i ih ii iq iq i")
_ROW_NULLVAL = struct.Struct("!h iq ii i i ih ii iq iq i")


def _value_columns(v) -> tuple[bytes, bytes]:
    if v is None:
        return _NULL, _NULL
    if isinstance(v, bool):
        return _FLOAT8.pack(8, 1.0 if v else 0.0), _NULL
    if isinstance(v, int) and abs(v) > 2**53:
        # Not exact as float8: keep the approximate number for queries and the exact digits as text.
        t = str(v).encode()
        try:
            return _FLOAT8.pack(8, float(v)), struct.pack("!i", len(t)) + t
        except OverflowError:
            return _NULL, struct.pack("!i", len(t)) + t
    if isinstance(v, int | float):
        try:
            return _FLOAT8.pack(8, float(v)), _NULL
        except OverflowError:  # an int beyond float range: keep it exactly as text
            t = str(v).encode()
            return _NULL, struct.pack("!i", len(t)) + t
    t = str(v).encode()
    return _NULL, struct.pack("!i", len(t)) + t


def encode_rows(rows, tag_ids: dict[str, int]) -> bytes:
    """Encode spool rows ``(tag, time_us, value, receive_us, quality, flags, status, server_us)``.

    ``tag_ids`` must hold every tag in ``rows``. Returns a complete COPY BINARY stream.
    """
    parts = [HEADER]
    append = parts.append
    row_num = _ROW_NUM.pack
    row_null = _ROW_NULLVAL.pack
    off = PG_EPOCH_US
    for tag, ts, v, rt, q, flags, status, st in rows:
        tid = tag_ids[tag]
        if st is None and v.__class__ is float:
            append(row_num(9, 8, ts - off, 4, tid, 8, v, -1, 2, q, 4, flags, 8, status, 8, rt - off, -1))
        elif st is None and v is None:
            append(row_null(9, 8, ts - off, 4, tid, -1, -1, 2, q, 4, flags, 8, status, 8, rt - off, -1))
        else:
            val, text = _value_columns(v)
            append(_NFIELDS + _TS.pack(8, ts - off) + _INT4.pack(4, tid) + val + text + _INT2.pack(2, q)
                   + _INT4.pack(4, flags) + _INT8.pack(8, status) + _TS.pack(8, rt - off)
                   + (_NULL if st is None else _TS.pack(8, st - off)))
    append(TRAILER)
    return b"".join(parts)


def is_finite_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# One COPY row whose value is a float8 and whose server time is NULL, as a numpy record: the
# whole fast part of a batch becomes one `astype` + `tobytes` (field lengths are constants).
_FAST_ROW = np.dtype([
    ("nf", ">i2"), ("l_time", ">i4"), ("time", ">i8"), ("l_tag", ">i4"), ("tag", ">i4"), ("l_val", ">i4"),
    ("value", ">f8"), ("l_text", ">i4"), ("l_q", ">i4"), ("q", ">i2"), ("l_flags", ">i4"), ("flags", ">i4"),
    ("l_status", ">i4"), ("status", ">i8"), ("l_recv", ">i4"), ("recv", ">i8"), ("l_server", ">i4")])
_FAST_CONST = {"nf": 9, "l_time": 8, "l_tag": 4, "l_val": 8, "l_text": -1, "l_q": 2, "l_flags": 4, "l_status": 8,
               "l_recv": 8, "l_server": -1}


def encode_columns(cols, tag_ids: np.ndarray) -> bytes:
    """COPY BINARY stream of `edge.columns.Columns`; ``tag_ids[i]`` is the database id of ``cols.tags[i]``.

    Rows go in (tag id, time) order (the numeric rows, then the others): writers copying side by side take the
    key's locks in one order. In arrival order, two groups holding the same readings in other orders (a redundant
    pair's failover, a backfill over live data) deadlocked, and the forwarder took the failed group for an outage."""
    n = len(cols)
    ids = tag_ids[cols.tag_idx] if n else np.empty(0, np.int32)
    slow = sorted(set(cols.other) | set(cols.server_us))
    fast = np.ones(n, dtype=bool)
    if slow:
        fast[slow] = False
    sel = np.flatnonzero(fast)
    sel = sel[np.lexsort((cols.time_us[sel], ids[sel]))]
    rec = np.empty(sel.size, dtype=_FAST_ROW)
    for k, v in _FAST_CONST.items():
        rec[k] = v
    rec["time"] = cols.time_us[sel] - PG_EPOCH_US
    rec["tag"] = ids[sel]
    rec["value"] = cols.value[sel]
    rec["q"] = cols.quality[sel]
    rec["flags"] = cols.flags[sel]
    rec["status"] = cols.status[sel]
    rec["recv"] = cols.recv_us[sel] - PG_EPOCH_US
    parts = [HEADER, rec.tobytes()]
    off = PG_EPOCH_US
    rows = np.asarray(slow, dtype=np.int64)
    for i in rows[np.lexsort((cols.time_us[rows], ids[rows]))].tolist():
        v = cols.other[i] if i in cols.other else float(cols.value[i])
        st = cols.server_us.get(i)
        val, text = _value_columns(v)
        parts.append(_NFIELDS + _TS.pack(8, int(cols.time_us[i]) - off) + _INT4.pack(4, int(ids[i])) + val + text
                     + _INT2.pack(2, int(cols.quality[i])) + _INT4.pack(4, int(cols.flags[i]))
                     + _INT8.pack(8, int(cols.status[i])) + _TS.pack(8, int(cols.recv_us[i]) - off)
                     + (_NULL if st is None else _TS.pack(8, st - off)))
    parts.append(TRAILER)
    return b"".join(parts)
