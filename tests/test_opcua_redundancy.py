"""OPC UA server redundancy (non-transparent, OPC UA Part 4 §6.6.2): one collector given a redundant pair of real
asyncua servers (same namespace and tags) follows the healthy one. No mocks: servers are stopped for real and their
ServiceLevel (i=2267) written as a redundant server would.

The code before redundancy refused ``endpoints`` ("Extra inputs are not permitted"), so every test here failed at
its configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua
from opcua_support import SimProcess, Sink, free_port, running, server_certificate, serving, supervised, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.opcua.security import endpoint_key, load_cert, thumbprint
from collectors.simulator.tags import synthetic_tags
from edge.errors import NotConnectedError
from edge.metrics import Metrics

TAGS = synthetic_tags(3)
PRIMARY, BACKUP = 0.0, 0.5  # what each server adds to the round number: which server a reading came from


def collector(endpoints: list[str], state: Path | None, metrics: Metrics, **kw):
    cfg = Config.model_validate({
        "endpoints": endpoints, "publishing_interval_ms": 100, "sampling_interval_ms": 0, "connect_timeout_s": 4,
        "request_timeout_s": 2, "watchdog_interval_s": 0.5, **kw,
        "nodes": [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in TAGS]})
    return build(cfg, CollectorContext(name="pair", state_dir=state, metrics=metrics))


async def write_rounds(servers: dict[float, object], stop: asyncio.Event) -> None:
    """Every 100 ms a new value of every tag on every server still running: round + the server's offset, the same
    source time on both (as a redundant pair, fed from the same controllers, would have)."""
    n = 0
    while not stop.is_set():
        n += 1
        now = datetime.now(UTC)
        for offset, srv in servers.items():
            if srv.server is not None:
                await srv.write([(t.name, n + offset, 0) for t in TAGS], now, now)
        await asyncio.sleep(0.1)


async def set_level(srv, level: int) -> None:
    await srv.server.write_attribute_value(ua.NodeId(ua.ObjectIds.Server_ServiceLevel),
                                           ua.DataValue(ua.Variant(level, ua.VariantType.Byte)))


def source(r) -> float:
    return round(r.value % 1, 1)


def failovers(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("valvoja_collector_failovers_total",
                                             {"collector": "pair", "reason": reason}) or 0.0


def active(metrics: Metrics, endpoint: str) -> float | None:
    return metrics.registry.get_sample_value("valvoja_collector_active_server",
                                             {"collector": "pair", "endpoint": endpoint})


@asynccontextmanager
async def pair_running(metrics: Metrics, sink: Sink):
    """A redundant pair of servers written every 100 ms (`write_rounds`) and a collector running on them for the
    block: yields (primary, backup, collector, its run task)."""
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(2)]
    stop = asyncio.Event()
    async with serving(TAGS, eps[0]) as primary, serving(TAGS, eps[1]) as backup:
        writer = asyncio.create_task(write_rounds({PRIMARY: primary, BACKUP: backup}, stop))
        col = collector(eps, None, metrics)
        try:
            async with running(col, sink.emit) as task:
                yield primary, backup, col, task
        finally:
            stop.set()
            await writer


def no_reading_twice(sink: Sink) -> None:
    keys = [(r.tag, r.time) for r in sink.readings]
    assert len(keys) == len(set(keys)), "a (tag, time) delivered twice"


async def test_primary_killed_collector_moves_to_the_secure_backup_and_stores_its_values(tmp_path, caplog):
    """Cold failover on a lost connection, with Basic256Sha256 SignAndEncrypt and trust on first use: each server
    has its own certificate, pinned to its own endpoint."""
    caplog.set_level(logging.INFO)
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(2)]
    certs = [server_certificate(tmp_path / "server", name, uri=f"urn:valvoja:test:{name}")
             for name in ("primary", "backup")]
    secure = {"policies": ["Basic256Sha256_SignAndEncrypt"]}
    metrics, sink, stop = Metrics(), Sink(), asyncio.Event()
    async with serving(TAGS, eps[0], certificate=certs[0][0], private_key=certs[0][1],
                       application_uri="urn:valvoja:test:primary", **secure) as primary, \
            serving(TAGS, eps[1], certificate=certs[1][0], private_key=certs[1][1],
                    application_uri="urn:valvoja:test:backup", **secure) as backup:
        writer = asyncio.create_task(write_rounds({PRIMARY: primary, BACKUP: backup}, stop))
        col = collector(eps, tmp_path / "gw", metrics, security_policy="Basic256Sha256",
                        security_mode="SignAndEncrypt", trust_on_first_use=True, connect_timeout_s=8)
        async with supervised(col, sink.emit) as errors:
            await until(lambda: sum(source(r) == PRIMARY for r in sink.readings) >= 10 * len(TAGS), 20,
                        "values from the primary")
            assert col.status()["endpoint"] == eps[0] and active(metrics, eps[0]) == 1
            assert active(metrics, eps[1]) == 0
            assert not any(source(r) == BACKUP for r in sink.readings)  # one server at a time
            killed = time.monotonic()
            await primary.stop()
            await until(lambda: any(source(r) == BACKUP for r in sink.readings), 20, "values from the backup")
            took = time.monotonic() - killed
            await until(lambda: sum(source(r) == BACKUP for r in sink.readings) >= 10 * len(TAGS), 10,
                        "more values from the backup")
        stop.set()
        await writer
    print(f"primary killed -> first value from the backup after {took:.2f} s")
    # watchdog 0.5 s + the supervisor's 0.3 s + a secure connect to each server: a few seconds, not the back-off cap.
    assert took < 5.0, took
    st = col.status()
    assert st["endpoint"] == eps[1] and st["failovers"] == 1
    assert st["last_failover"]["from"] == eps[0] and st["last_failover"]["reason"] == "connection_lost"
    assert failovers(metrics, "connection_lost") == 1 and active(metrics, eps[1]) == 1 and active(metrics, eps[0]) == 0
    assert len(errors) == 1  # the lost connection; the next run is on the backup
    events = [r for r in caplog.records if getattr(r, "event", None) == "opcua_failover"]
    assert len(events) == 1 and eps[0] in events[0].getMessage() and eps[1] in events[0].getMessage()
    no_reading_twice(sink)
    # Values after the failover are the backup's only, and every tag got them.
    backup_tags = {r.tag for r in sink.readings if source(r) == BACKUP}
    assert backup_tags == {t.name for t in TAGS}
    # Each server's certificate is pinned to its own endpoint.
    pins = json.loads((tmp_path / "gw" / "pki" / "pins.json").read_text())["endpoints"]
    assert {k: v["thumbprint"] for k, v in pins.items()} == {
        endpoint_key(ep): thumbprint(load_cert(Path(c[0]))) for ep, c in zip(eps, certs, strict=True)}


async def test_service_level_failover_without_dropping_the_connection_and_no_flapping(caplog):
    """The primary's ServiceLevel set to 50 while it runs: the collector moves to the healthy backup within its
    run (no lost connection); the primary healthy again: it stays on the backup (a switch needs a better band, not
    a higher level); the backup degraded: back to the primary (once the backup has been kept 10 s, REPROBE_S)."""
    caplog.set_level(logging.INFO)
    metrics, sink = Metrics(), Sink()
    async with pair_running(metrics, sink) as (primary, backup, col, task):
        eps = col.status()["endpoints"]
        await until(lambda: sum(source(r) == PRIMARY for r in sink.readings) >= 5 * len(TAGS), 20,
                    "values from the primary")  # both at 255: the configured order
        degraded = time.monotonic()
        await set_level(primary, 50)
        await until(lambda: col.status()["endpoint"] == eps[1], 10, "the switch to the backup")
        mark = len(sink.readings)
        await until(lambda: any(source(r) == BACKUP for r in sink.readings[mark:]), 10, "values from the backup")
        took = time.monotonic() - degraded
        assert not task.done(), "the run ended: the connection was dropped"
        await set_level(primary, 255)
        await asyncio.sleep(3.0)  # six watchdog periods
        assert col.status()["endpoint"] == eps[1] and col.status()["failovers"] == 1
        assert not any(source(r) == PRIMARY for r in sink.readings[mark:])
        await set_level(backup, 120)
        await until(lambda: col.status()["endpoint"] == eps[0], 10, "the switch back to the primary")
        mark = len(sink.readings)
        await until(lambda: any(source(r) == PRIMARY for r in sink.readings[mark:]), 10, "primary values")
        assert not task.done()
    print(f"primary ServiceLevel 50 -> first value from the backup after {took:.2f} s")
    assert took < 3.0, took
    st = col.status()
    assert st["failovers"] == 2 and st["last_failover"]["reason"] == "service_level"
    assert "ServiceLevel is 120" in st["last_failover"]["why"]
    assert failovers(metrics, "service_level") == 2 and failovers(metrics, "connection_lost") == 0
    assert col.connects == 1  # one run throughout
    events = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "opcua_failover"]
    assert len(events) == 2 and "ServiceLevel is 50" in events[0], events
    no_reading_twice(sink)


async def test_connect_chooses_the_highest_service_level_and_the_configured_order_on_ties():
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(2)]
    async with serving(TAGS, eps[0]) as primary, serving(TAGS, eps[1]) as backup:
        await set_level(primary, 199)  # degraded: the healthy backup is taken, and that is no failover
        metrics, sink = Metrics(), Sink()
        col = collector(eps, None, metrics)
        async with running(col, sink.emit):
            await until(lambda: col.connected, 20, "a connection")
            assert col.status()["endpoint"] == eps[1] and col.status()["service_level"] == 255
        assert col.status()["failovers"] == 0 and failovers(metrics, "connection_lost") == 0
        await set_level(primary, 255)  # a tie: the first configured
        col = collector(eps, None, Metrics())
        async with running(col, sink.emit) as task:
            await until(lambda: col.connected, 20, "a connection")
            assert col.status()["endpoint"] == eps[0]
            # Maintenance (0) on the active one, no data (1) on the other: Part 4 has a client disconnect.
            await set_level(backup, 1)
            await set_level(primary, 0)
            with pytest.raises(NotConnectedError, match="ServiceLevel 0"):
                await asyncio.wait_for(task, 10)
        with pytest.raises(NotConnectedError, match=r"can serve: ServiceLevel .* 0, .* 1 \(0 maintenance"):
            await asyncio.wait_for(col.run(sink.emit), 20)  # and no connect to either
        await col.aclose()


async def test_a_restarted_gateway_resumes_its_session_on_the_server_it_used(tmp_path):
    """session.json names the backup the collector was on: the next process (same state folder) resumes there while
    it is in the best band, rather than opening a new session on the first configured server."""
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(2)]
    async with serving(TAGS, eps[0]) as primary, serving(TAGS, eps[1]):
        await set_level(primary, 100)
        sink = Sink()
        first = collector(eps, tmp_path / "state", Metrics())
        async with running(first, sink.emit):
            await until(lambda: first.connected, 20, "a connection")
            assert first.status()["endpoint"] == eps[1]
        saved = json.loads((tmp_path / "state" / "session.json").read_text())
        assert saved["config"]["endpoint"] == eps[1]
        await set_level(primary, 255)  # healthy too, and first in the list: no reason to leave the backup
        second = collector(eps, tmp_path / "state", Metrics())
        async with running(second, sink.emit):
            await until(lambda: second.connected, 20, "a connection")
            st = second.status()
            assert st["endpoint"] == eps[1] and st["session"] == "resumed" and st["failovers"] == 0, st


def gateway_site(dsn: str, endpoints: list[str], tags: list[str]) -> str:
    """test_opcua_gateway's site (collector ``sim``, watchdog 0.5 s) with the redundant pair instead of endpoint."""
    from ops_support import db_url
    from test_opcua_gateway import SITE

    nodes = ", ".join(f'{{ node_id = "ns=2;s={t}", tag = "{t}" }}' for t in tags)
    pair = ", ".join(json.dumps(e) for e in endpoints)  # a TOML basic string is a JSON string here
    return (SITE.replace('endpoint = "@ENDPOINT@"', f"endpoints = [{pair}]")
            .replace("@DB_URL@", db_url(dsn)).replace("@NODES@", nodes))


@pytest.mark.xdist_group("faults")
def test_gateway_follows_the_backup_when_the_primary_hangs_and_stays_there(tmp_path, pg_dsn):
    """The real gateway (`valvoja run`) and two simulator processes: the primary frozen (SIGSTOP: its socket open,
    nothing answering, as a hung server or a dead network path), readings go on being stored in TimescaleDB from
    the backup; the primary thawed and healthy again, the gateway stays on the backup."""
    from gateway_proc import GatewayProcess
    from ops_support import rows, wait_for

    tags = ["P-101.vib_de", "P-101.bearing_temp", "K1.NOx", "P-102.running"]
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/valvoja/sim" for _ in range(2)]
    sims = [SimProcess(ep, tmp_path, "--interval", "0.2").start() for ep in eps]
    gw = GatewayProcess(tmp_path / "gw", gateway_site(pg_dsn, eps, tags)).start()

    def dcs() -> dict:
        return gw.health().get("collectors", {}).get("sim", {})

    def stored_since(t: datetime) -> int:
        return rows(pg_dsn, "SELECT count(*) FROM readings WHERE time >= %s", t)[0][0]

    try:
        wait_for(lambda: dcs().get("connected"), timeout_s=60, what="collector up")
        assert dcs()["endpoint"] == eps[0]
        wait_for(lambda: rows(pg_dsn, "SELECT count(DISTINCT tag_id) FROM readings")[0][0] == len(tags),
                 timeout_s=60, what="every tag stored")
        sims[0].freeze()
        frozen, t0 = datetime.now(UTC), time.monotonic()
        # Only the backup has values from now on (the frozen primary sends nothing).
        wait_for(lambda: stored_since(frozen) >= len(tags), timeout_s=30, interval_s=0.05,
                 what="values from the backup stored")
        took = time.monotonic() - t0
        health = dcs()
        assert health["endpoint"] == eps[1] and health["failovers"] == 1, health
        assert health["last_failover"]["reason"] == "connection_lost"
        sims[0].thaw()
        assert sims[0].ready()  # answering again, at ServiceLevel 255 (the simulator's)
        time.sleep(4)  # the primary is back and healthy: no switch back
        health = dcs()
        assert health["connected"] and health["endpoint"] == eps[1] and health["failovers"] == 1, health
        later = datetime.now(UTC)
        wait_for(lambda: stored_since(later) >= len(tags), timeout_s=10, what="values still stored")
        metrics = gw.metrics()
        assert 'valvoja_collector_failovers_total{collector="sim",reason="connection_lost"} 1.0' in metrics
        assert f'valvoja_collector_active_server{{collector="sim",endpoint="{eps[1]}"}} 1.0' in metrics
        assert gw.terminate() == 0
    finally:
        gw.kill()
        for s in sims:
            s.stop()
    log = gw.log.read_text()
    assert log.count("failing over from") == 1, log[-3000:]
    print(f"primary frozen -> values from the backup stored after {took:.2f} s")
    # watchdog (0.5 s, a loss found within ~2x) + back-off (<= 0.5 s) + the probe (backup answers; the frozen
    # primary is waited for PROBE_GRACE_S more) + subscribe + the database flush (0.2 s).
    assert took < 8.0, took


async def test_a_hung_primary_does_not_hold_the_failover_to_a_degraded_backup(caplog):
    """The active primary hangs (connections open, nothing answers: a frozen server or a dead path) and the backup
    answers degraded (ServiceLevel 150: usable, and a server that lost its partner often says so). The choice at the
    reconnect waited for the hung primary for the whole connect_timeout_s (6 s here) because only a healthy answer
    cut the wait short; a usable one does now (1 s more, `PROBE_GRACE_S`), and the backup's values follow within
    about 2-3 s of the hang instead of some 7. A healthy server found later is switched to (the degraded active
    server's others are asked again)."""
    from opcua_support import CutProxy

    caplog.set_level(logging.INFO)
    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(2)]
    metrics, sink, stop = Metrics(), Sink(), asyncio.Event()
    async with serving(TAGS, eps[0]) as primary, serving(TAGS, eps[1]) as backup:
        await set_level(backup, 150)
        proxy = await CutProxy(int(eps[0].rsplit(":", 1)[1].split("/")[0])).start()
        writer = asyncio.create_task(write_rounds({PRIMARY: primary, BACKUP: backup}, stop))
        col = collector([proxy.endpoint("/plant"), eps[1]], None, metrics, connect_timeout_s=10,
                        request_timeout_s=5)  # the defaults
        try:
            async with supervised(col, sink.emit, retry_s=0.3):
                await until(lambda: sum(source(r) == PRIMARY for r in sink.readings) >= 3 * len(TAGS), 20,
                            "values from the primary")
                hung = time.monotonic()
                proxy.hang()
                mark = len(sink.readings)
                await until(lambda: any(source(r) == BACKUP for r in sink.readings[mark:]), 20,
                            "values from the backup")
                took = time.monotonic() - hung
                assert col.status()["endpoint"] == eps[1] and col.status()["service_level"] == 150
                proxy.hang(False)  # the primary answers again, healthy: the degraded backup is left for it
                await until(lambda: col.status()["endpoint"] == proxy.endpoint("/plant"), 25, "back to the primary")
                assert col.status()["last_failover"]["reason"] == "service_level"
        finally:
            stop.set()
            await writer
            await proxy.stop()
    print(f"primary hung, backup degraded: first value from the backup after {took:.2f} s")
    assert took < 4.0, took
    assert failovers(metrics, "connection_lost") == 1
    no_reading_twice(sink)


async def test_two_servers_hovering_about_the_healthy_edge_do_not_make_it_flap():
    """Both servers' ServiceLevels hover about 200 in turn (199/201, then 201/199, every second: servers that lower
    it with their load). The band hysteresis alone switched at every crossing: 10 failovers in 20 s, each a new
    session and subscription (whose values the switch can lose). A server switched to for its ServiceLevel is now
    kept REPROBE_S (10 s) unless it fails: at most one switch per 10 s, and values keep coming."""
    from collectors.opcua.collector import REPROBE_S

    metrics, sink = Metrics(), Sink()
    async with pair_running(metrics, sink) as (primary, backup, col, task):
        await until(lambda: col.connected, 20, "a connection")
        began = time.monotonic()
        k = 0
        while time.monotonic() - began < 12.0:
            k += 1
            await set_level(primary, 199 if k % 2 else 201)
            await set_level(backup, 201 if k % 2 else 199)
            await asyncio.sleep(1.0)
        mark = len(sink.readings)
        await until(lambda: len(sink.readings) > mark + 3 * len(TAGS), 10, "values after the hovering")
        assert not task.done()
    switches = col.status()["failovers"]
    print(f"ServiceLevels hovering about 200 in turn for 12 s: {switches} failovers")
    assert 1 <= switches <= 12.0 / REPROBE_S + 1, switches
    assert failovers(metrics, "service_level") == switches
    no_reading_twice(sink)


async def test_a_connection_lost_while_the_others_are_asked_leaves_no_session_open_on_them():
    """Three servers; the active one degraded, so the others are asked (a session opened on each); one answers, one
    hangs, and while the collector waits out the grace for the hung one the active connection is lost. The session
    opened on the server that answered was left connected: asyncua's background tasks kept it alive for ever (a
    server's session limit is finite, and every such loss cost one). It is closed now."""
    from opcua_support import CutProxy

    eps = [f"opc.tcp://127.0.0.1:{free_port()}/plant" for _ in range(3)]
    async with serving(TAGS, eps[0]) as a, serving(TAGS, eps[1]), serving(TAGS, eps[2]):
        proxies = [await CutProxy(int(ep.rsplit(":", 1)[1].split("/")[0])).start() for ep in eps]
        try:
            col = collector([p.endpoint("/plant") for p in proxies], None, Metrics())
            sink = Sink()
            async with supervised(col, sink.emit, retry_s=0.3):
                await until(lambda: col.connected, 20, "a connection")
                assert col.status()["endpoint"] == proxies[0].endpoint("/plant")
                proxies[2].hang()
                asked = proxies[1].accepted
                await set_level(a, 150)  # degraded: the others are asked
                await until(lambda: proxies[1].accepted > asked, 10, "the second server asked")
                await asyncio.sleep(0.5)  # it has answered; the third is waited for (PROBE_GRACE_S)
                cut = asyncio.create_task(proxies[0].cut(30.0))
                await until(lambda: col.connected and col.status()["endpoint"] == proxies[1].endpoint("/plant"), 20,
                            "the switch to the second server")
                await asyncio.sleep(2.0)
                open_links = len(proxies[1]._links) // 2  # both ends of each connection
                cut.cancel()
        finally:
            for p in proxies:
                await p.stop()
    assert open_links == 1, f"{open_links} connections open to the second server, the collector's one expected"
