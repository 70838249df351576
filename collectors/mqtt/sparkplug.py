"""Sparkplug B decoding: births, data with aliases, deaths -> readings. No I/O.

Topics are ``spBv1.0/<group>/<TYPE>/<edge node>[/<device>]``. The decoder keeps, per edge node
and device, the metric names and datatypes of the last birth certificate, keyed by alias, so
NDATA/DDATA that carry only aliases decode. That state outlives a gateway restart through
``on_change`` (the collector writes it to disk before the birth or death is acknowledged) and `load_node`.

- NBIRTH / DBIRTH: reset the alias table; every metric with a value becomes a reading.
- NDATA / DDATA: metrics by name or alias; an unknown alias fails the whole message (DataError:
  the edge node must rebirth), since guessing a tag would be worse than a dead letter. So does an alias of a
  node or device that died since its birth: the session after the death hands out its own aliases, in a birth
  this decoder has not seen (a QoS 0 NBIRTH published while the gateway was away), and the old ones may name
  other metrics now.
- Rebirth: ``on_rebirth(group, node, reason)`` is called when the node should publish its births again
  (the collector sends the request, see rebirth.py): a message from an edge node whose NBIRTH was not seen
  (none, or an NDEATH since), DDATA from a device whose DBIRTH was not seen, an unknown alias, a
  sequence gap, or a birth from before the broker's current session for the gateway (`new_session`: its aliases are
  not used until the next birth). The message itself is handled as before (decoded, or a dead letter).
- NDEATH (with the bdSeq of the current birth) / DDEATH: a bad-quality null reading for every
  stored metric the node or device had (not non-scalar or transient ones), so consumers see the values stop
  being live. An NDEATH whose bdSeq is not the current birth's is a late will message of an old session and is ignored.
  A death is saved too (``on_change``), so a restart does not take a dead node's aliases for live ones; a copy of
  the death the broker sends again (DUP: the gateway may have died before storing the first) gives the same
  readings, at the time the death was first given.
  An NDEATH is usually the will registered at CONNECT, so its timestamp is the connect time: its
  readings take the receive time unless the timestamp is later than the birth's.
- NCMD / DCMD / STATE: commands and host state, not measurements: no readings.
- Sequence numbers (0..255 per edge node) are checked; a gap is counted in ``stats`` (and asks for a
  rebirth), not an error.
- Datatypes: a DATA metric's own, else its birth's (DATA should not carry one). An integer with neither whose top
  bit is set could be a negative signed or a large unsigned value: it is left out and named (`PartlyRead`).
- Quality: the metric property ``Quality`` (OPC DA code: 192 good, 64..191 uncertain, else bad; Sparkplug's 500,
  STALE, is uncertain: a last known value).
- Timestamps are ms since the epoch: metric's, else payload's, else the receive time.
- Template (UDT) metrics: the NBIRTH's definitions are kept (``Node.definitions``) with each birth's instances
  (``Entity.refs``) and members (``Entity.types`` by path); an instance becomes one reading per member, tagged
  ``<metric name>/<member>`` (nested: ``/`` again), decoded as a top-level metric (`SparkplugDecoder._instance`).
  DATA may carry only the changed members; one naming an instance, definition or member no birth gave fails like
  an unknown alias. Parameters are not stored.
- Protocol metrics (``bdSeq``, ``Node Control/*``, ``Device Control/*``) and non-scalar types
  (DataSet, Bytes, File, arrays) are skipped and counted, not stored; so are metrics flagged
  ``is_transient`` (the specification: of interest to a host, not to be stored in a historian).
  ``is_historical`` metrics are stored with their own timestamps like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from collectors.mqtt.decode import NO_TIME, _check_str
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload
from collectors.mqtt.topics import TagTemplate, TopicFilter
from edge.columns import from_us, to_us
from edge.errors import DataError
from edge.records import Flag, Quality, Reading
from edge.source_quality import from_opcda_quality

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
DEVICE_DEFAULT_TAG = "{group}.{node}.{device}.{field}"
GOOD, UNCERTAIN, BAD = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD
# Sparkplug 3.0's quality codes: 0 BAD, 192 GOOD, 500 STALE (tck-id-payloads-propertyset-quality-value-value).
STALE = 500
SOURCE_STATUS = int(Flag.SOURCE_STATUS)
_fromts = datetime.fromtimestamp

# DataType numbers (sparkplug_b.proto).
SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8, Int16, Int32, Int64
DATETIME = 13
TEMPLATE = 19
FIRST_NON_SCALAR = 16  # DataSet; then Bytes, File, Template, PropertySet(List) and the arrays: never stored
SCALAR_FIELDS = {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"}
_PROTOCOL_PREFIXES = ("Node Control/", "Device Control/")
_STATUS_MAX = 2**63 - 1  # the status column is a signed 64-bit integer; a Quality property is up to 64 bits unsigned
# Births kept (memory, and a state file per edge node rewritten whole at each birth and read at start): whoever may
# publish on spBv1.0/# could otherwise send births of new nodes and devices without end. Beyond, a new one's birth
# is a dead letter; the known ones go on.
NODES_MAX = 10_000  # edge nodes per subscription
DEVICES_MAX = 10_000  # devices per edge node
GAP_LOG_EVERY_S = 60.0  # an edge node's sequence gaps are logged at most this often (each is counted)
SKIPS_LOGGED_MAX = 10_000  # metric names whose skipping was logged (each is logged once)


@dataclass
class Entity:
    """What the last birth said about an edge node or a device: alias -> name, name -> datatype, transient names."""

    aliases: dict[int, str] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    online: bool = False
    transient: set[str] = field(default_factory=set)  # flagged is_transient in the birth: never stored
    died: tuple[int, bool] | None = None  # the time its death's readings got (µs, whether the receive time)
    clashes: dict[int, list[str]] = field(default_factory=dict)  # aliases the birth gave to several metrics
    # Its birth came before the broker's current session for the gateway began (a clean session, or one the broker
    # lost): births published in between were not received, so its aliases may name other metrics now. Not saved:
    # each connection without a session sets it again (`SparkplugDecoder.new_session`).
    unconfirmed: bool = False
    # Template instances of the birth (nested ones by their path "Motor1/Bearing") -> their definition's name; their
    # members are in ``types`` by path ("Motor1/Speed"), so a death marks them too.
    refs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"aliases": {str(a): n for a, n in self.aliases.items()}, "types": self.types, "online": self.online}
        if self.transient:
            out["transient"] = sorted(self.transient)
        if self.refs:
            out["refs"] = self.refs
        if self.died is not None:
            out["died"] = list(self.died)
        if self.clashes:
            out["clashes"] = {str(a): names for a, names in self.clashes.items()}
        return out

    @classmethod
    def from_json(cls, d: dict) -> Entity:
        died = d.get("died")
        return cls({int(a): n for a, n in d.get("aliases", {}).items()}, dict(d.get("types", {})),
                   bool(d.get("online", False)), set(d.get("transient", ())),
                   (int(died[0]), bool(died[1])) if died else None,
                   {int(a): list(names) for a, names in d.get("clashes", {}).items()}, refs=dict(d.get("refs", {})))

    def stored_names(self) -> list[str]:
        """The metrics whose values are stored (so a death marks them): not protocol, non-scalar or transient."""
        return [n for n, t in self.types.items()
                if t < FIRST_NON_SCALAR and n not in self.transient and not _is_protocol(n)]


@dataclass
class Node(Entity):
    bd_seq: int | None = None
    seq: int | None = None  # last sequence number seen
    devices: dict[str, Entity] = field(default_factory=dict)
    born_ms: int | None = None  # the NBIRTH's payload timestamp
    # Template definitions of the NBIRTH: name -> {member: datatype, or the definition name of a nested template}.
    definitions: dict[str, dict[str, int | str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "bd_seq": self.bd_seq, "seq": self.seq, "born_ms": self.born_ms,
                "devices": {d: e.to_json() for d, e in self.devices.items()}, "definitions": self.definitions}

    @classmethod
    def from_json(cls, d: dict) -> Node:
        base = Entity.from_json(d)
        return cls(base.aliases, base.types, base.online, base.transient, base.died, base.clashes, refs=base.refs,
                   bd_seq=d.get("bd_seq"), seq=d.get("seq"), born_ms=d.get("born_ms"),
                   devices={k: Entity.from_json(v) for k, v in d.get("devices", {}).items()},
                   definitions={k: dict(v) for k, v in d.get("definitions", {}).items()})


def scalar_value(m, kind: str | None, datatype: int) -> object:
    """The metric's value (oneof field ``kind``) as bool/int/float/str; signed integers are sign-extended."""
    if kind not in SCALAR_FIELDS:
        return _SKIP
    v = getattr(m, kind)
    if kind == "int_value" or kind == "long_value":
        bits = SIGNED_BITS.get(datatype)
        if bits is not None:
            v &= (1 << bits) - 1
            if v >> (bits - 1):
                v -= 1 << bits
    elif kind == "string_value" and type(v) is not str:
        raise DataError("metric string value is not valid UTF-8")
    return v


_SKIP = object()


class PartlyRead(list):
    """The readings of a message some of whose metrics could not be read; ``errors`` names those (the router stores
    the readings and keeps the message as a dead letter too, as for a JSON message's malformed samples)."""

    def __init__(self, readings: list[Reading], errors: list[str]) -> None:
        super().__init__(readings)
        self.errors = errors


class UnknownAlias(DataError):
    """DATA named a metric by an alias no birth defined (or a template instance, definition or member no birth
    defined: the edge node must rebirth either way)."""


def quality_of(props) -> tuple[Quality, int, int, str]:
    """(quality, flags, status, status_name) from a metric's ``Quality`` property, if it has one."""
    for key, pv in zip(props.keys, props.values, strict=False):
        kind = pv.WhichOneof("value")
        if key == "Quality" and kind in ("int_value", "long_value"):
            q = getattr(pv, kind)
            if q == STALE:
                # The last known value, no longer updated (the edge node lost its device, or a host marks what it
                # holds): a value the source still stands by but cannot vouch for now, as OPC UA's
                # Uncertain_LastUsableValue, which the OPC UA collector stores UNCERTAIN too. Not the DA code 500
                # (beyond a byte: bad), so before it was stored BAD.
                return UNCERTAIN, SOURCE_STATUS, q, "Quality=500 STALE"
            quality = from_opcda_quality(q)
            if quality is GOOD:
                return GOOD, 0, q, ""
            return quality, SOURCE_STATUS, min(q, _STATUS_MAX), f"Quality={q}"
    return GOOD, 0, 0, ""


def ms_to_datetime(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        raise DataError(f"timestamp {ms} ms is out of range") from None


class SparkplugDecoder:
    """Decoder for one Sparkplug subscription; holds the birth state of the nodes it has seen.

    ``on_change(group, node, state)`` is called after a birth or a death changed a node's state (the
    collector persists it). ``on_rebirth(group, node, reason)`` is called when the node should be asked
    to rebirth. ``on_gap()`` is called for each sequence gap (a metric). ``stats`` counts sequence gaps, stale deaths
    and skipped metrics.
    """

    def __init__(self, template: TagTemplate, *, custom_tag: bool,
                 on_change: Callable[[str, str, dict], None] | None = None,
                 on_rebirth: Callable[[str, str, str], None] | None = None) -> None:
        self.node_tag = template
        self.device_tag = template if custom_tag else TagTemplate(DEVICE_DEFAULT_TAG, TopicFilter(f"{NAMESPACE}/#"),
                                                                  sparkplug=True)
        self.nodes: dict[tuple[str, str], Node] = {}
        self.on_change = on_change
        self.on_rebirth = on_rebirth
        self.on_gap: Callable[[], None] | None = None
        self._gaps_logged: dict[tuple[str, str], tuple[float, int]] = {}  # node -> (last logged, gaps not logged)
        self._skips_logged: set[str] = set()
        self.stats = {"seq_gaps": 0, "stale_deaths": 0, "skipped_metrics": 0, "transient_metrics": 0,
                      "ignored_messages": 0, "state_save_errors": 0}

    def new_session(self) -> int:
        """The broker had no session for the gateway (a clean session, or a lost one): whatever the known edge nodes
        published while it was away, a new birth or death among it, was not received. Their births are unconfirmed
        until they publish one again: their next message asks for it, and their aliases are not used meanwhile.
        Returns the number of live edge nodes concerned."""
        n = 0
        for node in self.nodes.values():
            node.unconfirmed = node.online
            n += node.online
            for entity in node.devices.values():
                entity.unconfirmed = entity.online
        return n

    def load_node(self, group: str, node: str, state: dict) -> None:
        """Restore a node's state saved from ``on_change``."""
        restored = Node.from_json(state)
        restored.seq = None  # messages were acknowledged after the save: the saved number is stale
        self.nodes[(group, node)] = restored

    def __call__(self, payload: bytes, topic: str, receive_time: datetime, *,
                 redelivered: bool = False) -> list[Reading]:
        """Decode one message. ``redelivered``: the broker sends it again (MQTT DUP), see `_check_seq`."""
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != NAMESPACE:
            raise DataError(f"not a Sparkplug B topic (expected {NAMESPACE}/group/TYPE/node[/device])")
        kind = levels[2]
        if not kind:
            raise DataError(f"empty message type level (expected {NAMESPACE}/group/TYPE/node[/device])")
        if levels[1] == "STATE" or kind in ("NCMD", "DCMD", "STATE"):
            self.stats["ignored_messages"] += 1
            return []
        device = kind[0] == "D"
        if kind not in ("NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH") or \
                len(levels) != (5 if device else 4):
            raise DataError(f"unknown Sparkplug message type or topic shape: {kind!r} with {len(levels)} levels")
        if not all(levels[1:]):  # the ids make the tag names: an empty one would make tags like "..flow"
            raise DataError(f"empty group, edge node or device id in {topic!r}")
        try:
            p = Payload.FromString(payload)
        except DecodeError as exc:
            raise DataError(f"not a Sparkplug B payload: {exc}") from None
        group, node_id = levels[1], levels[3]
        node = self.nodes.get((group, node_id))
        if kind == "NBIRTH":
            return self._birth(p, topic, receive_time, group, node_id, None)
        if kind == "NDEATH":
            return self._node_death(p, topic, receive_time, group, node_id, node, redelivered)
        why = self._check_seq(p, node, redelivered, group, node_id)
        if node is None or not node.online:
            # A node with types had a birth and then an NDEATH; one without was only named by a DBIRTH.
            why = f"{kind} from an edge node whose NBIRTH was not seen" + (" since its NDEATH" if node and node.types
                                                                           else "")
        elif node.unconfirmed:
            why = (f"{kind} from an edge node whose NBIRTH came before the gateway's MQTT session began (the broker "
                   "kept no session: a birth published while the gateway was away would not have been received)")
        if kind == "DBIRTH" or kind == "DDEATH":
            self._rebirth(group, node_id, why)
            if kind == "DBIRTH":
                return self._birth(p, topic, receive_time, group, node_id, levels[4])
            return self._device_death(p, topic, receive_time, group, node_id, node, levels[4], redelivered)
        entity = node.devices.get(levels[4]) if device and node else node
        if why is None and device and (entity is None or not entity.online):
            why = f"DDATA from device {levels[4]} whose DBIRTH was not seen" + (" since its DDEATH" if entity else "")
        try:
            return self._metrics(p, topic, receive_time, entity, self.device_tag if device else self.node_tag,
                                 f"{'device' if device else 'edge node'} {'/'.join(levels[1:2] + levels[3:])}",
                                 node.definitions if node else {})
        except UnknownAlias as exc:
            why = why or str(exc)
            raise
        finally:
            self._rebirth(group, node_id, why)

    # -- message kinds ------------------------------------------------------------------------

    def _birth(self, p, topic, receive_time, group, node_id, device) -> list[Reading]:
        fresh = Entity(online=True)
        definitions: dict[str, dict[str, int | str]] = {}
        for i, m in enumerate(p.metrics):
            name = m.name
            if not name:
                raise DataError(f"metric {i}: a birth certificate metric needs a name")
            if type(name) is not str:
                raise DataError(f"metric {i}: name is not valid UTF-8")
            if m.WhichOneof("value") == "template_value":
                if m.template_value.is_definition:  # a type, not a value: no tag, no alias, nothing a death marks
                    definitions[name] = _definition(m.template_value, i)
                    continue
                _instance_types(fresh, name, m.template_value, i)
            fresh.types[name] = m.datatype
            if m.is_transient:
                fresh.transient.add(name)
            if m.HasField("alias"):
                alias = m.alias
                if alias in fresh.clashes:
                    fresh.clashes[alias].append(name)
                elif fresh.aliases.get(alias, name) != name:
                    # Aliases are unique per edge node (the specification); which metric data by this one mean cannot
                    # be told: the last one named, as before, took the values of another.
                    fresh.clashes[alias] = [fresh.aliases.pop(alias), name]
                else:
                    fresh.aliases[alias] = name
        key = (group, node_id)
        known = self.nodes.get(key)
        if known is None and len(self.nodes) >= NODES_MAX:
            raise DataError(f"birth of edge node {group}/{node_id}: {NODES_MAX} edge nodes are known already; a new "
                            "one is not kept")
        if device is not None and known is not None and device not in known.devices \
                and len(known.devices) >= DEVICES_MAX:
            raise DataError(f"birth of device {device} of edge node {group}/{node_id}: it has {DEVICES_MAX} devices "
                            "already; a new one is not kept")
        if device is None:
            seq = p.seq if p.HasField("seq") else None
            node = self.nodes[key] = Node(fresh.aliases, fresh.types, True, fresh.transient, clashes=fresh.clashes,
                                          refs=fresh.refs, bd_seq=_bd_seq(p), seq=seq, born_ms=p.timestamp or None,
                                          definitions=definitions)
            template, entity = self.node_tag, node
        else:
            node = self.nodes.setdefault(key, Node())
            node.devices[device] = fresh
            # Definitions belong in the NBIRTH (tck-id-payloads-template-definition-nbirth-only); one a DBIRTH brings
            # anyway is kept for the node, as its instances would otherwise all be dead letters.
            node.definitions.update(definitions)
            template, entity = self.device_tag, fresh
        if self.on_change is not None:
            try:
                self.on_change(group, node_id, node.to_json())
            except BaseException:
                # Not saved (a full disk ...): the birth is a dead letter, so memory must not keep it either, or its
                # data would be decoded until the next restart and then not at all. Forgetting the node (device)
                # makes its next data ask for a rebirth, which tries the save again; the old state is not put back,
                # its aliases may name other metrics now.
                if device is None:
                    del self.nodes[key]
                else:
                    node.devices.pop(device, None)
                raise
        where = f"device {group}/{node_id}/{device}" if device is not None else f"edge node {group}/{node_id}"
        return self._metrics(p, topic, receive_time, entity, template, where, node.definitions, birth=True)

    def _node_death(self, p, topic, receive_time, group, node_id, node: Node | None,
                    redelivered: bool) -> list[Reading]:
        bd_seq = _bd_seq(p)
        if node is None or (bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq):
            self.stats["stale_deaths"] += 1
            return []
        levels = topic.split("/")
        if not node.online and not any(e.online for e in node.devices.values()):
            if redelivered and node.died is not None:
                # The broker sends it again, without our PUBACK: the gateway may have died after saving the death and
                # before storing its readings. The same readings at the same time: the database keeps one of each.
                return self._deaths_of(node, levels, node.died, receive_time)
            # A second NDEATH of one session (published on shutdown, then the will of a connection dropped without
            # DISCONNECT) marks nothing again: its nulls would be a second death at another time.
            self.stats["stale_deaths"] += 1
            return []
        # The broker publishes the NDEATH the edge node registered as its will at CONNECT: a timestamp in it is
        # the connect time, before the birth. Only one after the birth (an NDEATH sent on an orderly shutdown)
        # says when the node went away; else the receive time does.
        ts = p.timestamp if p.timestamp and node.born_ms is not None and p.timestamp > node.born_ms else 0
        died = (to_us(ms_to_datetime(ts)), False) if ts else (to_us(receive_time), True)
        if node.online:
            node.online, node.died = False, died
        node.seq = None  # the next session counts from its NBIRTH's 0: no gap against this one's last number
        for entity in node.devices.values():
            if entity.online:
                entity.online, entity.died = False, died
        self._save_death(group, node_id, node, "NDEATH")
        return self._deaths_of(node, levels, died, receive_time)

    def _deaths_of(self, node: Node, levels: list[str], died: tuple[int, bool], receive_time) -> list[Reading]:
        """The readings of an NDEATH that gave the time ``died``: the node's and those of the devices it ended."""
        out = self._dead(node, self.node_tag, "/".join(levels), died, receive_time, "NDEATH") \
            if node.died == died else []
        for dev, entity in node.devices.items():
            if entity.died == died:
                dev_topic = "/".join([*levels[:2], "DDEATH", levels[3], dev])
                out += self._dead(entity, self.device_tag, dev_topic, died, receive_time, "NDEATH")
        return out

    def _device_death(self, p, topic, receive_time, group, node_id, node: Node | None, device: str,
                      redelivered: bool) -> list[Reading]:
        entity = node.devices.get(device) if node else None
        if entity is None or not entity.online:
            if entity is not None and redelivered and entity.died is not None:  # see _node_death
                return self._dead(entity, self.device_tag, topic, entity.died, receive_time, "DDEATH")
            # Dead already (a DDEATH or NDEATH before): a second null at another time would be a second death.
            self.stats["stale_deaths"] += 1
            return []
        died = (to_us(ms_to_datetime(p.timestamp)), False) if p.timestamp else (to_us(receive_time), True)
        entity.online, entity.died = False, died
        self._save_death(group, node_id, node, "DDEATH")
        return self._dead(entity, self.device_tag, topic, died, receive_time, "DDEATH")

    def _save_death(self, group: str, node_id: str, node: Node, kind: str) -> None:
        """Save the state after a death; a failure costs no reading (the death's readings are still stored), but
        after a restart the dead node (device) would count as live again, so it is logged and counted."""
        if self.on_change is None:
            return
        try:
            self.on_change(group, node_id, node.to_json())
        except Exception as exc:
            self.stats["state_save_errors"] += 1
            log.warning("Sparkplug %s of edge node %s/%s: its state could not be saved (%s: %s); after a restart its "
                        "old aliases would be taken as live until its next birth", kind, group, node_id,
                        type(exc).__name__, exc, extra={"event": "sparkplug_state_not_saved"})

    def _check_seq(self, p, node: Node | None, redelivered: bool, group: str, node_id: str) -> str | None:
        """Note the message's sequence number; a gap (a reason to ask for a rebirth) is counted and logged."""
        if node is None or not p.HasField("seq"):
            return None
        gap = None
        if node.seq is not None and p.seq != (node.seq + 1) % 256:
            if redelivered:
                # A copy the broker sends again after a lost connection, of a message decoded before it was
                # acknowledged: nothing was missed. Taken for a gap, it asked the node for a needless rebirth and set
                # the number the next message is checked against back.
                return None
            self.stats["seq_gaps"] += 1
            gap = f"sequence gap: {p.seq} after {node.seq}"
            self._log_gap(group, node_id, gap, (p.seq - node.seq - 1) % 256)
        node.seq = p.seq
        return gap

    def _log_gap(self, group: str, node_id: str, gap: str, missed: int) -> None:
        """Messages were lost (on the way, or while the gateway was away from a broker that does not keep QoS 0
        messages): values the edge node sent are not stored. Counted, and logged at most once a minute per node."""
        if self.on_gap is not None:
            self.on_gap()
        key, now = (group, node_id), time.monotonic()
        last, held = self._gaps_logged.get(key, (None, 0))
        if last is not None and now - last < GAP_LOG_EVERY_S:
            self._gaps_logged[key] = (last, held + 1)
            return
        self._gaps_logged[key] = (now, 0)
        more = f"; {held} more gap(s) of this node since the last report" if held else ""
        log.warning("Sparkplug edge node %s/%s: %s: at least %d message(s) missed, whose values are not stored%s",
                    group, node_id, gap, missed, more, extra={"event": "sparkplug_sequence_gap"})

    def _skipped(self, name: str, where: str, what: str) -> None:
        """A metric that is not stored: counted, and its name logged the first time."""
        self.stats["skipped_metrics"] += 1
        if name in self._skips_logged or len(self._skips_logged) >= SKIPS_LOGGED_MAX:
            return
        self._skips_logged.add(name)
        log.warning("Sparkplug metric %r of %s: %s, not stored (only scalar and Template metrics are: flatten "
                    "datasets and arrays into scalar metrics on the edge node); counted in status() "
                    "sparkplug.skipped_metrics, logged once per metric name", name, where, what,
                    extra={"event": "sparkplug_metric_skipped"})

    def _rebirth(self, group: str, node_id: str, why: str | None) -> None:
        if why is not None and self.on_rebirth is not None:
            self.on_rebirth(group, node_id, why)

    # -- readings -----------------------------------------------------------------------------

    def _dead(self, entity: Entity, template: TagTemplate, topic, died: tuple[int, bool], receive_time,
              why: str) -> list[Reading]:
        t_us, untimed = died
        t, flags = from_us(t_us), (SOURCE_STATUS | NO_TIME if untimed else SOURCE_STATUS)
        pre, post = template.around_field(topic)
        return [Reading(pre + name + post, t, None, receive_time, BAD, flags, 0, why) for name in entity.stored_names()]

    def _metrics(self, p, topic, receive_time, entity: Entity | None, template: TagTemplate,
                 where: str, definitions: dict[str, dict[str, int | str]], *, birth: bool = False) -> list[Reading]:
        pre, post = template.around_field(topic)
        names = template.field_tags(topic)  # metric name -> tag (protocol metrics never enter)
        payload_ts = p.timestamp
        # A dead node's (device's) aliases are of a session that ended: the next one's birth hands out its own,
        # and a metric added or removed on the edge node shifts them (measured: its data went to another tag).
        aliases = entity.aliases if entity and entity.online and not entity.unconfirmed else {}
        types = entity.types if entity else {}
        out: list[Reading] = []
        errors: list[str] = []
        append = out.append
        for i, m in enumerate(p.metrics):
            name = m.name
            if not name:
                name = aliases.get(m.alias)
                if name is None:
                    if not m.HasField("alias"):
                        raise DataError(f"metric {i}: neither name nor alias")
                    if entity is not None and entity.online and m.alias in entity.clashes:
                        raise DataError(f"metric {i}: alias {m.alias} of {where} was given to "
                                        f"{', '.join(map(repr, entity.clashes[m.alias]))} in its birth (an alias must "
                                        "name one metric of the edge node: its configuration must change)")
                    if entity is not None and entity.unconfirmed and m.alias in entity.aliases:
                        raise UnknownAlias(f"metric {i}: alias {m.alias} of {where} is from a birth received before "
                                           "the gateway's MQTT session began; a birth published while it was away (the "
                                           "broker kept no session) may have changed it: the edge node must rebirth")
                    if entity is not None and m.alias in entity.aliases:
                        raise UnknownAlias(f"metric {i}: alias {m.alias} of {where} is from a birth before its death "
                                           f"certificate ({entity.aliases[m.alias]!r} then); the birth of its new "
                                           "session was not seen: the edge node must rebirth")
                    raise UnknownAlias(f"metric {i}: alias {m.alias} unknown for {where} (no birth certificate "
                                       "seen with it: the edge node must rebirth)")
            elif type(name) is not str:
                raise DataError(f"metric {i}: name is not valid UTF-8")
            tag = names.get(name)
            if tag is None:
                if _is_protocol(name):
                    continue
                tag = pre + _check_str(name) + post
                template.remember(names, name, tag)
            if m.is_transient:  # "not to be stored in a historian" (Sparkplug 3.0)
                self.stats["transient_metrics"] += 1
                continue
            kind = m.WhichOneof("value")
            if kind == "double_value" or kind == "float_value" or kind == "boolean_value":
                v = getattr(m, kind)
            elif kind is None:
                if not m.is_null:
                    self._skipped(name, where, "no value")
                    continue
                if (m.datatype or types.get(name)) == TEMPLATE:  # a null instance: each of its members is null
                    _null_members(entity, name, pre, post, m.timestamp or payload_ts, receive_time, out)
                    continue
                v = None
            else:
                datatype = m.datatype or types.get(name, 0)
                if not datatype and (kind == "int_value" or kind == "long_value") and \
                        getattr(m, kind) >> (31 if kind == "int_value" else 63):
                    # DATA need not carry a datatype (the specification says they should not): the birth gives it.
                    # Without one, a value with the top bit set is a negative signed or a large unsigned integer.
                    bits = 32 if kind == "int_value" else 64
                    raw = getattr(m, kind)
                    errors.append(f"metric {i} ({name!r}): {kind} {raw} has no datatype and no birth seen gives one "
                                  f"(Int{bits} {raw - (1 << bits)} or UInt{bits} {raw}?)")
                    continue
                v = scalar_value(m, kind, datatype)
                if v is _SKIP:
                    if kind == "template_value":
                        if not m.template_value.is_definition:
                            walk = _Walk(entity, definitions, names, template, pre, post, receive_time, where, birth,
                                         out, errors)
                            self._instance(walk, m.template_value, name, i, m.timestamp or payload_ts,
                                           quality_of(m.properties) if m.HasField("properties") else None)
                            continue
                        if birth:  # a type, kept by `_birth`: no value
                            continue
                    self._skipped(name, where, "a template definition outside the NBIRTH" if kind == "template_value"
                                  else f"a {_type_name(datatype)} ({kind})")
                    continue
            ts = m.timestamp or payload_ts
            if ts:  # `_time` written out: this is the hottest loop, a call per metric is not free
                try:
                    t = _fromts(ts / 1000, UTC)
                except (OverflowError, ValueError, OSError):
                    raise DataError(f"metric {i}: timestamp {ts} ms is out of range") from None
                flags = 0
            else:
                t, flags = receive_time, NO_TIME
            if v is None:
                append(Reading(tag, t, None, receive_time, BAD, flags | SOURCE_STATUS, 0, "is_null"))
            elif m.HasField("properties"):
                quality, qflags, status, status_name = quality_of(m.properties)
                append(Reading(tag, t, v, receive_time, quality, flags | qflags, status, status_name))
            else:
                append(Reading(tag, t, v, receive_time, GOOD, flags))
        if errors:
            if not out:
                raise DataError("; ".join(errors))
            return PartlyRead(out, errors)
        return out

    def _instance(self, walk: _Walk, tv, name: str, i: int, ts_ms: int,
                  quality: tuple[Quality, int, int, str] | None) -> None:
        """The readings of template instance ``name`` (a metric's name, or a nested instance's path): one a member,
        tagged ``<name>/<member>``. A member's timestamp is its own, else ``ts_ms`` (the instance's, else the
        payload's); its quality its own ``Quality`` property, else ``quality`` (the instance's). Parameters are not
        stored. In DATA an instance, its definition or a member no birth gave fails the message (the edge node must
        rebirth, as for an unknown alias); in a birth the instance is what the edge node says: an unknown definition
        is named (`PartlyRead`) and the members are stored."""
        entity = walk.entity
        ref = tv.template_ref if tv.HasField("template_ref") else None
        known = entity.refs.get(name) if entity is not None else None
        if walk.birth:
            if ref not in walk.definitions:
                walk.errors.append(f"metric {i} ({name!r}): template instance of definition {ref!r}, which the "
                                   "NBIRTH did not define")
        elif known is None:
            raise UnknownAlias(f"metric {i}: template instance {name!r} of {walk.where} is in no birth certificate "
                               "seen: the edge node must rebirth")
        elif (ref or known) not in walk.definitions or (ref is not None and ref != known):
            raise UnknownAlias(f"metric {i}: template instance {name!r} of {walk.where} is of definition "
                               f"{ref or known!r}; the birth seen gave {known!r}, the NBIRTH defines "
                               f"{sorted(walk.definitions)}: the edge node must rebirth")
        types = entity.types if entity is not None else {}
        transient = entity.transient if entity is not None else ()
        names, template, pre, post, out = walk.names, walk.template, walk.pre, walk.post, walk.out
        receive_time = walk.receive_time
        last_ts, last_time = None, (receive_time, NO_TIME)  # members mostly share a timestamp: converted once
        for mm in tv.metrics:
            member = mm.name
            if not member or type(member) is not str:
                raise DataError(f"metric {i} ({name!r}): a template member needs a name (valid UTF-8)")
            path = f"{name}/{member}"
            if not walk.birth and path not in types and path not in entity.refs:
                raise UnknownAlias(f"metric {i}: template instance {name!r} of {walk.where} has no member "
                                   f"{member!r} in the birth seen: the edge node must rebirth")
            kind = mm.WhichOneof("value")
            own_ts = mm.timestamp or ts_ms
            own_quality = quality_of(mm.properties) if mm.HasField("properties") else quality
            if kind == "template_value":
                self._instance(walk, mm.template_value, path, i, own_ts, own_quality)
                continue
            if mm.is_transient or path in transient:
                self.stats["transient_metrics"] += 1
                continue
            tag = names.get(path)
            if tag is None:
                tag = pre + _check_str(path) + post
                template.remember(names, path, tag)
            if kind == "double_value" or kind == "float_value" or kind == "boolean_value":
                v = getattr(mm, kind)
            elif kind is None:
                if not mm.is_null:
                    self._skipped(path, walk.where, "no value")
                    continue
                v = None
            else:
                datatype = mm.datatype or types.get(path, 0)
                v = scalar_value(mm, kind, datatype)
                if v is _SKIP:
                    self._skipped(path, walk.where, f"a {_type_name(datatype)} ({kind})")
                    continue
            if own_ts != last_ts:
                last_ts, last_time = own_ts, _time(own_ts, receive_time, i)
            t, flags = last_time
            if v is None:
                out.append(Reading(tag, t, None, receive_time, BAD, flags | SOURCE_STATUS, 0, "is_null"))
            elif own_quality is not None:
                q, qflags, status, status_name = own_quality
                out.append(Reading(tag, t, v, receive_time, q, flags | qflags, status, status_name))
            else:
                out.append(Reading(tag, t, v, receive_time, GOOD, flags))


@dataclass(slots=True)
class _Walk:
    """What the readings of a message's template instances are made with (`SparkplugDecoder._instance`)."""

    entity: Entity | None
    definitions: dict[str, dict[str, int | str]]
    names: dict
    template: TagTemplate
    pre: str
    post: str
    receive_time: datetime
    where: str
    birth: bool
    out: list[Reading]
    errors: list[str]


def _time(ts_ms: int, receive_time: datetime, i: int) -> tuple[datetime, int]:
    """(time, flags) of a value stamped ``ts_ms`` (0: not stamped, the receive time)."""
    if not ts_ms:
        return receive_time, NO_TIME
    try:
        return _fromts(ts_ms / 1000, UTC), 0
    except (OverflowError, ValueError, OSError):
        raise DataError(f"metric {i}: timestamp {ts_ms} ms is out of range") from None


def _definition(tv, i: int) -> dict[str, int | str]:
    """A template definition's members: name -> datatype, or the definition name of a nested template."""
    out: dict[str, int | str] = {}
    for mm in tv.metrics:
        if not mm.name or type(mm.name) is not str:
            raise DataError(f"metric {i}: a template member needs a name (valid UTF-8)")
        nested = mm.template_value if mm.WhichOneof("value") == "template_value" else None
        out[mm.name] = nested.template_ref if nested is not None else mm.datatype
    return out


def _instance_types(entity: Entity, name: str, tv, i: int) -> None:
    """Note a birth's template instance ``name``: its definition, and its members' datatypes by path."""
    entity.refs[name] = tv.template_ref
    for mm in tv.metrics:
        if not mm.name or type(mm.name) is not str:
            raise DataError(f"metric {i} ({name!r}): a template member needs a name (valid UTF-8)")
        path = f"{name}/{mm.name}"
        if mm.WhichOneof("value") == "template_value":
            _instance_types(entity, path, mm.template_value, i)
            continue
        entity.types[path] = mm.datatype
        if mm.is_transient:
            entity.transient.add(path)


def _null_members(entity: Entity | None, name: str, pre: str, post: str, ts_ms: int, receive_time: datetime,
                  out: list[Reading]) -> None:
    """A null template instance: a bad-quality null for each member its birth gave (stored ones only)."""
    if entity is None:
        return
    t, flags = _time(ts_ms, receive_time, 0)
    prefix = name + "/"
    out += [Reading(pre + n + post, t, None, receive_time, BAD, flags | SOURCE_STATUS, 0, "is_null")
            for n in entity.stored_names() if n.startswith(prefix)]


def _type_name(datatype: int) -> str:
    try:
        return DataType.Name(datatype)
    except ValueError:
        return f"datatype {datatype}"


def _is_protocol(name: str) -> bool:
    return name == "bdSeq" or name.startswith(_PROTOCOL_PREFIXES)


def _bd_seq(p) -> int | None:
    return next((m.long_value or m.int_value for m in p.metrics if m.name == "bdSeq"), None)
