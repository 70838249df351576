"""Outages an unattended gateway meets, with `valvoja run` as a real process against the fixture servers: a database
that takes connections but refuses writes, a state folder whose disk fills up, a spool that nothing can be written to.
Each must be logged once, back off, and end by itself when the cause goes away."""

from __future__ import annotations

import re
import time

import psycopg
from gateway_proc import GatewayProcess
from ops_support import Publisher, new_run, site_config, stored, wait_for
from psycopg.conninfo import conninfo_to_dict


def _events(log: str, event: str) -> int:
    return len(re.findall(rf"\bevent={event}\b", log))


def test_a_database_that_connects_but_refuses_writes_is_one_outage_with_back_off(tmp_path, pg_dsn, mosquitto):
    """Every reconnect reset the back-off and ended the outage, so a database that accepts connections but refuses
    every write (here: a lock held on `readings` with the role's lock_timeout; also a statement_timeout or a read-only
    failover) got a reconnect with a full migration check every ~0.4 s and two log lines each time (db_up, db_down),
    plus asyncio "Task was destroyed but it is pending!" errors of the forwarder's abandoned read-ahead."""
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run)).start()
    pub = Publisher(mosquitto.port, run)
    locker = None
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(10)
        wait_for(lambda: stored(pg_dsn) == 10, what="first readings stored")
        before = gw.log.read_text()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {conninfo_to_dict(pg_dsn)['dbname']} SET lock_timeout = '300ms'")
            locker = psycopg.connect(pg_dsn)
            locker.execute("SET lock_timeout = 0")
            locker.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            # New sessions for the gateway: they get the lock_timeout (as after a database restart).
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name LIKE 'valvoja-%'")
        pub.publish(10)
        time.sleep(8)
        during = gw.log.read_text()[len(before):]
        errors = sum(float(line.rsplit(" ", 1)[1]) for line in gw.metrics().splitlines()
                     if line.startswith("valvoja_db_errors_total{"))
        locker.rollback()
        wait_for(lambda: stored(pg_dsn) == 20, what="readings stored once the lock is gone")
        after = gw.log.read_text()[len(before):]
    finally:
        if locker is not None:
            locker.close()
        pub.close()
        gw.terminate()
        gw.kill()
    assert _events(during, "db_down") == 1, during[-3000:]
    assert _events(during, "db_up") == 0, during[-3000:]
    assert _events(after, "db_up") == 1 and "reachable again" in after, after[-3000:]
    # Back-off from 0.5 s doubling (with jitter, at most 30 s): at most ~6 attempts in 8 s; it was ~20.
    assert errors <= 8, f"{errors} failed writes in 8 s:\n{during[-3000:]}"
    assert "Task was destroyed but it is pending" not in after, after[-3000:]
