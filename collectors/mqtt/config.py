"""Configuration of one MQTT collector: ``[[collectors]] kind = "mqtt"`` in the site TOML.

The defaults written here are the only defaults (``sample.toml`` is checked against them by a
test). Times carry their unit in the name. Secrets are references (``env:NAME`` /
``file:/path``); a literal password is a configuration error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from collectors.mqtt.topics import TagTemplate, TopicFilter
from edge.secrets import SecretRef
from edge.tls import Tls  # shared with the alert notifier: edge/tls.py

MQTT_MAX_PAYLOAD = 268_435_455  # the largest MQTT packet (a variable byte integer of 4 bytes)

TimeFormat = Literal["auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"]
# A number is read only in the convention named: an OPC UA StatusCode is good at 0, an OPC DA code at 192.
QualityFormat = Literal["auto", "bool", "text", "opcua", "opcda"]
# A Sparkplug host id is a topic level (spBv1.0/STATE/<id>): no separator or wildcard (Sparkplug 3.0 asks the same of
# group, edge node and device ids). Its length: a topic is at most 65,535 bytes; 1,024 leaves any broker's limit room.
HOST_ID_FORBIDDEN = frozenset("/+#")
HOST_ID_MAX_BYTES = 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonMapping(Strict):
    """Where the value, time and tag are in a JSON message. Paths are dotted keys (``data.ts``).

    A message is one sample (an object, or a bare number/bool/string), an array of samples, or,
    with ``samples``, an object holding an array of samples; ``tag``, ``time`` and ``quality`` found at the
    message level apply to samples that lack their own.
    """

    value: str = Field("value", min_length=1,
                       description='path of the value in a sample; "*" = every other key is a tag ({field})')
    time: str = Field("time", description='path of the timestamp; "" = the payload has none')
    tag: str = Field("", description='path of the tag name ({field}); "" = the tag comes from the topic')
    samples: str = Field("", description='path of an array of samples; "" = message is a sample or an array')
    time_format: TimeFormat = "auto"
    quality: str = Field("", description='path of the quality the device states; "" = the payload has none')
    quality_format: QualityFormat = Field(
        "auto", description="how the quality reads: auto (true/false, good/uncertain/bad text), bool, text, "
                            "opcua (StatusCode, 0 good), opcda (192 good)")

    @field_validator("value", "time", "tag", "samples", "quality")
    @classmethod
    def _path(cls, v: str) -> str:
        if v and v != "*" and any(part == "" for part in v.split(".")):
            raise ValueError(f"{v!r} is not a dotted path (empty key between dots)")
        return v

    @model_validator(mode="after")
    def _quality_path(self) -> JsonMapping:
        if self.quality == "*" or (self.quality and self.quality in (self.value, self.time, self.tag)):
            raise ValueError(f"quality = {self.quality!r} must be a key of its own (not '*', nor the value, time or "
                             "tag path)")
        return self


class Subscription(Strict):
    """One topic filter, how its topics name tags, and how its payloads decode."""

    topic: str = Field(min_length=1, description="MQTT filter; +name names a wildcard level")
    format: Literal["plain", "json", "sparkplug"] = "json"
    tag: str | None = Field(None, description="tag template; None = a default that depends on format")
    json_: JsonMapping = Field(JsonMapping(), alias="json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _compile(self) -> Subscription:
        # Compiling here turns every template/topic mistake into a validation error at start-up.
        _, template = self.compiled()
        if self.format == "sparkplug":
            first = self.topic.split("/")[0]
            if first not in ("spBv1.0", "+", "#"):
                raise ValueError(f"topic {self.topic!r}: Sparkplug B topics start with spBv1.0/")
        elif self.format == "json" and self.json_.value == "*" and not template.uses_field:
            raise ValueError('json.value = "*" makes one tag per key: the tag template needs {field}')
        elif self.format == "plain" and template.uses_field:
            raise ValueError(f"tag {template.spec!r}: plain payloads name no {{field}}")
        return self

    def tag_spec(self) -> str:
        """The template in force: the configured one or the format's default."""
        if self.tag is not None:
            return self.tag
        if self.format == "sparkplug":
            return "{group}.{node}.{field}"  # device metrics: see sparkplug.DEVICE_DEFAULT_TAG
        if self.format == "json" and self.json_.tag:
            return "{field}"
        if self.format == "json" and self.json_.value == "*":
            return "{topic}.{field}"
        return "{topic}"

    def compiled(self) -> tuple[TopicFilter, TagTemplate]:
        """A fresh (filter, template) pair; templates hold a per-topic cache, so each decoder gets its own."""
        topic = TopicFilter(self.topic)
        return topic, TagTemplate(self.tag_spec(), topic, sparkplug=self.format == "sparkplug")


class Config(Strict):
    """One MQTT broker and the topics read from it."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = Field(None, min_length=1, description="fixed id; the broker keeps the session under it")
    clean_session: bool = Field(False, description="False: the broker queues QoS 1 messages while we are away")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=0xFFFFFFFF,
                                  description="MQTT 5: how long the broker keeps the session after a disconnect")
    keepalive_s: int = Field(30, ge=5, le=65535)
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP + TLS + CONNACK")
    qos: Literal[0, 1] = Field(1, description="QoS of the subscriptions (2 is refused: see README)")
    max_inflight: int = Field(1000, ge=1, le=65535,
                              description="messages handed to the gateway and not yet acknowledged")
    # Decoding takes about 8 times a JSON message's size in memory (measured: 65 MB -> 546 MB). A message the
    # gateway cannot hold (a broker passes up to 256 MB) killed it, and the broker sent it again at every restart.
    # Strict: TOML's `true` or "16M" is a mistake, not 1 (refused as too small) or a number parsed from text.
    max_payload_bytes: int = Field(16 * 2**20, ge=1024, le=MQTT_MAX_PAYLOAD, strict=True,
                                   description="a larger message becomes a dead letter without being decoded")
    tls: Tls | None = None
    username: str | None = None
    password: SecretRef | None = None
    retained_untimed: Literal["skip", "store"] = Field(
        "skip", description="values without a source time in a retained message (the broker's last known value, sent "
                            "again at every new subscription): skip them, or store them at the receive time flagged "
                            "RETAINED")
    request_rebirth: bool = Field(True, description="Sparkplug: ask an edge node to rebirth (NCMD) when its data "
                                                    "cannot be decoded (no birth seen, unknown alias, sequence gap)")
    rebirth_interval_s: float = Field(30.0, ge=1.0, le=86400.0,
                                      description="Sparkplug: at most one rebirth request per edge node this often")
    subscriptions: list[Subscription] = Field(min_length=1)
    # Last, so that its validator sees clean_session and the subscriptions.
    primary_host_id: str | None = Field(
        None, description="Sparkplug: act as the Primary Host Application of this id (STATE birth and will on "
                          "spBv1.0/STATE/<id>); needs clean_session = true and Sparkplug subscriptions only")

    @field_validator("primary_host_id")
    @classmethod
    def _primary_host(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        bad = sorted({c for c in v if c in HOST_ID_FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F})
        if not v or bad:
            why = f"contains {', '.join(map(repr, bad))}" if bad else "is empty"
            raise ValueError(f"{v!r} {why}: the id is the last level of the topic spBv1.0/STATE/<id>, so it may not "
                             "hold '/', '+', '#' (MQTT topic separators and wildcards) or control characters")
        if len(v.encode()) > HOST_ID_MAX_BYTES:
            raise ValueError(f"{len(v.encode())} bytes is longer than {HOST_ID_MAX_BYTES}")
        if info.data.get("clean_session") is False:
            # Sparkplug 3.0 (tck-id-message-flow-phid-sparkplug-clean-session-311/-50): edge nodes hold their data
            # while the host is offline and send it again as is_historical when it returns; see README.md.
            raise ValueError("a Sparkplug Primary Host Application connects with a clean session (Sparkplug 3.0: "
                             "Clean Session true, MQTT 5 Clean Start true and Session Expiry 0): set clean_session = "
                             "true; the edge nodes, not the broker, then keep what is published while the gateway "
                             "is away (README.md, 'Sparkplug Primary Host Application')")
        subs = info.data.get("subscriptions") or []
        others = [s.topic for s in subs if s.format != "sparkplug"]
        if others:
            raise ValueError(f"subscriptions {', '.join(others)} are not format = \"sparkplug\": a Primary Host's "
                             "clean session gives up the broker's queue, which plain and JSON publishers rely on "
                             "while the gateway is away; read them with a collector of their own")
        return v

    @field_validator("qos", mode="before")
    @classmethod
    def _qos(cls, v):
        if v == 2:
            raise ValueError("QoS 2 is not supported: its PUBREC hands a message over before the gateway has "
                             "stored it; QoS 1 with the gateway's late acknowledgement loses nothing")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.password is not None and self.username is None:
            raise ValueError("password without username")
        if not self.clean_session and self.client_id is None:
            raise ValueError("client_id is required for a persistent session (clean_session = false): the "
                             "broker keeps queued messages under that id")
        filters = [TopicFilter(s.topic).mqtt for s in self.subscriptions]
        dups = sorted({f for f in filters if filters.count(f) > 1})
        if dups:
            raise ValueError(f"subscriptions: duplicate topic {', '.join(dups)}")
        return self
