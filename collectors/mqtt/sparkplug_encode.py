"""Sparkplug B encoding, for publishers (the plant simulator, tests, benchmarks).

`encode_payload` turns metrics into payload bytes; `EdgeNode` keeps what a well-behaved edge
node must (bdSeq, the 0..255 sequence number, aliases handed out in the birth) and returns
``(topic, payload)`` pairs to publish::

    node = EdgeNode("Plant1", "Gateway7")
    client.will_set(*node.death(), qos=1)          # before connect: the broker publishes it if we vanish
    client.publish(*node.birth({"P-101/flow": 12.5, "P-101/running": True}), qos=1)
    client.publish(*node.data({"P-101/flow": 12.7}), qos=1)   # sent by alias

Template (UDT) metrics: a `Template` value. Definitions go in the NBIRTH (``birth(..., definitions=...)``), instances
anywhere, a DATA instance with only the members that changed::

    motor = Template([Metric("Speed", 0.0), Metric("Running", False)], definition=True)
    node.birth({"Motor1": Template([Metric("Speed", 1480.0), Metric("Running", True)], ref="Motor")},
               definitions={"Motor": motor})
    node.data({"Motor1": Template([Metric("Speed", 1490.0)], ref="Motor")})  # the instance by alias
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collectors.mqtt.sparkplug import NAMESPACE, SIGNED_BITS
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload

Value = float | int | bool | str | None


@dataclass(slots=True)
class Template:
    """A Template metric's value: a definition (``definition=True``, named by its metric) or an instance of the
    definition ``ref``; ``members`` are metrics (a member's value may be a Template: nested), ``parameters``
    name -> value."""

    members: list[Metric]
    ref: str | None = None
    definition: bool = False
    parameters: dict[str, Value] | None = None
    version: str | None = None


@dataclass(slots=True)
class Metric:
    """One metric to encode. ``datatype`` is inferred from the value when None."""

    name: str | None = None
    value: Value | Template = None
    alias: int | None = None
    datatype: int | None = None
    timestamp_ms: int | None = None
    quality: int | None = None  # OPC DA quality code sent as the "Quality" property (192 = good)
    historical: bool = False  # is_historical: held while the host was offline, sent later (store and forward)


def infer_datatype(v: Value | Template) -> int:
    if isinstance(v, Template):
        return DataType.Template
    if isinstance(v, bool):
        return DataType.Boolean
    if isinstance(v, int):
        return DataType.Int64 if v < 2**63 else DataType.UInt64
    if isinstance(v, float):
        return DataType.Double
    return DataType.String


def _set_value(m: Payload.Metric, v: Value | Template, datatype: int) -> None:
    if v is None:
        m.is_null = True
    elif isinstance(v, Template):
        _set_template(m.template_value, v)
    elif datatype == DataType.Boolean:
        m.boolean_value = bool(v)
    elif datatype == DataType.Float:
        m.float_value = v
    elif datatype == DataType.Double:
        m.double_value = v
    elif datatype in (DataType.String, DataType.Text, DataType.UUID):
        m.string_value = v
    elif datatype in (DataType.Int64, DataType.UInt64, DataType.DateTime):
        m.long_value = v & 0xFFFFFFFFFFFFFFFF  # two's complement for negative Int64
    elif datatype in SIGNED_BITS or datatype in (DataType.UInt8, DataType.UInt16, DataType.UInt32):
        m.int_value = v & 0xFFFFFFFF
    else:
        raise ValueError(f"cannot encode a value of datatype {datatype}")


def encode_payload(metrics: Iterable[Metric], *, seq: int | None = None, timestamp_ms: int | None = None) -> bytes:
    """Serialize metrics into a Sparkplug B payload."""
    p = Payload()
    if timestamp_ms is not None:
        p.timestamp = timestamp_ms
    if seq is not None:
        p.seq = seq
    for met in metrics:
        _set_metric(p.metrics.add(), met)
    return p.SerializeToString()


def _set_metric(m: Payload.Metric, met: Metric) -> None:
    if met.name is not None:
        m.name = met.name
    if met.alias is not None:
        m.alias = met.alias
    if met.timestamp_ms is not None:
        m.timestamp = met.timestamp_ms
    if met.historical:
        m.is_historical = True
    dt = met.datatype if met.datatype is not None else infer_datatype(met.value)
    m.datatype = dt
    _set_value(m, met.value, dt)
    if met.quality is not None:
        m.properties.keys.append("Quality")
        pv = m.properties.values.add()
        pv.type = DataType.Int32
        pv.int_value = met.quality


def _set_template(t: Payload.Template, v: Template) -> None:
    t.is_definition = v.definition  # in every definition and instance (tck-id-payloads-template-is-definition)
    if v.ref is not None:
        t.template_ref = v.ref
    if v.version is not None:
        t.version = v.version
    for member in v.members:
        _set_metric(t.metrics.add(), member)
    for name, value in (v.parameters or {}).items():
        param = t.parameters.add(name=name, type=infer_datatype(value))
        if isinstance(value, bool):
            param.boolean_value = value
        elif isinstance(value, int):
            param.long_value = value & 0xFFFFFFFFFFFFFFFF
        elif isinstance(value, float):
            param.double_value = value
        elif value is not None:
            param.string_value = value


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    return "/".join([NAMESPACE, group, kind, node] + ([device] if device else []))


def now_ms() -> int:
    return math.floor(time.time() * 1000)


class EdgeNode:
    """One Sparkplug edge node (and its devices) as a publisher: bdSeq, seq and aliases."""

    def __init__(self, group: str, node: str, *, bd_seq: int = 0) -> None:
        self.group, self.node = group, node
        self.bd_seq = bd_seq % 256
        self.seq = 0
        self._aliases: dict[tuple[str | None, str], tuple[int, int]] = {}  # (device, name) -> (alias, datatype)

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (s + 1) % 256
        return s

    def death(self) -> tuple[str, bytes]:
        """The NDEATH for the MQTT will (register before connecting, then call `birth`)."""
        return topic(self.group, "NDEATH", self.node), encode_payload(
            [Metric("bdSeq", self.bd_seq, datatype=DataType.Int64)])

    def birth(self, values: Mapping[str, Value | Template], *, timestamp_ms: int | None = None,
              definitions: Mapping[str, Template] | None = None) -> tuple[str, bytes]:
        """NBIRTH with every node metric (seq restarts at 0; aliases are handed out here) and the template
        ``definitions`` (name -> Template with ``definition=True``) of every instance the births will carry."""
        self.seq = 0
        self._aliases = {}  # a node birth invalidates every alias; devices are born again after it
        metrics = [Metric("bdSeq", self.bd_seq, datatype=DataType.Int64)]
        metrics += [Metric(name, t) for name, t in (definitions or {}).items()]
        metrics += self._birth_metrics(None, values)
        return topic(self.group, "NBIRTH", self.node), encode_payload(
            metrics, seq=self._next_seq(), timestamp_ms=timestamp_ms or now_ms())

    def device_birth(self, device: str, values: Mapping[str, Value | Template], *,
                     timestamp_ms: int | None = None) -> tuple[str, bytes]:
        return topic(self.group, "DBIRTH", self.node, device), encode_payload(
            self._birth_metrics(device, values), seq=self._next_seq(), timestamp_ms=timestamp_ms or now_ms())

    def data(self, values: Mapping[str, Value | Template] | Iterable[tuple[str, Value | Template, int]], *,
             device: str | None = None, timestamp_ms: int | None = None, historical: bool = False) -> tuple[str, bytes]:
        """NDATA/DDATA by alias. ``values``: {name: value}, or (name, value, timestamp_ms) samples; ``historical``:
        every metric flagged ``is_historical`` (held while the Primary Host was offline)."""
        items = values.items() if isinstance(values, Mapping) else values
        metrics = []
        for item in items:
            name, v = item[0], item[1]
            alias, dt = self._aliases[(device, name)]
            metrics.append(Metric(None, v, alias=alias, datatype=dt, timestamp_ms=item[2] if len(item) > 2 else None,
                                  historical=historical))
        kind = "DDATA" if device else "NDATA"
        return topic(self.group, kind, self.node, device), encode_payload(
            metrics, seq=self._next_seq(), timestamp_ms=timestamp_ms or now_ms())

    def device_death(self, device: str) -> tuple[str, bytes]:
        return topic(self.group, "DDEATH", self.node, device), encode_payload(
            [], seq=self._next_seq(), timestamp_ms=now_ms())

    def rebirth_after_reconnect(self) -> None:
        """A new MQTT session needs a new bdSeq (then `death` for the new will, and `birth`)."""
        self.bd_seq = (self.bd_seq + 1) % 256

    def _birth_metrics(self, device: str | None, values: Mapping[str, Value | Template]) -> list[Metric]:
        out = []
        for name, v in values.items():
            key = (device, name)
            if key not in self._aliases:
                self._aliases[key] = (len(self._aliases) + 1, infer_datatype(v))
            alias, dt = self._aliases[key]
            out.append(Metric(name, v, alias=alias, datatype=dt))
        return out
