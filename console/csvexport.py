"""CSV downloads of the API's lists (a tag's readings, the alerts, an asset's predictions), for spreadsheets.

One export is one query in one read-only REPEATABLE READ transaction: a probe for the row after the cap, then a
server-side cursor read ``BATCH`` lines at a time, each batch sent before the next is read, so memory stays bounded
whatever the range and the file is one consistent snapshot (rows stored meanwhile are in neither the probe nor the
file). The database writes each line (`fields`): rows formatted in Python (csv module) came at 118,000 rows/s,
lines written by the database at 404,000 (bench/bench_console_csv.py). ``console.csv_max_rows`` caps the rows;
the response says whether the file was cut (``X-Valvoja-Truncated``, and in the file name, which is what a
spreadsheet user sees) before its first byte. At most ``console.csv_max_concurrent`` exports run at once (`Slots`):
each holds a pooled connection while it streams; one more is answered 503 at once.

The file: UTF-8 with a byte-order mark (Excel reads a CSV without one in the machine's ANSI code page: "°C",
"m³/h", "Pyhäjärvi" garbled), a header row, comma separators, '.' decimal points, LF line ends, fields quoted as
RFC 4180 says where they hold a comma, quote or line break. Times are RFC 3339 in UTC; with ``console.time_zone``
each time column has a twin in plant time with its offset. Text cells, which come from devices and users, are
neutralised against formula injection (OWASP): one that begins with ``= + - @`` (or their full-width forms
``＝ ＋ － ＠``), a tab or a carriage return gets a leading ``'``.
"""

from __future__ import annotations

import logging
import math
import re
import time
import unicodedata
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import StreamingResponse
from psycopg.rows import tuple_row

from console.problems import Problem
from edge.records import Flag

log = logging.getLogger(__name__)

BATCH = 5000
BUSY_RETRY_S = 10  # Retry-After of a download refused for want of a slot: a 1,000,000-row file takes ~3 s on a LAN
BOM = "\ufeff"
MEDIA_TYPE = "text/csv; charset=utf-8"
# The OpenAPI description of a CSV route's 200 (``responses=``; the route's ``response_class`` is `CSVStream`).
RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/csv": {"schema": {"type": "string"}}},
    "description": "CSV (UTF-8 with a BOM, header row); `X-Valvoja-Truncated: true` when cut at `X-Valvoja-Row-Limit` "
                   "rows (the file name then ends in `_TRUNCATED-<n>-rows.csv`)",
    "headers": {"X-Valvoja-Truncated": {"schema": {"type": "string", "enum": ["true", "false"]}},
                "X-Valvoja-Row-Limit": {"schema": {"type": "integer"}}}},
    503: {"content": {"application/problem+json": {"schema": {"type": "object"}}},
          "description": "`console.csv_max_concurrent` downloads are running (`/problems/csv-busy`), or the database "
                         "is away (`/problems/database-unavailable`): try again after `Retry-After` seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an export: its header, the query's column it is read from (``key``, default the name) and
    what it holds (``time``: a UTC column plus, with a plant time zone, ``<name>_local``; ``text``: neutralised;
    ``number``; ``int``; ``flags``: a reading's `edge.records.Flag` bits by name, ``OUT_OF_RANGE|FROZEN``;
    ``status``: a 32-bit status code in hex as OPC UA tools show it, ``0x80350000``)."""

    name: str
    key: str | None = None
    kind: str = "text"


def header(columns: Sequence[Column], zone: str | None) -> list[str]:
    """The header row: a time column is ``<name>`` (UTC) and, with a plant zone, ``<name>_local``."""
    out = []
    for c in columns:
        out.append(c.name)
        if c.kind == "time" and zone:
            out.append(c.name + "_local")
    return out


def _wall(x: str) -> str:
    """SQL: the timestamp ``x`` as ``YYYY-MM-DDTHH:MM:SS`` and its fraction of a second without trailing zeros."""
    return f"rtrim(rtrim(to_char({x}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '0'), '.')"


# SQL: a text cell a spreadsheet would take for a formula gets a leading quote; then RFC 4180 quoting.
# The full-width forms too: a Japanese- or Chinese-locale spreadsheet may take a cell typed as ＝1+2 for a formula.
_SAFE = ("(CASE WHEN left({t}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r', '＝', '＋', '－', '＠') "
         "THEN '''' || {t} ELSE {t} END)")
_QUOTED = "CASE WHEN {s} ~ '[\",\\r\\n]' THEN '\"' || replace({s}, '\"', '\"\"') || '\"' ELSE {s} END"


def fields(columns: Sequence[Column], zone: str | None, constants: Sequence[str] = ()) -> list[str]:
    """The SQL of each field of a line, from the row ``q`` of the export's query (or, for a key in ``constants``,
    the parameter ``const_<key>``): the field as written, '' for null."""
    out = []
    for c in columns:
        key = c.key or c.name
        x = f"%(const_{key})s::text" if key in constants else f'q."{key}"'
        if c.kind == "time":
            out.append(_wall(f"({x} AT TIME ZONE 'UTC')") + " || 'Z'")
            if zone:  # the transaction's TimeZone is the plant's (export)
                out.append(f"{_wall(x)} || to_char({x}, 'TZH:TZM')")
        elif c.kind == "number":
            out.append(f"nullif({x}::float8, 'NaN')::text")  # the shortest text that reads back as the same double
        elif c.kind == "int":
            out.append(f"{x}::text")
        elif c.kind == "flags":  # most readings have none: one comparison for them
            names = ", ".join(f"CASE WHEN {x} & {int(f)} <> 0 THEN '{f.name}' END" for f in Flag if f)
            out.append(f"CASE WHEN {x} = 0 THEN '' ELSE concat_ws('|', {names}) END")
        elif c.kind == "status":
            out.append(f"'0x' || lpad(upper(to_hex({x})), 8, '0')")
        else:
            out.append(_QUOTED.format(s=_SAFE.format(t=f"({x})::text")))
    return [f"coalesce({f}, '')" for f in out]  # concat_ws skips a null: it must still be a (empty) field


# What a file name never holds: path separators, quotes, characters Windows refuses, header separators (; ,) and
# spaces; look-alike slashes (U+2044 fraction, U+2215 division, U+29F8 big solidus: shown as "/" in a download bar).
_NAME_BAD = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|;,\s\u2044\u2215\u29f8\u29f9]')


def _name_char(ch: str) -> str:
    """``ch`` or ``_``: controls and invisible format characters (C1 controls, the bidirectional overrides that
    show "exe.csv" as "vsc.exe", zero-width ones), separators, and what folds (NFKC) into a refused character (the
    full-width slash) are ``_``."""
    if unicodedata.category(ch)[0] in "CZ" or _NAME_BAD.search(unicodedata.normalize("NFKC", ch)):
        return "_"
    return ch


def file_name_part(text: str, max_bytes: int = 120) -> str:
    """``text`` (a tag, asset or list of them, as a site named them) fit for a file name: each refused character
    (`_name_char`) and each run of them (with the dots around it: ``/../``) one ``_``, no leading or trailing dot or
    ``_``, at most ``max_bytes`` of UTF-8 cut at a character (a 255-byte file name must still hold the range, the
    resolution and the truncation mark)."""
    name = re.sub(r"[._]*_[._]*", "_", "".join(_name_char(ch) for ch in unicodedata.normalize("NFC", text)))
    while len(name.encode()) > max_bytes:
        name = name[:-1]
    return name.strip("._") or "export"


def stamp(t: datetime) -> str:
    """A time for a file name: ``20261207T120000Z`` (no ``:``, which Windows refuses)."""
    return t.strftime("%Y%m%dT%H%M%SZ")


def disposition(name: str) -> str:
    """``attachment`` with the name twice (RFC 6266): ``filename`` in plain ASCII for old clients (accents dropped,
    anything else ``_``) and ``filename*`` as UTF-8, percent-encoded (RFC 8187), which browsers prefer. Every byte
    beyond letters, digits and ``.-_`` is encoded or replaced, so no name can end the header value, add a parameter
    or a header (quotes, ``;``, CR/LF)."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", name) if not unicodedata.combining(ch))
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", plain)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


class CSVStream(StreamingResponse):
    """A streamed CSV whose database transaction and connection are given back when the response ends, however it
    ends: a client that leaves before the first byte never starts the body's generator, whose ``finally`` would
    then not run, and garbage collection is no promise of when."""

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


class Slots:
    """The CSV downloads this process runs at once, at most ``limit`` (``console.csv_max_concurrent``). Each holds a
    pooled database connection for as long as it streams; unbounded, a few large downloads took every connection
    and log-in and the board waited for one. Counted in ``running`` / ``refused``; a refusal is logged at most once a
    minute, with the number refused since the last report."""

    def __init__(self, limit: int, clock=time.monotonic) -> None:
        self.limit, self.clock = limit, clock
        self.running = self.refused = 0
        self._logged, self._quiet = -math.inf, 0

    def take(self, request: Request) -> None:
        """A slot for this download, or `Problem` 503 (``/problems/csv-busy``, ``Retry-After``) at once."""
        if self.running < self.limit:
            self.running += 1
            return
        self.refused += 1
        now = self.clock()
        if now - self._logged < 60:
            self._quiet += 1
        else:
            more = f" ({self._quiet} more since the last report)" if self._quiet else ""
            self._logged, self._quiet = now, 0
            log.warning("console: CSV download %s refused: %d running, the most at once "
                        "(console.csv_max_concurrent)%s", request.url.path, self.running, more,
                        extra={"event": "console_csv_busy", "limit": self.limit, "total": self.refused})
        raise Problem(503, f"{self.running} CSV downloads are running, the most this console runs at once "
                           f"(console.csv_max_concurrent); try again in a few seconds",
                      type_="/problems/csv-busy", headers={"Retry-After": str(BUSY_RETRY_S)}, limit=self.limit)

    def give(self) -> None:
        self.running -= 1


async def export(request: Request, sql: str, params: dict, columns: Sequence[Column], *, file_name: str,
                 constants: dict[str, Any] | None = None) -> CSVStream:
    """Stream the rows of ``sql`` (ordered, without LIMIT) as CSV named ``file_name`` (+ ``.csv``), at most
    ``console.csv_max_rows`` of them; ``constants``: columns whose value is the same on every row (a tag's name)."""
    cfg = request.app.state.config.console
    cap, zone, constants = cfg.csv_max_rows, cfg.time_zone, constants or {}
    params = params | {"csv_cap": cap} | {f"const_{k}": v for k, v in constants.items()}
    line = f"concat_ws(',', {', '.join(fields(columns, zone, list(constants)))})"
    slots: Slots = request.app.state.csv_slots
    slots.take(request)
    stack = AsyncExitStack()
    stack.callback(slots.give)  # last out: after the connection is back in the pool
    try:
        conn = await stack.enter_async_context(request.app.state.db.conn())
        await stack.enter_async_context(conn.transaction())
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if zone:
            await conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        # The row after the cap, in the same snapshot as the rows: the answer's headers are sent before them.
        probe = await conn.execute(f"SELECT 1 FROM ({sql}) q OFFSET %(csv_cap)s LIMIT 1", params)
        truncated = await probe.fetchone() is not None
        cur = conn.cursor(name="csv_export", row_factory=tuple_row)
        await stack.enter_async_context(cur)
        # The subquery's order is kept: a projection over its ordered, limited rows.
        await cur.execute(f"SELECT {line} FROM ({sql} LIMIT %(csv_cap)s) q", params)
    except BaseException:
        await stack.aclose()
        raise

    async def body():
        yield (BOM + ",".join(header(columns, zone)) + "\n").encode()
        while rows := await cur.fetchmany(BATCH):
            yield ("\n".join(r[0] for r in rows) + "\n").encode()

    name = file_name + (f"_TRUNCATED-{cap}-rows" if truncated else "") + ".csv"
    return CSVStream(body(), stack=stack, headers={
        "Content-Disposition": disposition(name), "X-Valvoja-Truncated": "true" if truncated else "false",
        "X-Valvoja-Row-Limit": str(cap)})
