"""The console's configuration file: relative paths and ``file:`` references are taken from the file's folder (as in
the site configuration, edge/paths.py), ``console.listen`` takes a bracketed IPv6 address, and ``trusted_proxies``
compares addresses, not their spelling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from console.config import conninfo, load

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
