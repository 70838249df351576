"""Helpers for the operations tests (tests/test_ops_*.py, tests/test_container_*.py): a site configuration
for the fixture servers, an MQTT publisher with distinct source timestamps, database counts."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import subprocess
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

SITE = """\
[site]
name = "ops-test"
gateway_id = "@GATEWAY_ID@"
state_dir = "@STATE_DIR@"

[database]
url = "@DB_URL@"
flush_interval_s = @FLUSH_S@
connect_timeout_s = 3

[http]
listen = "@HTTP_HOST@:{HTTP_PORT}"

[logging]
level = "INFO"
format = "text"

[service]
stop_timeout_s = 10
watchdog_interval_s = 0.5
stall_after_s = @STALL_S@
collector_silence_s = @SILENCE_S@

[[collectors]]
kind = "mqtt"
name = "plant"
host = "127.0.0.1"
port = @MQTT_PORT@
client_id = "valvoja-@RUN@"
keepalive_s = 5
connect_timeout_s = 3

[[collectors.subscriptions]]
topic = "ops/@RUN@/+asset/+signal"
tag = "{asset}.{signal}"
"""


def db_url(dsn: str) -> str:
    """The fixture's libpq DSN as a ``postgresql://`` URL for a site configuration (no password: trust auth)."""
    d = conninfo_to_dict(dsn)
    return f"postgresql://{d['user']}@{d['host']}:{d['port']}/{d['dbname']}"


def site_config(dsn: str, mqtt_port: int, *, run: str | None = None, gateway_id: str = "gw-ops",
                state_dir: str = "var", flush_s: float = 0.2, stall_s: float = 120, silence_s: float = 0,
                http_host: str = "127.0.0.1") -> str:
    """A site TOML for the fixture database and broker; ``{HTTP_PORT}`` stays for tests/gateway_proc.py."""
    values = {"@GATEWAY_ID@": gateway_id, "@STATE_DIR@": state_dir, "@DB_URL@": db_url(dsn), "@FLUSH_S@": str(flush_s),
              "@STALL_S@": str(stall_s), "@SILENCE_S@": str(silence_s), "@MQTT_PORT@": str(mqtt_port),
              "@RUN@": run or new_run(), "@HTTP_HOST@": http_host}
    text = SITE
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def new_run() -> str:
    return "r" + secrets.token_hex(4)


class Publisher:
    """QoS 1 publisher of JSON samples ``ops/<run>/<asset>/<signal>`` with distinct source times (1 ms apart)."""

    def __init__(self, port: int, run: str, host: str = "127.0.0.1", **connect):
        self.run = run
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{run}-{secrets.token_hex(3)}")
        if "username" in connect:
            self.client.username_pw_set(connect.pop("username"), connect.pop("password", None))
        if "ca" in connect:
            self.client.tls_set(ca_certs=str(connect.pop("ca")))
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        self.sent = 0

    def publish(self, n: int, asset: str = "P-1", signal: str = "flow") -> None:
        infos = []
        for _ in range(n):
            t = self.base + dt.timedelta(milliseconds=self.sent)
            payload = orjson.dumps({"value": float(self.sent), "time": t.isoformat().replace("+00:00", "Z")})
            infos.append(self.client.publish(f"ops/{self.run}/{asset}/{signal}", payload, qos=1))
            self.sent += 1
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rows(dsn: str, sql: str, *args) -> list[tuple]:
    """The rows ``sql`` returns (none before the gateway made the schema)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def stored(dsn: str, prefix: str = "P-1.") -> int:
    """Readings in the database whose tag starts with ``prefix`` (0 before the gateway made the schema)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return conn.execute("SELECT count(*) FROM readings r JOIN tags t ON t.id = r.tag_id WHERE t.name LIKE %s",
                                (prefix + "%",)).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something true; TimeoutError naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not met within {timeout_s} s (last: {last!r})")


def log_events(log_path: Path) -> str:
    return log_path.read_text(errors="replace")


@contextlib.contextmanager
def small_disk(path, size_mb: int):
    """A tmpfs of ``size_mb`` at ``path``: a state folder whose file system really fills up (root only)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
