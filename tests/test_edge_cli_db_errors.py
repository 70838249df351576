"""Every ``valvoja`` command that touches the database says what is wrong in one line and exits 1 when the
database cannot be used: a schema this program does not match, an unreachable server, a refused log-in. They
printed a Python traceback (emissions, console) that an operator had to read from its last line."""

from __future__ import annotations

import socket
import subprocess

import psycopg
from cli_support import valvoja
from psycopg.conninfo import conninfo_to_dict

from edge.db.migrate import available, migrate

STACK = ('[[stacks]]\nname = "K9"\nregime = "lcp"\ntimezone = "Europe/Helsinki"\n'
         'pollutants = [{ name = "NOx", tag = "K9.NOx", elv = { month = 200.0 } }]\n')




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(tmp_path, url: str) -> list[list[str]]:
    """Database commands of each package, all pointed at ``url``."""
    site = tmp_path / "site.toml"
    site.write_text(STACK)
    p = conninfo_to_dict(url)
    console = tmp_path / "console.toml"
    console.write_text(f'[console]\nlisten = "127.0.0.1:0"\n[database]\nurl = "postgresql://{p.get("user", "x")}@'
                       f'{p.get("host", "127.0.0.1")}:{p.get("port", 5432)}/{p.get("dbname", "x")}"\n')
    return [["emissions", "compute", "-c", str(site), "--db", url, "--from", "2026-01-01", "--to", "2026-01-02"],
            ["console", "user", "list", "-c", str(console)],
            ["db", "migrate", "--db", url],
            # These read or wrote another version's schema as if it were theirs (a review verdict, a window, a
            # promotion written with a meaning the newer version may have changed).
            ["maintenance", "review", "list", "--asset", "P-1", "--db", url],
            ["maintenance", "window", "list", "--db", url],
            ["maintenance", "trace", "A-1", "--db", url],
            ["models", "list", "--registry", str(tmp_path), "--db", url],
            ["models", "evaluate", "feedback", "--db", url]]


def _assert_one_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_schema_newer_than_the_program_is_one_line(pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        newest = max(m.version for m in available())
        conn.execute("INSERT INTO valvoja_migrations (version, name, edition) VALUES (%s, 'from_the_future', 'x')",
                     (newest + 1,))
    pw = conninfo_to_dict(pg_dsn).get("password")
    for cmd in _commands(tmp_path, pg_dsn):
        _assert_one_line(valvoja(*cmd, env={"PGPASSWORD": pw} if pw else None), "from_the_future")


def test_an_unreachable_server_is_one_line(tmp_path):
    url = f"postgresql://valvoja@127.0.0.1:{_free_port()}/nothing?connect_timeout=3"
    for cmd in _commands(tmp_path, url):
        _assert_one_line(valvoja(*cmd), "database", "Connection refused")


def test_a_refused_log_in_is_one_line(pg_dsn, tmp_path):
    """A role the server does not know (the test server trusts loopback, so a wrong password alone passes): the
    line names the user and never the password given."""
    user = "nobody_here"
    d = conninfo_to_dict(pg_dsn)
    url = f"postgresql://{user}@{d['host']}:{d['port']}/{d['dbname']}"
    for cmd in _commands(tmp_path, url):
        r = valvoja(*cmd, env={"PGPASSWORD": "wrong-password-7"})
        _assert_one_line(r, "database", user)
        assert "wrong-password-7" not in r.stderr
