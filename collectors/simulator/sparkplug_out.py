"""The simulator as a Sparkplug B edge node: node ``--sparkplug-node``, one device per asset.

Encoding is the MQTT collector's (`collectors.mqtt.sparkplug_encode.encode_payload`); this
module keeps the edge node's session: bdSeq, the 0..255 sequence number, one alias per tag, and
births. Metric names are the signal names (``vib_de``) under the asset's device, so the MQTT
collector's tag template ``{device}.{field}`` gives back ``P-101.vib_de``. Datatypes come from
the tag catalogue (Double, Int32, Boolean), so a birth can name a metric whose value is not
known yet (null) without guessing its type. Sensor faults travel as the ``Quality`` property
(OPC DA codes: 16 bad sensor failure, 80 uncertain sensor not accurate; good is left out) and
a Bad value as ``is_null``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from collectors.mqtt.sparkplug_b_pb2 import DataType
from collectors.mqtt.sparkplug_encode import Metric, encode_payload, now_ms, topic
from collectors.simulator.faults import BAD_SENSOR_FAILURE, UNCERTAIN_SENSOR_NOT_ACCURATE
from collectors.simulator.plant import Sample
from collectors.simulator.tags import TagSpec

_DATATYPE = {"float": DataType.Double, "int": DataType.Int32, "bool": DataType.Boolean}
_DA_QUALITY = {BAD_SENSOR_FAILURE: 16, UNCERTAIN_SENSOR_NOT_ACCURATE: 80}


def da_quality(status: int) -> int | None:
    """OPC DA quality for an OPC UA status code; None for Good (no property sent)."""
    if not status:
        return None
    return _DA_QUALITY.get(status, 0 if status & 0x80000000 else 64)


class SparkplugOut:
    def __init__(self, group: str, node: str, tags: Iterable[TagSpec]) -> None:
        self.group, self.node = group, node
        self.bd_seq = 0
        self.seq = 0
        self.specs = {t.name: t for t in tags}
        self.alias = {name: i + 1 for i, name in enumerate(self.specs)}
        self.last: dict[str, tuple[object, int, int]] = {}  # tag -> (value, status, timestamp ms)
        self.need_birth = True  # set again by the publisher after every (re)connect

    def _next_seq(self) -> int:
        s, self.seq = self.seq, (self.seq + 1) % 256
        return s

    def _metric(self, tag: str, value: object, status: int, ts_ms: int | None, *, birth: bool) -> Metric:
        spec = self.specs[tag]
        name = tag[len(spec.asset) + 1:] if tag.startswith(spec.asset + ".") else tag
        bad = bool(status & 0x80000000)
        return Metric(name if birth else None, None if bad else value, alias=self.alias[tag],
                      datatype=_DATATYPE[spec.kind], timestamp_ms=ts_ms, quality=da_quality(status))

    def death(self) -> tuple[str, bytes]:
        """NDEATH with the current bdSeq (the MQTT will, and the goodbye on a clean stop)."""
        return topic(self.group, "NDEATH", self.node), encode_payload(
            [Metric("bdSeq", self.bd_seq, datatype=DataType.Int64)])

    def births(self) -> list[tuple[str, bytes]]:
        """NBIRTH, then a DBIRTH per asset with every metric and its last value (null if none yet)."""
        self.seq = 0
        self.need_birth = False
        out = [(topic(self.group, "NBIRTH", self.node), encode_payload(
            [Metric("bdSeq", self.bd_seq, datatype=DataType.Int64)], seq=self._next_seq(), timestamp_ms=now_ms()))]
        devices: dict[str, list[Metric]] = {}
        for tag, spec in self.specs.items():
            value, status, ts_ms = self.last.get(tag, (None, 0, None))
            devices.setdefault(spec.asset, []).append(self._metric(tag, value, status, ts_ms, birth=True))
        for device, metrics in devices.items():
            out.append((topic(self.group, "DBIRTH", self.node, device),
                        encode_payload(metrics, seq=self._next_seq(), timestamp_ms=now_ms())))
        return out

    def data(self, ts: datetime, samples: list[Sample]) -> list[tuple[str, bytes]]:
        """DDATA per asset for these samples (births first when a connection is new)."""
        ts_ms = int(ts.timestamp() * 1000)
        known = [s for s in samples if s.tag in self.specs]
        for s in known:
            self.last[s.tag] = (s.value, s.status, ts_ms)
        if self.need_birth:
            return self.births()  # they carry this step's values already
        out: list[tuple[str, bytes]] = []
        devices: dict[str, list[Metric]] = {}
        for s in known:
            devices.setdefault(self.specs[s.tag].asset, []).append(
                self._metric(s.tag, s.value, s.status, ts_ms, birth=False))
        for device, metrics in devices.items():
            out.append((topic(self.group, "DDATA", self.node, device),
                        encode_payload(metrics, seq=self._next_seq(), timestamp_ms=ts_ms)))
        return out
