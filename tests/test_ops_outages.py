"""Outages an unattended gateway meets, with `valvoja run` as a real process against the fixture servers: a database
that takes connections but refuses writes, a state folder whose disk fills up, a spool that nothing can be written to.
Each must be logged once, back off, and end by itself when the cause goes away."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import orjson
import psycopg
import pytest
from cli_support import valvoja
from gateway_proc import GatewayProcess
from ops_support import Publisher, new_run, site_config, small_disk, stored, wait_for
from psycopg.conninfo import conninfo_to_dict


def _events(log: str, event: str) -> int:
    return len(re.findall(rf"\bevent={event}\b", log))


@contextlib.contextmanager
def _gateway_storing(tmp_path, dsn: str, mqtt_port: int):
    """`valvoja run` with its collector connected and 10 readings stored; yields it and its publisher."""
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(dsn, mqtt_port, run=run)).start()
    pub = Publisher(mqtt_port, run)
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(10)
        wait_for(lambda: stored(dsn) == 10, what="first readings stored")
        yield gw, pub
    finally:
        pub.close()
        gw.terminate()
        gw.kill()


def _lock_for_the_gateway(dsn: str, table: str) -> psycopg.Connection:
    """Hold an exclusive lock on ``table`` and give the gateway's sessions a lock_timeout (they are cut and
    reconnect, as after a database restart): its statements on ``table`` fail instead of waiting. Rollback to free.
    Only sessions in the test's own database are cut: the worker's server is shared, and "valvoja-rollups" does not
    name a gateway, so the application name alone would also cut any other gateway's sessions on that server."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {conninfo_to_dict(dsn)['dbname']} SET lock_timeout = '300ms'")
        locker = psycopg.connect(dsn)
        locker.execute("SET lock_timeout = 0")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND application_name LIKE 'valvoja-%'")
    return locker


def test_a_database_that_connects_but_refuses_writes_is_one_outage_with_back_off(tmp_path, pg_dsn, mosquitto):
    """Every reconnect reset the back-off and ended the outage, so a database that accepts connections but refuses
    every write (here: a lock held on `readings` with the role's lock_timeout; also a statement_timeout or a read-only
    failover) got a reconnect with a full migration check every ~0.4 s and two log lines each time (db_up, db_down),
    plus asyncio "Task was destroyed but it is pending!" errors of the forwarder's abandoned read-ahead."""
    with _gateway_storing(tmp_path, pg_dsn, mosquitto.port) as (gw, pub):
        before = gw.log.read_text()
        with contextlib.closing(_lock_for_the_gateway(pg_dsn, "readings")) as locker:
            pub.publish(10)
            time.sleep(8)
            during = gw.log.read_text()[len(before):]
            errors = sum(float(line.rsplit(" ", 1)[1]) for line in gw.metrics().splitlines()
                         if line.startswith("valvoja_db_errors_total{"))
            locker.rollback()
        # The outage's end is logged after the commit and the spool's delete: stored rows alone can be seen a moment
        # before it (a shuffled whole-suite run read the log in between and found no db_up).
        wait_for(lambda: stored(pg_dsn) == 20 and "event=db_up" in gw.log.read_text()[len(before):],
                 what="readings stored and the outage's end logged once the lock is gone")
        after = gw.log.read_text()[len(before):]
    assert _events(during, "db_down") == 1, during[-3000:]
    assert _events(during, "db_up") == 0, during[-3000:]
    assert _events(after, "db_up") == 1 and "reachable again" in after, after[-3000:]
    # Back-off from 0.5 s doubling (with jitter, at most 30 s): at most ~6 attempts in 8 s; it was ~20.
    assert errors <= 8, f"{errors} failed writes in 8 s:\n{during[-3000:]}"
    assert "Task was destroyed but it is pending" not in after, after[-3000:]


@pytest.mark.timeout(240)
def test_a_full_state_disk_refuses_new_readings_and_drains_when_the_database_returns(tmp_path, own_pg_server,
                                                                                     mosquitto):
    """The spool filled the disk of the state folder (the database away, its budget larger than the free space):
    after that even the forwarder's DELETE of what the database had committed failed (SQLite's write-ahead log could
    not grow), so the forwarder died and was restarted at every watchdog round, writing the same group again, for
    ever, and nothing was acknowledged upstream: a gateway that never recovers by itself. The spool now treats a disk
    within its reserve as full (reject_new: collectors wait, the broker keeps the messages) and drains once the
    database is back."""
    from edge import spool as spool_module

    reserve = getattr(spool_module, "DISK_RESERVE_BYTES", 0)
    state = small_disk(tmp_path / "state", size_mb=(reserve >> 20) + 16)
    with state as state_dir:
        run = new_run()
        dsn = own_pg_server.dsn("postgres")
        gw = GatewayProcess(tmp_path, site_config(dsn, mosquitto.port, run=run, state_dir=str(state_dir), stall_s=3))
        gw.start()
        pub = Publisher(mosquitto.port, run)
        try:
            wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
            # Something else on the volume leaves 1 MB beyond the spool's reserve.
            ballast = state_dir / "other-files"
            with open(ballast, "wb") as f:
                f.write(b"\0" * (shutil.disk_usage(state_dir).free - reserve - (1 << 20)))
            own_pg_server.stop()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # until the spool stops taking readings (full) or fails to
                pub.publish(500)  # how fast the files grow depends on the commit groups, hence on the load
                h = gw.health()
                if set(h["problems"]) - {"spool"} or h["queue_batches"] >= 200:  # "spool": full, below
                    break
                # Full only if it stays so: under load a smaller group fitted the last of the margin after a larger
                # one was refused, every reading was taken and the spool was no longer full 4 s later (CI, 2026-12-07).
                if h["spool"]["full"]:
                    time.sleep(1)
                    if gw.health()["spool"]["full"]:
                        break
            time.sleep(4)  # longer than stall_after_s
            full = gw.health()
            own_pg_server.start()
            wait_for(lambda: gw.health()["database"]["connected"], what="database connected again")
            pub.publish(100)  # taken again once the backlog is written
            wait_for(lambda: stored(dsn) == pub.sent, timeout_s=60,
                     what=f"all {pub.sent} readings stored after the database returned")
            assert gw.health()["spool"]["full"] is False
        finally:
            pub.close()
            gw.terminate()
            gw.kill()
        log = gw.log.read_text()
    # Full is not a stalled ingest (the process would exit), but it is a problem: /healthz fails while it lasts.
    assert full["spool"]["full"] is True and set(full["problems"]) == {"spool"}, full
    assert _events(log, "spool_full") >= 1 and _events(log, "spool_resumed") >= 1, log[-3000:]
    for bad in ("task_died", "spool_error", "ingest_stalled"):
        assert _events(log, bad) == 0, f"{bad}:\n{log[-3000:]}"


@contextlib.contextmanager
def _backlog_on_a_full_disk(tmp_path, pg_server, mqtt_port: int):
    """`valvoja run` on a small state disk with 300 readings spooled while the database was stopped, then that disk
    filled by other files (a log, a backup) and the database started again. Yields (gateway, dsn, the other file)."""
    with small_disk(tmp_path / "state", size_mb=64) as state_dir:
        run = new_run()
        dsn = pg_server.dsn("postgres")
        gw = GatewayProcess(tmp_path, site_config(dsn, mqtt_port, run=run, state_dir=str(state_dir)))
        gw.start()
        pub = Publisher(mqtt_port, run)
        try:
            wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
            pg_server.stop()
            pub.publish(300)
            wait_for(lambda: gw.health()["spool"]["readings"] == 300, what="300 readings spooled")
            ballast = state_dir / "other-files"
            with open(ballast, "wb") as f:
                f.write(b"\0" * shutil.disk_usage(state_dir).free)
            pg_server.start()
            yield gw, dsn, ballast
        finally:
            pub.close()
            gw.terminate()
            gw.kill()


@pytest.mark.timeout(240)
def test_a_disk_filled_by_other_files_holds_the_drain_quietly_until_space_returns(tmp_path, own_pg_server,
                                                                                mosquitto):
    """Other files fill the state folder's disk while readings wait for the database: the spool cannot delete what
    the database committed. The forwarder died on that sqlite3 error and the watchdog restarted it every round, each
    time a traceback, a database reconnect and the same group written again; now it says so once, keeps its
    connections, backs off, and drains by itself once there is room."""
    with _backlog_on_a_full_disk(tmp_path, own_pg_server, mosquitto.port) as (gw, dsn, ballast):
        mark = len(gw.log.read_text())
        time.sleep(8)
        during = gw.log.read_text()[mark:]
        ballast.unlink()
        wait_for(lambda: stored(dsn) == 300, timeout_s=60, what="the backlog stored once there is room")
        wait_for(lambda: gw.health()["spool"]["readings"] == 0, what="the backlog deleted from the spool")
        after = gw.log.read_text()[mark:]
    assert _events(during, "task_died") == 0, during[-3000:]
    assert _events(during, "spool_error") == 1 and "disk is full" in during, during[-3000:]
    assert _events(after, "spool_recovered") == 1, after[-3000:]


@pytest.mark.timeout(240)
def test_a_stop_on_a_full_disk_exits_0_and_the_next_start_drains(tmp_path, own_pg_server, mosquitto):
    """SIGTERM while the spool cannot delete (its disk full): the final flush raised the sqlite3 error out of the
    gateway's shutdown (event shutdown_error with a traceback, the spool and its thread left open) instead of
    stopping as for a database that is away (flush_incomplete: what is left stays in the spool for the next start)."""
    with _backlog_on_a_full_disk(tmp_path, own_pg_server, mosquitto.port) as (gw, dsn, ballast):
        wait_for(lambda: "event=spool_error" in gw.log.read_text(), what="the spool's delete failing")
        code = gw.terminate()
        stop_log = gw.log.read_text()
        ballast.unlink()
        gw.start()
        wait_for(lambda: stored(dsn) == 300 and gw.health()["spool"]["readings"] == 0, timeout_s=60,
                 what="the backlog stored and deleted by the next start")
    assert code == 0, stop_log[-3000:]
    assert _events(stop_log, "shutdown_error") == 0 and _events(stop_log, "flush_incomplete") == 1, stop_log[-3000:]


@pytest.mark.timeout(240)
def test_a_reload_and_a_stop_while_the_database_does_not_answer_keep_their_deadline(tmp_path, own_pg_server, mosquitto):
    """The database stops answering with its connections open (a hung server, a network cut) while the forwarder
    writes: cancelled, psycopg asked the server to cancel the query and waited up to 10 s for the answer. A SIGHUP
    reload then overran the old gateway's stop deadline and ended the process (reload_stop_timeout, exit 1, 10 s
    after the signal), and a SIGTERM exited 1 (stop_timeout) after 9.5 s. Now the reload applies in about a second
    and the stop exits 0 within service.stop_timeout_s; what the database did not take is written by the next
    start."""
    dsn = own_pg_server.create_database(timescaledb=own_pg_server.timescaledb)
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(dsn, mosquitto.port, run=run)).start()
    pub = Publisher(mosquitto.port, run)
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(50)
        wait_for(lambda: stored(dsn) == 50, what="first readings stored")
        with own_pg_server.frozen():
            pub.publish(50)
            wait_for(lambda: gw.health()["spool"]["readings"] == 50, what="readings spooled")
            time.sleep(1)  # the forwarder's write of them waits for the server
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "event=config_applied" in gw.log.read_text() or gw.proc.poll() is not None,
                     timeout_s=30, what="the reload applied or the process ended")
            reload_s = time.monotonic() - t0
            assert gw.proc.poll() is None, f"the reload ended the process:\n{gw.log.read_text()[-3000:]}"
        wait_for(lambda: stored(dsn) == 100, timeout_s=60, what="the readings stored once the database answers")
        with own_pg_server.frozen():
            pub.publish(50)
            wait_for(lambda: gw.health()["spool"]["readings"] == 50, what="readings spooled")
            time.sleep(1)
            t0 = time.monotonic()
            code = gw.terminate(timeout_s=30)
            stop_s = time.monotonic() - t0
        stop_log = gw.log.read_text()
        gw.start()
        wait_for(lambda: stored(dsn) == 150, timeout_s=60, what="the spooled readings stored by the next start")
    finally:
        pub.close()
        gw.terminate()
        gw.kill()
    assert reload_s < 5, f"reload took {reload_s:.1f} s"
    assert code == 0 and stop_s < 10, f"exit {code} after {stop_s:.1f} s:\n{stop_log[-3000:]}"
    assert _events(stop_log, "stop_timeout") == 0, stop_log[-3000:]
    print(f"database not answering: reload applied in {reload_s:.2f} s, SIGTERM to exit 0 in {stop_s:.2f} s")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("messages", [1, 50])
def test_a_stalled_ingest_ends_the_process_for_its_supervisor_and_nothing_is_lost(tmp_path, pg_dsn, mosquitto,
                                                                               messages):
    """Nothing could be written to the spool (here another process holds its write lock, as a backup tool or a hung
    disk would): the watchdog reported it on /healthz "so that the container runtime or systemd restarts the
    process", but neither does: systemd does not read /healthz (and the gateway's WATCHDOG=1 pings went on), docker
    and compose do not restart an unhealthy container. The gateway stayed stuck for good. It now exits 1, which
    `Restart=always` and `restart: unless-stopped` act on; what was not spooled was never acknowledged, so the broker
    sends it again to the restarted gateway. With 1 message the stuck commit holds every batch and the queue is
    empty: the watchdog counted only queued batches as work, and saw no stall at all."""
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run, stall_s=2))
    gw.start()
    pub = Publisher(mosquitto.port, run)
    lock = None
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(50)
        wait_for(lambda: stored(pg_dsn) == 50, what="first readings stored")
        lock = sqlite3.connect(tmp_path / "var" / "spool.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        pub.publish(messages)
        try:
            code = gw.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        health = None if code is not None else gw.health()
        lock.rollback()
        lock.close()
        lock = None
        assert code == 1, f"still running with /healthz {health}:\n{gw.log.read_text()[-3000:]}"
        gw.start()  # what the supervisor does
        wait_for(lambda: stored(pg_dsn) == 50 + messages, what="the readings not spooled before the exit, stored after")
        assert gw.terminate() == 0
    finally:
        if lock is not None:
            lock.close()
        pub.close()
        gw.kill()
    log = gw.log.read_text()
    assert _events(log, "ingest_stalled") == 1 and _events(log, "stall_exit") == 1, log[-3000:]


def test_rollups_the_database_keeps_refusing_are_logged_while_readings_flow(tmp_path, pg_dsn, mosquitto):
    """Rollup refreshes that fail while the database takes readings (here a lock on readings_1m with the role's
    lock_timeout; also a statement_timeout on a large recomputation, a permission) went to a debug line only: the
    1-minute and 1-hour rollups the console draws stayed stale for good and nothing said so."""
    with _gateway_storing(tmp_path, pg_dsn, mosquitto.port) as (gw, pub):
        with contextlib.closing(_lock_for_the_gateway(pg_dsn, "readings_1m")) as locker:
            for _ in range(4):  # rollup_interval_s is 5 s: several refreshes meet the lock
                pub.publish(10)
                time.sleep(3)
            wait_for(lambda: stored(pg_dsn) == 50, what="readings stored beside the failing rollups")
            during = gw.log.read_text()
            locker.rollback()
        wait_for(lambda: _events(gw.log.read_text(), "rollup_resumed") == 1, what="rollups working again")
    assert _events(during, "rollup_error") == 1 and "LockNotAvailable" in during, during[-3000:]


def test_a_device_that_keeps_sending_text_the_database_refuses_is_logged_once_a_minute(tmp_path, pg_dsn, mosquitto):
    """A PLC's NUL-padded string in every message: each commit group with one was logged twice at error level
    (db_refused, readings_refused), one line pair per group for as long as the device sends (~170,000 lines a day
    at one group a second), burying every other event. The metric counts each reading; the log says it once a
    minute, with the count."""
    with _gateway_storing(tmp_path, pg_dsn, mosquitto.port) as (gw, pub):
        mark = len(gw.log.read_text())
        for i in range(8):  # one refused reading in each of 8 groups (flush_interval_s is 0.2 s)
            t = (pub.base + dt.timedelta(seconds=3600 + i)).isoformat().replace("+00:00", "Z")
            pub.client.publish(f"ops/{pub.run}/P-9/state", orjson.dumps({"value": f"run\u0000{i}", "time": t}),
                               qos=1).wait_for_publish(30)
            time.sleep(0.6)
        wait_for(lambda: "valvoja_readings_refused_total 8.0" in gw.metrics(), what="8 readings refused")
        log = gw.log.read_text()[mark:]
    assert _events(log, "db_refused") == 1 and _events(log, "readings_refused") == 1, log[-3000:]


def _disk_watch(workdir, state_dir, min_free: int, spool_path=None) -> tuple[str, float]:
    """`valvoja run` without collectors or database until the watchdog logs `disk_low`: its log and the value of
    `valvoja_state_disk_free_bytes` then."""
    spool = f'[spool]\npath = "{spool_path}"\n' if spool_path else ""
    gw = GatewayProcess(workdir, f'[site]\nstate_dir = "{state_dir}"\n{spool}'
                                 '[http]\nlisten = "127.0.0.1:{HTTP_PORT}"\n[logging]\nformat = "text"\n'
                                 f"[service]\nwatchdog_interval_s = 0.2\nmin_free_disk_bytes = {min_free}\n").start()
    try:
        wait_for(lambda: "event=disk_low" in gw.log.read_text(), timeout_s=20, what="disk_low logged")
        gauge = wait_for(lambda: [float(line.split()[-1]) for line in gw.metrics().splitlines()
                                  if line.startswith("valvoja_state_disk_free_bytes")], what="the gauge")
    finally:
        gw.terminate()
        gw.kill()
    return gw.log.read_text(), gauge[0]


def test_the_disk_watch_looks_where_the_spool_lives(tmp_path):
    """`valvoja_state_disk_free_bytes` and the `disk_low` warning are documented as the free space "where the spool
    lives", but the watchdog measured the state folder: a spool put on a volume of its own (`spool.path`) filled it
    without a warning, the gauge showing the state folder's 60 GB free. Now the spool's volume (40 MB here) is
    measured and named; the state folder, on another file system with room, is not reported low."""
    with small_disk(tmp_path / "spoolvol", 40) as vol:
        log, gauge = _disk_watch(tmp_path, tmp_path / "state", 100_000_000, spool_path=vol / "spool.db")
    assert gauge <= 40 * 2**20, gauge
    assert _events(log, "disk_low") == 1 and f"folder={vol}" in log, log[-3000:]
    # The default layout (the spool in the state folder): one file system, measured and named once.
    log, gauge = _disk_watch(tmp_path / "default", tmp_path / "default" / "state", 2**62)
    assert gauge > 2**20, gauge  # not left at 0
    assert _events(log, "disk_low") == 1 and f"folder={tmp_path}/default/state" in log, log[-3000:]


def test_a_spool_that_cannot_be_opened_at_start_is_named_with_its_room(tmp_path):
    """The state folder's file system full at start (other files filled it): `start_failed` said "OperationalError:
    database or disk is full", naming neither the file nor the volume. Now the spool file and the room left."""
    with small_disk(tmp_path / "state", 2) as state:
        with contextlib.suppress(OSError), open(state / "ballast", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        site = tmp_path / "site.toml"
        site.write_text(f'[site]\nstate_dir = "{state}"\n[http]\nenabled = false\n')
        r = valvoja("run", "--config", str(site))
    assert r.returncode == 1, r
    assert f"spool {state}/spool.db cannot be opened: database or disk is full (" in r.stderr, r.stderr
    assert "bytes free on its file system" in r.stderr and '"event": "start_failed"' in r.stderr, r.stderr
