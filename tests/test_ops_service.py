"""`valvoja run` as a real process: SIGTERM flushes the spool and exits 0 in time; SIGHUP rejects a broken
configuration (the old one keeps running) and applies a good one without losing a reading."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error

import psycopg
from gateway_proc import GatewayProcess
from ops_support import Publisher, new_run, site_config, stored, wait_for

from edge.db.migrate import _LOCK_KEY as MIGRATION_LOCK


def _health(gw: GatewayProcess) -> dict:
    """/healthz, or {} while the HTTP server is between two gateways (reload)."""
    try:
        return gw.health()
    except (OSError, urllib.error.URLError, ValueError):
        return {}


def _subscribed(gw: GatewayProcess) -> bool:
    """The MQTT collector is connected and subscribed, so the broker keeps messages for it from now on."""
    h = _health(gw)
    return bool(h.get("collectors", {}).get("plant", {}).get("connected")) and h["database"]["connected"]


def _metric(gw: GatewayProcess, name: str) -> float:
    total = 0.0
    for line in gw.metrics().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_flushes_the_spooled_batch_and_exits_0_within_10_s(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    # flush_interval 60 s: the forwarder lets small groups wait in the spool, so at SIGTERM the
    # readings are spooled (acknowledged to the broker) and not yet in the database.
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run, flush_s=60)).start()
    pub = Publisher(mosquitto.port, run)
    try:
        wait_for(lambda: _subscribed(gw), what="collector subscribed, database connected")
        pub.publish(500)
        wait_for(lambda: _health(gw).get("spool", {}).get("readings") == 500, what="500 readings spooled")
        assert stored(pg_dsn) == 0, "readings should still be waiting in the spool"
        t0 = time.monotonic()
        code = gw.terminate(timeout_s=15)
        elapsed = time.monotonic() - t0
    finally:
        pub.close()
        gw.kill()
    log = gw.log.read_text()
    assert code == 0, log[-3000:]
    assert elapsed < 10, f"stopped in {elapsed:.1f} s"
    assert stored(pg_dsn) == 500, log[-3000:]
    assert "0 readings left in the spool" in log
    print(f"SIGTERM to exit: {elapsed:.2f} s with 500 spooled readings")


def test_sighup_keeps_the_old_config_on_a_bad_file_and_applies_a_good_one(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run, gateway_id="gw-a")).start()
    pub = Publisher(mosquitto.port, run)
    good = gw.config.read_text()
    busy = socket.socket()  # a port in use: the file is valid but the new gateway cannot start on it
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    broken = {
        "TOML syntax": good + "\n[database\n",
        "schema": good.replace("[logging]", "[logging]\nbogus = 1").replace('gateway_id = "gw-a"',
                                                                            'gateway_id = "has space"'),
        "missing secret file": good.replace('url = "postgresql',
                                            f'password = "file:{tmp_path}/no-such-secret"\nurl = "postgresql'),
        "port in use": good.replace(f"127.0.0.1:{gw.port}", f"127.0.0.1:{busy.getsockname()[1]}"),
    }
    try:
        wait_for(lambda: _subscribed(gw), what="collector subscribed, database connected")
        pub.publish(100)
        wait_for(lambda: stored(pg_dsn) == 100, what="first 100 readings stored")
        for n, (what, text) in enumerate(broken.items(), start=1):
            gw.config.write_text(text)
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: gw.log.read_text().count("rejected, still running the previous one") == n,
                     what=f"rejection of the {what} config")
            assert gw.proc.poll() is None, f"gateway exited on a bad config ({what})"
            h = _health(gw)
            assert h.get("gateway") == "gw-a" and not h.get("dead_tasks"), h
        log = gw.log.read_text()
        assert "not valid TOML" in log
        assert "logging.bogus: unknown key" in log and "site.gateway_id" in log, "every problem is named"
        assert "cannot read secret file" in log
        assert "the new configuration failed to start" in log
        busy.close()
        pub.publish(100)  # still collecting and storing on the old configuration
        wait_for(lambda: stored(pg_dsn) == 200, what="readings stored after the rejections")

        # A good new configuration, applied while messages keep coming: none may be lost.
        stop = threading.Event()

        def keep_publishing() -> None:
            while not stop.is_set():
                pub.publish(20)
                time.sleep(0.05)

        publisher = threading.Thread(target=keep_publishing)
        publisher.start()
        time.sleep(0.5)
        gw.config.write_text(good.replace('gateway_id = "gw-a"', 'gateway_id = "gw-b"'))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _health(gw).get("gateway") == "gw-b", what="the new configuration running")
        time.sleep(1.0)
        stop.set()
        publisher.join()
        sent = pub.sent
        wait_for(lambda: stored(pg_dsn) == sent, timeout_s=30, what=f"all {sent} readings stored")
        assert "configuration reloaded" in gw.log.read_text()
        assert _metric(gw, 'valvoja_config_reloads_total{result="rejected"}') == 4
        assert _metric(gw, 'valvoja_config_reloads_total{result="applied"}') == 1
        assert gw.terminate(timeout_s=15) == 0
    finally:
        pub.close()
        gw.kill()
    assert stored(pg_dsn) == pub.sent


def test_systemd_notify_protocol_ready_reloading_watchdog_stopping(tmp_path, pg_dsn, mosquitto, monkeypatch):
    """Type=notify: READY=1 once running, RELOADING=1 + READY=1 around a SIGHUP, WATCHDOG=1 pings, STOPPING=1."""
    sock_dir = tempfile.mkdtemp(prefix="vnotify-", dir="/tmp")  # AF_UNIX paths must stay short
    path = f"{sock_dir}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    got: list[str] = []

    def receive(until: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
            if until in got:
                return
        raise TimeoutError(f"no {until} from the gateway (got {got})")

    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port)).start()
    try:
        receive("READY=1")
        got.clear()
        gw.proc.send_signal(signal.SIGHUP)
        receive("RELOADING=1")
        receive("READY=1")
        got.clear()
        receive("WATCHDOG=1", timeout_s=5)
        gw.proc.send_signal(signal.SIGTERM)
        receive("STOPPING=1")
        assert gw.proc.wait(15) == 0
    finally:
        gw.kill()
        sock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_a_stop_does_not_wait_past_its_deadline_for_a_worker_thread(tmp_path, pg_dsn, mosquitto):
    """Another session holds the migration lock (another gateway's upgrade, `valvoja db migrate`), so the forwarder's
    migration check waits for it in a worker thread. SIGTERM: the gateway stopped and logged `exit code=0`, and then
    the process stayed up (asyncio.run waits for its worker threads without a limit) until the supervisor's SIGKILL
    (systemd: TimeoutStopSec, a failed unit; here still running 30 s later). Now it leaves the thread at the stop's
    deadline (stop_timeout_s 10) and exits 0; started again once the lock is free, it migrates and stores."""
    run = new_run()
    locker = psycopg.connect(pg_dsn, autocommit=True)
    try:
        locker.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run)).start(wait_database=False)
        wait_for(lambda: locker.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND application_name LIKE 'valvoja-%-migrate'").fetchone()[0] == 1,
                 what="the gateway's migration waiting for the lock")
        t0 = time.monotonic()
        try:
            code = gw.terminate(timeout_s=30)
        except subprocess.TimeoutExpired:
            code = None
        stop_s = time.monotonic() - t0
        stop_log = gw.log.read_text()
        gw.kill()
        locker.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        pub = Publisher(mosquitto.port, run)
        try:
            gw.start()
            wait_for(lambda: _subscribed(gw), what="collector subscribed, database connected")
            pub.publish(10)
            wait_for(lambda: stored(pg_dsn) == 10, what="readings stored after the lock is free")
            assert gw.terminate() == 0
        finally:
            pub.close()
            gw.kill()
    finally:
        locker.close()
    assert code == 0 and stop_s < 11, f"exit {code} after {stop_s:.1f} s:\n{stop_log[-3000:]}"
    assert "event=stop_threads_left" in stop_log, stop_log[-3000:]
    print(f"SIGTERM with a migration waiting for the lock: exit 0 in {stop_s:.2f} s")


def test_the_healthz_fields_of_the_operations_guide_are_what_a_running_gateway_answers(tmp_path, pg_dsn, mosquitto):
    """docs/operations.md, "Health and metrics", lists the fields of `/healthz` that the person on call and the
    monitoring read (`database.connected`, `spool.full` ...): each is in the answer of a running gateway with a
    collector, the database and live analytics, and the answer has no field of those the list leaves out."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    text = " ".join(guide.split("\n## Health and metrics", 1)[1].split("`GET /metrics`", 1)[0].split())
    fields = text.split("Fields: ", 1)[1]
    documented: dict[str, list[str]] = {}  # top-level field -> the fields its parentheses name
    for m in re.finditer(r"`(\w+)`(?: \(((?:[^()]|\([^()]*\))*)\))?", fields):
        documented[m.group(1)] = re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", m.group(2) or ""))
    rule = '\n[[rules]]\nname = "hot"\ntag = "P-1.t"\nkind = "threshold"\nhigh = 90.0\n'  # live analytics on
    site = site_config(pg_dsn, mosquitto.port) + rule
    gw = GatewayProcess(tmp_path, site).start()
    try:
        wait_for(lambda: _subscribed(gw), what="collector subscribed, database connected")
        health = _health(gw)
    finally:
        gw.terminate(timeout_s=15)
    assert set(documented) == set(health), (sorted(documented), sorted(health))
    for name in ("spool", "database", "analytics"):
        assert documented[name] and set(documented[name]) == set(health[name]), (name, health[name])
