"""Shared fixtures: real PostgreSQL (+ TimescaleDB) and mosquitto servers started by the test suite.

- ``pg_server`` (session): one PostgreSQL for the run (fsync off), TimescaleDB preloaded.
- ``pg_admin_dsn`` (session): DSN of that server's ``postgres`` database, for module-scoped fixtures that
  create databases of their own.
- ``pg_dsn``: a fresh database with the timescaledb extension, dropped after the test.
- ``plain_pg_dsn``: a fresh database on ``plain_pg_server``, a second shared server on which TimescaleDB is
  not available at all (plain PostgreSQL support).
- ``own_pg_server``: a server of the test's own (durable settings) that it may stop, kill and restart.
- ``mosquitto`` (session) / ``own_mosquitto``: brokers with plain, TLS (``.ca_path``) and password listeners.

The servers and their temp dirs are removed at the end, also when a test fails. See tests/servers.py.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Iterator

import pytest
from psycopg.conninfo import conninfo_to_dict
from serverproc import ServerProcess, sweep_stale
from servers import MosquittoServer, PostgresServer, mosquitto_bin, pg_bin_dir

REQUIRE = os.environ.get("VALVOJA_TEST_REQUIRE_SERVERS") == "1"
SHUFFLE = os.environ.get("VALVOJA_TEST_SHUFFLE", "")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clean up after killed earlier runs, and make SIGTERM (``timeout``, CI cancel) stop this run like Ctrl-C:
    pytest then tears the fixtures down, so no server temp dir is left behind."""
    sweep_stale()
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``VALVOJA_TEST_SHUFFLE=<seed>``: each module's tests in a seeded random order, and the modules too;
    ``=reverse``: each module's tests backwards. pytest-xdist hands tests to workers in no fixed order, so a test
    that only passes after (or without) another one fails on CI some day: this finds it first. A module's tests
    stay together, so its module-scoped fixtures still start once. Every xdist worker collects the same order."""
    if not SHUFFLE:
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    if SHUFFLE == "reverse":
        for g in groups:
            g.reverse()
    else:
        rng = random.Random(SHUFFLE)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
    items[:] = [item for g in groups for item in g]


def pytest_report_header(config: pytest.Config) -> str | None:
    return f"VALVOJA_TEST_SHUFFLE={SHUFFLE}: each module's tests in that order" if SHUFFLE else None


def _unavailable(reason: str) -> None:
    """Skip with the reason, or fail where the servers must exist (scripts/test.sh, CI)."""
    reason += " (scripts/setup.sh installs it)"
    if REQUIRE:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _new_postgres(**kw) -> PostgresServer:
    if pg_bin_dir() is None:
        _unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return PostgresServer(**kw)


def _new_mosquitto(**kw) -> MosquittoServer:
    if mosquitto_bin() is None:
        _unavailable("mosquitto not installed")
    return MosquittoServer(**kw)


def _serve(server: ServerProcess) -> Iterator:
    """Start ``server`` for a fixture and close it (stop + remove its temp dir) afterwards, even on failure."""
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The run's shared PostgreSQL. Tests must not stop it (use ``own_pg_server`` for that)."""
    yield from _serve(_new_postgres(fsync=False))


@pytest.fixture(scope="session")
def plain_pg_server() -> Iterator[PostgresServer]:
    """A shared plain PostgreSQL: same version, but TimescaleDB is neither loaded nor available as an extension."""
    yield from _serve(_new_postgres(fsync=False, timescaledb=False))


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: PostgresServer) -> str:
    """Superuser DSN of the shared server's ``postgres`` database."""
    return pg_server.dsn()


def _fresh_database(server: PostgresServer, timescaledb: bool) -> Iterator[str]:
    if not server.running:  # a test killed the shared server: bring it back rather than fail every later test
        server.start()
    if timescaledb and not server.timescaledb:
        _unavailable("TimescaleDB is not installed for PostgreSQL")
    dsn = server.create_database(timescaledb=timescaledb)
    try:
        yield dsn
    finally:
        if server.running:  # else the database went with the server
            server.drop_database(conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database with the timescaledb extension created; dropped after the test."""
    yield from _fresh_database(pg_server, timescaledb=True)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator:
    """An autocommit connection to a fresh TimescaleDB database with the schema migrated (the emissions tests')."""
    import psycopg

    from edge.db.migrate import migrate

    with psycopg.connect(pg_dsn, autocommit=True) as c:
        migrate(c)
        yield c


@pytest.fixture
def plain_pg_dsn(plain_pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on a server without TimescaleDB (plain PostgreSQL); dropped after the test."""
    yield from _fresh_database(plain_pg_server, timescaledb=False)


@pytest.fixture
def own_pg_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL for this test alone (durable settings): stop, kill and restart it at will."""
    yield from _serve(_new_postgres(fsync=True))


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """The run's shared broker. Tests must not stop it (use ``own_mosquitto`` for that)."""
    yield from _serve(_new_mosquitto())


@pytest.fixture
def own_mosquitto() -> Iterator[MosquittoServer]:
    """A started broker for this test alone: stop, kill and restart it (same ports, same persistence)."""
    yield from _serve(_new_mosquitto())


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For a test that calls ``edge.logs.setup`` (as the gateway and the console configure their logging): the root
    logger's handlers and level and the levels of ``edge.logs.NOISY`` are put back afterwards. Left as setup made
    them, every later test on the worker ran with them: root at INFO into that test's stream, pytest's own log
    handlers gone, httpx's and asyncio's records below WARNING dropped."""
    from edge import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)  # setup routes Python's warnings into the log
    threading.excepthook = threading.__excepthook__  # and threads' unhandled exceptions
