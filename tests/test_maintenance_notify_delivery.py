"""Delivery of alert notifications as the on-call engineer and the receiving system see it: a real local HTTP
receiver (or a raw socket where a well-behaved server cannot misbehave enough), no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from analytics_support import spool_emit
from test_maintenance_notify import _raised

from edge import notifications
from edge.metrics import Metrics
from edge.notifications import Notifications, notify_secrets
from maintenance.alerts import AlertManager, AlertPolicy
from maintenance.config import MaintenanceConfig
from maintenance.notify import Refused, WebhookConfig, WebhookNotifier


class _Switchable(BaseHTTPRequestHandler):
    """Answers every POST and HEAD with ``status`` (and ``location``), counting the POSTs."""

    status: typing.ClassVar[int] = 204
    location: typing.ClassVar[str | None] = None
    posts: typing.ClassVar[list[str]] = []  # the event of each POST, answered or not

    def do_POST(self):
        import json

        _Switchable.posts.append(json.loads(self.rfile.read(int(self.headers["content-length"])))["event"])
        self.send_response(_Switchable.status)
        if _Switchable.location:
            self.send_header("Location", _Switchable.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.send_response(_Switchable.status)
        if _Switchable.location:
            self.send_header("Location", _Switchable.location)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def _receiver(status: int = 204, location: str | None = None) -> Iterator[str]:
    _Switchable.status, _Switchable.location, _Switchable.posts = status, location, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Switchable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def _raised_and_cleared():
    """The "raised" and the "cleared" of one alert."""
    from datetime import timedelta

    from test_maintenance_notify import T0

    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))
    (raised,) = m.observe(asset="P-101", tag="P-101.t", kind="rule:hot", active=True, t=T0)
    (cleared,) = m.observe(asset="P-101", tag="P-101.t", kind="rule:hot", active=False, t=T0 + timedelta(seconds=1))
    assert (raised.event, cleared.event) == ("raised", "cleared")
    return raised, cleared


async def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_receiver_that_goes_down_after_it_worked_is_down_in_the_gauge_and_healthz(tmp_path, monkeypatch):
    """The runbook's signs of a receiver that is down (docs/operations.md, "An alert receiver is down") are
    ``valvoja_alert_receiver_up`` 0 and a /healthz problem. Only the start-up probe set them: a webhook that took
    one alert and then went down for an hour stayed at 1 and healthy while every later alert waited; the only sign
    was one ``failed`` count per change. Now a failed notification sets both, and a delivered one clears them."""
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.1)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    with _receiver() as url:
        mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [{"url": url, "attempts": 1}]}})
        metrics, problems = Metrics(), {}
        notes = Notifications(mcfg, notify_secrets(mcfg), metrics, None, tmp_path)
        notes.problems = problems
        notes.open()
        (n,) = notes.notifiers
        gauge = f'valvoja_alert_receiver_up{{receiver="{n.name}"}}'
        try:
            raised, cleared = _raised_and_cleared()
            await notes.send(n, [raised])
            assert f"{gauge} 1.0" in metrics.render().decode()
            _Switchable.status = 503  # the receiver goes down
            sending = asyncio.create_task(notes.send(n, [cleared]))
            await _until(lambda: len(_Switchable.posts) >= 3)  # failed and tried again
            assert f"{gauge} 0.0" in metrics.render().decode()
            assert "HTTP 503" in problems[f"notify {n.name}"]
            _Switchable.status = 204  # back
            await asyncio.wait_for(sending, 10)
            assert f"{gauge} 1.0" in metrics.render().decode() and problems == {}
            assert _Switchable.posts[0] == "raised" and _Switchable.posts[-1] == "cleared"
        finally:
            await notes.close()


async def test_the_waiting_gauge_rises_while_a_receiver_is_down_and_falls_when_it_takes_them(tmp_path, monkeypatch):
    """``valvoja_alert_notifications_waiting``: an operator sees a receiver falling behind before the queue's bound
    drops anything (before, only the dropped count showed it, once it was too late)."""
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.1)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    with _receiver(status=503) as url:
        mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [{"url": url, "attempts": 1}]}})
        metrics = Metrics()
        notes = Notifications(mcfg, notify_secrets(mcfg), metrics, None, tmp_path)
        notes.open()
        (n,) = notes.notifiers
        waiting = metrics.notify_waiting.labels(n.name)._value.get
        tasks = notes.tasks()
        try:
            raised, cleared = _raised_and_cleared()
            await notes.queue([raised])
            await notes.queue([cleared])
            await _until(lambda: len(_Switchable.posts) >= 2)  # the first failed and is being tried again
            assert waiting() == 2
            _Switchable.status = 204  # back
            await _until(lambda: waiting() == 0)
            assert _Switchable.posts[-2:] == ["raised", "cleared"]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await notes.close()


async def test_a_redirecting_receiver_is_refused_once_not_retried_for_good(tmp_path, monkeypatch):
    """A receiver moved behind a redirect (http:// answered with 301 to https://) answered every attempt with the
    same 3xx, which counted as "down": the first change was sent again every minute for good and every later alert
    of that receiver waited behind it (until 1,000 groups were queued and new ones were dropped). A redirect is not
    followed (the body, the signature and credential headers would go to another address) and is refused like a
    4xx: logged with where it redirects (its origin only: a token may be in the path), and the next change is sent."""
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    with _receiver(301, "https://hooks.example.net:8443/services/T0/SECRET-TOKEN") as url:
        n = WebhookNotifier(WebhookConfig(url=url, attempts=3))
        try:
            ok, detail = await n.send(_raised())
            assert not ok and isinstance(detail, Refused), detail
            assert "redirects to https://hooks.example.net:8443" in detail and "SECRET" not in detail
            assert _Switchable.posts == ["raised"]  # not tried again: the same answer would come
        finally:
            await n.aclose()
        n = WebhookNotifier(WebhookConfig(url=url, probe=True))  # the start-up check says so too
        try:
            problem = await n.probe()
            assert "HTTP 301 to a HEAD request: the receiver redirects to https://hooks.example.net:8443" in problem
            assert "SECRET" not in problem
        finally:
            await n.aclose()
        mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [{"url": url, "attempts": 3}]}})
        notes = Notifications(mcfg, notify_secrets(mcfg), Metrics(), None, tmp_path)
        notes.open()
        try:
            _Switchable.posts = []
            await asyncio.wait_for(notes.send(notes.notifiers[0], list(_raised_and_cleared())), 10)
            assert _Switchable.posts == ["raised", "cleared"]
        finally:
            await notes.close()


@contextmanager
def _dripping(head: bytes, drip: bytes) -> Iterator[str]:
    """A raw HTTP peer: reads the request, sends ``head`` at once, then ``drip`` a byte every 0.2 s (60 s)."""
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(head)
                for b in drip:
                    if stop.wait(0.2):
                        return
                    conn.sendall(bytes([b]))
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        stop.set()
        sock.close()


@pytest.mark.parametrize("where", ["status line", "body"])
async def test_a_receiver_answering_a_byte_at_a_time_does_not_hold_its_queue(where):
    """httpx's timeout is per read: a receiver (or a proxy in front of it) that sends its answer a byte every 0.2 s
    never tripped ``timeout_s = 1``, and the send waited as long as the bytes came (300 of them: 60 s) with every
    later alert of that receiver behind it. Now an attempt gets ``timeout_s`` in all, and the answer's body is not
    read: the status is all that counts."""
    if where == "status line":
        head, drip = b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 300
    else:
        head, drip = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", b"a" * 300
    with _dripping(head, drip) as url:
        n = WebhookNotifier(WebhookConfig(url=url, timeout_s=1.0, attempts=1))
        try:
            t0 = time.monotonic()
            ok, detail = await asyncio.wait_for(n.send(_raised()), 20)
            took = time.monotonic() - t0
        finally:
            await n.aclose()
    if where == "status line":
        assert not ok and "no answer within timeout_s = 1 s" in detail and not isinstance(detail, Refused)
    else:
        assert ok and detail == "HTTP 200"
    assert took < 3, f"the send took {took:.1f} s"


async def test_a_change_being_sent_when_the_watchdog_restarts_analytics_is_sent_first_after_it(tmp_path, monkeypatch):
    """The watchdog restarts a dead analytics task by cancelling and running it again on the same object; the queues
    are kept, but the group being sent (off the queue, waiting for a receiver that was down) was lost with the
    cancelled sender. Its "raised" stayed only in the outbox file: the receiver got the "cleared" alone, and the
    "raised" at the next start of the process, after it, so the receiver showed a cleared alert as open. Now the
    restarted sender goes on with that group first."""
    from datetime import datetime

    from servers import free_port

    from edge.analytics import Analytics
    from edge.records import Reading
    from edge.settings import SiteConfig

    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.1)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)
    port = free_port()
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0},
                                   "notify": {"webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "attempts": 1,
                                                            "timeout_s": 1.0}]}})

    emit = spool_emit()

    def offer(an, second: int, value: float) -> None:
        t = datetime(2026, 3, 1, 8, 0, second, tzinfo=UTC)
        an.offer([Reading("P1.p", t, value, t)], t)

    an = Analytics(site, Metrics(), emit, None)
    task = asyncio.create_task(an.run())
    offer(an, 0, 20.0)  # raised while the receiver is down
    await _until(lambda: an.metrics.notifications.labels("failed")._value.get() >= 1)
    task.cancel()  # the watchdog's restart
    await asyncio.gather(task, return_exceptions=True)
    server = ThreadingHTTPServer(("127.0.0.1", port), _Switchable)
    _Switchable.status, _Switchable.location, _Switchable.posts = 204, None, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    task = asyncio.create_task(an.run())
    try:
        offer(an, 1, 0.0)  # cleared
        await _until(lambda: len(_Switchable.posts) >= 2)
        await asyncio.sleep(0.3)
        assert _Switchable.posts == ["raised", "cleared"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        again = Analytics(site, Metrics(), emit, None)  # the next start of the process: nothing left to send
        task = asyncio.create_task(again.run())
        await asyncio.sleep(0.5)
        assert _Switchable.posts == ["raised", "cleared"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.shutdown()
        server.server_close()


@contextmanager
def _https_receiver(tmp_path, *, client_ca=None, dns: tuple[str, ...] = ("localhost",)) -> Iterator[tuple[str, object]]:
    """A real HTTPS receiver whose certificate a plant CA (not a public one) signed; with ``client_ca`` it requires
    a client certificate from that CA. Yields its URL and the CA."""
    import ssl

    from certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "plant-ca", common_name="Plant CA")
    leaf = ca.issue("receiver", dns=dns, ips=())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca.cert_path)
    _Switchable.status, _Switchable.location, _Switchable.posts = 204, None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Switchable)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://localhost:{server.server_address[1]}/hook", ca
    finally:
        server.shutdown()
        server.server_close()


async def test_a_webhook_over_https_with_a_plant_ca_and_a_client_certificate(tmp_path, caplog):
    """A receiver inside the plant (a CMMS, Node-RED) has an HTTPS certificate from the site's own CA. httpx trusts
    only certifi's public CAs (not even the system store): every POST failed with CERTIFICATE_VERIFY_FAILED, was
    sent again for good, and no webhook setting could change that (nor send a client certificate to a receiver that
    requires one). ``[maintenance.notify.webhooks.tls]`` is the MQTT notifier's table (`edge.tls`): ``ca_file``,
    ``cert_file`` + ``key_file``, ``key_password``, ``insecure``; check-config names a file it cannot read."""
    from certs import CertificateAuthority

    from edge.errors import ConfigError

    with _https_receiver(tmp_path) as (url, ca):
        n = WebhookNotifier(WebhookConfig(url=url, attempts=1, timeout_s=3.0))
        try:
            ok, detail = await n.send(_raised())
        finally:
            await n.aclose()
        assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail and _Switchable.posts == []
        n = WebhookNotifier(WebhookConfig(url=url, attempts=1, timeout_s=3.0, tls={"ca_file": str(ca.cert_path)}))
        try:
            assert await n.send(_raised()) == (True, "HTTP 204")
        finally:
            await n.aclose()
        assert _Switchable.posts == ["raised"]

    clients = CertificateAuthority(tmp_path / "client-ca", common_name="Client CA")
    gw = clients.issue("gw1", client=True)
    with _https_receiver(tmp_path / "m", client_ca=clients) as (url, ca):
        tls = {"ca_file": str(ca.cert_path)}
        n = WebhookNotifier(WebhookConfig(url=url, attempts=1, timeout_s=3.0, tls=tls))
        try:
            ok, detail = await n.send(_raised())  # no client certificate: the receiver refuses the handshake
        finally:
            await n.aclose()
        assert not ok and _Switchable.posts == []
        n = WebhookNotifier(WebhookConfig(url=url, attempts=1, timeout_s=3.0,
                                          tls=tls | {"cert_file": str(gw.cert), "key_file": str(gw.key)}))
        try:
            assert await n.send(_raised()) == (True, "HTTP 204")
        finally:
            await n.aclose()

    # A receiver whose certificate does not name the address used: refused unless insecure, which is said.
    with (_https_receiver(tmp_path / "h", dns=("cmms.plant.local",)) as (url, ca),
          caplog.at_level(logging.WARNING, "maintenance.notify")):
        for insecure, expect in ((False, False), (True, True)):
            n = WebhookNotifier(WebhookConfig(url=url, attempts=1, timeout_s=3.0,
                                              tls={"ca_file": str(ca.cert_path), "insecure": insecure}))
            try:
                ok, detail = await n.send(_raised())
            finally:
                await n.aclose()
            assert ok is expect, detail
        assert [r.event for r in caplog.records if getattr(r, "event", "").endswith("insecure")] == [
            "webhook_tls_insecure"]

    mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [
        {"url": "https://cmms.plant.local/hook", "tls": {"ca_file": str(tmp_path / "missing-ca.pem")}},
        {"url": "http://cmms.plant.local/hook", "tls": {"ca_file": str(ca.cert_path)}}]}})
    with pytest.raises(ConfigError) as err:
        notify_secrets(mcfg)
    assert err.value.problems == [
        f"maintenance.notify.webhooks[0].tls.ca_file: no such file {tmp_path / 'missing-ca.pem'}",
        "maintenance.notify.webhooks[1].tls: the url is not https://: its TLS settings would not be used"]


async def test_an_outbox_that_cannot_be_written_is_counted_and_notifications_still_go_out(tmp_path):
    """``<state_dir>/notify_outbox.db`` not usable (disk full, permissions; here a folder in its place): the
    notifications are no longer kept across a restart. That was only logged, once; a watch on /metrics saw nothing.
    Each failed write is now counted in ``valvoja_analytics_errors_total``, and the changes still go out from memory."""
    from maintenance.outbox import OUTBOX_FILE

    (tmp_path / OUTBOX_FILE).mkdir()
    with _receiver() as url:
        mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [{"url": url}]}})
        metrics = Metrics()
        notes = Notifications(mcfg, notify_secrets(mcfg), metrics, None, tmp_path)
        notes.open()
        senders = notes.tasks()
        try:
            assert metrics.analytics_errors._value.get() == 1  # the file could not be opened
            await notes.queue(list(_raised_and_cleared()))
            await _until(lambda: len(_Switchable.posts) == 2)
            assert _Switchable.posts == ["raised", "cleared"]
        finally:
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            await notes.close()


class _RateLimited(_Switchable):
    """Answers the first POST 429 with ``Retry-After: 2``, the rest 204; keeps when each came."""

    times: typing.ClassVar[list[float]] = []

    def do_POST(self):
        _RateLimited.times.append(time.monotonic())
        _Switchable.status = 429 if len(_RateLimited.times) == 1 else 204
        if _Switchable.status == 429:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(429)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_POST()


async def test_a_rate_limited_receiver_is_sent_the_change_again_when_it_said(tmp_path, monkeypatch):
    """A receiver that rate-limits (a chat or paging service during an alert storm) answers 429 with Retry-After.
    The gateway tried again 0.5 s and 1 s later (``attempts``), then at its own back-off from 1 s: each early try hit
    the limit again and counted against it. Now it waits what the receiver said (at most 600 s), then sends it."""
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.5)
    _RateLimited.times = []
    _Switchable.status, _Switchable.location, _Switchable.posts = 204, None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    mcfg = MaintenanceConfig.model_validate({"notify": {"webhooks": [{"url": url, "attempts": 3}]}})
    notes = Notifications(mcfg, notify_secrets(mcfg), Metrics(), None, tmp_path)
    notes.open()
    try:
        await asyncio.wait_for(notes.send(notes.notifiers[0], [_raised()]), 10)
    finally:
        await notes.close()
        server.shutdown()
        server.server_close()
    first, *later = _RateLimited.times
    assert len(later) == 1 and later[0] - first >= 1.9, [round(t - first, 2) for t in later]
    assert _Switchable.posts == ["raised"]


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded():
    from datetime import datetime, timedelta
    from email.utils import format_datetime

    from maintenance.notify import RETRY_AFTER_MAX_S, retry_after_s

    assert retry_after_s("30") == 30.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("86400") == RETRY_AFTER_MAX_S
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= retry_after_s(in_a_minute) <= 60


@contextlib.asynccontextmanager
async def _live(tmp_path, url: str):
    """Ingest (a real spool file) feeding live analytics with one threshold rule and one webhook, as the gateway
    wires them, both running; from the commit of the first reading on, another connection holds the spool file's
    write lock (a backup, `sqlite3` opened on it), so the batch with the alert that reading raises waits for it.
    Yields (ingest, analytics, its task, the spool path, the lock's connection, offer(second, value))."""
    import sqlite3
    from datetime import datetime

    from edge.analytics import Analytics
    from edge.pipeline import Ingest, SpoolWorker
    from edge.records import Batch, Reading
    from edge.settings import SiteConfig, Validation
    from edge.spool import Spool
    from edge.validate import Validator

    path = tmp_path / "spool.db"
    worker = SpoolWorker(Spool(path, max_bytes=100 << 20))
    metrics = Metrics()
    ingest = Ingest(worker, Validator({}, Validation()), metrics, queue_batches=16)
    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 0},
                                   "notify": {"webhooks": [{"url": url, "attempts": 1, "timeout_s": 1.0}]}})
    an = Analytics(site, metrics, ingest.emit, None)
    blocker = sqlite3.connect(path, isolation_level=None)

    def offer_then_lock(readings, latest) -> None:
        if readings and not blocker.in_transaction:
            blocker.execute("BEGIN IMMEDIATE")
        an.offer(readings, latest)

    ingest.on_spooled, ingest.analytics_tags = offer_then_lock, an.tags()

    async def offer(second: int, value: float) -> None:
        t = datetime(2026, 3, 1, 8, 0, second, tzinfo=UTC)
        await ingest.emit(Batch("mq", [Reading("P1.p", t, value, t)]))

    tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(an.run())]
    try:
        yield ingest, an, tasks[1], path, blocker, offer
    finally:
        blocker.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.shutdown()


def _alert_records(path) -> list[str]:
    """The alert changes the spool file holds, by event."""
    from edge.spool import Spool

    spool = Spool(path, max_bytes=100 << 20)
    try:
        return [body["event"] for b in spool.peek(10_000) for kind, body in b.records if kind == "alert_change"]
    finally:
        spool.close()


async def test_an_alert_is_notified_only_once_the_spool_holds_it(tmp_path):
    """edge/analytics.py promised "notifications are sent once the change is in the spool", but queued them right
    after handing the batch to the ingest queue: with the spool file held by another process (a backup, `sqlite3`
    opened on it) the webhook got "raised" while the alert was in memory only, and a crash then paged an alert the
    database never got (its "cleared" never came; the condition raised it again under a new id after the restart).
    Now the page waits for the commit."""
    with _receiver() as url:
        async with _live(tmp_path, url) as (_, an, _, path, blocker, offer):
            await offer(0, 20.0)
            await _until(lambda: an.alert_changes >= 1)
            await asyncio.sleep(1.5)
            assert _Switchable.posts == []  # the alert is not in the spool: not paged yet
            blocker.execute("ROLLBACK")
            await _until(lambda: _Switchable.posts == ["raised"])
            assert _alert_records(path) == ["raised"]
            assert an.metrics.notified_unstored._value.get() == 0


async def test_a_page_does_not_wait_for_a_stuck_spool_longer_than_the_bound(tmp_path, monkeypatch, caplog):
    """The other side: a spool that does not take the alert (held, full, a failing disk) holds its page back for
    NOTIFY_STORE_WAIT_S at most; then it is sent, logged once (``notify_unstored``) and counted."""
    from edge import analytics

    monkeypatch.setattr(analytics, "NOTIFY_STORE_WAIT_S", 0.5)
    caplog.set_level(logging.WARNING, logger="edge.analytics")
    with _receiver() as url:
        async with _live(tmp_path, url) as (ingest, an, _, path, blocker, offer):
            await offer(0, 20.0)
            await _until(lambda: _Switchable.posts == ["raised"], timeout_s=5)
            assert an.metrics.notified_unstored._value.get() == 1
            assert [r for r in caplog.records if getattr(r, "event", "") == "notify_unstored"]
            blocker.execute("ROLLBACK")
            await _until(lambda: ingest.worker.spool.batches >= 2)  # the reading's and the alert's
            assert _alert_records(path) == ["raised"]  # stored once the spool is free again


async def test_a_stop_while_an_alert_waits_for_the_spool_keeps_its_notification_in_the_outbox(tmp_path):
    """Stopped while the alert waits for its commit (the gateway cancels analytics, then drains the ingest queue):
    the change goes to the outbox once the drain stores it, so the next start sends it. Dropped, the next start's
    state file would hold the alert as known and the receiver would never hear of it."""
    from maintenance.outbox import OUTBOX_FILE, Outbox

    with _receiver(status=503) as url:
        async with _live(tmp_path, url) as (ingest, an, an_task, path, blocker, offer):
            await offer(0, 20.0)
            await _until(lambda: an.alert_changes >= 1)
            an_task.cancel()  # the stop: analytics first ...
            await asyncio.sleep(0.3)
            blocker.execute("ROLLBACK")
            await ingest.drain(5)  # ... then the spool stores the alert's batch (the drain, or the ingest task)
            await asyncio.wait_for(asyncio.gather(an_task, return_exceptions=True), 5)
            outbox = Outbox(tmp_path / OUTBOX_FILE)
            try:
                key = an.notifications._outboxes[0].key
                assert [ch.event for _, ch in outbox.pending(key)] == ["raised"]
            finally:
                outbox.close()
            assert _alert_records(path) == ["raised"]
            assert an.metrics.notified_unstored._value.get() == 0


async def test_a_named_receiver_keeps_its_waiting_notifications_when_its_url_is_fixed(tmp_path, monkeypatch):
    """A webhook configured with a wrong port: every alert waits in the outbox. The engineer fixes the URL and
    reloads. The waiting changes belonged to the receiver's old address (its name came from the URL) and were
    dropped (`notify_receiver_gone`): the alerts raised before the fix were never paged. A receiver with a ``name``
    keeps them: the fixed URL gets them, in order."""
    from datetime import datetime

    from analytics_support import spool_emit
    from servers import free_port

    from edge.analytics import Analytics
    from edge.records import Reading
    from edge.settings import SiteConfig

    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(notifications, "NOTIFY_RETRY_MAX_S", 0.1)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 0.01)

    def site(url: str) -> SiteConfig:
        return SiteConfig(site={"state_dir": tmp_path},
                          rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                          maintenance={"alerts": {"clear_after_s": 0},
                                       "notify": {"webhooks": [{"url": url, "name": "pager", "attempts": 1,
                                                                "timeout_s": 1.0}]}})

    def offer(an, second: int, value: float) -> None:
        t = datetime(2026, 3, 1, 8, 0, second, tzinfo=UTC)
        an.offer([Reading("P1.p", t, value, t)], t)

    wrong = Analytics(site(f"http://127.0.0.1:{free_port()}/hook"), Metrics(), spool_emit(), None)
    task = asyncio.create_task(wrong.run())
    try:
        offer(wrong, 0, 20.0)
        offer(wrong, 1, 0.0)
        await _until(lambda: wrong.metrics.notifications.labels("failed")._value.get() >= 1)
        assert wrong.metrics.notify_waiting.labels("pager")._value.get() >= 1  # raised and cleared wait
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    with _receiver() as url:
        fixed = Analytics(site(url), Metrics(), spool_emit(), None)  # the reload with the right port
        task = asyncio.create_task(fixed.run())
        try:
            await _until(lambda: len(_Switchable.posts) >= 2)
            await asyncio.sleep(0.2)
            assert _Switchable.posts == ["raised", "cleared"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_two_receivers_of_one_name_are_refused():
    """One name would give two receivers one label and one backlog."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"receiver names must be unique: \['pager'\]"):
        MaintenanceConfig.model_validate({"notify": {
            "mqtt": {"name": "pager"}, "webhooks": [{"url": "http://127.0.0.1:9/a", "name": "pager"}]}})
