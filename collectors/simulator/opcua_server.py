"""The simulator's OPC UA server (asyncua): one folder per asset, one AnalogItem per tag.

Address space: ``Objects/<asset>/<signal>`` with node id ``ns=<NAMESPACE index>;s=<tag>``
(``ns=2;s=P-101.vib_de`` on a fresh server), each variable an ``AnalogItemType`` with
``EngineeringUnits`` (UNECE code) and ``EURange`` properties. Values carry the simulated
source timestamp; sensor faults carry their status code (Bad values are null, as the OPC UA
specification asks).

asyncua's server is slow at writing many variables (protocols.md), so nodes are added in bulk
requests and values are written straight into the address space with prebuilt node ids and
variant types, in DataValues the server need not deep-copy (`_SharedDataValue`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_subscription import InternalSubscription

from collectors.simulator import DEFAULT_ENDPOINT
from collectors.simulator.tags import UNECE_CODES, TagSpec, unit_id

log = logging.getLogger(__name__)

NAMESPACE = "urn:valvoja:simulator"
APPLICATION_URI = "urn:valvoja:simulator:server"
UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
_ADD_CHUNK = 2000
# Writes to variables nobody subscribes to never suspend: without an explicit yield every so many,
# a large write would hold the event loop and starve the clients the server is there for.
_YIELD_EVERY = 200

_VTYPE = {"float": (ua.VariantType.Double, ua.ObjectIds.Double, 0.0),
          "int": (ua.VariantType.Int32, ua.ObjectIds.Int32, 0),
          "bool": (ua.VariantType.Boolean, ua.ObjectIds.Boolean, False)}
# A value of the wrong Python type would make asyncua fail when it encodes the notification.
_CAST = {ua.VariantType.Double: float, ua.VariantType.Int32: int, ua.VariantType.Boolean: bool}
_GOOD = ua.StatusCode(0)

Write = tuple[str, object, int]  # (tag, value, status code)


class _SharedDataValue(ua.DataValue):
    """A DataValue that asyncua's server may share instead of deep-copying.

    For every subscribed item, asyncua deep-copies each written DataValue "to prevent referencing
    the inner value" — about three quarters of its cost per write. The simulator builds a fresh
    DataValue per write from immutable parts (numbers, an aware datetime, a StatusCode) and never
    touches it again, and the server only replaces DataValues, never mutates them; so the copy can
    be the object itself. This makes the simulator a faster peer for benchmarks.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> _SharedDataValue:
        return self


def _item(nodeid: ua.NodeId, parent: ua.NodeId, name: str, ns: int, value: ua.Variant, datatype: int, *,
          prop: bool) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, 0 if prop else ns)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty if prop else ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.PropertyType if prop else ua.ObjectIds.AnalogItemType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.DataType = ua.NodeId(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.ArrayDimensions = None
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.WriteMask = attrs.UserWriteMask = 0
    attrs.Historizing = False
    item.NodeAttributes = attrs
    return item


class _Users:
    """User check for the server: user names with passwords, and user certificates (X.509 identity, compared
    byte for byte); anonymous sessions, wrong passwords and unknown certificates are refused."""

    def __init__(self, users: dict[str, str], certificates: dict[bytes, str]) -> None:
        self.users = users
        self.certificates = certificates
        self.activated: list[str] = []  # users whose sessions were activated, in order (for tests and demos)

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        name = None
        if username is not None and self.users.get(username) == password:
            name = username
        elif certificate is not None:
            name = self.certificates.get(bytes(certificate))
        if name is None:
            return None
        self.activated.append(name)
        return User(role=UserRole.User, name=name)


def _republish_keeping(self: InternalSubscription, nb: int) -> ua.NotificationMessage:
    """Republish per OPC UA Part 4 (Republish service): the message stays in the retransmission queue until the
    client acknowledges it. asyncua's own removes it when it is republished, so a Republish response lost in a
    cut, or a client stopped before it stored the message, lost it for good (the chaos test's rare
    ``opcua_messages_lost``); a client that asks again now gets it again."""
    result = self._not_acknowledged_results.get(nb)
    return result.NotificationMessage if result is not None else ua.NotificationMessage()


InternalSubscription.republish = _republish_keeping


class SimOpcUaServer:
    """Serve ``tags`` on ``endpoint``; ``write`` publishes new values."""

    def __init__(self, tags: Sequence[TagSpec], endpoint: str = DEFAULT_ENDPOINT, *,
                 name: str = "Valvoja plant simulator", users: dict[str, str] | None = None,
                 certificate: str | None = None, private_key: str | None = None,
                 policies: Sequence[str] | None = None, trusted_clients: str | None = None,
                 user_certificates: dict[str, str] | None = None, application_uri: str = APPLICATION_URI,
                 min_publishing_interval_ms: float = 0.0) -> None:
        self.endpoint = endpoint
        self.application_uri = application_uri  # announced in the endpoints; a certificate's URI must match it
        # Like many servers, revise a subscription's publishing interval up to this minimum (asyncua grants
        # whatever is asked); 0: no minimum.
        self.min_publishing_interval_ms = min_publishing_interval_ms
        # Security (tests and demos): the server's certificate and key (PEM or DER), the endpoints it
        # offers as asyncua SecurityPolicyType names ("NoSecurity", "Basic256Sha256_SignAndEncrypt",
        # ...; default NoSecurity only), and a folder of client certificates it trusts (default: any).
        self.certificate = certificate
        self.private_key = private_key
        self.policies = list(policies or ["NoSecurity"])
        secure = [p for p in self.policies if p != "NoSecurity"]
        if secure and (certificate is None or private_key is None):
            # asyncua then offers no endpoint at all (a warning the simulator's logging hides) while the simulator
            # says it serves: every client failed with no word why.
            raise ValueError(f"OPC UA policy {', '.join(secure)} needs the server's certificate and private key "
                             "(--opcua-cert, --opcua-key)")
        self.trusted_clients = trusted_clients
        self.users = users  # None: anonymous access; else these user names and passwords only
        # user name -> certificate file (PEM/DER) accepted as its X.509 identity; with users, not anonymous
        self.user_certificates = user_certificates or {}
        self._users: _Users | None = None
        self.tag_specs = list(tags)
        self.name = name
        self.server: Server | None = None
        self.ns = 2
        self._nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        self._aspace = None
        self.writes = 0
        self.on_write: Callable[[str, object, int, datetime], None] | None = None  # test hook

    @property
    def activated(self) -> list[str]:
        """User names of the sessions activated so far (empty for anonymous access)."""
        return self._users.activated if self._users is not None else []

    def node_id(self, tag: str) -> str:
        """The node id string of ``tag`` (what a collector's ``nodes`` entry names)."""
        return f"ns={self.ns};s={tag}"

    async def start(self) -> None:
        certs = {}
        if self.user_certificates:
            from asyncua.crypto import uacrypto

            for name, path in self.user_certificates.items():
                certs[uacrypto.der_from_x509(await uacrypto.load_certificate(path))] = name
        closed = self.users is not None or certs
        self._users = _Users(self.users or {}, certs) if closed else None
        server = Server(user_manager=self._users)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.name)
        server.set_security_policy([getattr(ua.SecurityPolicyType, p) for p in self.policies])
        await server.set_application_uri(self.application_uri)
        if self.min_publishing_interval_ms > 0:
            self._revise_publishing_interval(server)
        if self.certificate is not None:
            await server.load_certificate(self.certificate)
            await server.load_private_key(self.private_key)
        if self.trusted_clients is not None:
            from asyncua.common.utils import ServiceError
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

            async def trust_nobody(cert, app) -> None:
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

            if not any(Path(self.trusted_clients).glob("*.*")):  # noqa: ASYNC240 - once, at start-up
                server.set_certificate_validator(trust_nobody)  # asyncua's TrustStore cannot be empty
            else:
                store = TrustStore([Path(self.trusted_clients)], [])
                await store.load()
                server.set_certificate_validator(CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))
        self.ns = await server.register_namespace(NAMESPACE)
        await self._build(server)
        self._check_port()
        await server.start()
        self.server = server
        self._aspace = server.iserver.aspace
        log.info("OPC UA server on %s with %d variables", self.endpoint, len(self._nodes))

    def _check_port(self) -> None:
        """OSError naming the endpoint when its port is taken (asyncua's own is a logged traceback about a bind)."""
        import errno
        import socket
        from urllib.parse import urlsplit

        url = urlsplit(self.endpoint)
        infos = socket.getaddrinfo(url.hostname, url.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server binds
                try:
                    s.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRNOTAVAIL:  # that family is not enabled; asyncio's server skips it too
                        continue
                    raise OSError(f"OPC UA endpoint {self.endpoint}: cannot listen on {address[0]} port "
                                             f"{address[1]}: {exc.strerror} (another simulator or server there? "
                                             "choose another with --opcua)") from None

    def _revise_publishing_interval(self, server: Server) -> None:
        service = server.iserver.subscription_service
        create = service.create_subscription
        floor = self.min_publishing_interval_ms

        async def create_revised(params: ua.CreateSubscriptionParameters, *args, **kwargs):
            if params.RequestedPublishingInterval < floor:
                params = dataclasses.replace(params, RequestedPublishingInterval=floor)
            return await create(params, *args, **kwargs)

        service.create_subscription = create_revised

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def _build(self, server: Server) -> None:
        ns = self.ns
        objects = server.nodes.objects
        folders: dict[str, ua.NodeId] = {}
        items: list[ua.AddNodesItem] = []
        for spec in self.tag_specs:
            if spec.asset not in folders:
                folder = await objects.add_folder(ua.NodeId(spec.asset, ns), ua.QualifiedName(spec.asset, ns))
                folders[spec.asset] = folder.nodeid
            vtype, dtype, initial = _VTYPE[spec.kind]
            nodeid = ua.NodeId(spec.name, ns)
            signal = spec.name[len(spec.asset) + 1:] if spec.name.startswith(spec.asset + ".") else spec.name
            items.append(_item(nodeid, folders[spec.asset], signal, ns, ua.Variant(initial, vtype), dtype, prop=False))
            eu = ua.EUInformation(NamespaceUri=UNITS_NAMESPACE, UnitId=unit_id(UNECE_CODES.get(spec.unit)),
                                  DisplayName=ua.LocalizedText(spec.unit), Description=ua.LocalizedText(spec.unit))
            items.append(_item(ua.NodeId(f"{spec.name}.EngineeringUnits", ns), nodeid, "EngineeringUnits", ns,
                               ua.Variant(eu), ua.ObjectIds.EUInformation, prop=True))
            items.append(_item(ua.NodeId(f"{spec.name}.EURange", ns), nodeid, "EURange", ns,
                               ua.Variant(ua.Range(spec.low, spec.high)), ua.ObjectIds.Range, prop=True))
            self._nodes[spec.name] = (nodeid, vtype)
        session = server.iserver.isession  # bulk AddNodes: one request per chunk, not three per tag
        for start in range(0, len(items), _ADD_CHUNK):
            for result in await session.add_nodes(items[start:start + _ADD_CHUNK]):
                result.StatusCode.check()

    async def write(self, values: Iterable[Write], source_time: datetime, server_time: datetime) -> None:
        """Write ``(tag, value, status)`` triples with this source timestamp; unknown tags are skipped."""
        aspace = self._aspace
        if aspace is None:
            return
        nodes = self._nodes
        attr = ua.AttributeIds.Value
        hook = self.on_write
        n = 0
        for tag, value, status in values:
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            entry = nodes.get(tag)
            if entry is None:
                continue
            nodeid, vtype = entry
            if status & 0x80000000:  # Bad: no value (the address space would null it anyway)
                variant = ua.Variant(None, ua.VariantType.Null, None, False)
            elif value is None:
                continue
            else:
                try:
                    variant = ua.Variant(_CAST[vtype](value), vtype, None, False)
                except (TypeError, ValueError, OverflowError):  # e.g. NaN for an integer tag
                    continue
            dv = _SharedDataValue(variant, ua.StatusCode(status) if status else _GOOD, source_time, server_time)
            await aspace.write_attribute_value(nodeid, attr, dv)
            self.writes += 1
            if hook is not None:
                hook(tag, None if status & 0x80000000 else value, status, source_time)
