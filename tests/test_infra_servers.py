"""The test servers themselves: TimescaleDB and plain PostgreSQL databases, migrations on both, the broker's
plain / TLS / password listeners, and that kills and restarts keep what the servers acknowledged."""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer, PostgresServer

from edge.db.features import detect
from edge.db.migrate import migrate

# ----------------------------------------------------------------------------------------------- PostgreSQL


def test_pg_dsn_has_timescaledb(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    assert row is not None and row[0].startswith("2.")
    assert "timescaledb" in preload


def test_plain_pg_dsn_has_no_timescaledb(plain_pg_dsn):
    with psycopg.connect(plain_pg_dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None
        assert "timescaledb" not in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        # Not even offered, as on a server without TimescaleDB; other extensions still are.
        available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
        assert "timescaledb" not in available and "plpgsql" in available


def test_edition_detection(pg_dsn, plain_pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        ts = detect(conn)
    with psycopg.connect(plain_pg_dsn) as conn:
        plain = detect(conn)
    assert (ts.edition, ts.timescaledb) == ("apache", True)  # Debian's build is the Apache-2 edition
    assert (plain.edition, plain.timescaledb_version) == ("plain", None)
    assert ts.server_version >= 150000 and plain.server_version >= 150000


def _hypertables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall()
    return {r[0] for r in rows}


def test_migrations_on_timescaledb_are_idempotent(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        features, applied = migrate(conn)
        assert features.edition == "apache" and applied
        again_features, again = migrate(conn)
        assert again_features == features and again == []
        assert "readings" in _hypertables(conn)
        n = conn.execute("SELECT count(*) FROM valvoja_migrations WHERE edition = 'apache'").fetchone()[0]
        assert n == len(applied)


def test_migrations_on_plain_postgresql_are_idempotent(plain_pg_dsn):
    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        features, applied = migrate(conn)
        assert features.edition == "plain" and applied
        assert migrate(conn)[1] == []
        assert conn.execute("SELECT to_regclass('readings')").fetchone()[0] == "readings"
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None


def test_own_pg_server_is_durable_and_keeps_committed_rows_across_kill(own_pg_server: PostgresServer):
    dsn = own_pg_server.create_database("faults")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t SELECT g, 'committed' FROM generate_series(1, 1000) g")
    open_tx = psycopg.connect(dsn)  # a transaction open at the moment of the crash is rolled back
    open_tx.execute("INSERT INTO t VALUES (-1, 'uncommitted')")
    pid = own_pg_server.proc.pid
    own_pg_server.kill()
    assert not own_pg_server.running
    open_tx.close()
    own_pg_server.start()
    assert own_pg_server.proc.pid != pid
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), min(id) FROM t").fetchone() == (1000, 1)
    own_pg_server.restart()  # orderly stop + start, same port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1000


def test_server_close_removes_process_and_dir():
    server = PostgresServer(fsync=False).start()
    pid, data = server.proc.pid, server.dir
    server.close()
    assert not data.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------------------------------------------- MQTT


class Peer:
    """A paho-mqtt 2.x client (callback API v2) that records what it receives; blocking helpers for tests."""

    def __init__(self, broker: MosquittoServer, listener: str = "plain", client_id: str = "",
                 clean: bool = True, username: str | None = None, password: str | None = None):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                                  protocol=mqtt.MQTTv311)
        self.port = {"plain": broker.port, "tls": broker.tls_port, "auth": broker.auth_port}[listener]
        if listener == "tls":
            self.client.tls_set(ca_certs=str(broker.ca_path), cert_reqs=ssl.CERT_REQUIRED)
        if listener == "auth":
            self.client.username_pw_set(username or broker.username, password or broker.password)
        self.received: list[mqtt.MQTTMessage] = []
        self.connack: mqtt.ReasonCode | None = None
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host = broker.host

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack, self.session_present = reason_code, flags.session_present
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.received.append(msg)

    def connect(self, timeout: float = 10.0) -> Peer:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(timeout), "no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)  # returns once PUBACK came back for QoS 1
        assert info.is_published()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("listener", ["plain", "tls", "auth"])
def test_broker_passes_qos1_message(mosquitto: MosquittoServer, listener: str):
    sub = Peer(mosquitto, listener).connect()
    pub = Peer(mosquitto, listener).connect()
    try:
        assert sub.connack == 0 and pub.connack == 0
        sub.subscribe(f"valvoja/test/{listener}/#")
        pub.publish(f"valvoja/test/{listener}/a", b"42.5")
        got = sub.wait_for(1)
        assert [(m.topic, m.payload, m.qos) for m in got] == [(f"valvoja/test/{listener}/a", b"42.5", 1)]
    finally:
        sub.close()
        pub.close()


def test_broker_refuses_wrong_password(mosquitto: MosquittoServer):
    peer = Peer(mosquitto, "auth", password="wrong").connect()
    try:
        assert peer.connack.is_failure and peer.connack.getName() == "Not authorized"
    finally:
        peer.close()


def test_tls_listener_rejects_unknown_ca(mosquitto: MosquittoServer, tmp_path: Path):
    from certs import CertificateAuthority

    other = CertificateAuthority(tmp_path, common_name="someone else")
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.tls_set(ca_certs=str(other.cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(mosquitto.host, mosquitto.tls_port)


def test_queued_qos1_messages_survive_broker_kill(own_mosquitto: MosquittoServer):
    """A persistent session's queued QoS 1 messages are still delivered after SIGKILL + restart, none dropped."""
    n = 3000  # above mosquitto's default per-client limit of 1,000, which would drop silently
    sub = Peer(own_mosquitto, client_id="valvoja-persistent", clean=False).connect()
    sub.subscribe("plant/#")
    sub.close()  # offline: the broker now queues for this session
    pub = Peer(own_mosquitto).connect()
    for i in range(n):
        pub.client.publish(f"plant/p{i % 7}", str(i).encode(), qos=1)
    pub.publish("plant/last", b"last")  # PUBACKs come in order: this one acknowledged means all were
    pub.close()
    own_mosquitto.wait_persisted()
    own_mosquitto.kill()
    own_mosquitto.start()
    sub = Peer(own_mosquitto, client_id="valvoja-persistent", clean=False).connect()
    try:
        assert sub.session_present
        got = sub.wait_for(n + 1)
        payloads = [m.payload for m in got]
        assert len(payloads) == n + 1, f"{len(payloads)} of {n + 1} arrived"
        assert sorted(int(p) for p in payloads[:-1]) == list(range(n)) and payloads[-1] == b"last"
    finally:
        sub.close()
    assert "dropped" not in own_mosquitto.log_tail(200).lower()
