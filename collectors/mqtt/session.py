"""Pieces of one broker connection shared by paho's network thread and the event loop.

- `Connection`: the hand-over queue, in-flight slots (back-pressure), replies to SUBSCRIBE/UNSUBSCRIBE.
- `Client`: paho's client whose network thread stops reading while every slot is taken, and keeps the connection.
- `Ack`: a batch's ``ack``; sends the PUBACK on the connection that received the message.
- `SavedSubscriptions`: what the broker's persistent session is subscribed to, kept on disk, so a
  resumed session is not subscribed again (which would make the broker re-send retained messages)
  and filters removed from the configuration are unsubscribed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.client import time_func

from collectors.mqtt.config import Config
from edge.files import write_atomic


class Connection:
    """Everything that belongs to one broker connection (one ``run``).

    Methods marked "network thread" are called by paho's thread; the rest on the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_inflight: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()  # bounded by the in-flight slots
        self.connack: asyncio.Future = loop.create_future()
        self.connected = False
        self.closing = False
        self.lost_reason = ""
        self.max_inflight = max_inflight
        self.inflight = 0
        self.acked: list = []  # redelivery.Entry of messages acknowledged on this connection, not yet confirmed
        # False once the final barrier has started (collector._teardown): a PUBACK sent after its UNSUBSCRIBE is not
        # covered by its UNSUBACK, so the broker might have processed it or not, and the message's remembered receive
        # time could be neither confirmed nor ever used again. Not sent, the broker certainly sends the message again
        # on the next connection, where the receive time remembered in the spool finds the copy.
        self.acking = True
        self._cond = threading.Condition()
        self._replies: dict[int, object] = {}  # packet id -> SUBACK/UNSUBACK reason codes
        self._replied = asyncio.Event()
        # Hand-over queue: one loop wake-up for however many messages arrived meanwhile. A wake-up per
        # message (call_soon_threadsafe) is a syscall each and was the largest single cost at 1k msg/s.
        self._handover: collections.deque = collections.deque()
        self._handover_lock = threading.Lock()
        self._scheduled = False

    # -- back-pressure ---------------------------------------------------------------------------

    def take_slot(self) -> bool:
        """(network thread) Wait until fewer than ``max_inflight`` messages are unacknowledged."""
        with self._cond:
            while self.inflight >= self.max_inflight:
                if self.closing:
                    return False
                self._cond.wait(0.5)
            self.inflight += 1
            return True

    def wait_slot(self, timeout_s: float) -> bool:
        """(network thread) Whether a slot is free (or the connection closing), waiting up to ``timeout_s`` for one."""
        with self._cond:
            if self.inflight >= self.max_inflight and not self.closing:
                self._cond.wait(timeout_s)
            return self.inflight < self.max_inflight or self.closing

    def free_slot(self) -> None:
        with self._cond:
            self.inflight -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop handing messages over; wakes a network thread waiting for a slot."""
        self.closing = True
        self.connected = False
        with self._cond:
            self._cond.notify_all()

    # -- thread hand-over ------------------------------------------------------------------------

    def to_loop(self, fn, *args) -> None:
        """(network thread) Call ``fn(*args)`` on the event loop, in order; dropped if the loop is gone."""
        with self._handover_lock:
            self._handover.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run_handover)
        except RuntimeError:
            pass

    def _run_handover(self) -> None:
        with self._handover_lock:
            items = list(self._handover)
            self._handover.clear()
            self._scheduled = False
        for fn, args in items:
            fn(*args)

    def reply(self, mid: int, value: object) -> None:
        """(network thread) A SUBACK / UNSUBACK arrived. It can beat subscribe()'s return on loopback."""
        self.to_loop(self._store_reply, mid, value)

    def _store_reply(self, mid: int, value: object) -> None:
        self._replies[mid] = value
        self._replied.set()

    async def wait_reply(self, mid: int, timeout_s: float) -> object:
        async with asyncio.timeout(timeout_s):
            while mid not in self._replies:
                self._replied.clear()
                await self._replied.wait()
        return self._replies.pop(mid)


class Client(mqtt.Client):
    """paho's client, whose network thread (``loop_start``) reads a message only when an in-flight slot is free.

    MQTT 3.1.1 cannot tell the broker how many unacknowledged messages to send (MQTT 5's Receive Maximum), so
    back-pressure is to stop reading: the broker keeps the rest. paho's own loop would read on and wait inside
    ``on_message`` for a slot, writing nothing meanwhile: with the spool full for longer than 1.5 x keepalive the
    broker dropped the connection (and sent the messages again on the next). While every slot is taken this loop
    only writes (PUBACKs, PINGREQs) and keeps the keepalive. The userdata is the `Connection`. It uses paho's
    private members (``_loop``, ``_ping_t``, ...) as paho-mqtt 2.2.0 (pinned) has them; the test of a long full
    spool (tests/test_mqtt_untimed.py) fails if they change.
    """

    SLOT_WAIT_S = 0.25  # how often a paused loop looks at the keepalive and the outgoing packets

    def loop_forever(self, timeout: float = 1.0, retry_first_connection: bool = False) -> mqtt.MQTTErrorCode:
        # paho's reconnect is off (the gateway's supervisor reconnects): one connection, until it ends or loop_stop.
        conn: Connection = self._userdata
        rc = mqtt.MQTT_ERR_SUCCESS
        while rc == mqtt.MQTT_ERR_SUCCESS:
            if self._thread_terminate and not self._out_packet:
                break
            if conn.wait_slot(0):
                rc = self._loop(timeout)  # reads one packet: one message at most takes a slot
            else:
                rc = self._paused()
        return rc

    def _paused(self) -> mqtt.MQTTErrorCode:
        rc = self.loop_write()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return rc
        # Unread on purpose, the PINGRESPs wait in the socket behind the messages: paho must not take their absence
        # for a dead broker, and still sends a PINGREQ when nothing else went out for a keepalive period. A broker
        # that died meanwhile is noticed once reading resumes (paho's keepalive check works again then).
        with self._msgtime_mutex:
            self._last_bytes_received = time_func()
        self._ping_t = 0
        rc = self.loop_misc()
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self._userdata.wait_slot(self.SLOT_WAIT_S)
        return rc


class Ack:
    """``batch.ack``: PUBACK on the connection that received the message, once.

    ``Client.ack`` only appends the PUBACK to paho's outgoing deque and wakes the network thread through
    its socket pair (the path ``publish`` takes from other threads), so calling it on the event loop is safe.
    Packet ids belong to a connection: after a reconnect the broker re-sends what was not acknowledged,
    so an ack for a message of a closed connection only frees its slot. ``entry``: the message's remembered
    receive time (`redelivery`), to be forgotten once the broker has confirmed this PUBACK.
    """

    __slots__ = ("client", "conn", "done", "entry", "mid", "qos")

    def __init__(self, client: mqtt.Client, conn: Connection, mid: int, qos: int, entry=None) -> None:
        self.client, self.conn, self.mid, self.qos, self.done, self.entry = client, conn, mid, qos, False, entry

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        self.conn.free_slot()
        if self.qos and self.conn.connected and self.conn.acking:
            self.client.ack(self.mid, self.qos)
            if self.entry is not None:
                self.conn.acked.append(self.entry)


class SavedSubscriptions:
    """The filters a broker session was last subscribed to, per broker and client id."""

    def __init__(self, path: Path, cfg: Config) -> None:
        self.path = Path(path)
        self.key = {"broker": f"{cfg.host}:{cfg.port}", "client_id": cfg.client_id, "qos": cfg.qos}
        self.ids: dict[str, int] = {}  # MQTT 5 subscription identifiers of the filters `load` returned

    def load(self) -> list[str] | None:
        """The filters saved for this broker, client id and QoS, or None; their identifiers go to ``ids``."""
        self.ids = {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or {k: saved.get(k) for k in self.key} != self.key:
            return None
        filters = saved.get("filters")
        ids = saved.get("ids")
        if isinstance(ids, dict):
            self.ids = {f: i for f, i in ids.items() if isinstance(i, int)}
        return filters if isinstance(filters, list) else None

    def save(self, filters: list[str], ids: dict[str, int] | None = None) -> None:
        """Remember ``filters`` (and the MQTT 5 subscription identifier each was subscribed with)."""
        body = {**self.key, "filters": sorted(filters)}
        if ids:
            body["ids"] = {f: ids[f] for f in sorted(filters) if f in ids}
        write_atomic(self.path, json.dumps(body))
