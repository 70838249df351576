"""Alert notifications to a real mosquitto broker and to a real local HTTP webhook receiver."""

import asyncio
import json
import threading
import typing
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
from analytics_support import spool_emit
from servers import free_port

from maintenance.alerts import AlertManager, AlertPolicy
from maintenance.notify import WebhookConfig, WebhookNotifier
from maintenance.notify_mqtt import MqttNotifier, MqttNotifyConfig

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _raised():
    m = AlertManager()
    (ch,) = m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=True, t=T0, severity="warning",
                      message="zone C", evidence={"zone": "C", "readings": [{"tag": "P-101.vib_de", "time": T0,
                                                                             "value": 3.2}]})
    return ch


async def _through_broker(mosquitto, subscription: str, ch) -> mqtt.MQTTMessage:
    """Send ``ch`` with an `MqttNotifier` and return what a subscriber to ``subscription`` received."""
    got: list[mqtt.MQTTMessage] = []
    ready, arrived = threading.Event(), threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe(subscription, qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = lambda c, u, msg: (got.append(msg), arrived.set())
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    try:
        assert await asyncio.to_thread(ready.wait, 10)
        n = MqttNotifier(MqttNotifyConfig(host=mosquitto.host, port=mosquitto.port))
        try:
            ok, detail = await n.send(ch)
        finally:
            await n.aclose()
        assert ok, detail
        assert await asyncio.to_thread(arrived.wait, 10)
        return got[0]
    finally:
        sub.loop_stop()
        sub.disconnect()


async def test_mqtt_notification_received(mosquitto):
    ch = _raised()
    msg = await _through_broker(mosquitto, "valvoja/alerts/#", ch)
    body = json.loads(msg.payload)
    assert msg.topic == "valvoja/alerts/P-101/iso20816"
    assert body["event"] == "raised" and body["id"] == ch.alert.id and body["evidence"]["zone"] == "C"


async def test_mqtt_notifier_reports_unreachable_broker():
    n = MqttNotifier(MqttNotifyConfig(port=free_port(), timeout_s=0.5))
    ok, detail = await n.send(_raised())
    await n.aclose()
    assert not ok and "not connected" in detail


class _Receiver(BaseHTTPRequestHandler):
    bodies: typing.ClassVar[list[dict]] = []
    requests: typing.ClassVar[list[tuple]] = []  # every POST as it arrived, refused ones too: (headers, raw body)
    fail_first = 0

    def do_POST(self):
        data = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.requests.append((self.headers, data))
        if _Receiver.fail_first > 0:
            _Receiver.fail_first -= 1
            self.send_response(503)
        else:
            _Receiver.bodies.append(json.loads(data))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


async def test_webhook_retried_until_delivered(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.fail_first = [], 2
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        n = WebhookNotifier(WebhookConfig(url=url, attempts=3))
        ok, detail = await n.send(_raised())
        assert ok and detail == "HTTP 204"
        assert _Receiver.bodies[0]["asset"] == "P-101" and _Receiver.bodies[0]["event"] == "raised"
        _Receiver.fail_first = 5
        ok, detail = await n.send(_raised())
        assert not ok and detail == "HTTP 503"
        await n.aclose()
    finally:
        server.shutdown()
        server.server_close()


def test_notify_password_must_be_a_reference():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="must be a reference 'env:NAME' or 'file:/path'"):
        MqttNotifyConfig(username="alerts", password="hunter2")
    assert MqttNotifyConfig(username="alerts", password="env:VALVOJA_NOTIFY_PW").password == "env:VALVOJA_NOTIFY_PW"


async def test_live_notifications_keep_their_order_through_retries(tmp_path, monkeypatch):
    """Alert changes go to the notifiers from one queue, in order: a "cleared" never overtakes the "raised" that
    a receiver refused twice (it did when each group of changes had a task of its own)."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    class RefusesRaises(_Receiver):  # refuses the first two deliveries of "raised", takes everything else
        def do_POST(self):
            data = self.rfile.read(int(self.headers["content-length"]))
            body = json.loads(data)
            if body["event"] == "raised" and RefusesRaises.fail_first > 0:
                RefusesRaises.fail_first -= 1
                self.send_response(503)
            else:
                _Receiver.bodies.append(body)
                self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusesRaises)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, RefusesRaises.fail_first = [], 2
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.2)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0},
                                   "notify": {"webhooks": [{"url": url, "attempts": 3}]}})

    emit = spool_emit()

    an = Analytics(site, Metrics(), emit, None)
    task = asyncio.create_task(an.run())
    try:
        for i, v in enumerate((20.0, 0.0)):  # raised; cleared while the receiver is refusing the raise
            t = datetime(2026, 3, 1, 8, 0, i, tzinfo=UTC)
            an.offer([Reading("P1.p", t, v, t)], t)
            for _ in range(100):
                if RefusesRaises.fail_first < 2:  # the first attempt was refused
                    break
                await asyncio.sleep(0.01)
        for _ in range(100):
            if len(_Receiver.bodies) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [b["event"] for b in _Receiver.bodies] == ["raised", "cleared"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.shutdown()
        server.server_close()


async def test_live_notifications_wait_for_a_receiver_that_is_down(tmp_path, monkeypatch):
    """A receiver down longer than a send's own retries (a restart of the paging service, a broker update) lost
    every change of that time: the outbox tried each once and went on, though its queue is there to hold them
    ("dropped when a receiver stays down that long", docs/operations.md). Now a change waits at the head of its
    receiver's queue until delivered, in order; a change the receiver refuses (HTTP 4xx) is not sent again."""
    from edge import notifications
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    class RefusesOne(_Receiver):  # takes everything but a 400 for the rule "bad"
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if body["kind"] == "rule:bad":
                self.send_response(400)
            else:
                _Receiver.bodies.append(body)
                self.send_response(204)
            self.end_headers()

    port = free_port()
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.2)
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0},
                             {"name": "bad", "tag": "P2.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0, "reopen_within_s": 0},
                                   "notify": {"webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "attempts": 2}]}})

    emit = spool_emit()

    _Receiver.bodies = []
    an = Analytics(site, Metrics(), emit, None)
    task = asyncio.create_task(an.run())
    server = None
    try:
        for i, (tag, v) in enumerate((("P1.p", 20.0), ("P1.p", 0.0), ("P2.p", 20.0), ("P1.p", 30.0))):
            t = datetime(2026, 3, 1, 8, 0, i, tzinfo=UTC)
            an.offer([Reading(tag, t, v, t)], t)
        await asyncio.sleep(1.0)  # the receiver is down all this time
        server = ThreadingHTTPServer(("127.0.0.1", port), RefusesOne)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for _ in range(100):
            if len(_Receiver.bodies) >= 3:
                break
            await asyncio.sleep(0.05)
        assert [(b["kind"], b["event"]) for b in _Receiver.bodies] == [
            ("rule:hi", "raised"), ("rule:hi", "cleared"), ("rule:hi", "raised")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            server.shutdown()
            server.server_close()


async def test_mqtt_topic_of_a_rule_named_with_mqtt_wildcards(mosquitto):
    """Rule names are free text: one named "Pump #2 hot" (or "+10 % load") made every MQTT notification of its
    alerts fail (paho refuses wildcards in a topic), and a '/' in a name split the kind over topic levels, out
    of reach of a subscription to ``<prefix>/+/+``. Reserved characters become '_' in the topic."""
    (ch,) = AlertManager().observe(asset="P-101", tag="P-101.t", kind="rule:Pump #2 in/out +hot", active=True, t=T0)
    msg = await _through_broker(mosquitto, "valvoja/alerts/+/+", ch)
    assert msg.topic == "valvoja/alerts/P-101/rule:Pump _2 in_out _hot"
    assert json.loads(msg.payload)["kind"] == "rule:Pump #2 in/out +hot"  # the payload keeps the name


async def test_notifications_go_on_after_the_watchdog_restarts_analytics(tmp_path):
    """The watchdog restarts a failed analytics task by calling ``run`` again on the same object. Each run added
    its notifiers to those of the run before, which it had closed: the old outbox's sends failed for good, and a
    receiver got every later change once per restart, or, for a closed one, an error per change."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies = []
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0}, "notify": {"webhooks": [{"url": url}]}})

    emit = spool_emit()

    an = Analytics(site, Metrics(), emit, None)
    try:
        for i, v in enumerate((20.0, 0.0)):  # raised in the first run, cleared in the second
            task = asyncio.create_task(an.run())
            t = datetime(2026, 3, 1, 8, 0, i, tzinfo=UTC)
            an.offer([Reading("P1.p", t, v, t)], t)
            for _ in range(100):
                if len(_Receiver.bodies) > i:
                    break
                await asyncio.sleep(0.05)
            task.cancel()  # as the watchdog does before it starts the task again
            await asyncio.gather(task, return_exceptions=True)
        assert [b["event"] for b in _Receiver.bodies] == ["raised", "cleared"]
        assert len(an.notifications.notifiers) == 1
    finally:
        server.shutdown()
        server.server_close()


class _Recorder(BaseHTTPRequestHandler):
    """Takes every POST and keeps (path, Authorization header)."""

    seen: typing.ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        _Recorder.seen.append((self.path, self.headers.get("authorization")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


async def test_webhook_url_and_header_values_come_from_references(tmp_path, monkeypatch, restore_logging):
    """A webhook's URL (its token) and header values (Authorization) could only be written literally in the site
    file: ``env:`` / ``file:`` were sent as they are ("Authorization: env:HOOK_AUTH"; a ``file:`` URL refused by
    httpx). Now both are references resolved at start, and the secret is in no name, message or repr."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    token = "s3cr3t-path-token"
    (tmp_path / "hook_url").write_text(f"http://127.0.0.1:{server.server_address[1]}/hooks/{token}?key=q-{token}\n")
    (tmp_path / "hook_url").chmod(0o600)
    monkeypatch.setenv("HOOK_AUTH", f"Bearer {token}-auth")
    import io

    from edge import logs

    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)  # as the gateway logs: httpx said "HTTP Request: POST <url>" at INFO
    try:
        cfg = WebhookConfig(url=f"file:{tmp_path / 'hook_url'}", headers={"Authorization": "env:HOOK_AUTH"})
        n = WebhookNotifier(cfg)
        ok, detail = await n.send(_raised())
        await n.aclose()
    finally:
        server.shutdown()
        server.server_close()
    assert ok, detail
    assert _Recorder.seen == [(f"/hooks/{token}?key=q-{token}", f"Bearer {token}-auth")]
    for text in (n.name, repr(n), repr(cfg), str(cfg), out.getvalue()):
        assert token not in text, text


async def test_a_failing_webhook_says_so_without_its_secrets(tmp_path, monkeypatch, caplog):
    """The failure log line carried the whole URL (``self.cfg.url``, query string and all) although the notifier's
    name left the query out because "it may carry a key"; a user:password@ or a token in the path went to the logs
    and into alert_events."""
    import logging

    token = "s3cr3t-path-token"
    port = free_port()  # nothing listens
    monkeypatch.setenv("HOOK_URL", f"http://hook:pw-{token}@127.0.0.1:{port}/hooks/{token}?key=q-{token}")
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    for url in (f"http://127.0.0.1:{port}/hooks?key=q-{token}", "env:HOOK_URL"):
        caplog.clear()
        n = WebhookNotifier(WebhookConfig(url=url, attempts=2, timeout_s=1))
        with caplog.at_level(logging.DEBUG):
            ok, detail = await n.send(_raised())
        await n.aclose()
        assert not ok
        assert f"127.0.0.1:{port}" in n.name, n.name  # says where it goes
        for text in (detail, n.name, caplog.text):
            assert token not in text, (url, text)


def test_webhook_credentials_written_in_the_file_are_refused():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="password"):
        WebhookConfig(url="https://alerts:hunter2@hooks.example.com/x")
    with pytest.raises(pydantic.ValidationError, match="env:NAME"):
        WebhookConfig(url="https://hooks.example.com/x", headers={"Authorization": "Bearer abc"})
    with pytest.raises(pydantic.ValidationError, match="http"):
        WebhookConfig(url="ftp://hooks.example.com/x")
    ok = WebhookConfig(url="https://hooks.example.com/x", headers={"Authorization": "file:/run/secrets/hook",
                                                                     "X-Source": "valvoja"})
    assert ok.headers["X-Source"] == "valvoja"


def test_check_config_resolves_the_webhook_references(tmp_path, monkeypatch):
    """An unset variable behind a webhook's URL or header passed check-config and a SIGHUP reload, and failed only
    when live analytics started its notifiers (the task died at every watchdog restart)."""
    import pytest

    from edge import settings
    from edge.errors import ConfigError
    from edge.service import preflight

    monkeypatch.delenv("HOOK_AUTH_UNSET", raising=False)
    (tmp_path / "site.toml").write_text("""
[[maintenance.assets]]
name = "P-1"
process_tags = ["P-1.t"]

[[maintenance.notify.webhooks]]
url = "https://hooks.example.com/alerts"
headers = { Authorization = "env:HOOK_AUTH_UNSET" }
""")
    cfg = settings.load(tmp_path / "site.toml")
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert any("maintenance.notify.webhooks[0].headers.Authorization" in p and "HOOK_AUTH_UNSET" in p
               for p in err.value.problems), err.value.problems


async def test_escalations_go_out_at_once_while_the_database_does_not_answer(tmp_path, own_pg_server):
    """Before an escalation is sent the gateway asks the database whether the console acknowledged the alert
    meanwhile. With the database not answering (SIGSTOP: a hung server or a cut network path) each question waited
    for a 5 s connect timeout, one escalation after the other and per receiver, in the receiver's queue: a plant-wide
    escalation of 12 alerts held every later notification (a new alert too) for a minute, 100 alerts for over 8.
    Now one bounded question per group, not asked again for a while after it failed; the escalations are sent,
    marked as not checked against the console (``detail.acknowledgement``)."""
    import os
    import signal
    import time

    import psycopg

    from edge.analytics import Analytics
    from edge.db.migrate import migrate
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    dsn = own_pg_server.create_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.fail_first = [], 0
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    n = 12
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": f"hi{i}", "tag": f"P{i}.p", "kind": "threshold", "high": 10.0}
                             for i in range(n + 1)],
                      maintenance={"alerts": {"clear_after_s": 600, "escalate_after_s": 60},
                                   "notify": {"webhooks": [{"url": url}]}})

    emit = spool_emit()

    async def received(count: int, within: float) -> float:
        start = time.monotonic()
        for _ in range(int(within / 0.05)):
            if len(_Receiver.bodies) >= count:
                break
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    an = Analytics(site, Metrics(), emit, dsn)
    task = asyncio.create_task(an.run())
    stopped = False
    try:
        t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
        an.offer([Reading(f"P{i}.p", t0, 20.0, t0) for i in range(n)], t0)
        await received(n, 15)
        assert [b["event"] for b in _Receiver.bodies] == ["raised"] * n
        os.kill(own_pg_server.proc.pid, signal.SIGSTOP)
        stopped = True
        t1 = t0.replace(minute=1, second=1)  # every alert unacknowledged for 61 s: all escalate
        an.offer([Reading("P0.p", t1, 20.0, t1), Reading(f"P{n}.p", t1, 20.0, t1)], t1)  # and a new alert
        took = await received(2 * n + 1, 40)
        events = [(b["asset"], b["event"]) for b in _Receiver.bodies[n:]]
        assert events[0] == (f"P{n}", "raised") and sorted(events[1:]) == sorted((f"P{i}", "escalated")
                                                                                 for i in range(n))
        assert took < 10, f"{n} escalations and a new alert took {took:.0f} s to reach the receiver"
        assert {b["detail"].get("acknowledgement") for b in _Receiver.bodies[n + 1:]} == {"unverified"}
    finally:
        if stopped:
            os.kill(own_pg_server.proc.pid, signal.SIGCONT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.shutdown()
        server.server_close()


async def test_notifications_a_receiver_has_not_taken_survive_a_restart_of_the_gateway(tmp_path, monkeypatch):
    """The paging webhook is down (a restart of the paging service) when an alert is raised and cleared, and the
    gateway stops meanwhile (a reload: SIGHUP builds a new gateway; an upgrade; a crash). The changes waited for the
    receiver in memory only and were lost with the process: the alert was stored but nobody was ever paged. Now they
    are kept on disk (``<state_dir>/notify_outbox.db``) and the next start sends them first, in order, each once, with
    an id that is the same for every copy of a change (``notification_id``, header ``Idempotency-Key``)."""
    from edge import notifications
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    class Keeps(_Receiver):
        keys: typing.ClassVar[list[str]] = []

        def do_POST(self):
            Keeps.keys.append(self.headers.get("idempotency-key"))
            super().do_POST()

    port = free_port()
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.2)
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0},
                                   "notify": {"webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "attempts": 1}]}})

    emit = spool_emit()

    _Receiver.bodies, _Receiver.fail_first, Keeps.keys = [], 0, []
    before = Analytics(site, Metrics(), emit, None)  # the gateway before the restart
    task = asyncio.create_task(before.run())
    for i, v in enumerate((20.0, 0.0)):  # raised, cleared: the receiver is down
        t = datetime(2026, 3, 1, 8, 0, i, tzinfo=UTC)
        before.offer([Reading("P1.p", t, v, t)], t)
    for _ in range(100):
        if before.alert_changes >= 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # tried and failed a few times
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert _Receiver.bodies == []

    server = ThreadingHTTPServer(("127.0.0.1", port), Keeps)  # the receiver is back
    threading.Thread(target=server.serve_forever, daemon=True).start()
    after = Analytics(site, Metrics(), emit, None)  # the gateway after it
    task = asyncio.create_task(after.run())
    try:
        for _ in range(100):
            if len(_Receiver.bodies) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and nothing more
        assert [b["event"] for b in _Receiver.bodies] == ["raised", "cleared"]
        ids = [b["notification_id"] for b in _Receiver.bodies]
        assert Keeps.keys == ids and len(set(ids)) == 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        again = Analytics(site, Metrics(), emit, None)  # a third start sends nothing again
        task = asyncio.create_task(again.run())
        await asyncio.sleep(0.3)
        assert len(_Receiver.bodies) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.shutdown()
        server.server_close()


async def test_an_acknowledgement_and_a_clear_made_in_the_console_reach_the_receivers(tmp_path, pg_dsn):
    """The pager got "raised" (and "escalated") from the gateway but never heard that an engineer acknowledged or
    cleared the alert in the console: its incident stayed open and it went on paging the on-call. The gateway's sync
    sees both and sends them like its own changes ("acknowledged" is a new event; a "cleared" names who)."""
    import psycopg

    from edge.analytics import Analytics
    from edge.db.migrate import migrate
    from edge.metrics import Metrics
    from edge.settings import SiteConfig
    from maintenance import store

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.fail_first = [], 0
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": f"hi{i}", "tag": f"P{i}.p", "kind": "threshold", "high": 10.0} for i in (1, 2)],
                      maintenance={"notify": {"webhooks": [{"url": f"http://127.0.0.1:{server.server_address[1]}/h"}]}})

    emit = spool_emit()

    an = Analytics(site, Metrics(), emit, pg_dsn)
    task = asyncio.create_task(an.run())
    try:
        for _ in range(100):
            if an._synced:
                break
            await asyncio.sleep(0.05)
        changes = [c for i in (1, 2) for c in an.manager.observe(asset=f"P{i}", tag=f"P{i}.p", kind="rule:hi",
                                                                  active=True, t=T0)]
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await store.apply_changes(conn, changes)
            assert await store.acknowledge(conn, changes[0].alert.id, "anna", "on it")
            assert await store.clear(conn, changes[1].alert.id, "bob")
            await an.sync_once(conn)
            await an.sync_once(conn)  # once each
        for _ in range(100):
            if len(_Receiver.bodies) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        got = {(b["asset"], b["event"]): b for b in _Receiver.bodies}
        assert sorted(got) == [("P1", "acknowledged"), ("P2", "cleared")]
        assert got["P1", "acknowledged"]["acknowledged_by"] == "anna"
        assert got["P2", "cleared"]["detail"] == {"by": "bob"} and got["P2", "cleared"]["cleared_at"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.shutdown()
        server.server_close()


async def test_a_machine_going_from_warning_to_critical_reaches_a_webhook_with_the_default_events():
    """A bearing in ISO zone C (warning, paged) moves into zone D (critical: damage). The alert absorbs it as an
    "updated" change, and webhooks take no "updated" by default (every flap of a condition is one): the pager heard
    of zone D only at the next escalation, an hour later. A rise of severity goes to receivers of "escalated"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.fail_first = [], 0
    n = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    try:
        m = AlertManager()
        changes = []
        for s, (active, zone, sev) in enumerate([(True, "C", "warning"), (False, "B", "warning"),
                                                 (True, "C", "warning"), (True, "D", "critical")]):
            changes += m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=active,
                                 t=T0.replace(second=s), severity=sev, message=f"zone {zone}")
        assert [c.event for c in changes] == ["raised", "updated", "updated"]  # a flap, then zone D
        for ch in changes:
            await n.send(ch)
        assert [(b["event"], b["severity"]) for b in _Receiver.bodies] == [("raised", "warning"),
                                                                           ("updated", "critical")]
        assert _Receiver.bodies[1]["detail"] == {"severity_was": "warning"}
    finally:
        await n.aclose()
        server.shutdown()
        server.server_close()


async def test_publish_sends_one_receivers_changes_in_their_order(pg_dsn):
    """`maintenance.publish.publish` (the documented way to plug maintenance into another process) sent all the
    changes of a call to a receiver at once: a "cleared" overtook its "raised" whenever the receiver answered the
    first request more slowly, and the pager closed an incident before opening it (left open for good)."""
    import time

    import psycopg

    from edge.db.migrate import migrate
    from maintenance.publish import publish

    class SlowOnRaise(_Receiver):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if body["event"] == "raised":
                time.sleep(0.3)
            _Receiver.bodies.append(body)
            self.send_response(204)
            self.end_headers()

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowOnRaise)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies = []
    n = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    m = AlertManager(AlertPolicy(clear_after_s=0))
    changes = (m.observe(asset="P-101", tag="P-101.t", kind="rule:hot", active=True, t=T0)
               + m.observe(asset="P-101", tag="P-101.t", kind="rule:hot", active=False, t=T0.replace(second=1)))
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await publish(conn, [], changes, [n])
        assert [b["event"] for b in _Receiver.bodies] == ["raised", "cleared"]
    finally:
        await n.aclose()
        server.shutdown()
        server.server_close()


async def test_a_receiver_far_behind_loses_updates_but_never_an_alerts_clear(tmp_path, monkeypatch):
    """A receiver down long enough to fill its queue: every new change was dropped alike, the clears too, so once it
    was back it showed the alerts it had been sent as open for good. Now only "updated" (one more flap of an alert
    it knows) is dropped while behind; a raise or a clear still waits for it, up to a hard bound. (Changes come from
    the analysis and from the sync at once: neither may ever meet a full queue, which ended the sync loop once.)"""
    from edge import notifications
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    monkeypatch.setattr(notifications, "NOTIFY_QUEUE_GROUPS", 2)
    monkeypatch.setattr(notifications, "NOTIFY_QUEUE_GROUPS_MAX", 4)
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0},
                             {"name": "hi2", "tag": "P2.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 30},
                                   "notify": {"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook",
                                                            "events": ["raised", "updated", "cleared"]}]}})

    emit = spool_emit()

    an = Analytics(site, Metrics(), emit, None)
    an.notifications.open()  # the queues, no sending task: the receiver is down and its queue fills
    try:
        (box,) = an.notifications._outboxes
        m = an.manager

        def obs(asset: str, active: bool, s: int) -> list:
            return m.observe(asset=asset, tag=f"{asset}.p", kind=f"rule:{'hi' if asset == 'P1' else 'hi2'}",
                             active=active, t=T0 + timedelta(seconds=s))

        async def queue(*changes) -> None:
            await asyncio.gather(*(an.notifications.queue(c) for c in changes))

        await queue(obs("P1", True, 0), obs("P2", True, 0))  # two raises: the queue is at its soft bound
        obs("P1", False, 1)
        flap = obs("P1", True, 2)
        assert [c.event for c in flap] == ["updated"]
        await queue(flap)  # dropped
        assert box.queue.qsize() == 2 and box.dropped == 1
        obs("P1", False, 3)
        obs("P2", False, 3)
        await queue(obs("P1", False, 100), obs("P2", False, 100))  # both clears wait, beyond the soft bound
        assert box.queue.qsize() == 4 and box.dropped == 1
        await queue(obs("P1", True, 200))  # at the hard bound even a raise is dropped
        assert box.queue.qsize() == 4 and box.dropped == 2
        waiting = [c.event for changes, _ in list(box.queue._queue) for c in changes]
        assert waiting == ["raised", "raised", "cleared", "cleared"]
        # What waits is on disk for the next start, what was dropped is not; the gauge says how far behind it is.
        assert [c.event for _, c in an.notifications._outbox_file.pending(box.key)] == waiting
        assert an.notifications.metrics.notify_waiting.labels(box.notifier.name)._value.get() == 4
    finally:
        for n in an.notifications.notifiers:
            await n.aclose()


async def test_an_escalation_is_sent_while_a_lock_holds_the_alerts_table(pg_dsn):
    """The database answers but the alerts table is locked (a migration of the console at its start, a DBA's
    VACUUM FULL): the question whether the escalated alert was acknowledged waited for the lock without a bound,
    and the receiver's notifications, every later one too, waited with it. Bounded now: sent, marked unverified."""
    import time

    import psycopg

    from edge.analytics import Analytics
    from edge.db.migrate import migrate
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)

    emit = spool_emit()

    an = Analytics(SiteConfig(rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}]), Metrics(),
                   emit, pg_dsn)
    an.manager.policy = AlertPolicy(escalate_after_s=60)
    an.manager.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=T0)
    escalated = an.manager.tick(T0.replace(minute=2))
    sent = []

    class Receiver:
        name = "pager"

        async def send(self, ch):
            sent.append(ch.detail.get("acknowledgement"))
            return True, "HTTP 200"

    with psycopg.connect(pg_dsn) as locker:
        locker.execute("LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE")
        start = time.monotonic()
        await asyncio.wait_for(an.notifications.send(Receiver(), escalated), 30)
        took = time.monotonic() - start
        locker.rollback()
    assert sent == ["unverified"] and took < 10


async def test_a_literal_webhook_url_s_path_is_in_no_name_or_message(caplog):
    """A webhook URL written in the file was named ``webhook <scheme://host:port><path>``: the path of a Slack-style
    URL (``/services/T0/B0/<token>``) is its credential, and the name is the ``receiver`` label on /metrics, in
    logs and in alert_events. Now such a receiver is named by its origin and a short hash of its path, which keeps
    two receivers on one host apart without showing either path."""
    import logging

    token = "s3cr3tpathtoken"
    port = free_port()  # nothing listens
    a = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{port}/services/T0/B0/{token}", attempts=1,
                                      timeout_s=1))
    b = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{port}/services/T0/B0/other", attempts=1))
    with caplog.at_level(logging.DEBUG):
        ok, detail = await a.send(_raised())
    await a.aclose()
    await b.aclose()
    assert not ok
    assert a.name.startswith(f"webhook http://127.0.0.1:{port} ") and a.name != b.name, (a.name, b.name)
    for text in (detail, a.name, repr(a), caplog.text):
        assert token not in text and "/services" not in text, text


async def test_an_escalation_waiting_for_a_receiver_that_was_down_is_not_paged_once_acknowledged(pg_dsn, monkeypatch,
                                                                                                 tmp_path):
    """The paging webhook is down when an alert escalates; the escalation waits at the head of its queue. Meanwhile
    someone acknowledges the alert in the console. The database was asked only before the first attempt, so once the
    receiver was back it paged the escalation of an alert a person had taken long before. Asked again between
    attempts (at most every ACK_CHECK_FRESH_S), it is skipped."""
    import psycopg

    from edge import notifications
    from edge.db.migrate import migrate
    from edge.metrics import Metrics
    from maintenance import store

    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.1)
    monkeypatch.setattr(notifications, "ACK_CHECK_FRESH_S", 0.2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    m = AlertManager(AlertPolicy(escalate_after_s=60))
    (raised,) = m.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=T0)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, [raised])
    escalated = m.tick(T0.replace(minute=2))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.requests, _Receiver.fail_first = [], [], 10**6  # down: 503 to everything
    metrics = Metrics()
    notes = notifications.Notifications(None, notifications.NotifySecrets(), metrics, pg_dsn, tmp_path)
    hook = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/hook", attempts=1))
    try:
        sending = asyncio.create_task(notes.send(hook, escalated))
        for _ in range(100):
            if len(_Receiver.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(_Receiver.requests) >= 2 and not sending.done()  # tried, not taken: waiting
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            assert await store.acknowledge(conn, raised.alert.id, "anna", "on it")
        await asyncio.sleep(0.5)  # down a while longer than ACK_CHECK_FRESH_S
        _Receiver.fail_first = 0  # the receiver is back
        await asyncio.wait_for(sending, 10)
        assert _Receiver.bodies == []  # not paged
        assert metrics.notifications.labels("skipped")._value.get() == 1
    finally:
        await hook.aclose()
        server.shutdown()
        server.server_close()
