"""Slow and idle clients of the console (console/server.py), with real sockets against the console under uvicorn.

uvicorn closes a connection only when it is idle *after a response*: one that sent nothing, or a request head or
body a byte at a time, stayed open for ever, holding a file descriptor (and for a body a request task). Here each
is cut off while a normal client is still served. Short deadlines are given to the in-process server; the last test
checks that `valvoja console serve` runs with the production ones.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from console_support import PASSWORD, ConsoleServer, fresh_database, seed_users
from psycopg.conninfo import conninfo_to_dict
from serverproc import free_port

HEAD_S, BODY_S = 1.5, 1.5


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn):
    with fresh_database(pg_admin_dsn, prefix="console_limits") as dsn:
        seed_users(dsn)
        yield dsn


@pytest.fixture(scope="module")
def server(dsn):
    with ConsoleServer(dsn, server={"head_timeout_s": HEAD_S, "body_timeout_s": BODY_S, "max_conns": 8}) as srv:
        yield srv


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _trickle_until_closed(s: socket.socket, data: bytes, *, every_s: float = 0.25, limit_s: float = 15) -> float:
    """Send ``data`` a byte at a time; the seconds until the server closed the connection (or ``limit_s``)."""
    t0 = time.monotonic()
    s.settimeout(every_s)
    for i in range(10**6):
        if time.monotonic() - t0 > limit_s:
            return limit_s
        try:
            if s.recv(65536) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - t0
        try:
            s.send(data[i % len(data):i % len(data) + 1])
        except (BrokenPipeError, ConnectionError):
            return time.monotonic() - t0
    raise AssertionError("unreachable")


def _served(server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/login").status_code == 200


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_while_others_are_served(server):
    with _connect(server.port) as slow:
        slow.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\n")
        _served(server)
        took = _trickle_until_closed(slow, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
    assert HEAD_S - 0.3 < took < HEAD_S + 3, took
    _served(server)


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server.port) as idle:
        idle.settimeout(HEAD_S + 5)
        t0 = time.monotonic()
        assert idle.recv(1) == b""
        assert time.monotonic() - t0 < HEAD_S + 3


def test_a_keep_alive_connection_that_trickles_its_next_request_is_closed(server):
    """uvicorn's keep-alive timer (idle after a response) is cancelled by any byte and never set again."""
    with _connect(server.port) as c:
        c.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\n\r\n")
        c.settimeout(10)
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
        took = _trickle_until_closed(c, b"GET /login HTTP/1.1\r\nHost: console\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n")
    assert took < HEAD_S + 3, took


def test_a_request_body_sent_a_byte_at_a_time_is_cut_off_while_others_log_in(server):
    body = b'{"username": "viewer", "password": "' + PASSWORD.encode() + b'"}'
    with _connect(server.port) as slow:
        slow.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: console\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + body[:5])
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).status_code == 200
        took = _trickle_until_closed(slow, b" ")
    assert BODY_S - 0.3 < took < BODY_S + 3, took
    _served(server)


def test_connections_over_the_cap_are_closed_at_once_and_served_again_when_there_is_room(dsn):
    with ConsoleServer(dsn, server={"head_timeout_s": 60, "max_conns": 4}) as srv:
        held = [_connect(srv.port) for _ in range(4)]
        try:
            time.sleep(0.3)
            with _connect(srv.port) as extra:
                extra.settimeout(5)
                assert extra.recv(1) == b"", "a connection over the cap is closed without an answer"
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 5
        while True:  # the server sees the closes a moment later
            try:
                _served(srv)
                break
            except (httpx.TransportError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_console_serve_cuts_off_a_slow_request_head(dsn, tmp_path):
    """The production settings (10 s for a request head) are those of `valvoja console serve`."""
    from console.server import HEAD_TIMEOUT_S

    p = conninfo_to_dict(dsn)
    port = free_port()
    cfg = tmp_path / "console.toml"
    cfg.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\n[database]\n'
                   f'url = "postgresql://{p.get("user", "postgres")}@{p["host"]}:{p["port"]}/{p["dbname"]}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "console", "serve", "--config", str(cfg)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with httpx.Client(timeout=2) as c:
                    if c.get(f"http://127.0.0.1:{port}/login").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "console did not start"
            time.sleep(0.2)
        with _connect(port) as slow:
            slow.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\n")
            took = _trickle_until_closed(slow, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", every_s=1,
                                         limit_s=HEAD_TIMEOUT_S + 10)
        assert HEAD_TIMEOUT_S - 1 < took < HEAD_TIMEOUT_S + 5, took
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
