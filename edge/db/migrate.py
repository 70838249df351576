"""Schema migrations applied by the program itself (``valvoja db migrate`` and at start-up).

Migrations are Python modules in ``edge/db/migrations`` named ``mNNNN_what.py`` with
``def up(cur, features) -> None``. Each runs in its own transaction and is recorded
in ``valvoja_migrations``; an advisory lock keeps two gateways from migrating at once.
A database that holds migrations this program does not ship (a newer version migrated it) is refused
(`SchemaMismatch`) rather than written with a schema the program does not know; so is one with migrations
still pending when the program is told not to migrate (`check_schema`).
Number ranges keep the owners apart: 0001-0099 edge core, 0100-0199 models,
0200-0299 maintenance, 0300-0399 emissions, 0400-0499 console.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass

import psycopg

from edge.db import migrations as _migrations_pkg
from edge.db.features import Features, detect, ensure_extension

log = logging.getLogger(__name__)

_LOCK_KEY = 0x56414C56  # "VALV"
_NAME = re.compile(r"^m(\d{4})_(\w+)$")


class SchemaMismatch(psycopg.Error):
    """The database's schema is not the one this program was built for (newer, or migrations pending).

    A ``psycopg.Error`` on purpose: the forwarder treats it as a database it cannot write to (readings stay in
    the spool, ``db_down`` names the reason, it retries with back-off) instead of as a crash."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    module: str


def available() -> list[Migration]:
    """All migrations shipped with the program, in order."""
    found = []
    for info in pkgutil.iter_modules(_migrations_pkg.__path__):
        m = _NAME.match(info.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), f"{_migrations_pkg.__name__}.{info.name}"))
    found.sort(key=lambda x: x.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def _unknown(cur: psycopg.Cursor, shipped: list[Migration]) -> list[str]:
    """Migrations recorded in the database that this program does not ship, as ``NNNN_name``."""
    known = {m.version for m in shipped}
    cur.execute("SELECT version, name FROM valvoja_migrations ORDER BY version")
    return [f"{v:04d}_{n}" for v, n in cur.fetchall() if v not in known]


def _newer_message(unknown: list[str]) -> str:
    return (f"the database schema is newer than this program: it holds migration(s) {', '.join(unknown)} that "
            "this version does not know (a newer Valvoja migrated it); refusing to use it. Upgrade this gateway "
            "(or console) to the version that migrated it, or restore the backup taken before that upgrade")


def check_schema(conn: psycopg.Connection) -> None:
    """Raise `SchemaMismatch` unless the database holds exactly the migrations this program ships.

    For a program that does not migrate (``database.migrate_on_start = false``, writer connections): a schema
    behind it lacks tables or columns its writes need (they would fail, batch after batch), one ahead of it may
    have changed what its writes mean."""
    shipped = available()
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('valvoja_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            raise SchemaMismatch("the database has no Valvoja schema yet: run `valvoja db migrate --config "
                                 "SITE.toml` (or set database.migrate_on_start = true)")
        unknown = _unknown(cur, shipped)
        if unknown:
            raise SchemaMismatch(_newer_message(unknown))
        cur.execute("SELECT version FROM valvoja_migrations")
        done = {v for (v,) in cur.fetchall()}
    pending = [f"{m.version:04d}_{m.name}" for m in shipped if m.version not in done]
    if pending:
        raise SchemaMismatch(f"the database schema is behind this program: migration(s) {', '.join(pending)} "
                             "not applied; run `valvoja db migrate --config SITE.toml` (or set "
                             "database.migrate_on_start = true)")


def migrate(conn: psycopg.Connection, *, target: int | None = None) -> tuple[Features, list[Migration]]:
    """Apply every pending migration up to ``target``; returns the features and what was applied.

    Raises `SchemaMismatch`, applying nothing, where the database holds migrations this program does not ship."""
    reason = ensure_extension(conn)
    if reason:
        log.warning("database: %s; continuing without TimescaleDB", reason)
    features = detect(conn)
    applied: list[Migration] = []
    shipped = available()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS valvoja_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), edition text NOT NULL)"
        )
        # An older program on a newer schema: it used to go on as if up to date and write with what it knew.
        unknown = _unknown(cur, shipped)
        if unknown:
            raise SchemaMismatch(_newer_message(unknown))
    for mig in shipped:
        if target is not None and mig.version > target:
            break
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute("SELECT 1 FROM valvoja_migrations WHERE version = %s", (mig.version,))
            if cur.fetchone():
                continue
            module = importlib.import_module(mig.module)
            module.up(cur, features)
            cur.execute(
                "INSERT INTO valvoja_migrations (version, name, edition) VALUES (%s, %s, %s)",
                (mig.version, mig.name, features.edition),
            )
            applied.append(mig)
            log.info("database: applied migration %04d_%s (%s)", mig.version, mig.name, features.edition)
    return features, applied
