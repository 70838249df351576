"""Interoperability with an independent OPC UA implementation: node-opcua (Node.js) as the server.

The peer is ``tests/node_opcua/server.js``; its package is installed with
``npm install --prefix tests/node_opcua`` (node-opcua 2.182.0, the last line that runs on Node 20).
Skipped, saying why, when Node.js or the package is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from opcua_support import ROOT, Sink, free_port, running, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.opcua.browse import browse
from collectors.opcua.connection import ClientOpener
from edge.errors import NotConnectedError
from edge.metrics import Metrics

PEER = ROOT / "tests" / "node_opcua"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (PEER / "node_modules" / "node-opcua").is_dir(),
    reason="node-opcua peer not installed (npm install --prefix tests/node_opcua)")


@pytest.fixture
def peer(tmp_path, monkeypatch):
    yield from _peer(tmp_path, monkeypatch)


@pytest.fixture
def strict_peer(tmp_path, monkeypatch):
    """The peer with operation limits of 4 monitored items / nodes per call (Part 5 OperationLimits)."""
    yield from _peer(tmp_path, monkeypatch, NODE_OPCUA_MAX_PER_CALL="4")


def _peer(tmp_path, monkeypatch, **env_extra):
    port = free_port()
    log = open(tmp_path / "node-opcua.log", "wb")  # the child writes to it until the end of the test
    env = {**os.environ, "NODE_OPCUA_PASSWORD": "n0de-secret", **env_extra}
    proc = subprocess.Popen(["node", str(PEER / "server.js"), str(port), str(tmp_path / "peer-pki")],
                            cwd=PEER, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "node-opcua.log").read_text()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError("node-opcua did not start") from None
            time.sleep(0.2)
    monkeypatch.setenv("PEER_PW", "n0de-secret")
    yield f"opc.tcp://127.0.0.1:{port}/valvoja"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


def collector(endpoint: str, state: Path, nodes: list[dict], **kw):
    cfg = Config.model_validate({"endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0,
                                 "connect_timeout_s": 10, "watchdog_interval_s": 1, **kw, "nodes": nodes})
    return build(cfg, CollectorContext(name="node-peer", state_dir=state, metrics=Metrics()))


NODES = [{"node_id": "ns=1;s=Line1.Temperature", "tag": "temp"},
         {"node_id": "ns=1;s=Line1.Pressure", "tag": "pressure", "deadband": 1.0, "deadband_type": "percent"},
         {"node_id": "ns=1;s=Line1.Count", "tag": "count"},
         {"node_id": "ns=1;s=Line1.Running", "tag": "running"},
         {"node_id": "ns=1;s=Line1.Mode", "tag": "mode"},
         {"node_id": "ns=1;s=Line1.Profile", "tag": "profile", "arrays": "flatten"}]


async def test_browse_the_node_opcua_address_space(peer, tmp_path):
    from collectors.opcua.config import Connection

    opener = ClientOpener(Connection(endpoint=peer, pki_dir=str(tmp_path / "pki")), name="browse")
    client = opener.new_client()
    await opener.connect(client)
    try:
        variables, _ = await browse(client)  # from Objects: node-opcua numbers the Line1 folder itself
    finally:
        await client.disconnect()
    by_tag = {v.tag: v for v in variables}
    temp = by_tag["Line1.Temperature"]
    assert (temp.data_type, temp.eu_range, temp.unit) == ("Double", (-50.0, 150.0), "°C")
    assert "read" in temp.access
    assert by_tag["Line1.Count"].data_type == "Int32" and by_tag["Line1.Running"].kind == "bool"
    assert by_tag["Line1.Profile"].is_array and by_tag["Line1.Profile"].type_text == "Double[]"


async def test_sign_and_encrypt_with_username_against_node_opcua(peer, tmp_path):
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", username="valvoja",
              password="env:PEER_PW")
    state = tmp_path / "gw"
    col = collector(peer, state, NODES, **kw)
    with pytest.raises(NotConnectedError, match="is not trusted: refused"):
        await asyncio.wait_for(col.run(Sink().emit), 30)
    await col.aclose()
    rejected = next((state / "pki" / "rejected").iterdir())
    shutil.move(rejected, state / "pki" / "trusted")

    sink = Sink()
    col = collector(peer, state, NODES, **kw)
    async with running(col, sink.emit):
        await until(lambda: len({r.value for r in sink.by_tag()["count"]}) >= 10, timeout_s=30,
                    what="count changing over SignAndEncrypt")
    st = col.status()
    assert st["items_failed"] == 0 and st["security"] == "Basic256Sha256/SignAndEncrypt"
    tags = sink.by_tag()
    assert all(isinstance(r.value, float) for r in tags["temp"]) and isinstance(tags["count"][-1].value, int)
    assert isinstance(tags["running"][-1].value, bool) and tags["mode"][-1].value == "auto"
    assert {"profile[0]", "profile[1]", "profile[2]"} <= set(tags)
    assert len(tags["pressure"]) == 1  # 1 % of EURange 0..10 = 0.1; the peer's changes are 0.001..0.009
    counts = [r.time for r in tags["count"]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # source timestamps, none twice


@pytest.mark.parametrize("policy,mode", [("Aes128_Sha256_RsaOaep", "Sign"), ("Basic256Sha256", "Sign")])
async def test_other_policies_and_polling_against_node_opcua(peer, tmp_path, policy, mode):
    sink = Sink()
    col = collector(peer, tmp_path / "gw", NODES[:3], security_policy=policy, security_mode=mode,
                    trust_on_first_use=True, mode="poll", polling_interval_ms=100)
    async with running(col, sink.emit):
        await until(lambda: len(sink.by_tag()["count"]) >= 5, timeout_s=30, what="polled values")
    assert col.status()["security"] == f"{policy}/{mode}"


async def test_a_kept_session_is_resumed_from_the_state_folder_on_node_opcua(peer, tmp_path):
    """What a restarted gateway does, against an independent server: the next collector on the same state folder
    re-activates the session the first one kept (session.json) under Basic256Sha256 with a user name (the
    signature and the encrypted password cover the saved server nonce). node-opcua answers TransferSubscriptions
    to the same session with BadNothingToDo and no sequence numbers, so what it kept is republished until
    BadMessageNotAvailable: the count goes on without a gap or a repeat."""
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", username="valvoja",
              password="env:PEER_PW", trust_on_first_use=True)
    nodes = [{"node_id": "ns=1;s=Line1.Count", "tag": "count", "queue_size": 1000}]
    first, second = Sink(), Sink()
    async with running(collector(peer, tmp_path / "gw", nodes, **kw), first.emit):
        await until(lambda: len(first.readings) >= 5, timeout_s=30, what="counting")
    assert (tmp_path / "gw" / "session.json").exists()
    await asyncio.sleep(1.0)  # the peer counts on, every 100 ms
    col = collector(peer, tmp_path / "gw", nodes, **kw)
    async with running(col, second.emit):
        await until(lambda: len(second.readings) >= 15, timeout_s=30, what="counting after the resume")
        st = col.status()
    counts = [r.value for r in first.readings + second.readings]
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    assert st["session"] == "resumed" and st["resume_fallback"] is None and st["republished"] >= 1


async def test_values_node_opcua_discards_from_a_full_queue_are_counted(peer, tmp_path):
    """A pipeline that holds a batch for 2 s while the peer counts every 100 ms into a queue of 3: node-opcua
    discards the oldest values and sets the Overflow bit on the oldest one it kept. The collector counts it
    (status, metric); what it did receive is in order, with the gap right before the flagged value."""
    nodes = [{"node_id": "ns=1;s=Line1.Count", "tag": "count", "queue_size": 3}]
    sink = Sink()

    async def slow_emit(batch) -> None:
        # From the second batch on, each held until an overflow shows: under load (CI with other work, 2026-12-07)
        # holding only the second one for 2 s let 30 s pass without one.
        if sink.batches and col.status()["queue_overflows"] == 0:
            await asyncio.sleep(2.0)  # the server queues meanwhile
        await sink.emit(batch)

    col = collector(peer, tmp_path / "gw", nodes)
    async with running(col, slow_emit):
        await until(lambda: col.status()["queue_overflows"] >= 1, timeout_s=30, what="an overflow")
    flagged = [i for i, r in enumerate(sink.readings) if r.status & 0x0C80 == 0x0480]
    assert flagged and col.ctx.metrics.collector_errors.labels(col.name, "queue_overflow")._value.get() >= 1
    i = flagged[0]
    assert sink.readings[i].value - sink.readings[i - 1].value > 1  # the values discarded before it


async def test_the_servers_operation_limits_are_respected(strict_peer, tmp_path):
    """A server that allows 4 monitored items (and 4 nodes per Read and TranslateBrowsePaths) per call answers a
    bigger request with BadTooManyOperations: with items_per_call 500 every connection failed and was retried for
    ever. The collector reads the server's OperationLimits and makes its requests no bigger."""
    subscribed, polled = Sink(), Sink()
    col = collector(strict_peer, tmp_path / "gw", NODES)  # 6 items, one with a percent deadband
    poller = collector(strict_peer, tmp_path / "gw2", NODES, mode="poll", polling_interval_ms=100)
    async with running(col, subscribed.emit) as task, running(poller, polled.emit) as poll_task:
        await until(lambda: (len(subscribed.by_tag()) == 8 and len(polled.by_tag()) == 8) or task.done()
                    or poll_task.done(), timeout_s=30, what="every tag, subscribed and polled")
        assert not task.done(), task.exception()
        assert not poll_task.done(), poll_task.exception()
        await until(lambda: len(polled.by_tag()["count"]) >= 3, what="polling goes on")
        st = col.status()
    assert st["items_failed"] == 0 and st["connects"] == 1 and poller.status()["connects"] == 1
    assert len(subscribed.by_tag()["pressure"]) == 1  # the percent deadband (EURange read in slices) holds

    from collectors.opcua.config import Connection  # browse, too: it reads 4 attributes per variable

    opener = ClientOpener(Connection(endpoint=strict_peer, pki_dir=str(tmp_path / "pki")), name="browse")
    client = opener.new_client()
    await opener.connect(client)
    try:
        variables, _ = await browse(client)
    finally:
        await client.disconnect()
    assert {"Line1.Temperature", "Line1.Profile"} <= {v.tag for v in variables}


async def test_a_gap_is_read_back_from_node_opcuas_history(peer, tmp_path, monkeypatch):
    """Backfill (collectors/opcua/history.py) against an independent historian: node-opcua keeps Count's and
    Temperature's history and refuses HistoryRead on the others. The collector starts as a restarted gateway would,
    its spool saying readings were stored up to a moment ago; with 40 values per node and request, node-opcua answers
    with continuation points, which are followed. Count (one step each 100 ms since the server started) comes back
    whole, in order and then live without a repeat; the node without history is named, the others still read."""
    from datetime import UTC, datetime, timedelta

    from collectors.opcua import history

    monkeypatch.setattr(history, "VALUES_PER_NODE", 40)
    await asyncio.sleep(4.0)  # some 40 counts in the server's history
    nodes = [{"node_id": "ns=1;s=Line1.Count", "tag": "count"}, {"node_id": "ns=1;s=Line1.Mode", "tag": "mode"},
             {"node_id": "ns=1;s=Line1.Temperature", "tag": "temp"}]
    col = collector(peer, tmp_path / "gw", nodes, history_backfill_max_s=3600.0)
    col._mark = datetime.now(UTC) - timedelta(seconds=1)  # what a restarted gateway reads from its spool
    sink = Sink()
    async with running(col, sink.emit):
        await until(lambda: col.status()["last_backfill"] is not None, timeout_s=30, what="the backfill")
        await until(lambda: len(sink.by_tag()["count"]) >= 80, timeout_s=30, what="live counts after it")
        st = col.status()
    counts = sink.by_tag()["count"]
    values = [r.value for r in counts]
    assert values == list(range(values[0], values[0] + len(values))), values  # none missing, none twice, in order
    assert values[0] <= 5  # from (nearly) the server's first count: mark - OVERLAP_S reaches before it started
    assert [r.time for r in counts] == sorted({r.time for r in counts})
    last = st["last_backfill"]
    assert last["error"] is None and last["refused"] == 1 and last["readings"] >= 2 * 35, last
    assert st["backfilled"] == last["readings"]
    assert len(sink.by_tag()["temp"]) >= 35  # Temperature's history too
