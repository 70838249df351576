"""Database access for the console: an async connection pool, the server's features, and
which optional tables (owned by maintenance/, emissions/, models/) exist yet.

The console reads other packages' tables; a page whose table is missing answers 503 with a
problem document naming the table, instead of showing canned data.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from console.problems import Problem
from edge.db.features import Features, detect

log = logging.getLogger(__name__)


def wait_until_reachable(conninfo: str, *, max_delay_s: float = 30.0, log_every_s: float = 60.0) -> float:
    """Block until a connection to ``conninfo`` opens (and close it); the seconds waited.

    A console started before its database (a plant's power back: the console's host up first, or the database
    restarting) waited nowhere: it exited with a traceback for its supervisor to restart every 5 s. Now it waits,
    retrying after 1, 2, 4 ... up to ``max_delay_s`` s, logging a failure once when it first shows or changes and
    then once per ``log_every_s``; SIGTERM (the default action: nothing is open yet) and Ctrl-C still stop it.
    """
    from edge.gateway import describe_conninfo

    started = time.monotonic()
    delay, said, said_at = 1.0, "", 0.0
    while True:
        try:
            psycopg.connect(conninfo, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            why = " ".join(str(exc).split())
            now = time.monotonic()
            if why != said or now - said_at >= log_every_s:
                log.warning("console: database %s not reachable (%s); waiting for it, retrying every %.0f s at most",
                            describe_conninfo(conninfo), why, max_delay_s, extra={"event": "console_db_waiting"})
                said, said_at = why, now
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        waited = time.monotonic() - started
        if said:
            log.info("console: database %s reachable after %.0f s", describe_conninfo(conninfo), waited,
                     extra={"event": "console_db_reachable"})
        return waited


async def _utc_session(conn: psycopg.AsyncConnection) -> None:
    """Every pooled session in UTC: psycopg gives a timestamptz in the session's TimeZone, which is the database's
    default (initdb takes the host's zone; ``ALTER DATABASE ... SET TimeZone``, a role's setting or PGTZ change it),
    so the API's times came as ``-05:00`` from one database and ``+02:00`` from another, the same instant in a
    different text. Anything shown in the plant's zone names it (``console.time_zone``): the CSV export sets it for
    its own transaction, the day buckets take it as a parameter."""
    await conn.execute("SET TIME ZONE 'UTC'")


class Database:
    """One pool per console process; ``features`` detected at open."""

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 8):
        self.conninfo = conninfo
        self.pool = AsyncConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=False,
                                        kwargs={"row_factory": dict_row, "autocommit": True},
                                        configure=_utc_session, name="console")
        self.features: Features | None = None
        self._tables: dict[str, tuple[float, bool]] = {}
        self._columns: dict[str, tuple[float, set[str]]] = {}

    async def open(self, *, migrate: bool = True) -> None:
        """Apply migrations (when asked) with a short-lived sync connection, then open the pool."""
        from edge.db.migrate import migrate as run_migrations

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            if migrate:
                self.features, applied = run_migrations(conn)
                if applied:
                    log.info("console: applied %d migration(s)", len(applied))
            else:
                self.features = detect(conn)
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def conn(self):
        async with self.pool.connection() as conn:
            yield conn

    async def fetch(self, sql: str, params: Any = None) -> list[dict]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def fetchone(self, sql: str, params: Any = None) -> dict | None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def execute(self, sql: str, params: Any = None) -> int:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            return cur.rowcount

    async def has_table(self, name: str, *, ttl_s: float = 10.0) -> bool:
        """Whether a table or view exists; cached briefly because other packages migrate later."""
        now = time.monotonic()
        hit = self._tables.get(name)
        if hit and now - hit[0] < ttl_s:
            return hit[1]
        row = await self.fetchone("SELECT to_regclass(%s) IS NOT NULL AS ok", (name,))
        ok = bool(row and row["ok"])
        self._tables[name] = (now, ok)
        return ok

    async def columns(self, table: str, *, ttl_s: float = 30.0) -> set[str]:
        """Column names of ``table`` (empty when it does not exist)."""
        now = time.monotonic()
        hit = self._columns.get(table)
        if hit and now - hit[0] < ttl_s:
            return hit[1]
        rows = await self.fetch("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                                "AND attnum > 0 AND NOT attisdropped", (table,))
        cols = {r["attname"] for r in rows}
        self._columns[table] = (now, cols)
        return cols

    async def require(self, *tables: str, owner: str) -> None:
        """503 naming the missing table(s) and which package creates them."""
        missing = [t for t in tables if not await self.has_table(t)]
        if missing:
            raise Problem(503, f"table(s) {', '.join(missing)} do not exist yet in this database; they are created "
                               f"by the {owner} migrations (run `valvoja db migrate`)", missing=missing)
