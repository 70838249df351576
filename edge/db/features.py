"""What the database server offers, detected once at start-up (DESIGN.md §3).

Three levels, best first:
- ``community``: TimescaleDB with the Timescale License (compression, continuous
  aggregates, retention and refresh policies);
- ``apache``: TimescaleDB Apache-2 edition (hypertables, ``time_bucket``, ``drop_chunks``;
  no compression, no continuous aggregates, no policies);
- ``plain``: PostgreSQL without TimescaleDB (ordinary tables, ``date_bin``, DELETE for retention).

Every piece of SQL that depends on the level asks a `Features` instance, so the
whole program works on all three.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True, slots=True)
class Features:
    edition: str  # "community" | "apache" | "plain"
    timescaledb_version: str | None
    server_version: int

    @property
    def timescaledb(self) -> bool:
        return self.edition in ("community", "apache")

    @property
    def community(self) -> bool:
        return self.edition == "community"

    def bucket(self, width: str, column: str) -> str:
        """SQL for the start of the time bucket of ``width`` (e.g. '1 minute') holding ``column``."""
        if self.timescaledb:
            return f"time_bucket('{width}'::interval, {column})"
        return f"date_bin('{width}'::interval, {column}, timestamptz '2000-01-03 00:00:00+00')"

    @property
    def time_bucket_zone(self) -> bool:
        """Whether ``time_bucket`` takes a time zone (TimescaleDB 2.8 and later)."""
        nums = [int(n) for n in re.findall(r"\d+", self.timescaledb_version or "")[:2]]
        return self.timescaledb and tuple(nums) >= (2, 8)

    def local_bucket(self, width: str, column: str, zone: str) -> str:
        """SQL for the start of the bucket of ``width`` (whole days, e.g. '1 day') holding the timestamptz ``column``
        on the wall clock of ``zone`` (SQL text, e.g. a parameter): buckets begin at the zone's midnight, so the
        day of a DST change (23 or 25 hours) is one bucket; weeks begin on Monday (2000-01-03), as in `bucket`.
        Independent of the session's TimeZone. The same grid on every edition: TimescaleDB's ``time_bucket``
        with a zone buckets the local time and converts back, as the expression for the others does."""
        if self.time_bucket_zone:
            return f"time_bucket('{width}'::interval, {column}, {zone})"
        # Older TimescaleDB: time_bucket of a timestamp (origin Monday 2000-01-03); PostgreSQL 14+: date_bin.
        local = f"({column}) AT TIME ZONE {zone}"
        b = (f"time_bucket('{width}'::interval, {local})" if self.timescaledb else
             f"date_bin('{width}'::interval, {local}, timestamp '2000-01-03 00:00:00')")
        return f"({b} AT TIME ZONE {zone})"


def detect(conn: psycopg.Connection) -> Features:
    """Detect the edition of an open connection. Does not create the extension."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        server_version = cur.fetchone()[0]
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        row = cur.fetchone()
        if row is None:
            return Features("plain", None, server_version)
        cur.execute("SELECT current_setting('timescaledb.license', true)")
        license_ = (cur.fetchone()[0] or "apache").lower()
    edition = "community" if license_ == "timescale" else "apache"
    return Features(edition, row[0], server_version)


def ensure_extension(conn: psycopg.Connection) -> str | None:
    """Create the timescaledb extension where the server has it available.

    Returns None on success or when the server does not offer it, else the reason
    it could not be created (e.g. not preloaded, no privilege) for the log.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        if cur.fetchone() is None:
            return None
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        if cur.fetchone() is not None:
            return None
        # Creating it without the library preloaded is a FATAL error that drops the connection. Reading the setting
        # needs superuser or pg_read_all_settings, and so does creating the extension: a gateway's own role (the
        # recommended set-up) cannot do either, and crashed here at its first migration.
        cur.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') FROM pg_roles"
                    " WHERE rolname = current_user")
        if not cur.fetchone()[0]:
            return ("timescaledb is available but not created in this database, and this role is not a superuser: "
                    "the schema is created as plain PostgreSQL tables; for hypertables a superuser runs "
                    "CREATE EXTENSION timescaledb in it before the first start")
        cur.execute("SELECT current_setting('shared_preload_libraries')")
        if "timescaledb" not in (cur.fetchone()[0] or ""):
            return "timescaledb is installed but not in shared_preload_libraries"
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL client_min_messages = warning")
            cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        # Another session (a second gateway starting, `valvoja db migrate`) created it first: this CREATE waited for
        # that one's commit and failed on the duplicate. The database has it; saying "continuing without
        # TimescaleDB" there sent operators looking for a fault that was not there.
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            if cur.fetchone() is not None:
                return None
        return f"timescaledb is available but could not be created: {exc}".strip()
    return None


def make_hypertable(cur: psycopg.Cursor, features: Features, table: str, time_column: str = "time",
                    chunk_interval: str = "1 day") -> None:
    """Turn ``table`` into a hypertable where TimescaleDB is present; a no-op on plain PostgreSQL."""
    if not features.timescaledb:
        return
    cur.execute(
        f"SELECT create_hypertable('{table}', '{time_column}', "
        f"chunk_time_interval => interval '{chunk_interval}', if_not_exists => true, migrate_data => true)"
    )
