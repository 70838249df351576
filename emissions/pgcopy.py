"""PostgreSQL binary COPY in numpy: fixed-width rows parsed and built without a Python object per row.

A binary COPY row is an int16 field count, then per field an int32 length and the value in network
byte order. When every row has the same field lengths (no NULLs, texts of one length) the stream is a
numpy structured array: parsing a year of primary values or writing half a million averages is then
one ``frombuffer`` / ``tobytes``. NULLs are avoided by construction (the reader's SQL never returns
them; the writer sends NaN and -1 and the INSERT turns them into NULL).
"""

from __future__ import annotations

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00" * 8
TRAILER = b"\xff\xff"
PG_EPOCH_S = 946_684_800

# numpy formats of the PostgreSQL types used here (network byte order).
PG = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float8": ">f8", "bool": "u1", "timestamptz": ">i8"}


def row_dtype(fields: list[tuple[str, str | None]]) -> np.dtype:
    """Structured dtype of a fixed-width row: ``fields`` are (name, numpy format) in column order;
    format None is a column that is NULL in every row (a length of -1 and no data)."""
    spec: list[tuple[str, str]] = [("_n", ">i2")]
    for name, fmt in fields:
        spec.append((f"_l_{name}", ">i4"))
        if fmt is not None:
            spec.append((name, fmt))
    return np.dtype(spec)


def parse(buf: bytes | bytearray, dtype: np.dtype) -> np.ndarray:
    """Rows of a binary COPY stream whose rows all have ``dtype``'s fixed layout."""
    if len(buf) < len(HEADER) + 2 or not bytes(buf[:len(SIGNATURE)]) == SIGNATURE:
        raise ValueError("not a binary COPY stream")
    ext = int.from_bytes(buf[15:19], "big")
    body = memoryview(buf)[len(HEADER) + ext: len(buf) - 2]
    if len(body) % dtype.itemsize:
        raise ValueError(f"COPY body of {len(body)} bytes is not whole rows of {dtype.itemsize}")
    return np.frombuffer(body, dtype=dtype)


def timestamps_s(pg_us: np.ndarray) -> np.ndarray:
    """PostgreSQL timestamptz microseconds (since 2000-01-01) to Unix seconds."""
    return pg_us // 1_000_000 + PG_EPOCH_S


def pg_us(unix_s: np.ndarray) -> np.ndarray:
    return (np.asarray(unix_s, dtype=np.int64) - PG_EPOCH_S) * 1_000_000


def build(n: int, columns: list[tuple[str, str | None, object]]) -> bytes:
    """Rows (without header/trailer) from ``columns`` = (name, numpy format, values or a scalar).

    Text columns use format ``S<len>`` with bytes values; format None sends NULL.
    """
    dtype = row_dtype([(name, fmt) for name, fmt, _ in columns])
    rows = np.zeros(n, dtype=dtype)
    rows["_n"] = len(columns)
    for name, fmt, values in columns:
        if fmt is None:
            rows[f"_l_{name}"] = -1
        else:
            rows[f"_l_{name}"] = np.dtype(fmt).itemsize
            rows[name] = values
    return rows.tobytes()
