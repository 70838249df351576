"""Sparkplug B rebirth requests: ask an edge node to publish its births again, at most once per interval.

The decoder calls `RebirthRequests.request` (on paho's network thread) when it cannot make sense of a
node's data: DATA from a node or device whose birth it has not seen (the gateway started after the node,
or missed the birth while away), an alias no birth defined, or a gap in the sequence numbers. The
request is what the specification defines (Sparkplug 3.0, "Commands"; see README.md): an NCMD on
``spBv1.0/<group>/NCMD/<edge node>`` with the metric ``Node Control/Rebirth`` = true (Boolean), a payload
timestamp and no sequence number, published with QoS 0 and retain false.

A node that does not answer would otherwise get a request per message: each node is asked at most once
per ``rebirth_interval_s``; the requests held back are counted. A publish paho refuses (not connected,
queue full, a topic it will not publish to) is counted and logged once, never raised: the message that
caused it is decoded (or dead-lettered) as before. A broker whose ACL forbids the publish drops a QoS 0
message without telling the client; ``request_rebirth = false`` turns the requests off.
"""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from collectors.mqtt.sparkplug_b_pb2 import DataType
from collectors.mqtt.sparkplug_encode import Metric, encode_payload, now_ms, topic

log = logging.getLogger(__name__)

REBIRTH_METRIC = "Node Control/Rebirth"
_NODES_MAX = 100_000  # nodes whose last request time is remembered


def rebirth_request() -> bytes:
    """An NCMD payload asking for a rebirth: ``Node Control/Rebirth`` = true, a timestamp, no ``seq``."""
    return encode_payload([Metric(REBIRTH_METRIC, True, datatype=DataType.Boolean)], timestamp_ms=now_ms())


class RebirthRequests:
    """Publishes rebirth requests through the collector's current client; counts what it does."""

    def __init__(self, source: str, *, enabled: bool, interval_s: float, clock=time.monotonic) -> None:
        self.source = source
        self.enabled = enabled
        self.interval_s = interval_s
        self.client: mqtt.Client | None = None  # set by the collector while it is connected
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}  # (group, node) -> when it was last asked
        self._lock = threading.Lock()
        self._refusal_logged = False
        self.requested = self.rate_limited = self.refused = 0
        self.last_refusal: str | None = None

    def request(self, group: str, node: str, reason: str) -> None:
        """Ask ``group``/``node`` to rebirth, unless it was asked less than ``interval_s`` ago."""
        if not self.enabled:
            return
        now = self._clock()
        key = (group, node)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self.rate_limited += 1
                return
            if len(self._last) >= _NODES_MAX:
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._last[key] = now
        where = topic(group, "NCMD", node)
        client = self.client
        try:
            rc = mqtt.MQTT_ERR_NO_CONN if client is None else client.publish(where, rebirth_request(), qos=0,
                                                                             retain=False).rc
            error = None if rc == mqtt.MQTT_ERR_SUCCESS else mqtt.error_string(rc)
        except Exception as exc:  # a refused request must never stop the handling of the message
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            self._refused(where, reason, error)
            return
        self.requested += 1
        log.info("%s: asked Sparkplug edge node %s/%s to rebirth (%s)", self.source, group, node, reason,
                 extra={"event": "sparkplug_rebirth_requested", "collector": self.source, "topic": where})

    def _refused(self, where: str, reason: str, error: str) -> None:
        self.refused += 1
        self.last_refusal = f"{where}: {error}"
        if self._refusal_logged:
            log.debug("%s: rebirth request on %s not sent: %s", self.source, where, error)
            return
        self._refusal_logged = True
        log.warning("%s: could not publish a Sparkplug rebirth request on %s (wanted because: %s): %s; further "
                    "refusals are only counted (status: sparkplug.rebirth_requests_refused). If the broker does "
                    "not allow this client to publish NCMD, set request_rebirth = false", self.source, where,
                    reason, error, extra={"event": "sparkplug_rebirth_refused", "collector": self.source,
                                          "topic": where})

    def stats(self) -> dict:
        return {"rebirths_requested": self.requested, "rebirth_requests_rate_limited": self.rate_limited,
                "rebirth_requests_refused": self.refused}
