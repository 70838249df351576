"""``valvoja console`` commands against the real test database: add a user and an API token from the
command line, then use both against a running console; bad configuration is reported by key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from cli_support import valvoja
from console_support import ConsoleServer, fresh_database
from psycopg.conninfo import conninfo_to_dict
from servers import PostgresServer, free_port, pg_bin_dir, wait_until


def _config(tmp_path, dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    path = tmp_path / "console.toml"
    path.write_text(f'[console]\nlisten = "127.0.0.1:0"\n[database]\n'
                    f'url = "postgresql://{p.get("user", "postgres")}@{p.get("host", "127.0.0.1")}:'
                    f'{p.get("port", 5432)}/{p["dbname"]}"\n')
    return str(path)


def test_user_and_token_from_the_command_line(pg_admin_dsn, tmp_path):
    with fresh_database(pg_admin_dsn) as dsn:
        cfg = _config(tmp_path, dsn)
        empty = valvoja("console", "user", "list", "-c", cfg, dsn=dsn)  # it printed nothing at all
        assert empty.returncode == 0 and "no users yet" in empty.stdout, empty
        r = valvoja("console", "user", "add", "liisa", "--role", "maintenance", "-c", cfg,
                     env={"VALVOJA_PASSWORD": "liisa-password-1"}, dsn=dsn)
        assert r.returncode == 0, r.stderr
        weak = valvoja("console", "user", "add", "pekka", "--role", "viewer", "-c", cfg,
                        env={"VALVOJA_PASSWORD": "short"}, dsn=dsn)
        assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
        r = valvoja("console", "token", "add", "historian", "--role", "viewer", "-c", cfg, dsn=dsn)
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip()
        listed = valvoja("console", "user", "list", "-c", cfg, dsn=dsn)
        assert "liisa" in listed.stdout and "maintenance" in listed.stdout and "no users" not in listed.stdout
        with ConsoleServer(dsn) as srv, srv.client(username="liisa", password="liisa-password-1") as c:
            me = c.get("/api/auth/me").json()
            assert (me["name"], me["role"]) == ("liisa", "maintenance")
            audit = c.get("/api/audit", params={"action": "user.create"}).json()["items"]
            assert audit[0]["actor"].startswith("cli:") and audit[0]["target_id"] == "liisa"
            c.headers.pop("X-CSRF-Token")
            c.cookies.clear()
            c.headers["Authorization"] = f"Bearer {token}"
            assert c.get("/api/auth/me").json()["name"] == "token:historian"


def test_a_password_file_others_can_read_is_refused_like_the_gateways_secret_files(pg_admin_dsn, tmp_path):
    """The gateway refuses a secret file other users can read (edge/secrets.py, libpq's rule); the console's
    --password-file was read whatever its mode. Now it goes through the same check."""
    with fresh_database(pg_admin_dsn) as dsn:
        cfg = _config(tmp_path, dsn)
        pw = tmp_path / "admin-password"
        pw.write_text("admin-password-1\n")
        pw.chmod(0o644)
        add = ("console", "user", "add", "anna", "--role", "admin", "--password-file", str(pw), "-c", cfg)
        r = valvoja(*add, dsn=dsn)
        assert r.returncode == 1, r
        assert r.stderr.strip() == (f"--password-file: secret file {pw} can be read by other users (mode 0644, "
                                    f"owned by this process's user): run chmod 600 {pw}"), r.stderr
        assert "no users yet" in valvoja("console", "user", "list", "-c", cfg, dsn=dsn).stdout
        pw.chmod(0o600)
        r = valvoja(*add, dsn=dsn)
        assert r.returncode == 0 and "user anna (admin) created" in r.stdout, r
        with ConsoleServer(dsn) as srv, srv.client(username="anna", password="admin-password-1") as c:
            assert c.get("/api/auth/me").json()["name"] == "anna"


def test_bad_console_configuration_names_the_key(tmp_path):
    path = tmp_path / "console.toml"
    path.write_text('[console]\nlisten = "nowhere"\ncookie_secure = "sometimes"\n[database]\n'
                    'url = "postgresql://u:secret@h/db"\n')
    r = valvoja("console", "serve", "-c", str(path))
    assert r.returncode == 1
    for needle in ("console.listen", "console.cookie_secure", "database.url: contains a password"):
        assert needle in r.stderr, r.stderr


def test_models_section_paths_are_relative_to_the_file(tmp_path):
    from pathlib import Path

    from console.config import load

    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "console.toml"
    path.write_text('[database]\nurl = "postgresql://u@h/db"\n[models]\nregistry = "../var/models"\n')
    cfg = load(path)
    assert cfg.models.registry == tmp_path / "etc" / ".." / "var" / "models"
    assert cfg.models.report_cache == tmp_path / "etc" / "var" / "cache" / "model-reports"
    example = load(Path(__file__).parents[1] / "console" / "console-example.toml")
    assert example.models.registry.resolve() == (Path(__file__).parents[1] / "var" / "models").resolve()
    path.write_text('[database]\nurl = "postgresql://u@h/db"\n[models]\nregistery = "x"\n')
    r = valvoja("console", "serve", "-c", str(path))
    assert r.returncode == 1 and "models.registery" in r.stderr, r.stderr


def _serve(config: Path) -> tuple[subprocess.Popen, tempfile.TemporaryFile]:
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full one would stall the server
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "console", "serve", "-c", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    return proc, log


def _text(log) -> str:
    log.seek(0)
    return log.read()


def test_serve_waits_for_a_database_that_is_not_up_yet(tmp_path):
    """A console started before its database (a plant's power back, the console's host up first) exited with a
    traceback for its supervisor to restart every 5 s; it waits now, says so once, and serves once the database
    is there. SIGTERM while it waits still stops it at once."""
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed (scripts/setup.sh)")
    pg = PostgresServer(fsync=False)
    try:
        pg.start()
        pg.create_database("console_waits")
        pg.stop()
        port = free_port()
        config = tmp_path / "console.toml"
        config.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\n[database]\nurl = "{pg.url("console_waits")}"\n')

        early, log = _serve(config)  # stopped while it waits
        try:
            wait_until(lambda: "console_db_waiting" in _text(log), 30, "the first console's waiting line")
            assert early.poll() is None, _text(log)
            early.send_signal(signal.SIGTERM)
            assert early.wait(10) == -signal.SIGTERM, _text(log)
            assert "Traceback" not in _text(log), _text(log)
        finally:
            early.kill()
            log.close()

        proc, log = _serve(config)
        try:
            wait_until(lambda: "console_db_waiting" in _text(log), 30, "the waiting line")
            pg.start()

            def answers() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, f"console serve ended ({proc.returncode}): {_text(log)}"
                    return False

            wait_until(answers, 60, "the console serving once its database is up")
            text = _text(log)
            assert text.count("console_db_waiting") == 1, text  # once, not at every retry
            assert "not reachable (connection failed" in text and "console_db_reachable" in text, text
            assert "Traceback" not in text, text
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            finally:
                proc.kill()
                log.close()
    finally:
        pg.close()  # and its folder
