"""SIGHUP reloads of `valvoja run` as a real process: whatever is wrong with the new file, the running gateway goes on
(docs/operations.md, "Configuration reload")."""

from __future__ import annotations

import signal

from gateway_proc import GatewayProcess
from ops_support import site_config, wait_for
from serverproc import free_port

SPOOL_ONLY = """\
[site]
gateway_id = "gw-reload"
state_dir = "var"

[http]
listen = "127.0.0.1:{HTTP_PORT}"

[logging]
format = "text"
"""


def test_a_reload_whose_secret_or_url_cannot_be_read_is_rejected_and_the_gateway_goes_on(tmp_path):
    """A secret file in Latin-1 raised UnicodeDecodeError and a URL libpq cannot parse psycopg.ProgrammingError out of
    the reload's checks, which only caught ConfigError: the running gateway ended with a traceback."""
    secret = tmp_path / "db_password"
    secret.write_bytes("pässi\n".encode("latin-1"))
    secret.chmod(0o600)
    gw = GatewayProcess(tmp_path, SPOOL_ONLY).start()
    good = gw.config.read_text()
    bad = {
        "Latin-1 secret file": good + f'\n[database]\nurl = "postgresql://valvoja@127.0.0.1:9/valvoja"\n'
                                      f'password = "file:{secret}"\n',
        "URL libpq cannot parse": good + '\n[database]\nurl = "postgresql://valvoja@127.0.0.1:9/valvoja?sslmod=x"\n'
                                         'password = "env:PATH"\n',
    }
    try:
        for n, (what, text) in enumerate(bad.items(), start=1):
            gw.config.write_text(text)
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: gw.log.read_text().count("event=config_rejected") == n or gw.proc.poll() is not None,
                     what=f"the {what} config rejected")
            assert gw.proc.poll() is None, f"the gateway ended on a reload with a {what}:\n{gw.log.read_text()[-3000:]}"
            assert gw.health()["gateway"] == "gw-reload"
        log = gw.log.read_text()
        assert "database.password: " in log and "UTF-8" in log
        assert "database.url: " in log and "sslmod" in log
        assert 'valvoja_config_reloads_total{result="rejected"} 2.0' in gw.metrics()
        assert gw.terminate() == 0
    finally:
        gw.kill()


def test_a_collector_removed_by_a_reload_leaves_no_connected_gauge_behind(tmp_path, pg_dsn, mosquitto):
    """The gauge of a collector that a reload removed or renamed stayed in /metrics at 0 for the life of the process:
    the suggested alert `valvoja_collector_connected == 0 for 5 min` fired for a collector that no longer exists."""
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port)).start()
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        assert 'valvoja_collector_connected{collector="plant"} 1.0' in gw.metrics()
        gw.config.write_text(gw.config.read_text().replace('name = "plant"', 'name = "line-2"'))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=config_applied" in gw.log.read_text(), what="the new configuration applied")
        wait_for(lambda: _collector_up(gw, "line-2"), what="the renamed collector connected")
        metrics = gw.metrics()
        assert 'valvoja_collector_connected{collector="line-2"} 1.0' in metrics
        assert 'valvoja_collector_connected{collector="plant"}' not in metrics, metrics
        assert gw.terminate() == 0
    finally:
        gw.kill()


def _collector_up(gw: GatewayProcess, name: str) -> bool:
    try:
        return bool(gw.health()["collectors"].get(name, {}).get("connected"))
    except (OSError, ValueError):
        return False  # between the two gateways of a reload


def test_a_reload_that_moves_the_spool_away_from_waiting_readings_is_rejected(tmp_path, mosquitto):
    """A new spool.path (or state_dir), e.g. a bigger volume while the database is away, started the new gateway on
    an empty spool: the readings waiting in the old file were never forwarded, and nothing said so."""
    from ops_support import Publisher, new_run

    run = new_run()
    no_database = site_config("host=127.0.0.1 port=1 user=u dbname=d", mosquitto.port, run=run)
    no_database = no_database.replace(no_database[no_database.index("[database]"):no_database.index("[http]")], "")
    gw = GatewayProcess(tmp_path, no_database).start()
    pub = Publisher(mosquitto.port, run)
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(10)
        wait_for(lambda: gw.health()["spool"]["readings"] == 10, what="10 readings spooled")
        gw.config.write_text(gw.config.read_text().replace("[http]", f'[spool]\npath = "{tmp_path}/big/spool.db"\n\n'
                                                                           "[http]"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=config_rejected" in gw.log.read_text() or "event=config_applied" in gw.log.read_text(),
                 what="the reload handled")
        log = gw.log.read_text()
        assert "event=config_rejected" in log and "spool.path" in log, log[-3000:]
        assert gw.health()["spool"]["readings"] == 10
        assert gw.terminate() == 0
    finally:
        pub.close()
        gw.kill()


def _spool_fds(state) -> int:
    """Open file descriptors of this process on the spool's files (spool.db, -wal, -shm)."""
    import os

    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.startswith(str(state / "spool.db"))
    return n


def test_a_reload_whose_gateway_fails_to_build_leaves_no_spool_connection_open(tmp_path):
    """A new configuration that passes the checks but whose gateway cannot be built (here a RUL model_dir with a
    damaged card.json: the model is loaded when live analytics is built, which the reload's checks do not do) left
    the new gateway's spool open: its SQLite connection (three file descriptors with the WAL) and its spool thread,
    at every such SIGHUP, beside the previous configuration started again."""
    import asyncio
    import threading

    from edge.service import Service

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"not a model")
    (model / "card.json").write_text("{ damaged")
    config = tmp_path / "site.toml"
    good = SPOOL_ONLY.replace("{HTTP_PORT}", "0")
    config.write_text(good)
    bad = good + f"""
[[maintenance.assets]]
name = "ENG-1"
[maintenance.assets.rul]
model_dir = "{model}"
sensors = ["ENG-1.s1"]
cycle_s = 60.0
"""

    async def go():
        svc = Service(config)
        svc._stop = asyncio.Event()
        await svc._start_gateway(svc.cfg)
        before = _spool_fds(tmp_path / "var"), sum(t.name.startswith("spool") for t in threading.enumerate())
        config.write_text(bad)
        for _ in range(3):
            assert not await svc.reload()
        after = _spool_fds(tmp_path / "var"), sum(t.name.startswith("spool") for t in threading.enumerate())
        assert svc.gateway is not None and not svc._stop.is_set(), "the previous configuration runs again"
        await svc._stop_gateway(10, 1)
        return before, after

    before, after = asyncio.run(go())
    assert before[0] >= 1
    assert after == before, f"(spool fds, spool threads) {before} before 3 failed reloads, {after} after"


def test_an_alert_receiver_replaced_by_a_reload_leaves_no_receiver_up_gauge_behind(tmp_path):
    """A receiver failing its start-up probe (a wrong host) is fixed in the file and the gateway reloaded, as the
    guide says: the old receiver's `valvoja_alert_receiver_up` stayed at 0 for the life of the process, and an
    alert on it fired for a receiver no longer configured."""
    old, new = free_port(), free_port()  # nothing listens on either: both probes fail
    hook = ('\n[[rules]]\nname = "hot"\ntag = "P-1.temp"\nkind = "threshold"\nhigh = 90.0\n'  # notifications need one
            '\n[maintenance.notify]\n[[maintenance.notify.webhooks]]\nurl = "http://127.0.0.1:{}/hook"\nprobe = true\n'
            'timeout_s = 1.0\n')
    gw = GatewayProcess(tmp_path, SPOOL_ONLY + hook.format(old)).start()
    try:
        wait_for(lambda: _receiver_up(gw, old) == [0.0], what="the first receiver's probe failed")
        gw.config.write_text(gw.config.read_text().replace(f":{old}/", f":{new}/"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=config_applied" in gw.log.read_text(), what="the new configuration applied")
        wait_for(lambda: _receiver_up(gw, new) == [0.0], what="the new receiver probed")
        assert _receiver_up(gw, old) == [], gw.metrics()
        assert gw.terminate() == 0
    finally:
        gw.kill()


def _receiver_up(gw: GatewayProcess, port: int) -> list[float]:
    """The values of `valvoja_alert_receiver_up` for the webhook receiver on ``port``."""
    return [float(line.rsplit(" ", 1)[1]) for line in gw.metrics().splitlines()
            if line.startswith("valvoja_alert_receiver_up{") and f":{port} " in line]
