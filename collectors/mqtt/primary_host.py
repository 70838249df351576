"""Sparkplug B Primary Host Application: the STATE birth and death on ``spBv1.0/STATE/<host_id>`` (Sparkplug 3.0).

An edge node configured with a Primary Host publishes its births only while that host's retained STATE says
``{"online": true, ...}``, and holds its data (store and forward) while it says ``online: false``; when the host is
back it publishes its births and then the held data, flagged ``is_historical``, with their own timestamps. So the
gateway, as the host:

- registers the death as its MQTT will at CONNECT: ``{"online": false, "timestamp": T}``, QoS 1, retained, where T is
  the connect time in ms (the broker publishes it when the connection ends without DISCONNECT: a crash, SIGKILL, a
  lost link);
- once subscribed (the Sparkplug filters and its own STATE topic), publishes the birth ``{"online": true,
  "timestamp": T}`` with the same T, QoS 1, retained, and waits for its PUBACK;
- when a STATE ``online: false`` for its own id is delivered live (not the retained one sent at subscribe: its birth
  replaced that), publishes its birth again: the broker keeps the last retained message, and an edge node that
  connects later must find the host online (tck-id-message-flow-hid-sparkplug-state-message-delivered). That
  message is usually the will of its own previous connection, published late; edge nodes ignore it by its older
  timestamp (the specification's rule for several connections of one host), but the retained copy is theirs only
  after the birth replaces it;
- before a clean DISCONNECT (which discards the will) publishes the death itself.

The ids, counters and payloads are here; the collector publishes (its client belongs to the connection). No I/O.
"""

from __future__ import annotations

import json
import logging

from collectors.mqtt.sparkplug import NAMESPACE
from collectors.mqtt.sparkplug_encode import now_ms

log = logging.getLogger(__name__)

STATE_QOS = 1  # birth and will: QoS 1, retained (tck-id-host-topic-phid-birth-qos/-retain, -death-qos/-retain)


def state_topic(host_id: str) -> str:
    """``spBv1.0/STATE/<host_id>`` (Sparkplug 3.0; 2.2 used ``STATE/<host_id>`` with a text payload)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    """The STATE JSON: ``{"online": <bool>, "timestamp": <ms since the epoch, UTC>}``."""
    return json.dumps({"online": online, "timestamp": timestamp_ms}, separators=(",", ":")).encode()


def parse_state(payload: bytes) -> tuple[bool, int]:
    """(online, timestamp) of a STATE payload; ValueError naming what is wrong."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    online, ts = body.get("online"), body.get("timestamp")
    if not isinstance(online, bool):
        raise ValueError("'online' is not a boolean")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError("'timestamp' is not an integer")
    return online, ts


class PrimaryHost:
    """The STATE of one host id, for one collector: payloads of the current connection and what happened."""

    def __init__(self, source: str, host_id: str) -> None:
        self.source = source
        self.host_id = host_id
        self.topic = state_topic(host_id)
        self.timestamp_ms: int | None = None  # the current connection's: its will's and its births'
        self.births = 0  # STATE online published (each connection's first, and again after a delivered offline)
        self.rebirths = 0  # of them, answers to an offline STATE of this id delivered live
        self.deaths = 0  # offline published before a clean disconnect
        self.foreign = 0  # STATE messages of this id that were not the gateway's own (another timestamp)
        self.unreadable = 0
        self._unreadable_logged = False
        self._closing = False  # its death is published: the copy delivered back is no reason for a birth

    def will(self) -> tuple[str, bytes]:
        """A new connection: its timestamp, and the death to register as its will."""
        # Each connection's own: an edge node tells a late will of the one before by its older timestamp.
        self.timestamp_ms = max(now_ms(), (self.timestamp_ms or 0) + 1)
        self._closing = False
        return self.topic, state_payload(False, self.timestamp_ms)

    def birth(self) -> bytes:
        return state_payload(True, self._ts())

    def death(self) -> bytes:
        """The death published before a clean DISCONNECT; from now on an offline STATE asks for no birth."""
        self._closing = True
        return state_payload(False, self._ts())

    def _ts(self) -> int:
        if self.timestamp_ms is None:
            raise RuntimeError("no connection yet: will() gives the connection its timestamp")
        return self.timestamp_ms

    def delivered(self, payload: bytes, retained: bool) -> bool:
        """A message on this host's STATE topic: whether the birth must be published again."""
        try:
            online, ts = parse_state(payload)
        except ValueError as exc:
            self.unreadable += 1
            if not self._unreadable_logged:
                self._unreadable_logged = True
                log.warning("%s: unreadable Sparkplug STATE on %s (%s); publishing the host's birth again so that edge "
                            "nodes find it online; later ones are counted (status: primary_host.unreadable)",
                            self.source, self.topic, exc, extra={"event": "sparkplug_state_unreadable",
                                                                 "collector": self.source, "topic": self.topic})
            return not retained
        if ts != self.timestamp_ms:
            self.foreign += 1
        if online or retained or self._closing:
            # Online: ours coming back, or another client's that uses this id (its timestamp differs; counted).
            # Retained: what the topic held when the gateway subscribed, which its birth, published after the
            # subscription, replaces. Closing: its own death, delivered back.
            return False
        log.info("%s: Sparkplug STATE offline delivered for host %s (timestamp %d, this connection's %s): publishing "
                 "the birth again", self.source, self.host_id, ts, self.timestamp_ms,
                 extra={"event": "sparkplug_state_offline_delivered", "collector": self.source, "topic": self.topic})
        return True

    def stats(self) -> dict:
        return {"host_id": self.host_id, "topic": self.topic, "timestamp": self.timestamp_ms, "births": self.births,
                "rebirths": self.rebirths, "deaths": self.deaths, "foreign": self.foreign,
                "unreadable": self.unreadable}
