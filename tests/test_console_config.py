"""The console's configuration file: relative paths and ``file:`` references are taken from the file's folder (as in
the site configuration, edge/paths.py), ``console.listen`` takes a bracketed IPv6 address, and ``trusted_proxies``
compares addresses, not their spelling."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from console_support import fresh_database
from psycopg.conninfo import conninfo_to_dict
from serverproc import free_port, ipv6_loopback_missing, wait_until

from console.config import conninfo, load, parse
from edge.errors import ConfigError

ROLE, ROLE_PASSWORD = "valvoja_console", "console-db-secret-1"


def _valvoja(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    # No PG* variables: the password must come from the configuration's file: reference.
    e = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | (env or {})
    e["PYTHONPATH"] = str(Path(__file__).parents[1])
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, env=e,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL, **kw)


def _password_role(server) -> str:
    """A database on ``server`` owned by a role that must give its password (the test servers trust everyone
    else, so a wrong password would go unnoticed); its URL, without the password."""
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())  # first match wins
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        conn.execute(f"CREATE DATABASE console_paths OWNER {ROLE}")
        conn.execute("SELECT pg_reload_conf()")
    if server.timescaledb:  # created by a superuser, as a DBA would (the console's role could not)
        with psycopg.connect(server.dsn("console_paths"), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION timescaledb")
    return f"postgresql://{ROLE}@127.0.0.1:{server.port}/console_paths"


def test_file_references_are_taken_from_the_config_files_folder(own_pg_server, tmp_path, monkeypatch):
    """``[database]`` ``file:`` references were read from the working directory: the console started by systemd in
    another folder read no file, or another file of the same name (here: a wrong password), while the gateway's
    site configuration takes them from the file's folder."""
    url = _password_role(own_pg_server)
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    for folder, password in ((etc, ROLE_PASSWORD), (elsewhere, "not-the-password")):
        (folder / "secrets").mkdir(parents=True)
        (folder / "secrets" / "db-url").write_text(url + "\n")
        (folder / "secrets" / "db-password").write_text(password + "\n")
        for f in (folder / "secrets").iterdir():
            f.chmod(0o600)
    (etc / "console.toml").write_text('[console]\nlisten = "127.0.0.1:0"\n[database]\nurl = "file:secrets/db-url"\n'
                                      'password = "file:secrets/db-password"\n')

    monkeypatch.chdir(elsewhere)  # where systemd starts the console
    cfg = load(Path("..") / "etc" / "console.toml")  # the file's own path relative, too
    assert cfg.database.password == f"file:{etc / 'secrets' / 'db-password'}"
    with psycopg.connect(conninfo(cfg)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == ROLE

    r = _valvoja("console", "user", "add", "alice", "--role", "admin", "-c", "../etc/console.toml", cwd=elsewhere,
                 env={"VALVOJA_PASSWORD": "alice-password-1"})
    assert r.returncode == 0, r.stderr
    with psycopg.connect(url, password=ROLE_PASSWORD) as conn:
        assert conn.execute("SELECT role FROM console_users WHERE username = 'alice'").fetchone() == ("admin",)


@contextmanager
def _serving(config: Path, port: int, *extra: str):
    """``valvoja console serve`` in a process of its own until ``http://[::1]:port/login`` answers; stopped after."""
    e = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full one would stall the server
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "console", "serve", "-c", str(config), *extra],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=e, stdin=subprocess.DEVNULL)

    def answers() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://[::1]:{port}/login", timeout=2).status_code == 200
        return False

    def alive() -> None:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"console serve ended ({proc.returncode}): {log.read()}")

    try:
        wait_until(answers, 30, f"console serve on [::1]:{port}", alive)
        yield f"http://[::1]:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_console_serves_on_a_bracketed_ipv6_address(pg_admin_dsn, tmp_path):
    """``console.listen = "[::1]:8080"`` was refused by the configuration's pattern (one colon only), and ``serve
    --listen`` split at the last colon, handing "[::1]" with its brackets to the socket layer. Behind a proxy on ::1
    (a trusted proxy by default) the client address is the X-Forwarded-For entry, an IPv6 one too."""
    why = ipv6_loopback_missing()
    if why:
        pytest.skip(why)
    with fresh_database(pg_admin_dsn) as dsn:
        p = conninfo_to_dict(dsn)
        url = f'postgresql://{p.get("user", "postgres")}@{p.get("host")}:{p.get("port", 5432)}/{p["dbname"]}'
        port = free_port("::1")
        config = tmp_path / "console.toml"
        config.write_text(f'[console]\nlisten = "[::1]:{port}"\n[database]\nurl = "{url}"\n')
        assert load(config).console.address == ("::1", port)
        with _serving(config, port) as base:
            r = httpx.post(f"{base}/api/auth/login", json={"username": "nobody", "password": "wrong-password"},
                           headers={"X-Forwarded-For": "2001:db8::7"})
            assert r.status_code == 401
        with psycopg.connect(dsn) as conn:
            clients = [c for (c,) in conn.execute("SELECT client FROM console_login_failures")]
        assert clients == ["2001:db8::/64"]  # the log-in limit counts an IPv6 client by its /64

        other = free_port("::1")  # --listen overrides the file's console.listen
        config.write_text(f'[console]\nlisten = "127.0.0.1:0"\ntrusted_proxies = ["0:0:0:0:0:0:0:1/128"]\n'
                          f'[database]\nurl = "{url}"\n')
        with _serving(config, other, "--listen", f"[::1]:{other}") as base:
            r = httpx.post(f"{base}/api/auth/login", json={"username": "nobody", "password": "wrong-password"},
                           headers={"X-Forwarded-For": "[2001:db8::8]:4711"})
            assert r.status_code == 401
        with psycopg.connect(dsn) as conn:
            clients = [c for (c,) in conn.execute("SELECT client FROM console_login_failures ORDER BY time")]
        assert clients == ["2001:db8::/64", "2001:db8::/64"]


@pytest.mark.parametrize(("console", "key", "says"), [
    ('listen = "::1:8080"', "console.listen", "brackets"), ('listen = "[::1]"', "console.listen", "port"),
    ('listen = "[::1]:99999"', "console.listen", "0-65535"), ('listen = "localhost"', "console.listen", "port"),
    ('trusted_proxies = ["::1", "localhost"]', "console.trusted_proxies[1]", "not an IP address"),
    ('trusted_proxies = ["::1", "10.0.0.5/8"]', "console.trusted_proxies[1]", "host bits"),
    ('trusted_proxies = ["[::1]"]', "console.trusted_proxies[0]", "not an IP address"),
    ('[[gateways]]\nname = "gw"\nhealth_url = "http://::1:9108/healthz"', "gateways[0] (gw).health_url", "brackets"),
    ('[[gateways]]\nname = "gw"\nhealth_url = "http://[::1]:9108/healthz"\nmetrics_url = "http://gw:99999/metrics"',
     "gateways[0] (gw).metrics_url", "1-65535"),
    ('[[gateways]]\nname = "gw"\nhealth_url = "http:///healthz"', "gateways[0] (gw).health_url", "no host"),
    # CSV downloads must leave pooled connections to log-in and the pages (default pool_max 8).
    ("csv_max_concurrent = 7", "console.csv_max_concurrent", "at most 6, or raise pool_max"),
    ("pool_max = 3\ncsv_max_concurrent = 2", "console.csv_max_concurrent", "at most 1"),
    ("pool_max = 2\ncsv_max_concurrent = 1", "console.csv_max_concurrent", "raise pool_max to at least 3"),
    ("csv_max_concurrent = 0", "console.csv_max_concurrent", "greater than or equal to 1"),
])
def test_console_keys_refused_say_why(tmp_path, console, key, says):
    """A bare IPv6 listen address, a trusted proxy that can never match (a host name, brackets, host bits), or a
    gateway URL that cannot be fetched (an IPv6 address without brackets, a port past 65535) is refused at load
    with the reason. Such a gateway URL was accepted, and then the gateway page answered 500 for every gateway
    (httpx.InvalidURL is not an httpx.HTTPError, so the probe did not catch it)."""
    config = tmp_path / "console.toml"
    section = console if console.startswith("[[") else f"[console]\n{console}"
    config.write_text(f'[database]\nurl = "postgresql://u@h/db"\n{section}\n')
    with pytest.raises(ConfigError) as exc:
        load(config)
    assert f"{key}: " in str(exc.value) and says in str(exc.value), str(exc.value)


def test_gateway_page_probes_a_gateway_on_ipv6(pg_admin_dsn):
    """A gateway serving /healthz on [::1] (http.listen = "[::1]:9108") is probed at its bracketed URL."""
    import asyncio
    import threading

    from console_support import ConsoleServer, seed_users

    from edge.http import HealthServer

    why = ipv6_loopback_missing()
    if why:
        pytest.skip(why)
    loop, ready, box = asyncio.new_event_loop(), threading.Event(), {}

    async def run_health() -> None:
        box["stop"] = asyncio.Event()
        hs = HealthServer("::1", 0, health=lambda: (True, {"gateway": "gw6"}), metrics=lambda: b"")
        await hs.start()
        box["port"] = hs.port
        ready.set()
        await box["stop"].wait()
        await hs.close()

    t = threading.Thread(target=lambda: loop.run_until_complete(run_health()), daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        with fresh_database(pg_admin_dsn) as dsn:
            seed_users(dsn)
            gws = [{"name": "gw6", "health_url": f"http://[::1]:{box['port']}/healthz"}]
            with ConsoleServer(dsn, gateways=gws) as srv, srv.client("viewer") as c:
                r = c.get("/api/gateways/gw6")
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(10)
    assert r.status_code == 200 and r.json()["healthy"] and r.json()["health"] == {"gateway": "gw6"}, r.text


@pytest.mark.parametrize(("listen", "says"), [("::1:8080", "brackets"), ("[::1]", "port")])
def test_serve_listen_refused_says_why(tmp_path, listen, says):
    config = tmp_path / "console.toml"
    config.write_text('[database]\nurl = "postgresql://u@h/db"\n')
    r = _valvoja("console", "serve", "-c", str(config), "--listen", listen, cwd=tmp_path)
    assert r.returncode == 1 and "--listen" in r.stderr and says in r.stderr, r.stderr


def _request(peer: str, forwarded: list[str], trusted: list[str] | None = None, proto: str = ""):
    from types import SimpleNamespace

    from starlette.datastructures import Headers

    from console.config import ConsoleConfig

    cfg = ConsoleConfig.model_validate({"console": {} if trusted is None else {"trusted_proxies": trusted}})
    raw = [(b"x-forwarded-for", f.encode()) for f in forwarded] + ([(b"x-forwarded-proto", proto.encode())]
                                                                   if proto else [])
    return SimpleNamespace(client=SimpleNamespace(host=peer), headers=Headers(raw=raw), url=SimpleNamespace(
        scheme="http"), app=SimpleNamespace(state=SimpleNamespace(config=cfg)))


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "client"), [
    ("::1", ["2001:db8::7"], None, "2001:db8::7"),  # a proxy on ::1, the default
    ("::1", ["2001:db8::7"], ["0:0:0:0:0:0:0:1"], "2001:db8::7"),  # ::1 written out in full
    ("2001:db8::10", ["203.0.113.9"], ["2001:DB8::10"], "203.0.113.9"),  # upper-case hex
    ("fd00::5", ["2001:db8::7"], ["fd00::/8"], "2001:db8::7"),  # a proxy network (container network)
    ("10.1.2.3", ["203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),
    ("::1", ["[2001:db8::7]:4711"], None, "2001:db8::7"),  # bracketed, with the client's port
    ("::1", ["[2001:db8::7]"], None, "2001:db8::7"),
    ("::1", ["203.0.113.9:4711"], None, "203.0.113.9"),
    ("::1", ["2001:0DB8:0::7"], None, "2001:db8::7"),  # one client, one spelling (log-in limit, audit log)
    ("::ffff:127.0.0.1", ["203.0.113.9"], None, "203.0.113.9"),  # IPv4 proxy seen by a dual-stack socket
    ("::ffff:192.0.2.1", ["203.0.113.9"], None, "192.0.2.1"),  # not trusted: its own IPv4 address
    ("2001:db8::99", ["203.0.113.9"], None, "2001:db8::99"),  # not trusted: header not believed
    ("::1", ["6.6.6.6, [2001:db8::7]:1, ::1"], None, "2001:db8::7"),
    ("::1", ["[2001:db8::7]:port"], None, "::1"),  # malformed: nothing left of it is believed
])
def test_trusted_proxies_compare_addresses_not_spellings(peer, forwarded, trusted, client):
    """trusted_proxies and the peer were compared as strings: a proxy written "0:0:0:0:0:0:0:1", in upper case, as
    a network, or seen as ::ffff:127.0.0.1 was not trusted, so every client behind it had the proxy's address (one
    log-in limit for all of them, a wrong audit log); a bracketed X-Forwarded-For entry ended the search."""
    from console.auth import client_address, is_tls

    assert client_address(_request(peer, forwarded, trusted)) == client
    trusted_peer = peer not in ("::ffff:192.0.2.1", "2001:db8::99")  # X-Forwarded-Proto believed from a proxy only
    assert is_tls(_request(peer, [], trusted, proto="https")) is trusted_peer


@pytest.mark.parametrize(("pool_max", "csv"), [(8, 2), (4, 2), (3, 1), (2, 1), (1, 1)])
def test_csv_downloads_at_once_default_to_two_or_what_a_small_pool_leaves(pool_max, csv):
    """Unset, ``csv_max_concurrent`` is 2, fewer on a pool under 4: a file written before the key (with a small
    ``pool_max``) still loads, and downloads never take the whole of a pool that has room to spare."""
    cfg = parse({"console": {"pool_max": pool_max}, "database": {"url": "postgresql://u@h/db"}})
    assert cfg.console.csv_max_concurrent is None and cfg.console.csv_limit == csv
