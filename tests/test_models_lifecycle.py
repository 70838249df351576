"""Model lifecycle at its edges: the registry's database hung or locked while a server asks for its champion,
a champion promoted between a consumer's check and its swap, rollback without a previous champion, few
calibration scores, drift of constant and missing signals."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest
from models_support import FEATURES, regression_table, spec

from edge.db.migrate import migrate
from models import registry as registry_module
from models.registry import Registry
from models.runtime import ModelServer
from models.train import train


@pytest.fixture(scope="module")
def trained():
    table = regression_table(1200)
    return {"a": train(spec(params={"max_iter": 30}), table), "b": train(spec(params={"max_iter": 120}), table)}


def _db_registry(dsn: str, tmp_path) -> Registry:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    return Registry(tmp_path / "models", dsn)


def _timed(fn, limit: float) -> tuple[float, BaseException | None, bool]:
    """Run ``fn`` in a thread; (seconds taken, what it raised, whether it was still running after ``limit``)."""
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # handed to the test
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    return time.monotonic() - t0, box.get("exc"), th.is_alive()


def test_a_locked_registry_table_does_not_stall_a_refresh(pg_dsn, tmp_path, trained, monkeypatch):
    """A restore or a migration holds ``model_registry`` locked (ACCESS EXCLUSIVE) while the gateway asks for the
    champion between two groups of readings, and waits for the answer. The read waited for the lock as long as it
    was held (the test's 20 s, then the lock went), stalling the gateway's analysis; now it fails after
    ``REGISTRY_DB_TIMEOUT_S`` and the served version goes on."""
    monkeypatch.setattr(registry_module, "REGISTRY_DB_TIMEOUT_S", 2, raising=False)
    reg = _db_registry(pg_dsn, tmp_path)
    v = reg.register(trained["a"]).version
    reg.promote("syn", v)
    srv = ModelServer(reg, "syn")
    X = regression_table(5, seed=3).matrix(FEATURES)
    before = srv.predict(X)
    locker = psycopg.connect(pg_dsn)
    try:
        locker.execute("LOCK TABLE model_registry IN ACCESS EXCLUSIVE MODE")
        took, exc, hung = _timed(srv.refresh, 20)
        locker.rollback()
    finally:
        locker.close()
    assert not hung, "the champion read waited for the lock for 20 s"
    assert isinstance(exc, psycopg.OperationalError), exc  # lock_timeout: an error the caller logs
    assert took < 8, took
    assert srv.version == v and np.array_equal(srv.predict(X), before)
    assert srv.refresh() is False  # the lock gone, the same champion: nothing to swap


def test_a_registry_database_that_stops_answering_does_not_stall_a_refresh(own_pg_server, tmp_path, trained,
                                                                            monkeypatch):
    """The database host stops answering (SIGSTOP: a hung server or a cut network path): TCP connects, nothing
    replies. Each champion read waited for ever (libpq has no connect timeout by default); now it fails after
    ``REGISTRY_DB_TIMEOUT_S`` and the served version goes on."""
    monkeypatch.setattr(registry_module, "REGISTRY_DB_TIMEOUT_S", 2, raising=False)
    reg = _db_registry(own_pg_server.create_database(), tmp_path)
    v = reg.register(trained["a"]).version
    reg.promote("syn", v)
    srv = ModelServer(reg, "syn")
    os.kill(own_pg_server.proc.pid, signal.SIGSTOP)
    try:
        took, exc, hung = _timed(srv.refresh, 20)
    finally:
        os.kill(own_pg_server.proc.pid, signal.SIGCONT)
    assert not hung, "the champion read waited for 20 s for a database that does not answer"
    assert isinstance(exc, psycopg.OperationalError), exc
    assert took < 8, took
    assert srv.version == v and srv.predict(regression_table(3, seed=4).matrix(FEATURES)).shape == (3,)
