"""Alert notifications to an MQTT broker (``[maintenance.notify.mqtt]``), plain or over TLS.

QoS 1 on ``<prefix>/<asset>/<kind>``, payload and topic rules as in `maintenance.notify`. A change counts as
delivered only once the broker's PUBACK came, within ``timeout_s``; anything else is a failure the gateway's outbox
sends again (edge/notifications.py), and the connection it happened on is dropped, so paho never sends a stale copy
of it behind the outbox's back.

The notifier owns its connection (paho's own reconnect is off): each send connects when there is none, so once a
broker that was down is back the next try of the outbox gets through. paho's reconnect ran on a back-off of its
own (1 s doubling to 120 s), and notifications went on failing up to two minutes after the broker was back. A
connection that fails says why, naming the setting to look at: a refused log-in, a broker certificate the CA does
not vouch for (``tls.ca_file``), a host name the certificate does not name, a client certificate the broker refused.

TLS is the MQTT collector's (`edge.tls`: the same table, files read at start-up, TLS 1.2 or later, the host name
checked unless ``tls.insecure``).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, Field

from edge.secrets import SecretRef
from edge.tls import Tls, tls_context, warn_insecure_login
from maintenance.alerts import AlertChange
from maintenance.notify import RECEIVER_NAME_HELP, ReceiverName, payload, wanted

TLS_KEY = "maintenance.notify.mqtt.tls"
KEEPALIVE_S = 60
_TOPIC_RESERVED = str.maketrans({c: "_" for c in "#+/\0"})


class MqttNotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "valvoja/alerts"
    name: ReceiverName | None = Field(None, description=RECEIVER_NAME_HELP)
    events: tuple[str, ...] = ("raised", "updated", "acknowledged", "escalated", "cleared")
    username: str | None = None
    password: SecretRef | None = None
    timeout_s: float = Field(5.0, gt=0, description="TCP + TLS + CONNACK, and each PUBACK")
    tls: Tls | None = None


class _Connection:
    """One paho client and what its network thread saw: the CONNACK, a loss, paho's last error."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.answered = threading.Event()  # the CONNACK came, or the connection ended before it
        self.refused: str | None = None
        self.lost = False
        self.error = ""
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        self.answered.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.lost = True
        self.answered.set()

    def _on_log(self, client, userdata, level, buf) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self.error:  # why the socket closed (a TLS alert from the broker)
            self.error = buf

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MqttNotifier:
    """Publishes with QoS 1 and waits (in a thread) for the broker's PUBACK, bounded by ``timeout_s``."""

    def __init__(self, cfg: MqttNotifyConfig, password: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        """``password`` and ``tls`` (`edge.tls.tls_context` of ``cfg.tls``) are resolved at start-up by the gateway
        (`edge.notifications.notify_secrets`); the TLS context is built here when not given."""
        self.cfg = cfg
        self._password = password
        self._tls = tls if tls is not None else tls_context(cfg.tls, TLS_KEY)
        warn_insecure_login("maintenance.notify.mqtt", cfg.host, cfg.port, cfg.tls,
                               password if cfg.username else None)
        # The outbox's key (not changed by TLS; kept across an address change only when chosen).
        self.name = cfg.name or f"MQTT {cfg.host}:{cfg.port}/{cfg.topic_prefix}"
        self._where = f"mqtt{'s' if cfg.tls else ''}://{cfg.host}:{cfg.port}"
        self._lock = threading.Lock()  # one send at a time; a close waits for it
        self._conn: _Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<MqttNotifier {self._where}>"

    def topic(self, ch: AlertChange) -> str:
        # Asset and rule names are free text: a '#' or '+' made paho refuse every publish of the alert, a '/' split
        # the kind over levels a subscription to <prefix>/+/+ does not reach. The payload keeps the names.
        asset, kind = (x.translate(_TOPIC_RESERVED) for x in (ch.alert.asset, ch.alert.kind))
        return f"{self.cfg.topic_prefix}/{asset}/{kind}"

    def _connect(self) -> str | None:
        """(thread) A new connection; None, or why there is none."""
        cfg = self.cfg
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = cfg.timeout_s  # TCP connect and TLS handshake
        if self._tls is not None:
            client.tls_set_context(self._tls)
            client.tls_insecure_set(cfg.tls.insecure)
        if cfg.username:
            client.username_pw_set(cfg.username, self._password)
        conn = _Connection(client)
        deadline = time.monotonic() + cfg.timeout_s
        try:
            client.connect(cfg.host, cfg.port, KEEPALIVE_S)
        except ssl.SSLCertVerificationError as exc:
            hint = ("" if "match" in str(exc)  # the host name: the message says so
                    else f" (is {TLS_KEY}.ca_file the CA that signed the broker's certificate?)")
            return f"TLS: the broker's certificate was refused: {exc.verify_message or exc}{hint}"
        except ssl.SSLError as exc:
            return (f"TLS: the handshake failed: {exc} (does the broker require a client certificate "
                    f"({TLS_KEY}.cert_file / key_file), or refuse this one?)")
        except (OSError, ssl.CertificateError) as exc:
            return f"cannot connect: {type(exc).__name__}: {exc}"
        client.loop_start()
        answered = conn.answered.wait(max(0.0, deadline - time.monotonic()))
        if answered and not conn.refused and not conn.lost:
            self._conn = conn
            return None
        conn.close()
        if not answered:
            return f"no CONNACK within {cfg.timeout_s:g} s"
        if conn.refused:
            return f"the broker refused the connection: {conn.refused}"
        why = f" ({conn.error})" if conn.error else ""
        if self._tls is not None:
            # TLS 1.3: the broker checks the client's certificate after the client's side of the handshake is done,
            # so a refused (or missing) one shows only as the connection closing before the CONNACK.
            return (f"TLS: the broker closed the connection before its CONNACK{why}: did it refuse the client "
                    f"certificate ({TLS_KEY}.cert_file / key_file), or require one?")
        return f"the broker closed the connection before its CONNACK{why}"

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _publish(self, ch: AlertChange) -> tuple[bool, str]:
        with self._lock:
            if self._closed:
                return False, "closed"
            if self._conn is not None and self._conn.lost:
                self._drop()
            if self._conn is None:
                error = self._connect()
                if error:
                    return False, f"not connected to {self._where}: {error}"
            conn = self._conn
            info = conn.client.publish(self.topic(ch), payload(ch), qos=1)
            deadline = time.monotonic() + self.cfg.timeout_s
            try:
                while not info.is_published() and not conn.lost and time.monotonic() < deadline:
                    info.wait_for_publish(min(0.1, max(0.0, deadline - time.monotonic())))
                if info.is_published():
                    return True, "PUBACK"
                why = (f"the connection to {self._where} was lost before the broker's PUBACK" if conn.lost
                       else f"no PUBACK from {self._where} within {self.cfg.timeout_s:g} s")
            except (RuntimeError, ValueError) as exc:  # not sent at all (the connection went meanwhile)
                why = f"{self._where}: {exc}"
            # Dropped with the connection: paho would send it again on reconnecting, behind the outbox's back.
            self._drop()
            return False, why

    async def send(self, ch: AlertChange) -> tuple[bool, str]:
        if not wanted(self.cfg.events, ch):
            return True, "skipped"
        return await asyncio.to_thread(self._publish, ch)

    probes = True  # connecting and logging in publishes nothing

    def _probe(self) -> str | None:
        with self._lock:
            if self._closed or (self._conn is not None and not self._conn.lost):
                return None
            self._drop()
            error = self._connect()  # kept open when it succeeds: the first alert's publish uses it
            return f"not connected to {self._where}: {error}" if error else None

    async def probe(self) -> str | None:
        """Connect once (TCP, TLS, log-in, CONNACK; bounded by ``timeout_s``), publishing nothing: why it failed,
        or None. A refused CA or password shows at the gateway's start, not at the first alert."""
        return await asyncio.to_thread(self._probe)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)
