"""Opening an asyncua session as configured: security, identity, and a limit on every step.

Used by the collector and by ``valvoja opcua browse``. With a security policy other than None the
sequence is: make or load the gateway's own certificate; ask the server for its endpoints (the one
request OPC UA allows without security); pick the endpoint with exactly the configured policy and
mode (none: refuse, never a weaker one); check the server certificate against the trust list
(`collectors.opcua.security`); then open the secure channel and session with that certificate
pinned, so the session cannot be made with any other.

After a lost connection `reactivate` re-opens the channel of the same `Client` (after the same endpoint, identity
and trust checks) and re-activates its session with the existing authentication token (OPC UA Part 4 §6.7), so
the server's subscriptions and their queued notifications survive a short network cut. `detach` is its other
half: it stops asyncua's background tasks and drops the socket without closing the session.

A restarted gateway resumes the same way: `SessionTicket` is what ActivateSession needs from the process that
created the session (authentication token, the server nonce the next client signature covers, the user token
policies), `ticket` takes it from a live client and `restore` makes a client holding it, for `reactivate`.
The private asyncua 2.1.0 names that sessions and their re-activation rely on are used in this module (the
README lists them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from cryptography.hazmat.primitives import serialization

from collectors.opcua.config import Connection
from collectors.opcua.security import (
    MODES,
    POLICIES,
    Pki,
    SecurityError,
    application_uris,
    check_private_key,
    check_server_certificate,
    check_server_identity,
    ensure_own_certificate,
    load_cert,
    select_endpoint,
    thumbprint,
)
from edge.timeouts import within

log = logging.getLogger(__name__)

# The gateway's own certificate is named in a warning this long before it expires (once a day): a site-issued one
# (a year is common) needs a new certificate and key, a generated one is re-made at expiry and must be trusted anew.
OWN_EXPIRY_WARNING = timedelta(days=30)

# The largest message (a response or a notification) taken from a server, and its most chunks (8 KiB, the smallest a
# server may use). asyncua asks for no limit in its Hello and then takes whatever the server's Acknowledge says (0:
# none), so a faulty or hostile server could make the gateway receive and hold any amount (a 20 MB string value was
# taken whole and became a reading). A bigger message ends the connection (BadRequestTooLarge), logged and counted
# as `message_too_large`; the collector connects again with back-off.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_CHUNKS = MAX_MESSAGE_BYTES // 8192

# The server's OperationLimits (OPC UA Part 5 §6.3.11) that the collector's batched requests must respect: a server
# answers a bigger request with BadTooManyOperations (node-opcua does), refusing every item of it.
OPERATION_LIMITS = {
    "monitored_items": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "translate": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    "browse": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
    "history_read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
}


async def operation_limits(client: Client) -> dict[str, int]:
    """The server's operation limits by `OPERATION_LIMITS` key; a limit it does not expose (no such node, 0 = no
    limit, unreadable) is left out. Connection errors propagate. MaxNodesPerRead is read first, alone, and the others
    in requests no bigger than it: a server that takes 4 nodes per Read refused the five of them in one request, and
    every limit stayed unknown."""
    out = await _limits(client, ["read"])
    rest = [k for k in OPERATION_LIMITS if k != "read"]
    per = out.get("read", len(rest))
    for k in range(0, len(rest), per):
        out.update(await _limits(client, rest[k:k + per]))
    return out


async def _limits(client: Client, keys: list[str]) -> dict[str, int]:
    params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=ua.NodeId(OPERATION_LIMITS[k]),
                                                           AttributeId=ua.AttributeIds.Value) for k in keys])
    try:
        values = await client.uaclient.read(params)
    except ua.UaStatusCodeError:  # a server that refuses even this: these limits unknown, as before
        return {}
    out = {}
    for key, dv in zip(keys, values, strict=True):
        good = dv.StatusCode is None or dv.StatusCode.is_good()
        v = dv.Value.Value if good and dv.Value is not None else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[key] = v
    return out


def too_large(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it came from) is asyncua refusing a message over `MAX_MESSAGE_BYTES`."""
    while exc is not None:
        if isinstance(exc, ua.UaStatusCodeError) and exc.code == ua.StatusCodes.BadRequestTooLarge:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and errors (asyncua raises bare AssertionError on refused certificates)."""
    if too_large(exc):
        return (f"BadRequestTooLarge (a message over a size limit: from the server, over the gateway's "
                f"{MAX_MESSAGE_BYTES >> 20} MiB, e.g. a huge string, byte string or array value; or a request over "
                "the server's)")
    if isinstance(exc, ua.UaStatusCodeError):
        return ua.StatusCode(exc.code).name
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def default_application_uri(name: str) -> str:
    return f"urn:valvoja:{socket.gethostname() or 'gateway'}:{name}"


def pki_for(conn: Connection, state_dir: Path | str | None) -> Pki:
    if conn.pki_dir is not None:
        return Pki(Path(conn.pki_dir))
    if state_dir is None:
        raise SecurityError("security_policy needs pki_dir (no state directory to keep certificates in)")
    return Pki(Path(state_dir) / "pki")


def _first_cert(der: bytes) -> bytes:
    """The leading certificate of a DER chain (servers may send their chain concatenated)."""
    return der[:int.from_bytes(der[2:4], "big") + 4] if len(der) > 4 and der[1] == 0x82 else der


class SessionGone(Exception):
    """The server refused to re-activate the session (expired, closed, or the server restarted)."""


@dataclass(frozen=True, slots=True)
class SessionTicket:
    """What re-activating a session needs besides the configuration (own certificate and key, identity): all a
    restarted gateway has of the session that an earlier process created. The token is a credential."""

    authentication_token: str  # NodeId text
    server_nonce: str | None  # hex; the last ActivateSession's: the next client signature covers it
    timeout_ms: float  # as the server revised it
    # (PolicyId, UserTokenType, SecurityPolicyUri) of the endpoint's user token policies: the identity token
    # names its policy.
    user_token_policies: list[tuple[str | None, int, str | None]] = field(default_factory=list)
    session_id: str | None = None  # for logs; the token is what identifies the session to the server


async def _server_value(client: Client, node: int):
    """The value of the standard node ``node`` (an ObjectIds number) of the server; None when Bad or empty."""
    rv = ua.ReadValueId(NodeId=ua.NodeId(node), AttributeId=ua.AttributeIds.Value)
    [dv] = await client.uaclient.read(ua.ReadParameters(NodesToRead=[rv]))
    good = dv.StatusCode is None or dv.StatusCode.is_good()
    return dv.Value.Value if good and dv.Value is not None else None


async def server_time(client: Client) -> datetime | None:
    """The server's ServerStatus.CurrentTime (None if it gives none): the end of a backfill from its history, in the
    server's clock rather than the gateway's."""
    value = await _server_value(client, ua.ObjectIds.Server_ServerStatus_CurrentTime)
    return value if isinstance(value, datetime) else None


async def namespace_array(client: Client) -> list[str] | None:
    """The server's NamespaceArray (index -> namespace URI; None if it gives none): what ``nsu=`` node ids are
    resolved with. A server may number its namespaces differently after a restart (OPC UA Part 4 §5.4: indexes are
    valid for a session), so it is read at every session."""
    value = await _server_value(client, ua.ObjectIds.Server_NamespaceArray)
    return [str(u) for u in value] if isinstance(value, list) else None


class _Client(Client):
    """asyncua's `Client`, keeping the session id CreateSession returned (its `connect()` drops it)."""

    session_id: ua.NodeId | None = None
    refused_message: BaseException | None = None  # the BadRequestTooLarge of a message over MAX_MESSAGE_BYTES

    async def create_session(self) -> ua.CreateSessionResult:
        result = await super().create_session()
        self.session_id = result.SessionId
        return result

    async def send_hello(self) -> None:
        """Hello with the gateway's receive limits; kept as the ceiling whatever the server's Acknowledge says."""
        self.max_messagesize, self.max_chunkcount = MAX_MESSAGE_BYTES, MAX_CHUNKS
        await super().send_hello()
        # asyncua 2.1.0 replaces the connection's limits with the Acknowledge's values (0 meaning none).
        protocol = getattr(self.uaclient, "protocol", None)
        limits = getattr(getattr(protocol, "_connection", None), "_limits", None)
        if limits is not None:
            for attr, ours in (("max_message_size", MAX_MESSAGE_BYTES), ("max_chunk_count", MAX_CHUNKS)):
                if not 0 < getattr(limits, attr, 0) <= ours:
                    setattr(limits, attr, ours)
        # A message over the limit fails the pending requests with BadRequestTooLarge and closes the socket; the
        # loss may reach the collector first as "transport lost", so the refusal is noted here for its message.
        fail = getattr(protocol, "_fail_all_pending", None)
        if fail is not None:
            def noted(exc: BaseException, fail=fail) -> None:
                if too_large(exc):
                    self.refused_message = exc
                fail(exc)

            protocol._fail_all_pending = noted


@dataclass(frozen=True, slots=True)
class Secrets:
    """The resolved secrets of a `Connection` (never in the configuration file itself)."""

    password: str | None = None
    key_password: str | None = None
    user_key_password: str | None = None


def resolve_secrets(conn: Connection, where: Callable[[str], str]) -> Secrets:
    """Resolve the connection's secret references (``env:`` / ``file:``) and check that its private keys can be
    read with them: `ConfigError` naming ``where(setting)`` otherwise, at start-up rather than at every
    reconnect."""
    from edge.errors import ConfigError
    from edge.secrets import resolve_secret

    def secret(key: str) -> str | None:
        ref = getattr(conn, key)
        return None if ref is None else resolve_secret(ref, where=where(key))

    out = Secrets(secret("password"), secret("private_key_password"), secret("user_private_key_password"))
    for key, pw in (("private_key", out.key_password), ("user_private_key", out.user_key_password)):
        if getattr(conn, key) is not None:
            try:
                check_private_key(Path(getattr(conn, key)), pw, setting=f"{key}_password")
            except SecurityError as exc:
                raise ConfigError(f"{where(key)}: {exc}") from None
    return out


class ClientOpener:
    """Builds and connects `asyncua.Client`s for one `Connection`; keeps what it learnt for messages."""

    def __init__(self, conn: Connection, *, name: str, state_dir: Path | str | None = None,
                 secrets: Secrets | None = None) -> None:
        self.conn = conn
        self.name = name
        self.state_dir = state_dir
        self.secrets = secrets or Secrets()
        self.own_cert: Path | None = None
        self.application_uri = conn.application_uri
        self.server_thumbprint: str | None = None
        self._warned_plaintext = False
        self._expiry_warned: dict[str, str] = {}  # own certificate thumbprint -> day its expiry was last logged
        if not conn.check_host_name and conn.security_policy != "None":  # a choice to make knowingly, and see
            log.warning("%s: check_host_name = false: the server's certificate is not checked for the host of %s, so "
                        "a certificate trusted for another server (or issued by a CA in trusted/) is taken for this "
                        "one", name, conn.endpoint, extra={"event": "opcua_host_name_unchecked"})

    def new_client(self) -> Client:
        conn = self.conn
        client = _Client(conn.endpoint, timeout=conn.request_timeout_s, watchdog_intervall=conn.watchdog_interval_s)
        client.session_timeout = int(conn.session_timeout_s * 1000)
        client.name = client.description = f"Valvoja gateway ({self.name})"
        client.product_uri = "urn:valvoja"
        if conn.username is not None:
            client.set_user(conn.username)
            client.set_password(self.secrets.password or "")
        return client

    async def connect(self, client: Client) -> None:
        """Secure (as configured) and connect ``client``; NotConnected-style errors as exceptions.

        The whole sequence is limited by ``connect_timeout_s`` (asyncua's ``connect()`` can wait for
        ever on a peer that accepts TCP and never answers). Raises `SecurityError` for anything the
        operator must fix (untrusted certificate, missing endpoint), TimeoutError, or the error of the
        failed step.
        """
        await within(self._connect(client), self.conn.connect_timeout_s)

    async def _identity(self, client: Client) -> None:
        conn = self.conn
        if conn.user_certificate is not None and client.user_certificate is None:
            # X.509 user identity: the session is activated with it
            await client.load_client_certificate(conn.user_certificate)
            await client.load_private_key(Path(conn.user_private_key), self.secrets.user_key_password)

    async def _connect(self, client: Client) -> None:
        conn = self.conn
        await self._identity(client)
        if conn.security_policy == "None":
            client.application_uri = self.application_uri or default_application_uri(self.name)
            if conn.username is not None and not self._warned_plaintext:
                self._warned_plaintext = True
                log.warning("%s: username/password on %s with security_policy None: the server may receive "
                            "the password unencrypted", self.name, conn.endpoint)
            await client.connect(auto_reconnect=False)
            return
        await self._secure(client)
        await self._refusals(client, client.connect(auto_reconnect=False))

    async def _refusals(self, client: Client, step) -> None:
        """Await ``step`` (opening a secure channel and session); the server refusing the gateway's certificate
        is raised as a `SecurityError` naming it."""
        conn = self.conn
        try:
            await step
        except (AssertionError, ua.UaStatusCodeError) as exc:
            code = getattr(exc, "code", None)
            if isinstance(exc, AssertionError) or (code is not None and ua.StatusCode(code).name.startswith(
                    ("BadSecurityChecksFailed", "BadCertificate", "BadSecurityPolicyRejected"))):
                invalid = self._own_invalid()
                if invalid:  # trusted or not, the server refuses a certificate out of its validity period
                    raise SecurityError(f"{conn.endpoint}: the server refused the secure session ({describe(exc)}): "
                                        f"{invalid}") from exc
                raise SecurityError(
                    f"{conn.endpoint}: the server refused the secure session ({describe(exc)}); most likely it does "
                    f"not trust the gateway's certificate {self.own_cert} (thumbprint {self._own_thumbprint()}, "
                    f"URI {client.application_uri}): add it to the server's trusted certificates") from exc
            raise

    async def reactivate(self, client: Client) -> None:
        """Re-open ``client``'s secure channel and re-activate its existing session (after `detach`).

        The server's certificate goes through the same checks as on a first connect (endpoint with exactly the
        configured policy and mode, identity, trust list, revocation, pin). Limited by ``connect_timeout_s``.
        Raises `SessionGone` when the server refuses the session (then a new one is needed), else like `connect`.
        """
        await within(self._reactivate(client), self.conn.connect_timeout_s)

    async def _reactivate(self, client: Client) -> None:
        await self._identity(client)  # a restored client has not loaded it yet
        if self.conn.security_policy != "None":
            none = security_policies.SecurityPolicyNone()  # GetEndpoints without security, as on a first connect
            client.security_policy = none
            client.uaclient.set_security(none)
            await self._secure(client)
            await self._refusals(client, self._reopen(client))
        else:
            await self._reopen(client)

    @staticmethod
    async def _reopen(client: Client) -> None:
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            client.uaclient.session.rebind_authentication_token()
            try:
                await client._activate_with_credentials()  # asyncua 2.1.0: what its own reconnect uses
            except ua.UaStatusCodeError as exc:
                raise SessionGone(describe(exc)) from exc
        except BaseException:
            client.disconnect_socket()
            raise

    @staticmethod
    def ticket(client: Client) -> SessionTicket:
        """The session of ``client`` (connected or re-activated) as a restarted gateway needs it."""
        session_id = getattr(client, "session_id", None)
        return SessionTicket(
            authentication_token=client.uaclient.session.authentication_token.to_string(),
            server_nonce=client._server_nonce.hex() if client._server_nonce else None,  # asyncua 2.1.0
            timeout_ms=float(client.session_timeout),
            user_token_policies=[(p.PolicyId, int(p.TokenType), p.SecurityPolicyUri) for p in client._policy_ids],
            session_id=session_id.to_string() if session_id is not None else None)

    def restore(self, ticket: SessionTicket) -> Client:
        """A new client holding the session of ``ticket`` (made by an earlier process), for `reactivate`."""
        client = self.new_client()
        client.session_id = ua.NodeId.from_string(ticket.session_id) if ticket.session_id else None
        client.session_timeout = ticket.timeout_ms
        client.uaclient.session.restore_authentication_token(ua.NodeId.from_string(ticket.authentication_token))
        client._server_nonce = bytes.fromhex(ticket.server_nonce) if ticket.server_nonce else None  # asyncua 2.1.0
        client._policy_ids = [ua.UserTokenPolicy(PolicyId=pid, TokenType=ua.UserTokenType(kind), SecurityPolicyUri=uri)
                              for pid, kind, uri in ticket.user_token_policies]
        return client

    @staticmethod
    async def server_started(client: Client) -> datetime | None:
        """The server's ServerStatus.StartTime (None if it gives none): a session re-activated on a server that
        started since is not the one that was saved (asyncua's server numbers authentication tokens from the same
        start after a restart, so an old token can name another client's new session)."""
        value = await _server_value(client, ua.ObjectIds.Server_ServerStatus_StartTime)
        return value if isinstance(value, datetime) else None

    @staticmethod
    async def service_level(client: Client) -> int:
        """The server's ServiceLevel (i=2267; sub-ranges OPC UA Part 4 §6.6.2.4.2: 0 maintenance, 1 no data, 2-199
        degraded, 200-255 healthy). A server that gives none (unreadable, Bad) counts as 255: it claims no
        redundancy, so nothing says it is less than healthy."""
        value = await _server_value(client, ua.ObjectIds.Server_ServiceLevel)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255 else 255

    @staticmethod
    def watch(client: Client, sub) -> None:
        """Register ``sub`` (a `Subscription` not made by ``client``) like `Client.create_subscription` does, so
        asyncua's stale-subscription watchdog re-creates it if the server stops publishing while the link stays
        up."""
        client._subscriptions.append(sub)

    @staticmethod
    def restart_tasks(client: Client) -> None:
        """Start what `Client.connect` starts after a re-activation: channel renewal, the connection supervisor
        (server-state probe, `connection_lost_callback`) and the stale-subscription watchdog."""
        client._start_renew_loop()
        client._supervisor_task = asyncio.create_task(client._connection_supervisor())
        client._stale_watchdog_task = asyncio.create_task(client._stale_watchdog_loop())

    @staticmethod
    async def detach(client: Client, timeout_s: float) -> None:
        """Stop asyncua's background tasks (publish loop included) and drop the socket, keeping the session's
        token and subscriptions for `reactivate`; nothing is sent to the server."""
        session = client.uaclient.session
        tasks = [t for t in (client._supervisor_task, client._stale_watchdog_task, client._renew_channel_task,
                             session._publish_task) if t is not None and t is not asyncio.current_task()]
        client._supervisor_task = client._stale_watchdog_task = client._renew_channel_task = None
        session._publish_task = None
        for task in tasks:
            task.cancel()
        client.disconnect_socket()
        protocol = client.uaclient.protocol  # left open when asyncua only marked the client lost
        if protocol is not None:
            protocol.disconnect_socket()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def _secure(self, client: Client) -> None:
        conn = self.conn
        pki = pki_for(conn, self.state_dir)
        if conn.certificate is not None:
            cert_path, key_path = Path(conn.certificate), Path(conn.private_key or "")
            uris = application_uris(load_cert(cert_path))
            if not uris:
                raise SecurityError(f"certificate {cert_path} has no application URI in its subjectAltName")
            if self.application_uri is not None and self.application_uri not in uris:
                raise SecurityError(f"certificate {cert_path} is for {uris}, not application_uri "
                                    f"{self.application_uri}")
            self.application_uri = self.application_uri or uris[0]
            pki.ensure()
        else:
            self.application_uri = self.application_uri or default_application_uri(self.name)
            cert_path, key_path = await asyncio.to_thread(
                ensure_own_certificate, pki, self.application_uri, f"Valvoja gateway {self.name}")
        self.own_cert = cert_path
        self._warn_expiry(load_cert(cert_path))
        client.application_uri = self.application_uri
        endpoints = await client.connect_and_get_server_endpoints()
        ep = select_endpoint(endpoints, conn.security_policy, conn.security_mode, conn.endpoint)
        if not ep.ServerCertificate:
            raise SecurityError(f"{conn.endpoint}: the {conn.security_policy} endpoint has no server certificate")
        der = _first_cert(ep.ServerCertificate)
        # Identity before trust: trust on first use must never pin a certificate that is not this server's.
        check_server_identity(load_cert(der), endpoint=conn.endpoint,
                              server_uri=ep.Server.ApplicationUri if ep.Server else None,
                              check_host_name=conn.check_host_name)
        cert = check_server_certificate(pki, der, endpoint=conn.endpoint, trust_on_first_use=conn.trust_on_first_use)
        self.server_thumbprint = thumbprint(cert)
        own_der = load_cert(cert_path).public_bytes(serialization.Encoding.DER)
        key_ext = "pem" if key_path.read_bytes().lstrip().startswith(b"-----BEGIN") else "der"
        await client.set_security(POLICIES[conn.security_policy], own_der,
                                  uacrypto.CertProperties(str(key_path), extension=key_ext,
                                                          password=self.secrets.key_password),
                                  server_certificate=der, mode=MODES[conn.security_mode])

    def _warn_expiry(self, cert) -> None:
        """Log, once a day, that the gateway's certificate expires within `OWN_EXPIRY_WARNING` or is out of its
        validity period (servers refuse it then, trusted or not)."""
        now = datetime.now(UTC)
        tp, today = thumbprint(cert), f"{now:%Y-%m-%d}"
        if self._expiry_warned.get(tp) == today:
            return
        invalid = self._own_invalid(cert)
        if invalid:
            self._expiry_warned[tp] = today
            log.warning("%s: %s", self.name, invalid, extra={"event": "opcua_own_certificate_expiry"})
        elif cert.not_valid_after_utc - now < OWN_EXPIRY_WARNING:
            self._expiry_warned[tp] = today
            renew = ("a new one is made then, which every server must trust anew: make it now by deleting "
                     f"{self.own_cert} and trust the new one" if self.conn.certificate is None else
                     "give a renewed certificate and private_key before then")
            log.warning("%s: the gateway's certificate %s (thumbprint %s) expires on %s UTC; servers refuse it after "
                        "that: %s", self.name, self.own_cert, tp, f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}", renew,
                        extra={"event": "opcua_own_certificate_expiry"})

    def _own_invalid(self, cert=None) -> str | None:
        """Why the gateway's certificate is out of its validity period (for messages), None while it is valid."""
        try:
            cert = cert or (load_cert(self.own_cert) if self.own_cert else None)
        except (OSError, ValueError):
            return None
        if cert is None:
            return None
        now = datetime.now(UTC)
        span = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        where = f"the gateway's certificate {self.own_cert} (thumbprint {thumbprint(cert)}, valid {span})"
        if now > cert.not_valid_after_utc:
            return (f"{where} expired on {cert.not_valid_after_utc:%Y-%m-%d}: servers refuse it; give a renewed "
                    "certificate and private_key" if self.conn.certificate is not None else
                    f"{where} expired on {cert.not_valid_after_utc:%Y-%m-%d}: servers refuse it")
        if now < cert.not_valid_before_utc:
            return f"{where} is not valid yet: check this machine's clock"
        return None

    def _own_thumbprint(self) -> str:
        try:
            return thumbprint(load_cert(self.own_cert)) if self.own_cert else "?"
        except (OSError, ValueError):
            return "?"
