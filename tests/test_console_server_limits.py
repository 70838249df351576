"""Slow and idle clients of the console (console/server.py), with real sockets against the console under uvicorn.

uvicorn closes a connection only when it is idle *after a response*: one that sent nothing, or a request head or
body a byte at a time, stayed open for ever, holding a file descriptor (and for a body a request task). Here each
is cut off while a normal client is still served; one cut off in the middle of a request is answered 408 first (it
was closed without a word). Short deadlines are given to the in-process server; the last test
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


def _trickle_until_closed(s: socket.socket, data: bytes, *, every_s: float = 0.25,
                          limit_s: float = 15) -> tuple[float, bytes]:
    """Send ``data`` a byte at a time; the seconds until the server closed the connection (or ``limit_s``), and what
    it sent meanwhile."""
    t0 = time.monotonic()
    s.settimeout(every_s)
    got = b""
    for i in range(10**6):
        if time.monotonic() - t0 > limit_s:
            return limit_s, got
        try:
            chunk = s.recv(65536)
            if chunk == b"":
                return time.monotonic() - t0, got
            got += chunk
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - t0, got
        try:
            s.send(data[i % len(data):i % len(data) + 1])
        except (BrokenPipeError, ConnectionError):
            return time.monotonic() - t0, got + _rest(s)
    raise AssertionError("unreachable")


def _rest(s: socket.socket) -> bytes:
    """What the server sent before the connection broke."""
    try:
        s.settimeout(1)
        return s.recv(65536)
    except OSError:
        return b""


def _is_408(got: bytes) -> None:
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
    assert b"connection: close" in head.lower() and body.startswith(b"408 Request Timeout: "), got


def _served(server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/login").status_code == 200


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_while_others_are_served(server):
    with _connect(server.port) as slow:
        slow.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\n")
        _served(server)
        took, got = _trickle_until_closed(slow, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
    assert HEAD_S - 0.3 < took < HEAD_S + 3, took
    _is_408(got)
    assert b"no request head within 1.5 s" in got
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
        first = c.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:  # the whole response, so that what follows is the next one
            body += c.recv(65536)
        took, got = _trickle_until_closed(c, b"GET /login HTTP/1.1\r\nHost: console\r\nX-Slow: aaaaaaaaaaaa\r\n")
    assert took < HEAD_S + 3, took
    _is_408(got)


def test_a_request_body_sent_a_byte_at_a_time_is_cut_off_while_others_log_in(server):
    body = b'{"username": "viewer", "password": "' + PASSWORD.encode() + b'"}'
    with _connect(server.port) as slow:
        slow.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: console\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + body[:5])
        t0 = time.monotonic()  # the body's deadline runs from here (the head is in)
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).status_code == 200
        # The other log-in took a while under load (CI: the trickle alone measured 1.09 s of the 1.5): counted too.
        waited = time.monotonic() - t0
        took, got = _trickle_until_closed(slow, b" ")
    assert BODY_S - 0.3 < waited + took < BODY_S + 3, (waited, took)
    _is_408(got)
    assert b"request body not complete within 1.5 s" in got
    _served(server)


def test_slow_clients_are_counted_and_logged_once(server, caplog, monkeypatch):
    """Each client answered 408 counts; the warning comes once a minute at most, however many (a slowloris)."""
    from console.server import GuardedH11Protocol

    monkeypatch.setattr(GuardedH11Protocol, "_timeouts_logged", -1e9)
    monkeypatch.setattr(GuardedH11Protocol, "_timeouts_quiet", 0)
    before = GuardedH11Protocol.request_timeouts
    slow = [_connect(server.port) for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"GET /login HTTP/1.1\r\n")
        for s in slow:
            _is_408(_trickle_until_closed(s, b"X-Slow: a\r\n")[1])
    finally:
        for s in slow:
            s.close()
    assert GuardedH11Protocol.request_timeouts - before == 3
    warned = [r for r in caplog.records if getattr(r, "event", None) == "console_request_timeout"]
    assert len(warned) == 1 and "answered 408 to 127.0.0.1: no request head within 1.5 s" in warned[0].getMessage()
    assert GuardedH11Protocol._timeouts_quiet == 2, "the other two are in the next warning's count"


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
            took, got = _trickle_until_closed(slow, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", every_s=1,
                                              limit_s=HEAD_TIMEOUT_S + 10)
        assert HEAD_TIMEOUT_S - 1 < took < HEAD_TIMEOUT_S + 5, took
        _is_408(got)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
