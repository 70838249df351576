"""The gateway's health server against slow and malformed clients (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import logging

import edge.http as http
from edge.http import HealthServer


async def _server() -> HealthServer:
    s = HealthServer("127.0.0.1", 0, health=lambda: (True, {"ok": True}), metrics=lambda: b"m 1\n")
    await s.start()
    return s


async def _get(port: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await r.read()
    w.close()
    return data


async def test_a_client_trickling_header_lines_is_cut_off(monkeypatch):
    """Each line within its own timeout used to keep the connection for as long as the client liked."""
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 1.0)
    s = await _server()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", s.port)
        w.write(b"GET /healthz HTTP/1.1\r\n")
        got = b""
        for _ in range(10):  # 4 s of one header line every 0.4 s
            await asyncio.sleep(0.4)
            if r.at_eof():
                break
            try:
                w.write(b"X-Slow: 1\r\n")
                await w.drain()
            except ConnectionError:
                break
        got = await asyncio.wait_for(r.read(), 2)
        assert b"200" not in got and r.at_eof()
        assert (await _get(s.port)).startswith(b"HTTP/1.1 200")  # the server itself is fine
    finally:
        await s.close()


async def test_an_over_long_request_line_is_dropped_without_an_error_log(caplog):
    s = await _server()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", s.port)
        with caplog.at_level(logging.DEBUG, logger="edge.http"):
            w.write(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
            await w.drain()
            await asyncio.wait_for(r.read(), 5)
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert (await _get(s.port)).startswith(b"HTTP/1.1 200")
    finally:
        await s.close()


async def test_connections_beyond_the_limit_are_closed_at_once(monkeypatch):
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 3)
    s = await _server()
    try:
        idle = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(3)]
        await asyncio.sleep(0.1)
        try:
            refused = await asyncio.wait_for(_get(s.port), 2)
        except ConnectionResetError:
            refused = b""
        assert refused == b""  # closed without an answer
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.1)
        assert (await _get(s.port)).startswith(b"HTTP/1.1 200")
    finally:
        await s.close()


async def test_http_listen_takes_a_bracketed_ipv6_address(tmp_path):
    """``http.listen = "[::1]:9108"`` was refused by the configuration's pattern (one colon only), so a gateway could
    not serve /healthz on an IPv6-only network or loopback; the gateway's split at the last colon would also have
    handed "[::1]" with its brackets to the socket layer."""
    import pytest
    from serverproc import ipv6_loopback_missing

    from edge.gateway import Gateway
    from edge.settings import SiteConfig

    why = ipv6_loopback_missing()
    if why:
        pytest.skip(why)
    cfg = SiteConfig.model_validate({"site": {"state_dir": str(tmp_path)}, "http": {"listen": "[::1]:0"}})
    assert cfg.http.address == ("::1", 0)
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await asyncio.wait_for(gw.ready.wait(), 10)
        r, w = await asyncio.open_connection("::1", gw.http.port)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\n\r\n")
        got = await asyncio.wait_for(r.read(), 5)
        w.close()
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def test_http_listen_addresses_accepted_and_refused():
    from pydantic import ValidationError

    from edge.settings import Http

    assert Http(listen="127.0.0.1:9108").address == ("127.0.0.1", 9108)
    assert Http(listen="[::]:9108").address == ("::", 9108)
    assert Http(listen="[fe80::1%eth0]:80").address == ("fe80::1%eth0", 80)
    assert Http(listen="gateway.local:1").address == ("gateway.local", 1)
    for bad, says in [("::1:9108", "brackets"), ("[::1]", "port"), ("[nonsense]:80", "IPv6"),
                      ("[::1]:70000", "0-65535"), ("127.0.0.1", "port"), (":9108", "host")]:
        try:
            Http(listen=bad)
        except ValidationError as exc:
            assert says in str(exc), (bad, str(exc))
        else:
            raise AssertionError(f"{bad!r} was accepted")
