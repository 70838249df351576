"""Schema migrations applied by the program itself (``valvoja db migrate`` and at start-up).

Migrations are Python modules in ``edge/db/migrations`` named ``mNNNN_what.py`` with
``def up(cur, features) -> None``. Each runs in its own transaction and is recorded
in ``valvoja_migrations``; an advisory lock keeps two gateways from migrating at once.
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


def migrate(conn: psycopg.Connection, *, target: int | None = None) -> tuple[Features, list[Migration]]:
    """Apply every pending migration up to ``target``; returns the features and what was applied."""
    reason = ensure_extension(conn)
    if reason:
        log.warning("database: %s; continuing without TimescaleDB", reason)
    features = detect(conn)
    applied: list[Migration] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS valvoja_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), edition text NOT NULL)"
        )
    for mig in available():
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
