"""``valvoja console`` commands against the real test database: add a user and an API token from the
command line, then use both against a running console; bad configuration is reported by key."""

from __future__ import annotations

from cli_support import valvoja
from console_support import ConsoleServer, fresh_database
from psycopg.conninfo import conninfo_to_dict


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
