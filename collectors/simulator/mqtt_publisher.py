"""The simulator's MQTT side (paho-mqtt 2.x, QoS 1 by default): the same samples the OPC UA server serves.

Formats (any combination, ``--mqtt-formats json,plain,sparkplug``):

- ``json``: one message per asset and step on ``<prefix>/json/<asset>``::

      {"ts": "2026-01-01T12:00:00.000Z",
       "samples": [{"tag": "P-101.vib_de", "value": 1.12},
                   {"tag": "P-103.vib_de", "value": null, "status": "BadSensorFailure"}]}

  A NaN value is written as the literal ``NaN`` (not standard JSON, but what many devices send
  and what the MQTT collector's decoder accepts). With the MQTT collector:
  ``format = "json"``, ``tag = "{field}"``, ``json = {samples = "samples", tag = "tag", value = "value",
  time = "ts"}``.
- ``plain``: one message per tag on ``<prefix>/plain/<asset>/<signal>`` whose payload is the number as
  text (``1.12``, ``nan``; booleans ``1``/``0``); no timestamp, and nothing while a sensor
  reports a Bad status (plain numbers cannot carry one).
- ``sparkplug``: Sparkplug B, ``spBv1.0/<group>/DDATA/<node>/<asset>`` with birth and death
  certificates, encoded by the MQTT collector's own Sparkplug module (one encoder in the project).

paho refuses more than 65,535 unacknowledged QoS 1 messages (protocols.md), so at most
``max_outstanding`` are queued; beyond that ``publish`` waits (back-pressure on the clock). ``stop``
waits up to ``drain_timeout_s`` (10 s) for the broker to acknowledge what was published, and logs a
warning with the number it did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError

from collectors.mqtt.rebirth import REBIRTH_METRIC
from collectors.mqtt.sparkplug_b_pb2 import Payload
from collectors.mqtt.sparkplug_encode import topic
from collectors.simulator.faults import BAD_SENSOR_FAILURE
from collectors.simulator.plant import Sample
from collectors.simulator.tags import TagSpec
from edge.secrets import resolve_secret
from edge.timeouts import within

log = logging.getLogger(__name__)

FORMATS = ("json", "plain", "sparkplug")
_STATUS_NAMES = {BAD_SENSOR_FAILURE: "BadSensorFailure", 0x40930000: "UncertainSensorNotAccurate"}


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "valvoja/sim"
    formats: tuple[str, ...] = ("json",)
    qos: int = 1
    username: str | None = None
    password: str | None = None  # env:NAME or file:/path
    client_id: str = "valvoja-simulator"
    sparkplug_group: str = "KIP"
    sparkplug_node: str = "simulator"
    max_outstanding: int = 10_000
    connect_timeout_s: float = 10.0
    # At a stop, how long to wait for the broker to acknowledge what was published (disconnecting at once dropped
    # whatever paho still held: 3,579 of 5,047 messages of one large step).
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"MQTT formats {sorted(unknown) or '(none)'}: choose from {', '.join(FORMATS)}")
        if self.qos not in (0, 1, 2):
            raise ValueError("MQTT qos must be 0, 1 or 2")


def json_payload(ts: datetime, samples: Iterable[Sample]) -> bytes:
    out = []
    for s in samples:
        item: dict[str, object] = {"tag": s.tag, "value": s.value}
        if s.status:
            item["status"] = _STATUS_NAMES.get(s.status, f"0x{s.status:08X}")
        out.append(item)
    # The 'Z' must be true: a start given with an offset (--start ...+02:00) gave stamps in that offset, written as
    # if UTC, so every JSON reading was stored two hours late.
    ts = ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return json.dumps({"ts": stamp, "samples": out}, separators=(",", ":")).encode()


def plain_payload(value: object) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


class MqttPublisher:
    def __init__(self, options: MqttOptions, tags: list[TagSpec]) -> None:
        self.options = options
        self.asset_of = {t.name: t.asset for t in tags}
        self.tags = tags
        self.published = 0  # handed to paho
        self.acknowledged = 0  # confirmed by the broker (PUBACK at QoS 1; written to the socket at QoS 0)
        self._client: mqtt.Client | None = None
        self._connected = asyncio.Event()
        self._drained = asyncio.Event()
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sparkplug = None
        if "sparkplug" in options.formats:
            from collectors.simulator.sparkplug_out import SparkplugOut

            self._sparkplug = SparkplugOut(options.sparkplug_group, options.sparkplug_node, tags)

    def describe(self) -> str:
        o = self.options
        return f"{o.host}:{o.port} ({', '.join(o.formats)}, QoS {o.qos}, prefix {o.prefix})"

    def topic(self, tag: str, kind: str) -> str:
        asset = self.asset_of.get(tag, tag.split(".", 1)[0])
        if kind == "json":
            return f"{self.options.prefix}/json/{asset}"
        signal = tag[len(asset) + 1:] if tag.startswith(asset + ".") else tag
        return f"{self.options.prefix}/plain/{asset}/{signal}"

    async def start(self) -> None:
        o = self.options
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=o.client_id, protocol=mqtt.MQTTv311)
        client.max_queued_messages_set(o.max_outstanding)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(1, 30)
        if o.username is not None:
            client.username_pw_set(o.username, resolve_secret(o.password, where="--mqtt-password")
                                   if o.password else None)
        if self._sparkplug is not None:
            topic, payload = self._sparkplug.death()
            client.will_set(topic, payload, qos=1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect_async(o.host, o.port, keepalive=30)
        client.loop_start()
        self._client = client
        try:
            await within(self._connected.wait(), o.connect_timeout_s)
        except TimeoutError:
            await self.stop()
            raise ConnectionError(f"MQTT broker {o.host}:{o.port} did not accept a connection "
                                  f"within {o.connect_timeout_s:g} s") from None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        if self._sparkplug is not None:  # births after every (re)connect, sent with the next values
            self._sparkplug.need_birth = True
            # A host that saw data without a birth (started after this node) asks for them again.
            client.subscribe(topic(self._sparkplug.group, "NCMD", self._sparkplug.node), qos=0)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.set)

    def _on_message(self, client, userdata, msg) -> None:
        """An NCMD with ``Node Control/Rebirth`` = true: births again with the next values (Sparkplug 3.0,
        "Commands"); anything else sent to the node is ignored (it has nothing to control)."""
        if self._sparkplug is None:
            return
        try:
            p = Payload.FromString(msg.payload)
        except DecodeError:
            log.warning("not a Sparkplug payload on %s; ignored", msg.topic)
            return
        if any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics):
            log.info("rebirth requested on %s: births with the next values", msg.topic)
            self._sparkplug.need_birth = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._connected.clear)
        if self._draining:
            self._wake_drain()

    async def publish(self, ts: datetime, samples: list[Sample]) -> None:
        if self._client is None:
            return
        formats = self.options.formats
        if "json" in formats:
            by_asset: dict[str, list[Sample]] = {}
            for s in samples:
                by_asset.setdefault(self.topic(s.tag, "json"), []).append(s)
            for topic, group in by_asset.items():
                await self._send(topic, json_payload(ts, group))
        if "plain" in formats:
            for s in samples:
                if not s.status & 0x80000000 and s.value is not None:
                    await self._send(self.topic(s.tag, "plain"), plain_payload(s.value))
        if self._sparkplug is not None:
            for topic, payload in self._sparkplug.data(ts, samples):
                await self._send(topic, payload)

    async def _send(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        while True:
            info = self._client.publish(topic, payload, qos=self.options.qos)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                self.published += 1
                return
            await asyncio.sleep(0.01)  # the broker is behind or away: wait for acknowledgements

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acknowledged += 1  # paho's network thread only; read by the event loop
        if self._draining and self.acknowledged >= self.published:
            self._wake_drain()

    def _wake_drain(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._drained.set)

    async def _drain(self, client: mqtt.Client) -> None:
        """Wait until the broker has what was published (bounded); say how much it has not, if any."""
        self._draining = True  # from here on the network thread wakes us (all acknowledged, or disconnected)
        if self.acknowledged < self.published and client.is_connected():
            with contextlib.suppress(TimeoutError):
                await within(self._drained.wait(), self.options.drain_timeout_s)
        if self.acknowledged < self.published:
            log.warning("MQTT: stopping with %d of %d published messages not acknowledged by %s:%d (%s); they are "
                        "lost", self.published - self.acknowledged, self.published, self.options.host,
                        self.options.port, "connected" if client.is_connected() else "not connected")

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        await self._drain(client)
        if self._sparkplug is not None and client.is_connected():
            topic, payload = self._sparkplug.death()
            info = client.publish(topic, payload, qos=1)
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
