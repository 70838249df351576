"""The demo's embedded servers: a broker that cannot start says why and leaves nothing running."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from edge.embedded import EmbeddedMosquitto, embedded_postgres, find_mosquitto
from edge.gateway import describe_conninfo


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed (scripts/setup.sh installs it)")
def test_a_mosquitto_that_cannot_listen_fails_at_once_and_is_not_left_running(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: mosquitto cannot bind it, nothing answers there
        broker = EmbeddedMosquitto(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"mosquitto did not start \(exit code \d+\).*mosquitto.log ends"):
            broker.start()
        assert broker.proc.poll() is not None


def test_a_connection_string_is_described_without_its_password():
    assert describe_conninfo("host=h port=5 dbname=x user=u password=secret") == "u@h:5/x"
    assert describe_conninfo("postgresql://u:secret@h:5433/db") == "u@h:5433/db"
    assert "secret" not in describe_conninfo("garbage password=secret")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's embedded PostgreSQL runs as another user")
def test_a_folder_opened_for_the_embedded_postgresql_is_said():
    """Run as root, embedded-postgres opens every folder above its data to all users (a clone under /root made /root
    readable by everyone) and said nothing; now each one is named with its old and new permissions."""
    private = Path(tempfile.mkdtemp(prefix="valvoja-private-"))  # 0700, like /root
    notes: list[str] = []
    server = None
    try:
        server, _ = embedded_postgres(private / "demo" / "postgres", notice=notes.append)
        assert private.stat().st_mode & 0o777 == 0o755
        assert any(f"needed to pass through {private}: its permissions were widened from 0700 to 0755" in n
                   for n in notes), notes
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(private, ignore_errors=True)
