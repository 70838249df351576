"""Alert notifications to a real mosquitto: TLS (a CA, client certificates), refused log-ins, a broker that
restarts or does not acknowledge, and what the gateway keeps meanwhile (tests/test_maintenance_notify.py has the
rest)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
import tomllib
from contextlib import contextmanager
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from analytics_support import spool_emit
from certs import CertificateAuthority
from servers import free_port, port_open, wait_until

from maintenance.alerts import AlertManager
from maintenance.notify_mqtt import MqttNotifier, MqttNotifyConfig

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _change(asset: str = "P-101", value: float = 3.2):
    (ch,) = AlertManager().observe(asset=asset, tag=f"{asset}.vib_de", kind="iso20816", active=True, t=T0,
                                   severity="warning", message="zone C", evidence={"value": value})
    return ch


class Subscriber:
    """A paho subscriber on the broker's plain listener: what the notifier published, as (topic, JSON body)."""

    def __init__(self, broker, topic: str = "valvoja/alerts/#") -> None:
        self.got: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10), "subscriber not subscribed"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.got.append((msg.topic, json.loads(msg.payload)))
            self._cond.notify_all()

    def _wait(self, n: int, within_s: float) -> list[tuple[str, dict]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.got) >= n, within_s)
            assert len(self.got) >= n, f"{len(self.got)} of {n} notifications arrived"
            return list(self.got)

    async def wait(self, n: int, within_s: float = 10.0) -> list[tuple[str, dict]]:
        """The notifications received, once there are ``n`` (an AssertionError after ``within_s``)."""
        return await asyncio.to_thread(self._wait, n, within_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscribed(broker, topic: str = "valvoja/alerts/#"):
    sub = Subscriber(broker, topic)
    try:
        yield sub
    finally:
        sub.close()


async def test_a_refused_log_in_says_so(mosquitto):
    """The broker refused the log-in (a wrong password): the notifier reported "no PUBACK in time" or "not
    connected", which sends an operator to the network, not to the password."""
    n = MqttNotifier(MqttNotifyConfig(host=mosquitto.host, port=mosquitto.auth_port, username=mosquitto.username,
                                      timeout_s=2.0), "not-the-password")
    try:
        ok, detail = await n.send(_change())
    finally:
        await n.aclose()
    assert not ok
    assert "broker refused the connection" in detail and ("Not authorized" in detail or "Bad user name" in detail), \
        detail
    n = MqttNotifier(MqttNotifyConfig(host=mosquitto.host, port=mosquitto.auth_port, username=mosquitto.username,
                                      timeout_s=2.0), mosquitto.password)
    try:
        with subscribed(mosquitto) as sub:
            assert await n.send(_change()) == (True, "PUBACK")
            await sub.wait(1)
    finally:
        await n.aclose()


async def test_a_notification_the_broker_has_not_acknowledged_is_not_taken_as_delivered(own_mosquitto):
    """QoS 1: a change is delivered only once the broker's PUBACK came. The broker is frozen (SIGSTOP: it accepted
    the TCP data and answers nothing): the send fails within ``timeout_s``; once the broker runs again, the next
    send is acknowledged."""
    broker = own_mosquitto
    n = MqttNotifier(MqttNotifyConfig(host=broker.host, port=broker.port, timeout_s=1.0))
    try:
        with subscribed(broker) as sub:
            assert await n.send(_change("P-1")) == (True, "PUBACK")
            await sub.wait(1)
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                ok, detail = await n.send(_change("P-2"))
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            assert not ok and "PUBACK" in detail, detail
            ok, detail = await n.send(_change("P-2"))
            assert (ok, detail) == (True, "PUBACK")
            got = await sub.wait(2)
            assert {topic.split("/")[2] for topic, _ in got} == {"P-1", "P-2"}
    finally:
        await n.aclose()


async def test_the_notifier_reconnects_at_once_after_the_broker_was_down_a_while(own_mosquitto):
    """The broker is down for a while (a restart of its host, an upgrade) and the gateway keeps trying, as its
    outbox does (every 1 s, doubling to 60 s). paho reconnected on its own back-off (1 s doubling to 120 s) behind
    the notifier's back: once the broker was back, notifications went on failing until paho's next try, up to two
    minutes later. Now each send connects when there is no connection."""
    broker = own_mosquitto
    n = MqttNotifier(MqttNotifyConfig(host=broker.host, port=broker.port, timeout_s=2.0))
    try:
        assert await n.send(_change("P-1")) == (True, "PUBACK")
        broker.stop()
        down_until = time.monotonic() + 9.0
        while time.monotonic() < down_until:
            ok, _ = await n.send(_change("P-2"))
            assert not ok
            await asyncio.sleep(0.5)
        broker.start()
        with subscribed(broker) as sub:
            assert await n.send(_change("P-3")) == (True, "PUBACK")
            got = await sub.wait(1)
            assert got[-1][0] == "valvoja/alerts/P-3/iso20816"
    finally:
        await n.aclose()


# -- TLS ---------------------------------------------------------------------------------------------------------

def _tls_cfg(broker, **tls) -> MqttNotifyConfig:
    return MqttNotifyConfig(host="localhost", port=broker.tls_port, timeout_s=3.0,
                            tls={"ca_file": str(broker.ca_path), **tls})


async def test_notifications_arrive_over_tls(mosquitto):
    n = MqttNotifier(_tls_cfg(mosquitto))
    try:
        with subscribed(mosquitto) as sub:
            assert await n.send(_change("P-7")) == (True, "PUBACK")
            ((topic, body),) = await sub.wait(1)
        assert topic == "valvoja/alerts/P-7/iso20816" and body["event"] == "raised"
        assert repr(n) == f"<MqttNotifier mqtts://localhost:{mosquitto.tls_port}>"
    finally:
        await n.aclose()


async def test_the_broker_host_name_is_checked_unless_insecure(mosquitto):
    # The broker's certificate names localhost and 127.0.0.1, not "127.1" (which is 127.0.0.1 too).
    n = MqttNotifier(_tls_cfg(mosquitto).model_copy(update={"host": "127.1"}))
    try:
        ok, detail = await n.send(_change())
    finally:
        await n.aclose()
    assert not ok and "TLS: the broker's certificate was refused" in detail and "match" in detail, detail
    cfg = MqttNotifyConfig(host="127.1", port=mosquitto.tls_port, tls={"ca_file": str(mosquitto.ca_path),
                                                                       "insecure": True})
    n = MqttNotifier(cfg)
    try:
        assert await n.send(_change()) == (True, "PUBACK")
    finally:
        await n.aclose()


@pytest.fixture
def mtls_broker(tmp_path):
    """A broker whose TLS listener requires a client certificate signed by its CA (``require_certificate``)."""
    from servers import MosquittoServer, mosquitto_bin

    if mosquitto_bin() is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    ca = CertificateAuthority(tmp_path / "plant-ca", common_name="Plant CA")
    server = ca.issue("broker", "localhost")
    port = free_port()
    broker = MosquittoServer(tls=False, password=False, extra_config="\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true", "require_certificate true",
        f"cafile {ca.cert_path}", f"certfile {server.cert}", f"keyfile {server.key}"]))
    broker.start()
    try:
        wait_until(lambda: port_open(port), 10, "mosquitto's mutual TLS listener")
        broker.mtls_port, broker.plant_ca = port, ca
        yield broker
    finally:
        broker.close()


async def test_a_client_certificate_is_sent_and_a_wrong_one_refused_clearly(mtls_broker, tmp_path):
    broker, ca = mtls_broker, mtls_broker.plant_ca
    good = ca.issue("gw1", client=True)
    stranger = CertificateAuthority(tmp_path / "other-ca", common_name="Some other CA").issue("gw1", client=True)

    def cfg(client=None) -> MqttNotifyConfig:
        files = {"cert_file": str(client.cert), "key_file": str(client.key)} if client else {}
        return MqttNotifyConfig(host="localhost", port=broker.mtls_port, timeout_s=3.0,
                                tls={"ca_file": str(ca.cert_path), **files})

    with subscribed(broker) as sub:
        n = MqttNotifier(cfg(good))
        try:
            assert await n.send(_change()) == (True, "PUBACK")
            await sub.wait(1)
        finally:
            await n.aclose()
        for client in (stranger, None):  # signed by another CA; none at all
            n = MqttNotifier(cfg(client))
            try:
                ok, detail = await n.send(_change())
            finally:
                await n.aclose()
            assert not ok and detail.startswith(f"not connected to mqtts://localhost:{broker.mtls_port}: TLS: ")
            assert "client certificate (maintenance.notify.mqtt.tls.cert_file / key_file)" in detail, detail
        assert len(sub.got) == 1


async def test_an_unknown_broker_certificate_is_logged_counted_and_the_notifications_kept_until_the_ca_is_fixed(
        mosquitto, tmp_path, monkeypatch, caplog):
    """``ca_file`` is not the CA that signed the broker's certificate. Each change is logged once with the reason
    and counted failed; analytics goes on; the changes wait in the outbox (``notify_outbox.db``) and reach the
    broker, in order, once the CA is fixed and the gateway started again (a reload builds a new gateway the same
    way)."""
    from edge import notifications
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.2)
    other = CertificateAuthority(tmp_path / "other-ca", common_name="Some other CA")

    def site(ca_file) -> SiteConfig:
        mqtt_cfg = {"host": "localhost", "port": mosquitto.tls_port, "timeout_s": 2.0, "topic_prefix": "tls-ca-fix",
                    "tls": {"ca_file": str(ca_file)}}
        return SiteConfig(site={"state_dir": tmp_path},
                          rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                          maintenance={"alerts": {"clear_after_s": 0}, "notify": {"mqtt": mqtt_cfg}})

    emit = spool_emit()

    caplog.set_level(logging.WARNING, logger="edge.notifications")
    with subscribed(mosquitto, "tls-ca-fix/#") as sub:
        metrics = Metrics()
        before = Analytics(site(other.cert_path), metrics, emit, None)
        task = asyncio.create_task(before.run())
        try:
            for i, v in enumerate((20.0, 0.0)):  # raised, cleared
                t = datetime(2026, 3, 1, 8, 0, i, tzinfo=UTC)
                before.offer([Reading("P1.p", t, v, t)], t)
            for _ in range(200):
                if before.alert_changes >= 2 and any(getattr(r, "event", "") == "notify_failed"
                                                     for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # tried again a few times meanwhile
            assert not task.done()  # no crash
            failed = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "notify_failed"]
            assert len(failed) == 1, failed  # the head of the queue, logged once however often it is tried
            assert ("TLS: the broker's certificate was refused" in failed[0]
                    and "is maintenance.notify.mqtt.tls.ca_file the CA that signed" in failed[0]), failed[0]
            assert metrics.registry.get_sample_value("valvoja_alert_notifications_total", {"result": "failed"}) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert sub.got == []

        after = Analytics(site(mosquitto.ca_path), Metrics(), emit, None)  # the CA fixed, the gateway started again
        task = asyncio.create_task(after.run())
        try:
            got = await sub.wait(2)
            await asyncio.sleep(0.3)  # and nothing more
            assert [body["event"] for _, body in sub.got] == ["raised", "cleared"]
            assert len({body["notification_id"] for _, body in got}) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_check_config_names_each_tls_file_and_secret_it_cannot_read(tmp_path, monkeypatch):
    """Relative paths are taken from the configuration file's folder; a CA, certificate or key that cannot be read
    and a key password that cannot be resolved are each reported by check-config (and before a reload is accepted)
    with their key, not found by the first alert."""
    from edge import settings
    from edge.analytics import maintenance_config
    from edge.errors import ConfigError
    from edge.notifications import notify_secrets
    from edge.service import preflight

    conf = tmp_path / "conf"
    (conf / "certs" / "gw1.crt").mkdir(parents=True)  # a folder where the certificate should be: not readable
    monkeypatch.delenv("GW1_KEY_PW_UNSET", raising=False)
    text = """
[[maintenance.assets]]
name = "P-1"
process_tags = ["P-1.t"]

[maintenance.notify.mqtt]
host = "broker.plant.example"
port = 8883

[maintenance.notify.mqtt.tls]
ca_file = "certs/plant-ca.crt"
cert_file = "certs/gw1.crt"
key_file = "certs/gw1.key"
key_password = "env:GW1_KEY_PW_UNSET"
"""
    (conf / "site.toml").write_text(text)
    cfg = settings.load(conf / "site.toml")
    tls = maintenance_config(cfg).notify.mqtt.tls
    assert (tls.ca_file, tls.key_file) == (str(conf / "certs/plant-ca.crt"), str(conf / "certs/gw1.key"))
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    problems = [p for p in err.value.problems if "maintenance.notify.mqtt.tls" in p]
    assert problems == [
        f"maintenance.notify.mqtt.tls.ca_file: no such file {conf / 'certs/plant-ca.crt'}",
        f"maintenance.notify.mqtt.tls.cert_file: cannot read {conf / 'certs/gw1.crt'}: Is a directory",
        f"maintenance.notify.mqtt.tls.key_file: no such file {conf / 'certs/gw1.key'}",
        "maintenance.notify.mqtt.tls.key_password: environment variable GW1_KEY_PW_UNSET is not set"], problems

    # Files that are there: the gateway's notifier gets their context, read once at start-up.
    ca = CertificateAuthority(conf / "certs", name="plant-ca")
    (conf / "certs" / "gw1.crt").rmdir()
    ca.issue("gw1", client=True)
    monkeypatch.setenv("GW1_KEY_PW_UNSET", "not used: the key is not encrypted")
    secrets = notify_secrets(maintenance_config(settings.load(conf / "site.toml")))
    assert secrets.mqtt_tls is not None and secrets.mqtt_tls.check_hostname


def test_the_sample_shows_every_tls_option_with_the_code_default():
    import re
    from pathlib import Path

    from edge.tls import Tls

    text = (Path(__file__).parent.parent / "maintenance" / "sample.toml").read_text()
    block = text.split("# [maintenance.notify.mqtt.tls]", 1)[1].split("\n\n", 1)[0]
    options = dict(re.findall(r"^# (\w+) = (\"[^\"]*\"|\S+)", block, re.M))
    assert set(options) == set(Tls.model_fields)
    assert options["insecure"] == "false" and Tls().insecure is False
    Tls.model_validate({k: tomllib.loads(f"v = {v}")["v"] for k, v in options.items()})


async def test_a_receiver_refusing_the_gateways_log_in_is_reported_at_start_not_at_the_first_alert(
        mosquitto, tmp_path, monkeypatch, caplog):
    """A wrong pager password (or CA) showed only when the first alert was to be sent, at night. The start-up probe
    connects to each receiver (a webhook only with ``probe = true``: a HEAD, never a fake alert) and reports the
    failure in the log, ``valvoja_alert_receiver_up`` and /healthz ``problems``, which clear once it works."""
    from edge.metrics import Metrics
    from edge.notifications import Notifications, notify_secrets
    from maintenance.config import MaintenanceConfig

    monkeypatch.setenv("VALVOJA_TEST_NOTIFY_PW", "not-the-password")
    closed = free_port()
    mcfg = MaintenanceConfig.model_validate({"notify": {
        "mqtt": {"host": mosquitto.host, "port": mosquitto.auth_port, "username": mosquitto.username,
                 "password": "env:VALVOJA_TEST_NOTIFY_PW", "timeout_s": 2.0},
        "webhooks": [{"url": f"http://127.0.0.1:{closed}/probed", "probe": True, "timeout_s": 1.0},
                     {"url": f"http://127.0.0.1:{closed}/not-probed", "timeout_s": 1.0}]}})
    metrics, problems = Metrics(), {}
    notes = Notifications(mcfg, notify_secrets(mcfg), metrics, None, tmp_path)
    notes.problems = problems
    notes.open()
    try:
        with caplog.at_level(logging.ERROR, logger="edge.notifications"):
            await notes.probe()
        mqtt_name, probed, _ = (n.name for n in notes.notifiers)
        assert set(problems) == {f"notify {mqtt_name}", f"notify {probed}"}
        assert "broker refused the connection" in problems[f"notify {mqtt_name}"]
        assert "ConnectError" in problems[f"notify {probed}"]
        assert len([r for r in caplog.records if getattr(r, "event", None) == "notify_probe_failed"]) == 2
        rendered = metrics.render().decode()
        assert f'valvoja_alert_receiver_up{{receiver="{mqtt_name}"}} 0.0' in rendered
        assert "not-probed" not in rendered
        # The password fixed (a reload builds new notifiers): the receiver works and the problem goes.
        notes.notifiers[0]._password = mosquitto.password
        await notes.send(notes.notifiers[0], [_change()])
        assert f"notify {mqtt_name}" not in problems
        assert f'valvoja_alert_receiver_up{{receiver="{mqtt_name}"}} 1.0' in metrics.render().decode()
    finally:
        await notes.close()


async def test_a_gateway_with_a_pager_it_cannot_reach_says_so_in_healthz_at_start(tmp_path):
    """Wired into the gateway: the probe runs in its own task at the start of analytics, and /healthz lists the
    failing receiver while the gateway runs on (collection is not held)."""
    from edge.gateway import Gateway
    from edge.settings import SiteConfig

    cfg = SiteConfig.model_validate({
        "site": {"state_dir": str(tmp_path)}, "http": {"listen": "127.0.0.1:0"},
        "rules": [{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
        "maintenance": {"notify": {"mqtt": {"host": "127.0.0.1", "port": free_port(), "timeout_s": 1.0}}}})
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await asyncio.wait_for(gw.ready.wait(), 10)
        for _ in range(100):
            ok, detail = gw.health()
            if detail["problems"]:
                break
            await asyncio.sleep(0.1)
        assert not ok and not detail["dead_tasks"]
        (problem,) = detail["problems"].values()
        assert "alert receiver failing" in problem and "cannot connect" in problem, problem
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
