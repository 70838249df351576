"""CSV downloads of the API's lists (a tag's readings, the alerts, an asset's predictions), for spreadsheets.

One export is one query in one read-only REPEATABLE READ transaction: a probe for the row after the cap, then a
server-side cursor read ``BATCH`` rows at a time, each batch written and sent before the next is read, so memory
stays bounded whatever the range and the file is one consistent snapshot (rows stored meanwhile are in neither
the probe nor the file). ``console.csv_max_rows`` caps the rows; the response says whether the file was cut
(``X-Valvoja-Truncated``, and in the file name, which is what a spreadsheet user sees) before its first byte.

The file: UTF-8 with a byte-order mark (Excel reads a CSV without one in the machine's ANSI code page: "°C",
"m³/h", "Pyhäjärvi" garbled), a header row, comma separators, '.' decimal points, CRLF line ends (RFC 4180). Times
are RFC 3339 in UTC; with ``console.time_zone`` each time column has a twin in plant time with its offset. Text
cells that come from devices and users are neutralised against formula injection (OWASP): one that begins with
``= + - @``, a tab or a carriage return gets a leading ``'``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import StreamingResponse

BATCH = 5000
BOM = "\ufeff"
MEDIA_TYPE = "text/csv; charset=utf-8"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# The OpenAPI description of a CSV route's 200 (``responses=``; the route's ``response_class`` is `CSVStream`).
RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/csv": {"schema": {"type": "string"}}},
    "description": "CSV (UTF-8 with a BOM, header row); `X-Valvoja-Truncated: true` when cut at `X-Valvoja-Row-Limit` "
                   "rows (the file name then ends in `_TRUNCATED-<n>-rows.csv`)",
    "headers": {"X-Valvoja-Truncated": {"schema": {"type": "string", "enum": ["true", "false"]}},
                "X-Valvoja-Row-Limit": {"schema": {"type": "integer"}}}}}


def cell_text(text: str) -> str:
    """A text cell as a spreadsheet may show it: one beginning like a formula gets a leading ``'``."""
    return "'" + text if text.startswith(FORMULA_START) else text


def rfc3339(t: datetime, zone: ZoneInfo | None = None) -> str:
    """``t`` in UTC with ``Z``, or in ``zone`` with its offset."""
    if zone is not None:
        return t.astimezone(zone).isoformat()
    return t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an export: its header, the row key it is read from and what it holds (``time``: a UTC
    column plus, with a plant time zone, ``<name>_local``; ``text``: neutralised; ``number``; ``int``)."""

    name: str
    key: str | None = None
    kind: str = "text"


def header(columns: Sequence[Column], zone: ZoneInfo | None) -> list[str]:
    """The header row: a time column is ``<name>`` (UTC) and, with a plant zone, ``<name>_local``."""
    out = []
    for c in columns:
        out.append(c.name)
        if c.kind == "time" and zone is not None:
            out.append(c.name + "_local")
    return out


def cells(row: dict, columns: Sequence[Column], zone: ZoneInfo | None) -> list[str]:
    """The cells of one row (None and NaN: empty, as the JSON API's null)."""
    out: list[str] = []
    for c in columns:
        v = row.get(c.key or c.name)
        if c.kind == "time":
            out.append(rfc3339(v) if v is not None else "")
            if zone is not None:
                out.append(rfc3339(v, zone) if v is not None else "")
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        elif c.kind == "number":
            out.append(repr(float(v)))  # shortest form that reads back as the same double
        elif c.kind == "int":
            out.append(str(int(v)))
        else:
            out.append(cell_text(str(v)))
    return out


def file_name_part(text: str) -> str:
    """``text`` fit for a file name: path separators, quotes, control and shell-awkward characters -> ``_``."""
    return re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|;,\s]+', "_", text).strip("._") or "export"


def stamp(t: datetime) -> str:
    """A time for a file name: ``20261207T120000Z`` (no ``:``, which Windows refuses)."""
    return t.strftime("%Y%m%dT%H%M%SZ")


def disposition(name: str) -> str:
    """``attachment`` with an ASCII name and the UTF-8 one (RFC 6266 / 8187) for names beyond ASCII."""
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


class CSVStream(StreamingResponse):
    """A streamed CSV whose database transaction and connection are given back when the response ends, however it
    ends: a client that leaves before the first byte never starts the body's generator, whose ``finally`` would
    then never run and keep the pool's connection for ever."""

    media_type = MEDIA_TYPE

    def __init__(self, content, status_code: int = 200, *, stack: AsyncExitStack, headers: dict[str, str]):
        super().__init__(content, status_code, headers=headers, media_type=MEDIA_TYPE)
        self._stack = stack

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]  # our own async generator
            await self._stack.aclose()


async def export(request: Request, sql: str, params: dict, columns: Sequence[Column], *, file_name: str,
                 prepare: Callable[[dict], dict] | None = None) -> CSVStream:
    """Stream the rows of ``sql`` (ordered, without LIMIT) as CSV named ``file_name`` (+ ``.csv``), at most
    ``console.csv_max_rows`` of them; ``prepare`` may add or change a row's values before it is written."""
    cfg = request.app.state.config.console
    cap = cfg.csv_max_rows
    zone = ZoneInfo(cfg.time_zone) if cfg.time_zone else None
    stack = AsyncExitStack()
    try:
        conn = await stack.enter_async_context(request.app.state.db.conn())
        await stack.enter_async_context(conn.transaction())
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        params = params | {"csv_cap": cap}
        # The row after the cap, in the same snapshot as the rows: the answer's headers are sent before them.
        probe = await conn.execute(f"SELECT 1 FROM ({sql}) q OFFSET %(csv_cap)s LIMIT 1", params)
        truncated = await probe.fetchone() is not None
        cur = conn.cursor(name="csv_export")
        await stack.enter_async_context(cur)
        await cur.execute(f"{sql} LIMIT %(csv_cap)s", params)
    except BaseException:
        await stack.aclose()
        raise

    async def body():
        out = io.StringIO()
        writer = csv.writer(out)  # excel dialect: comma, '"' quoting only where needed, CRLF
        out.write(BOM)
        writer.writerow(header(columns, zone))
        while True:
            rows = await cur.fetchmany(BATCH)
            writer.writerows(cells(prepare(r) if prepare else r, columns, zone) for r in rows)
            yield out.getvalue().encode("utf-8")
            if len(rows) < BATCH:
                return
            out.seek(0)
            out.truncate()

    name = file_name + (f"_TRUNCATED-{cap}-rows" if truncated else "") + ".csv"
    return CSVStream(body(), stack=stack, headers={
        "Content-Disposition": disposition(name), "X-Valvoja-Truncated": "true" if truncated else "false",
        "X-Valvoja-Row-Limit": str(cap)})
