"""Pieces of one broker connection shared by paho's network thread and the event loop.

- `Connection`: the hand-over queue, in-flight slots (back-pressure), replies to SUBSCRIBE/UNSUBSCRIBE.
- `Ack`: a batch's ``ack``; sends the PUBACK on the connection that received the message.
- `SavedSubscriptions`: what the broker's persistent session is subscribed to, kept on disk, so a
  resumed session is not subscribed again (which would make the broker re-send retained messages)
  and filters removed from the configuration are unsubscribed.
- `tls_context`: the client's TLS settings, built once at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from collectors.mqtt.config import Config
from edge.errors import ConfigError
from edge.files import write_atomic


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The client TLS context (built at start-up so a bad CA or key file is a configuration error)."""
    t = cfg.tls
    if t is None:
        return None
    missing = [f"tls.{key}: no such file {path}" for key in ("ca_file", "cert_file", "key_file")
               if (path := getattr(t, key)) is not None and not Path(path).is_file()]
    if missing:
        raise ConfigError(missing)
    try:
        ctx = ssl.create_default_context(cafile=t.ca_file)
        if t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificates: {exc}") from exc
    ctx.check_hostname = not t.insecure
    return ctx


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
        if self.qos and self.conn.connected:
            self.client.ack(self.mid, self.qos)
            if self.entry is not None:
                self.conn.acked.append(self.entry)


class SavedSubscriptions:
    """The filters a broker session was last subscribed to, per broker and client id."""

    def __init__(self, path: Path, cfg: Config) -> None:
        self.path = Path(path)
        self.key = {"broker": f"{cfg.host}:{cfg.port}", "client_id": cfg.client_id, "qos": cfg.qos}

    def load(self) -> list[str] | None:
        """The filters saved for this broker, client id and QoS, or None."""
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or {k: saved.get(k) for k in self.key} != self.key:
            return None
        filters = saved.get("filters")
        return filters if isinstance(filters, list) else None

    def save(self, filters: list[str]) -> None:
        write_atomic(self.path, json.dumps({**self.key, "filters": sorted(filters)}))
