"""The console's configuration file: relative paths and ``file:`` references are taken from the file's folder (as in
the site configuration, edge/paths.py), ``console.listen`` takes a bracketed IPv6 address, and ``trusted_proxies``
compares addresses, not their spelling."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from console_support import fresh_database
from psycopg.conninfo import conninfo_to_dict

from console.config import conninfo, load
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


def _ipv6_loopback() -> str | None:
    """Why IPv6 loopback cannot be used here, or None when it can."""
    if not socket.has_ipv6:
        return "Python built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback on this machine ({exc.strerror})"
    return None


def _free_port_v6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(config: Path, port: int, *extra: str):
    """``valvoja console serve`` in a process of its own until ``http://[::1]:port/login`` answers; stopped after."""
    e = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "console", "serve", "-c", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"console serve ended ({proc.returncode}): {proc.stdout.read()}")
            try:
                if httpx.get(f"http://[::1]:{port}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"console serve did not answer on [::1]:{port}")
            time.sleep(0.2)
        yield f"http://[::1]:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_console_serves_on_a_bracketed_ipv6_address(pg_admin_dsn, tmp_path):
    """``console.listen = "[::1]:8080"`` was refused by the configuration's pattern (one colon only), and ``serve
    --listen`` split at the last colon, handing "[::1]" with its brackets to the socket layer. Behind a proxy on ::1
    (a trusted proxy by default) the client address is the X-Forwarded-For entry, an IPv6 one too."""
    why = _ipv6_loopback()
    if why:
        pytest.skip(why)
    with fresh_database(pg_admin_dsn) as dsn:
        p = conninfo_to_dict(dsn)
        url = f'postgresql://{p.get("user", "postgres")}@{p.get("host")}:{p.get("port", 5432)}/{p["dbname"]}'
        port = _free_port_v6()
        config = tmp_path / "console.toml"
        config.write_text(f'[console]\nlisten = "[::1]:{port}"\n[database]\nurl = "{url}"\n')
        assert load(config).console.address == ("::1", port)
        with _serving(config, port) as base:
            r = httpx.post(f"{base}/api/auth/login", json={"username": "nobody", "password": "wrong-password"},
                           headers={"X-Forwarded-For": "2001:db8::7"})
            assert r.status_code == 401
        with psycopg.connect(dsn) as conn:
            clients = [c for (c,) in conn.execute("SELECT client FROM console_login_failures")]
        assert clients == ["2001:db8::7"]

        other = _free_port_v6()  # --listen overrides the file's console.listen
        config.write_text(f'[console]\nlisten = "127.0.0.1:0"\n[database]\nurl = "{url}"\n')
        with _serving(config, other, "--listen", f"[::1]:{other}"):
            pass


@pytest.mark.parametrize(("listen", "says"), [
    ("::1:8080", "brackets"), ("[::1]", "port"), ("[::1]:99999", "0-65535"), ("localhost", "port")])
def test_console_listen_refused_says_why(tmp_path, listen, says):
    config = tmp_path / "console.toml"
    config.write_text(f'[console]\nlisten = "{listen}"\n[database]\nurl = "postgresql://u@h/db"\n')
    with pytest.raises(ConfigError) as exc:
        load(config)
    assert "console.listen" in str(exc.value) and says in str(exc.value), str(exc.value)
    config.write_text('[database]\nurl = "postgresql://u@h/db"\n')
    r = _valvoja("console", "serve", "-c", str(config), "--listen", listen, cwd=tmp_path)
    assert r.returncode == 1 and "--listen" in r.stderr and says in r.stderr, r.stderr
