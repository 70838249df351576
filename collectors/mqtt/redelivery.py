"""Receive times of QoS 1 messages the broker may send again, so a copy is stored under the same keys.

The database de-duplicates what the broker sends twice by the readings' (tag, time) key, and dead letters by a
digest that covers their receive time. That holds for values with a source time only: a message without one
was given a new receive time when it came again, and was stored twice.

When does it come again? A message is sent again (DUP set, same packet id: MQTT 3.1.1 §4.4, MQTT 5 §4.4) on the
next connection of a persistent session when the broker has not processed its PUBACK: the gateway spooled it but
died, or the connection dropped, before the PUBACK arrived. mosquitto 2.0.11 was seen doing so, also after its own
restart (it keeps the packet ids), with the retain flag as first sent; a packet id is used again for another
message only after the broker has the PUBACK of the one before.

So for every QoS 1 message whose stored result depends on its receive time, ``(packet id) -> (digest of topic and
payload, receive time)`` is remembered: in memory, and in the spool in the same transaction as the readings
(`Batch.state`), so after a crash the spool holds the entry exactly when it holds the readings. A DUP message
whose packet id and digest match takes the remembered receive time. Entries go:

- when a later message arrives with the same packet id (the broker had the PUBACK of the one before);
- when the broker has certainly processed the PUBACK: the collector sends a harmless UNSUBSCRIBE after PUBACKs
  (at most every `CONFIRM_EVERY_S`) and the broker, handling a connection's packets in order, answers it after
  them (`confirmed`). Without this an entry would stay until its packet id came round again (65,535 messages on
  mosquitto) and could, after a second crash, match another message with the same topic and payload;
- all of them when the broker has no session for the client (nothing will be sent again).

An entry left over by a crash before its removal was written, or by a connection lost before the broker confirmed
its PUBACK (which the broker may have processed or not), stays until its packet id is used again. What is not
covered: a broker that sends a message again without DUP, or under another packet id, is not recognised (the copy
gets its own receive time, as before).
"""

from __future__ import annotations

import hashlib
import threading

from paho.mqtt.client import MQTTMessage

CONFIRM_EVERY_S = 1.0  # how often at most the broker is asked to confirm the PUBACKs sent (one UNSUBSCRIBE)


def _digest(msg: MQTTMessage) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(len(msg._topic).to_bytes(4, "big"))
    h.update(msg._topic)
    h.update(msg.payload)
    return h.digest()


def _key(mid: int) -> bytes:
    return mid.to_bytes(2, "big")


Entry = tuple[int, bytes, int]  # packet id, digest, receive time (µs since the epoch)


class ReceiveTimes:
    """One collector's receive times: remembered per packet id; a new message's never among the last one's.

    `stamp` and `settle` run on paho's network thread; `confirmed` and `clear` on the event loop.
    """

    def __init__(self, *, remember: bool) -> None:
        self.remember = remember  # QoS 1 on a persistent session: the broker may send a message again
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[bytes, int]] = {}
        self._last_us = self._next_us = 0  # the last new receive time given, and the first free one after its readings
        self._fresh = True  # the time `stamp` gave last is a new one (not a remembered one)
        self.matched = 0  # messages sent again that took their first receive time

    def load(self, saved: dict[bytes, bytes]) -> None:
        """The entries the spool holds (at start-up, before connecting)."""
        with self._lock:
            for k, v in saved.items():
                if len(k) == 2 and len(v) == 24:
                    recv_us = int.from_bytes(v[16:], "big", signed=True)
                    self._entries[int.from_bytes(k, "big")] = (bytes(v[:16]), recv_us)

    def __len__(self) -> int:
        return len(self._entries)

    def stamp(self, msg: MQTTMessage, now_us: int) -> int:
        """The message's receive time: the remembered one for a matching DUP, else ``now_us``, moved past the
        microseconds the message before took (`untimed.spread`) when it falls among them. A clock stepped back
        further is followed: pinning every time to the last one until the clock caught up would crowd minutes of
        readings into microseconds."""
        self._fresh = True
        if msg.dup and msg.qos == 1 and self.remember:
            with self._lock:
                entry = self._entries.get(msg.mid)
            if entry is not None and entry[0] == _digest(msg):
                self.matched += 1
                self._fresh = False
                return entry[1]
        return self._next_us if self._last_us <= now_us < self._next_us else now_us

    def settle(self, msg: MQTTMessage, recv_us: int, span_us: int,
               depends: bool) -> tuple[list[tuple[bytes, bytes | None]], Entry | None]:
        """After decoding: the spool changes to commit with the message's batch, and the entry to confirm after its
        PUBACK (None if nothing was remembered). ``span_us``: the microseconds from ``recv_us`` its readings took
        as their time (`untimed.spread`); ``depends``: the stored result depends on the receive time."""
        if self._fresh:
            self._last_us, self._next_us = recv_us, recv_us + max(span_us, 1)
        if msg.qos != 1 or not self.remember:
            return [], None
        mid = msg.mid
        with self._lock:
            if depends:
                digest = _digest(msg)
                self._entries[mid] = (digest, recv_us)
                return [(_key(mid), digest + recv_us.to_bytes(8, "big", signed=True))], (mid, digest, recv_us)
            if self._entries.pop(mid, None) is not None:  # this packet id is another message now
                return [(_key(mid), None)], None
        return [], None

    def confirmed(self, entries: list[Entry]) -> list[tuple[bytes, None]]:
        """The broker has the PUBACKs of ``entries``: forget those still remembered as they were; returns the spool
        changes (an entry replaced since belongs to a newer message under the same packet id and stays)."""
        changes = []
        with self._lock:
            for mid, digest, recv_us in entries:
                if self._entries.get(mid) == (digest, recv_us):
                    del self._entries[mid]
                    changes.append((_key(mid), None))
        return changes

    def clear(self) -> list[tuple[None, None]]:
        """The broker has no session: it will send nothing again. Returns the spool change that forgets all."""
        with self._lock:
            self._entries.clear()
        return [(None, None)]
