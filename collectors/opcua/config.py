"""Configuration of one OPC UA collector: ``[[collectors]] kind = "opcua"`` in the site TOML.

The defaults written here are the only defaults (``sample.toml`` is checked against them by a
test). Times carry their unit in the name. Secrets are references (``env:NAME`` /
``file:/path``); a literal password is a configuration error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlparse

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collectors.opcua.security import endpoint_key
from edge.paths import ConfigPath
from edge.secrets import SecretRef

# The namespace / server fields before a node id's identifier (i=, s=, g=, b=), which may itself hold "svr=".
_PREFIX = re.compile(r"(?:(?:ns|nsu|svr)=[^;]*;)*")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(Strict):
    """One variable to read. Per-node settings override the collector-wide ones."""

    node_id: str = Field(min_length=1, description='OPC UA node id, e.g. "ns=2;s=P-101.vib_de", or with the '
                                                   'namespace URI: "nsu=urn:plant;s=P-101.vib_de"')
    tag: str = Field(min_length=1, description="tag name the readings get")
    mode: Literal["subscribe", "poll"] | None = Field(None, description="default: the collector's mode")
    sampling_interval_ms: float | None = Field(None, ge=0)
    deadband: float | None = Field(None, ge=0, description="absolute (engineering units) unless deadband_type")
    # percent: of the node's EURange (read from the server when the item is created; a node without
    # one is reported as a failed item), sent to the server as the equivalent absolute deadband.
    deadband_type: Literal["absolute", "percent"] = "absolute"
    queue_size: int | None = Field(None, ge=0)
    discard_oldest: bool | None = None
    arrays: Literal["reject", "flatten"] | None = None

    @field_validator("node_id")
    @classmethod
    def _parse_node_id(cls, v: str) -> str:
        try:
            nid = ua.NodeId.from_string(v)
        except Exception as exc:  # asyncua raises several types for malformed ids
            raise ValueError(f"not an OPC UA node id ({exc}); write e.g. ns=2;s=Pump.Flow, ns=3;i=1001 or "
                             "nsu=urn:plant;s=Pump.Flow") from exc
        uri = getattr(nid, "NamespaceUri", None)
        if uri is not None and (not uri or nid.NamespaceIndex):
            raise ValueError("nsu= names the namespace by its URI: give a URI, and no ns= beside it (e.g. "
                             "nsu=urn:plant;s=Pump.Flow)")
        if "svr=" in _PREFIX.match(v.strip()).group():  # asyncua drops it: the node was looked for on this server
            raise ValueError("svr= names another server: give the node id on this server (ns= or nsu=)")
        return v

    def resolve(self, namespaces: Sequence[str] | None) -> ua.NodeId:
        """The node id as this session's server numbers it: ``nsu=URI`` becomes the URI's index in the server's
        NamespaceArray (``namespaces``; it may change across a server restart, so it is read at every session).
        LookupError when the server has no such namespace, or ``namespaces`` is None (not read)."""
        nid = ua.NodeId.from_string(self.node_id)
        uri = getattr(nid, "NamespaceUri", None)
        if uri is None:
            return nid
        if namespaces is None:
            raise LookupError(f"namespace {uri}: the server's NamespaceArray could not be read")
        try:
            index = list(namespaces).index(uri)
        except ValueError:
            raise LookupError(f"namespace {uri} is not in the server's NamespaceArray") from None
        # A plain NodeId: asyncua encodes an ExpandedNodeId's URI even in a NodeId field, which no server resolves
        return ua.NodeId(nid.Identifier, index, nid.NodeIdType)

    @model_validator(mode="after")
    def _percent(self) -> NodeConfig:
        if self.deadband_type == "percent" and self.deadband is not None and self.deadband > 100:
            raise ValueError("a percent deadband is at most 100")
        return self


def check_endpoint(v: str) -> str:
    """``v`` if it is an opc.tcp://host:port URL without a password; ValueError saying what is wrong."""
    if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
        raise ValueError("must be an opc.tcp://host:port URL")
    # asyncua logs in with a URL's user:password@, so a literal password would sit in the file and be shown in
    # /healthz and in connection errors (the endpoint is in both). The message must not repeat it.
    userinfo, at, _ = v[len("opc.tcp://"):].partition("/")[0].rpartition("@")
    if at and ":" in userinfo:
        raise ValueError("contains a password (user:password@); give username, and password as env:NAME or "
                         "file:/path")
    # Checked here because asyncua takes a URL without a port as port 0 and an impossible one as a ValueError at
    # every connect: the gateway would retry for ever instead of saying what is wrong at start-up.
    url = urlparse(v)
    host = url.hostname
    if not host or any(c.isspace() for c in url.netloc):
        raise ValueError(f"{v}: no host name or address (write opc.tcp://host:port)")
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"{v}: port {url.netloc.rsplit(':', 1)[-1]} is not 1-65535") from None
    if port is None:
        raise ValueError(f"{v}: no port: write {url._replace(netloc=f'{url.netloc}:4840').geturl()} (4840 is "
                         "OPC UA's usual port) or the port the server listens on")
    if not 0 < port < 65536:
        raise ValueError(f"{v}: port {port} is not 1-65535")
    return v


class Connection(Strict):
    """How to reach one OPC UA server (shared by the collector and ``valvoja opcua browse``)."""

    endpoint: str = Field(description="opc.tcp://host:port/path")
    connect_timeout_s: float = Field(10.0, gt=0, description="limit on the whole connect sequence")
    reconnect_max_delay_s: float = Field(5.0, gt=0, le=300, description="cap of the reconnect back-off (with jitter)")
    request_timeout_s: float = Field(5.0, gt=0, description="limit on every request to the server")
    watchdog_interval_s: float = Field(2.0, gt=0, description="how often the server is probed (also the probe timeout)")
    session_timeout_s: float = Field(60.0, gt=0)
    username: str | None = None
    password: SecretRef | None = None
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    pki_dir: ConfigPath | None = Field(None, description="own certificate, trusted/ and rejected/; default <state>/pki")
    trust_on_first_use: bool = False
    check_host_name: bool = Field(True, description="refuse a server certificate whose host names do not include "
                                                    "the endpoint's host (OPC UA Part 4 6.1.3)")
    application_uri: str | None = Field(None, description="default urn:valvoja:<host>:<collector name>")
    certificate: ConfigPath | None = Field(None, description="a site-issued client certificate (PEM/DER) instead of "
                                                      "the generated one; with private_key")
    private_key: ConfigPath | None = None
    private_key_password: SecretRef | None = Field(None, description="password of an encrypted private_key: "
                                                                     "env:NAME or file:/path")
    user_certificate: ConfigPath | None = Field(None, description="X.509 user identity: the user's certificate "
                                                                  "(PEM/DER), with user_private_key; instead of "
                                                                  "username")
    user_private_key: ConfigPath | None = None
    user_private_key_password: SecretRef | None = Field(None, description="password of an encrypted "
                                                                          "user_private_key: env:NAME or file:/path")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v)

    @model_validator(mode="after")
    def _security(self) -> Connection:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (give both or neither)")
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(f"security_policy {self.security_policy} with security_mode {self.security_mode}: "
                             "policy None goes with mode None, any other policy with Sign or SignAndEncrypt")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (give both or neither)")
        if self.private_key_password is not None and self.private_key is None:
            raise ValueError("private_key_password is the password of private_key: give private_key too")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together (give both or neither)")
        if self.user_private_key_password is not None and self.user_private_key is None:
            raise ValueError("user_private_key_password is the password of user_private_key: give it too")
        if self.user_certificate is not None and self.username is not None:
            raise ValueError("one user identity: username/password or user_certificate, not both")
        return self

class Config(Connection):
    """One OPC UA server, or a redundant set of servers (``endpoints``), and the nodes read from it."""

    # Written "" when `endpoints` is given: then the active server's URL (the first's until a connect chooses).
    endpoint: str = Field("", description="opc.tcp://host:port/path; or endpoints")
    # Non-transparent redundancy (OPC UA Part 4 6.6.2): servers with the same address space, in order of preference;
    # the collector follows the one with the best ServiceLevel (README: Redundant servers).
    endpoints: list[str] | None = Field(None, description="redundant servers (opc.tcp:// URLs), first preferred; "
                                                          "instead of endpoint")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="poll: for servers that cannot subscribe")
    polling_interval_ms: float = Field(1000.0, gt=0, description="read interval of nodes in poll mode")
    publishing_interval_ms: float = Field(500.0, gt=0)
    sampling_interval_ms: float = Field(250.0, ge=0, description="default for nodes without their own")
    # Also what a restarted gateway gets back from a resumed session: 100 holds 25 s of changes at the default
    # 250 ms sampling, a restart or an upgrade (10 held 2.5 s, less than the gateway takes to start). A server
    # with less memory revises it down; the queue fills only while the gateway is away.
    queue_size: int = Field(100, ge=0, description="server-side queue per item: changes between publishes, and "
                                                   "while the gateway restarts")
    discard_oldest: bool = Field(True, description="when an item's queue is full: drop the oldest (else newest)")
    keepalive_count: int = Field(10, ge=1, description="publishing intervals without data before a keep-alive")
    lifetime_count: int = Field(100, ge=3, description="publishing intervals without client before expiry")
    max_notifications_per_publish: int = Field(10000, ge=0, description="0 = no limit")
    items_per_call: int = Field(500, ge=1, le=10000, description="monitored items created (nodes read) per "
                                                                 "request; fewer where the server's OperationLimits "
                                                                 "say so")
    arrays: Literal["reject", "flatten"] = Field("reject", description="flatten: tag[0], tag[1], ...")
    # Off by default: HistoryRead loads a DCS's historian, which its owners should agree to (README: Backfill).
    history_backfill_max_s: float = Field(0.0, ge=0, le=31 * 86400,
                                          description="after a gap no resumed session bridged, read the values it "
                                                      "missed from the server's history (HistoryRead), at most this "
                                                      "far back; 0: off")
    nodes: list[NodeConfig] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return v if v == "" else check_endpoint(v)  # "": endpoints instead (checked in _servers)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("no servers: list at least one opc.tcp://host:port URL (or give endpoint)")
        seen: dict[str, int] = {}
        for i, url in enumerate(v):
            try:
                check_endpoint(url)
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
            if endpoint_key(url) in seen:
                raise ValueError(f"[{i}]: {url} is the same server as [{seen[endpoint_key(url)]}]")
            seen[endpoint_key(url)] = i
        return v

    @model_validator(mode="after")
    def _servers(self) -> Config:
        if self.endpoints is None:
            if not self.endpoint:
                raise ValueError("give endpoint (one server, opc.tcp://host:port) or endpoints (redundant servers)")
        elif self.endpoint and self.endpoint != self.endpoints[0]:
            raise ValueError("give endpoint (one server) or endpoints (redundant servers, first preferred), not both")
        else:
            object.__setattr__(self, "endpoint", self.endpoints[0])  # frozen model: set once, while validating
        return self

    def servers(self) -> list[Config]:
        """This configuration for each server, in the configured order (``endpoint`` set to the server's URL):
        itself for a single ``endpoint``."""
        if self.endpoints is None:
            return [self]
        return [self.model_copy(update={"endpoint": url}) for url in self.endpoints]

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        problems = []
        for key in ("tag", "node_id"):
            counts = Counter(getattr(n, key) for n in self.nodes)
            dups = sorted(k for k, c in counts.items() if c > 1)
            if dups:
                problems.append(f"nodes: duplicate {key} {', '.join(dups[:5])}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def node_mode(self, node: NodeConfig) -> str:
        return node.mode or self.mode
