"""A network cut between the collector and a real OPC UA server (a loopback TCP proxy that resets every connection
and refuses new ones for 3 s): the collector re-activates its session on a new channel and continues the same
subscription, the server republishing what it had sent into the cut and delivering what it queued, so every value
written during the cut arrives once and in order. A server restarted during the cut has no session to resume:
the collector opens a new session and subscription and says so."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest
from opcua_support import CutProxy, Sink, free_port, server_certificate, serving, supervised, until
from test_opcua_collector import collector
from test_opcua_security import TAGS
from test_opcua_security import collector as secure_collector

from collectors.simulator.opcua_server import SimOpcUaServer
from collectors.simulator.tags import synthetic_tags


async def write_counting(server, tags: list[str], seconds: float, written: dict[str, list[tuple]]) -> None:
    """Write 1000.5, 1001.5 ... to every tag each 100 ms (each write a data change), recording (source time, value)."""
    for k in range(int(seconds * 10)):
        now = datetime.now().astimezone()
        await server.write([(t, 1000.5 + k, 0) for t in tags], now, now)
        for t in tags:
            written[t].append((now, 1000.5 + k))
        await asyncio.sleep(0.1)


async def test_a_3_s_cut_resumes_the_session_and_every_value_arrives_once_in_order():
    tags = [t.name for t in synthetic_tags(10)]
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/sim"
    async with serving(synthetic_tags(10), endpoint) as server:
        proxy = await CutProxy(port).start()
        col = collector(proxy.endpoint(), tags)
        sink = Sink()
        try:
            async with supervised(col, sink.emit) as errors:
                await until(lambda: len(sink.by_tag()) == len(tags), what="initial values")
                first_id = col._sub.subscription_id
                initial = len(sink.readings)
                written: dict[str, list[tuple]] = defaultdict(list)
                writer = asyncio.create_task(write_counting(server, tags, 6.0, written))
                await asyncio.sleep(1.0)
                # Cut while a Publish request waits at the server: its next notification goes into the cut.
                await proxy.cut(3.0, quiet_s=0.03)
                await writer
                await until(lambda: all(sink.by_tag()[t][-1].value == written[t][-1][1] for t in tags),
                            timeout_s=15, what="the last value written")
                await asyncio.sleep(0.5)  # nothing more (no duplicate) may come
                st = col.status()
            got = sink.by_tag()
            for t in tags:
                assert [(r.time, r.value) for r in got[t][1:]] == written[t], t  # after the initial value
            assert len(sink.readings) - initial == sum(len(w) for w in written.values())
            assert any("connection lost" in e for e in errors) and proxy.accepted >= 2
            assert col._sub.subscription_id == first_id
            assert st["session"] == "resumed" and st["sessions_resumed"] == 1 and st["resume_fallback"] is None
            assert st["republished"] >= 1  # the notification sent into the cut came back by Republish
            assert st["messages_lost"] == 0 and st["subscriptions_recreated"] == 0
        finally:
            await proxy.stop()


async def test_a_server_restarted_during_the_cut_gets_a_new_session_and_says_so(caplog):
    specs = synthetic_tags(5)
    tags = [t.name for t in specs]
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/sim"
    first = SimOpcUaServer(specs, endpoint)
    await first.start()
    second = SimOpcUaServer(specs, endpoint)
    proxy = await CutProxy(port).start()
    col = collector(proxy.endpoint(), tags)
    sink = Sink()
    try:
        async with supervised(col, sink.emit):
            await until(lambda: len(sink.by_tag()) == len(tags), what="initial values")
            assert col.status()["session"] == "new"
            cut = asyncio.create_task(proxy.cut(3.0))
            await asyncio.sleep(0.5)
            await first.stop()  # its sessions and subscriptions are gone with it
            await second.start()
            with caplog.at_level(logging.WARNING, logger="collectors.opcua.collector"):
                await cut
                await until(lambda: col.status()["connected"] and col.status()["resume_fallback"] is not None,
                            timeout_s=15, what="a new session")
            now = datetime.now().astimezone()
            await second.write([(t, 42.5, 0) for t in tags], now, now)
            await until(lambda: sum(r.value == 42.5 for r in sink.readings) == len(tags), what="values after it")
            st = col.status()
        assert st["session"] == "new" and st["sessions_resumed"] == 0
        assert "BadSessionIdInvalid" in st["resume_fallback"]
        said = [r.getMessage() for r in caplog.records if "cannot resume the session" in r.getMessage()]
        assert len(said) == 1 and "BadSessionIdInvalid" in said[0] and "new session and subscription" in said[0]
    finally:
        await proxy.stop()
        await first.stop()
        await second.stop()


async def test_a_secure_session_is_resumed_only_after_the_same_certificate_checks(tmp_path, monkeypatch):
    """Basic256Sha256/SignAndEncrypt with a user name: while the server's certificate is out of ``trusted/`` the
    resume is refused as a first connect would be; back in, the same session and subscription continue."""
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    trusted = tmp_path / "gw" / "pki" / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(cert, trusted)
    monkeypatch.setenv("OPCUA_PW", "s3cret")
    tags = [t.name for t in TAGS]
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, users={"gateway": "s3cret"},
                       policies=["Basic256Sha256_SignAndEncrypt"]) as server:
        proxy = await CutProxy(port).start()
        col = secure_collector(proxy.endpoint(), tmp_path / "gw", security_policy="Basic256Sha256",
                               security_mode="SignAndEncrypt", username="gateway", password="env:OPCUA_PW")
        sink = Sink()
        try:
            async with supervised(col, sink.emit) as errors:
                await until(lambda: len(sink.by_tag()) == len(tags), what="initial values")
                first_id = col._sub.subscription_id
                (trusted / Path(cert).name).unlink()
                await proxy.cut(1.0)
                await until(lambda: any("is not trusted: refused" in e for e in errors), what="a refused resume")
                assert not col.connected
                shutil.copy(cert, trusted)
                await until(lambda: col.status()["session"] == "resumed" and col.connected, what="the resume")
                now = datetime.now().astimezone()
                await server.write([(t, 42.5, 0) for t in tags], now, now)
                await until(lambda: sum(r.value == 42.5 for r in sink.readings) == len(tags), what="values after it")
                st = col.status()
            assert col._sub.subscription_id == first_id and st["resume_fallback"] is None
            assert st["security"] == "Basic256Sha256/SignAndEncrypt"
        finally:
            await proxy.stop()


@pytest.mark.parametrize("refusals", [1, 2])
async def test_a_batch_the_pipeline_refuses_is_republished_by_the_resumed_session(refusals):
    """A nack (spool full) is not acknowledged to the server: the collector drops the connection, the next run
    resumes the session and the server republishes that notification. Refused again when republished (the spool
    still full, or the gateway stopped before its commit), the message stays at the server until acknowledged
    (OPC UA Part 4, Republish), so the resume after that gets it once more: asyncua's own server dropped it at the
    first Republish, and the simulator keeps it (collectors/simulator/opcua_server.py)."""
    specs = synthetic_tags(5)
    tags = [t.name for t in specs]
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/sim"
    sink = Sink()
    refused: list = []

    async def emit(batch) -> None:
        if len(refused) < refusals and any(r.value == 7.5 for r in batch.readings):
            refused.append(batch)
            batch.nack(RuntimeError("spool full"))
            return
        await sink.emit(batch)

    async with serving(specs, endpoint) as server:
        col = collector(endpoint, tags)
        async with supervised(col, emit) as errors:
            await until(lambda: len(sink.by_tag()) == len(tags), what="initial values")
            now = datetime.now().astimezone()
            await server.write([(t, 7.5, 0) for t in tags], now, now)
            await until(lambda: sum(r.value == 7.5 for r in sink.readings) == len(tags), what="the refused values")
            await asyncio.sleep(0.5)
            st = col.status()
    assert len(refused) == refusals and any("emit failed: RuntimeError: spool full" in e for e in errors)
    assert sum(r.value == 7.5 for r in sink.readings) == len(tags)  # once each
    assert st["session"] == "resumed" and st["republished"] >= 1 and st["messages_lost"] == 0
