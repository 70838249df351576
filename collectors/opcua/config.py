"""Configuration of one OPC UA collector: ``[[collectors]] kind = "opcua"`` in the site TOML.

The defaults written here are the only defaults (``sample.toml`` is checked against them by a
test). Times carry their unit in the name. Secrets are references (``env:NAME`` /
``file:/path``); a literal password is a configuration error.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.secrets import is_reference


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(Strict):
    """One variable to subscribe to. Per-node settings override the collector-wide ones."""

    node_id: str = Field(min_length=1, description='OPC UA node id, e.g. "ns=2;s=P-101.vib_de"')
    tag: str = Field(min_length=1, description="tag name the readings get")
    sampling_interval_ms: float | None = Field(None, ge=0)
    deadband: float | None = Field(None, ge=0, description="absolute (engineering units) unless deadband_type")
    deadband_type: Literal["absolute", "percent"] = "absolute"  # percent needs the server to know the EURange
    queue_size: int | None = Field(None, ge=0)

    @field_validator("node_id")
    @classmethod
    def _parse_node_id(cls, v: str) -> str:
        try:
            ua.NodeId.from_string(v)
        except Exception as exc:  # asyncua raises several types for malformed ids
            raise ValueError(f"not an OPC UA node id ({exc}); write e.g. ns=2;s=Pump.Flow or ns=3;i=1001") from exc
        return v


class Config(Strict):
    """One OPC UA server and the nodes read from it."""

    endpoint: str = Field(description="opc.tcp://host:port/path")
    connect_timeout_s: float = Field(10.0, gt=0, description="limit on the whole connect sequence")
    request_timeout_s: float = Field(5.0, gt=0, description="limit on every request to the server")
    watchdog_interval_s: float = Field(2.0, gt=0, description="how often the server is probed (also the probe timeout)")
    publishing_interval_ms: float = Field(500.0, gt=0)
    sampling_interval_ms: float = Field(250.0, ge=0, description="default for nodes without their own")
    queue_size: int = Field(10, ge=0, description="server-side queue per item; changes between publishes")
    keepalive_count: int = Field(10, ge=1, description="publishing intervals without data before a keep-alive")
    lifetime_count: int = Field(100, ge=3, description="publishing intervals without client before expiry")
    max_notifications_per_publish: int = Field(10000, ge=0, description="0 = no limit")
    items_per_call: int = Field(500, ge=1, le=10000, description="monitored items created per request")
    session_timeout_s: float = Field(60.0, gt=0)
    username: str | None = None
    password: str | None = Field(None, description="env:NAME or file:/path; never the password itself")
    # Placeholders for the security work (issue 3): only the insecure policy exists so far, and a
    # configuration asking for more is refused instead of silently connecting without security.
    security_policy: Literal["None"] = "None"
    security_mode: Literal["None"] = "None"
    nodes: list[NodeConfig] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
            raise ValueError("must be an opc.tcp://host:port URL")
        return v

    @field_validator("password")
    @classmethod
    def _password_is_reference(cls, v: str | None) -> str | None:
        if v is not None and not is_reference(v):
            raise ValueError("must be a reference 'env:NAME' or 'file:/path', not a literal password")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (give both or neither)")
        problems = []
        for key in ("tag", "node_id"):
            counts = Counter(getattr(n, key) for n in self.nodes)
            dups = sorted(k for k, c in counts.items() if c > 1)
            if dups:
                problems.append(f"nodes: duplicate {key} {', '.join(dups[:5])}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
