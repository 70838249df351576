"""Real servers for the tests: PostgreSQL (with TimescaleDB when installed) and mosquitto as child processes.

Each listens on free loopback ports only and lives in a temp dir of its own (process handling: serverproc.py).
PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` system user with its data dir
owned by that user. ``scripts/setup.sh`` installs the binaries; without them the fixtures skip with the reason
(or fail, when ``VALVOJA_TEST_REQUIRE_SERVERS=1`` as in ``scripts/test.sh``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from certs import CertificateAuthority
from psycopg import sql
from psycopg.conninfo import make_conninfo
from serverproc import KEEP, ServerError, ServerProcess, free_port, make_temp_dir, port_open, wait_until

__all__ = ["KEEP", "MosquittoServer", "PostgresServer", "ServerError", "free_port", "mosquitto_bin", "pg_bin_dir",
           "port_open", "wait_until"]

PG_MAJOR = "15"  # the version TimescaleDB is built against by scripts/setup.sh
TSDB_TEMPLATE = "valvoja_tsdb_template"  # template database with the timescaledb extension, made on first use
_pg_templates: dict[Path, Path] = {}
_plain_bindirs: dict[Path, Path] = {}


def pg_bin_dir() -> Path | None:
    """Directory of PostgreSQL's server binaries (``VALVOJA_PG_BIN`` or Debian's layout, version 15 first)."""
    if env := os.environ.get("VALVOJA_PG_BIN"):
        return Path(env)
    root = Path("/usr/lib/postgresql")
    found = sorted((p for p in root.glob("*/bin") if (p / "postgres").exists()),
                   key=lambda p: (len(p.parent.name), p.parent.name))  # "9.6" < "15" < "17"
    preferred = [p for p in found if p.parent.name == PG_MAJOR]
    return (preferred or found[-1:] or [None])[0]


def mosquitto_bin() -> Path | None:
    """Path of the mosquitto broker binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _without_timescaledb(bindir: Path) -> Path:
    """A ``bin`` dir whose ``postgres`` cannot see TimescaleDB: a real plain PostgreSQL of the same version.

    PostgreSQL finds its share dir (where extension control files live) relative to its own executable. A copy
    of the binary under ``T/lib/postgresql/N/bin`` therefore reads ``T/share/postgresql/N``, which links to the
    real files except TimescaleDB's, so ``pg_available_extensions`` lacks it as on a server without it.
    """
    cached = _plain_bindirs.get(bindir)
    if cached and cached.exists():
        return cached
    pgc = {k: subprocess.run([str(bindir / "pg_config"), f"--{k}"], capture_output=True, text=True,
                             check=True).stdout.strip() for k in ("bindir", "sharedir", "pkglibdir")}
    common = Path(os.path.commonpath([pgc["bindir"], pgc["sharedir"]]))
    root = make_temp_dir("valvoja-pgplain-", scratch=True)
    root.chmod(0o755)  # the postgres user must reach the binary
    new_bin = root / Path(pgc["bindir"]).relative_to(common)
    new_share = root / Path(pgc["sharedir"]).relative_to(common)
    new_bin.mkdir(parents=True)
    try:
        os.link(bindir / "postgres", new_bin / "postgres")
    except OSError:
        shutil.copy2(bindir / "postgres", new_bin / "postgres")
    new_lib = root / Path(pgc["pkglibdir"]).relative_to(common)
    if not new_lib.exists():
        new_lib.symlink_to(pgc["pkglibdir"])
    new_share.mkdir(parents=True)
    for entry in Path(pgc["sharedir"]).iterdir():
        if entry.name != "extension":
            (new_share / entry.name).symlink_to(entry)
    (new_share / "extension").mkdir()
    for entry in (Path(pgc["sharedir"]) / "extension").iterdir():
        if not entry.name.startswith("timescaledb"):
            (new_share / "extension" / entry.name).symlink_to(entry)
    _plain_bindirs[bindir] = new_bin
    return new_bin


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster of its own: initdb into a temp dir, TCP on 127.0.0.1 only, socket in the temp dir.

    ``fsync=False`` suits a shared server whose data does not matter after the run; fault tests that kill the
    server keep the default (durable) settings. TimescaleDB is preloaded when its library is installed, unless
    ``timescaledb=False``: then the server runs without it, as a plain PostgreSQL of the same version.
    """

    name = "postgres"

    def __init__(self, *, fsync: bool = True, timescaledb: bool | None = None, port: int | None = None,
                 settings: dict[str, str] | None = None):
        bindir = pg_bin_dir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        super().__init__(run_as="postgres")
        self.bindir = bindir
        self.port = port or free_port()
        self.data_dir = self.dir / "data"
        self.user = "postgres"
        self._tsdb_template_ready = False
        pkglibdir = subprocess.run([str(bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True)
        installed = Path(pkglibdir.stdout.strip(), "timescaledb.so").exists()
        self.timescaledb = installed if timescaledb is None else timescaledb and installed
        # A plain server must not even offer the extension, as on a PostgreSQL without TimescaleDB.
        self.server_bin = _without_timescaledb(bindir) if installed and not self.timescaledb else bindir
        # initdb takes ~2 s; a copy of one initdb'd cluster per run takes ~0.1 s.
        subprocess.run(["cp", "-a", str(self._template()), str(self.data_dir)], check=True)
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port), "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "200", "timezone": "'UTC'", "log_timezone": "'UTC'",
            "max_worker_processes": "48", "log_min_messages": "warning",
        }
        if not fsync:
            conf |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        if self.timescaledb:
            conf |= {"shared_preload_libraries": "'timescaledb'", "timescaledb.telemetry_level": "off",
                     "timescaledb.max_background_workers": "32"}
        conf |= settings or {}
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# valvoja tests\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))

    def _template(self) -> Path:
        """An empty cluster made by initdb once per test run (and binaries), removed at exit."""
        template = _pg_templates.get(self.bindir)
        if template is None or not template.exists():
            template = make_temp_dir("valvoja-pgtemplate-", self._user, scratch=True) / "data"
            self.run_as_user([str(self.bindir / "initdb"), "-D", str(template), "-U", self.user, "-A", "trust",
                              "-E", "UTF8", "--locale=C", "--no-sync"])
            _pg_templates[self.bindir] = template
        return template

    def _command(self) -> list[str]:
        return [str(self.server_bin / "postgres"), "-D", str(self.data_dir)]

    def _shutdown_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False  # not listening yet, or "the database system is starting up" (crash recovery)

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq connection string for ``dbname`` over TCP on 127.0.0.1."""
        return make_conninfo(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname)

    def url(self, dbname: str = "postgres") -> str:
        """The same as a ``postgresql://`` URL (for configuration files)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None, *, timescaledb: bool = False) -> str:
        """Create a database (random name by default), with the timescaledb extension if asked; returns its DSN."""
        if timescaledb and not self.timescaledb:
            raise ServerError("TimescaleDB is not preloaded on this server (or not installed: scripts/setup.sh)")
        name = name or f"test_{secrets.token_hex(5)}"
        if not timescaledb:
            self._create(name, "template1")
            return self.dsn(name)
        # A copy of a template that has the extension takes ~0.1 s; CREATE EXTENSION takes 0.3-0.9 s.
        if not self._tsdb_template_ready:
            self._create(TSDB_TEMPLATE, "template1")
            with psycopg.connect(self.dsn(TSDB_TEMPLATE), autocommit=True) as conn:
                conn.execute("SET client_min_messages = warning")  # no license banner in the test log
                conn.execute("CREATE EXTENSION timescaledb")
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                # No connections, so TimescaleDB's scheduler for it goes and stays away (a copy needs none).
                conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
                             .format(sql.Identifier(TSDB_TEMPLATE)))
            self._tsdb_template_ready = True
        self._create(name, TSDB_TEMPLATE)
        return self.dsn(name)

    def _create(self, name: str, template: str) -> None:
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for attempt in range(50):
                try:
                    conn.execute(stmt)
                    return
                except psycopg.errors.ObjectInUse:  # a session still on the template: end it, try again
                    if attempt == 49:
                        raise
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (template,))
                    time.sleep(0.1)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server and every process of it (the sessions too, in a process group of the postmaster's):
        established connections stay open and nothing answers, as on a hung server or a network cut. SIGCONT after,
        also when the test fails."""
        pids = [self.proc.pid, *(int(p) for p in subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                                                                 capture_output=True, text=True).stdout.split())]
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # a session that just ended
                    os.kill(pid, signal.SIGSTOP)
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if a test left connections open."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class MosquittoServer(ServerProcess):
    """mosquitto with a plain listener, a TLS listener (own CA) and a password listener, all on 127.0.0.1.

    Persistence is on (its own dir) and queue limits are lifted, because mosquitto otherwise drops messages
    beyond 1,000 per client silently (notes/protocols.md). The broker saves its in-memory state every
    ``autosave_interval`` seconds and on orderly shutdown; ``wait_persisted()`` tells a test when a save
    happened, before it kills the broker.
    """

    name = "mosquitto"

    def __init__(self, *, tls: bool = True, password: bool = True, autosave_interval: int = 1,
                 max_inflight_messages: int = 1000, extra_config: str = ""):
        binary = mosquitto_bin()
        if binary is None:
            raise FileNotFoundError("mosquitto not found (apt-get install mosquitto)")
        super().__init__()
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.auth_port = free_port() if password else None
        self.persistence_dir = self.dir / "data"
        self.persistence_dir.mkdir()
        self.persistence_file = self.persistence_dir / "mosquitto.db"
        self.conf_path = self.dir / "mosquitto.conf"
        self.username = "valvoja"
        self.password = secrets.token_urlsafe(12)
        lines = [
            "per_listener_settings true",  # anonymous on the plain and TLS listeners, not on the password one
            "persistence true", f"persistence_location {self.persistence_dir}/", "persistence_file mosquitto.db",
            f"autosave_interval {autosave_interval}", "autosave_on_changes false",
            # Lose nothing: no per-client queue limit, a wide in-flight window.
            "max_queued_messages 0", "max_queued_bytes 0", f"max_inflight_messages {max_inflight_messages}",
            "set_tcp_nodelay true", "sys_interval 1",
            f"log_dest file {self.log_path}", "log_type error", "log_type warning", "log_type notice",
            "log_type information", "connection_messages true", "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto switches to user "mosquitto", who cannot write our dirs
        lines += ["", f"listener {self.port} {self.host}", "allow_anonymous true"]
        self.ca: CertificateAuthority | None = None
        self.ca_path: Path | None = None
        if tls:
            ca = CertificateAuthority(self.dir / "certs")
            server = ca.issue("server", "localhost")
            self.ca_path = ca.cert_path
            self.ca = ca
            lines += ["", f"listener {self.tls_port} {self.host}", "allow_anonymous true",
                      f"cafile {ca.cert_path}", f"certfile {server.cert}", f"keyfile {server.key}"]
        if password:
            pwfile = self.dir / "passwd"
            pwfile.touch(mode=0o600)
            self.run_as_user(["mosquitto_passwd", "-b", str(pwfile), self.username, self.password])
            lines += ["", f"listener {self.auth_port} {self.host}", "allow_anonymous false",
                      f"password_file {pwfile}"]
        self.conf_path.write_text("\n".join([*lines, extra_config, ""]))

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port, self.tls_port, self.auth_port) if p]

    def _command(self) -> list[str]:
        return [str(self.binary), "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        # mosquitto opens its listeners in order before serving anyone: the last one open means all are.
        return port_open(self.ports[-1], self.host)

    def persisted_at(self) -> float:
        """mtime of the persistence file (0 if not written yet); mosquitto replaces the file on each save."""
        try:
            return self.persistence_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def wait_persisted(self, since: float | None = None, timeout: float = 10.0) -> None:
        """Wait for a save that started after ``since`` (default: now), so a kill cannot lose what came before."""
        since = time.time() if since is None else since
        wait_until(lambda: self.persisted_at() > since, timeout, "mosquitto persistence save", self._check_alive)
