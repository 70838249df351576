"""PostgreSQL binary COPY encoding of spool rows, without I/O (so it is testable on its own).

Writing the COPY stream ourselves with precompiled `struct` formats is several times
faster than adapting every value through the driver, and the readings path is the
hottest loop of the gateway. Layout: the readings table columns
(time, tag_id, value, value_text, quality, flags, status, receive_time, server_time).
"""

from __future__ import annotations

import math
import struct

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
