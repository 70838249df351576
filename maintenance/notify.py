"""Alert notifications to MQTT (paho-mqtt) and to webhooks (httpx).

Notifications are a courtesy copy: the ``alerts`` table is the record. A notifier never blocks the
alert path for long: each send has a timeout, webhooks are retried a few times with back-off, and the
outcome is returned so the caller can log it in ``alert_events`` (``notified`` / ``notify_failed``). A failure
the receiver made on purpose (HTTP 4xx) is marked `Refused`: the gateway sends other failed changes again
once the receiver is back (edge/analytics.py), not these.

Webhooks use **httpx** (already a pinned dependency): its async client fits the gateway's event loop
without a thread per request, pools connections, and has per-request timeouts; ``urllib`` would block
the loop or need a thread pool for the same.

MQTT (maintenance/notify_mqtt.py, plain or TLS) uses paho-mqtt 2 with QoS 1 on ``<prefix>/<asset>/<kind>`` (not
retained: a board that connects later reads the table, not the broker; ``#``, ``+`` and ``/`` in the asset or kind
become ``_`` in the topic). Payload (both channels): JSON with ``event`` (raised, updated, acknowledged, escalated,
cleared, reopened; acknowledged and cleared by a person in the console are sent once the gateway's sync sees them,
``detail.by`` naming who cleared it), ``notification_id`` (the same for every copy of one change: receivers drop
repeats by it), the alert's fields and its evidence, and ``detail`` (an escalation: ``unacknowledged_s``, and
``acknowledgement`` ``"unverified"`` when the gateway could not ask the database whether someone had acknowledged
it meanwhile).

**Signed webhooks** (optional, ``signing_secret``): Standard Webhooks 1.0 (standardwebhooks.com; Svix's and Make's
scheme, with reference verifiers for Python, JavaScript, Go, Rust and more) rather than one of our own. Each POST
carries ``webhook-id`` (the ``notification_id``, the same for every copy of one change), ``webhook-timestamp``
(Unix seconds of this attempt: a retry is signed anew) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` per secret, space separated, so during a rotation the new and the previous secret both sign.
The secret is ``whsec_<base64 of 24 to 64 random bytes>``, as the standard serialises it, read from a reference.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from edge.errors import ConfigError
from edge.paths import REF
from edge.secrets import SecretRef, is_reference, resolve_secret
from edge.timeouts import within
from edge.tls import Tls, tls_context
from maintenance.alerts import AlertChange

log = logging.getLogger(__name__)

# Header names whose value is a credential whatever it holds: only a reference is accepted for them.
_CREDENTIAL_HEADER = re.compile(r"(^|[-_])(authorization|auth|cookie|token|secret|password|passwd|api[-_]?key|key)"
                                r"($|[-_])", re.IGNORECASE)


def _url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a webhook address (never repeating a password in it), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


SIGNING_PREFIX = "whsec_"
# Standard Webhooks 1.0: a symmetric secret is random, at least 24 bytes and at most 512 bits.
SIGNING_KEY_BYTES = (24, 64)
SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>`` (padding optional, as the reference libraries
    take it); ValueError saying what is wrong with it, never repeating it."""
    if not secret.startswith(SIGNING_PREFIX):
        raise ValueError(f"does not start with {SIGNING_PREFIX}")
    b64 = secret[len(SIGNING_PREFIX):]
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"is not base64 after {SIGNING_PREFIX}") from None
    low, high = SIGNING_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"holds {len(key)} bytes after {SIGNING_PREFIX}, not {low} to {high}")
    return key


def signed_headers(keys: tuple[bytes, ...], msg_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt to send ``body`` now: ``webhook-id``, ``webhook-timestamp`` (Unix
    seconds) and ``webhook-signature``, one ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per key."""
    timestamp = str(int(time.time()))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signature = " ".join("v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
                         for k in keys)
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: where it goes, without credentials, path or query."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


# A receiver's label on /metrics, in logs and alert_events, and its key in the outbox file (`maintenance.outbox`):
# derived from the address, a fixed URL or broker lost every notification waiting for the receiver (its backlog
# belonged to the old address); a chosen name keeps them.
ReceiverName = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:/-]*$")]
RECEIVER_NAME_HELP = ("the receiver's name in metrics, logs and the outbox; with one, a changed address keeps the "
                      "notifications waiting for it (without, the name comes from the address)")


class WebhookConfig(BaseModel):
    """One webhook receiver. ``url`` is the address, or a reference (``env:NAME`` / ``file:PATH``) to one when it
    carries a credential (a token in its path or query, ``user:password@``); a header value may be a reference too,
    and must be one for a credential header (``Authorization``, ``X-Api-Key``, ...). Resolved at start-up
    (`target`), never shown: logs name the receiver by the reference and its ``scheme://host:port``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: Annotated[str, REF] = Field(description="http(s) URL, or env:NAME / file:PATH holding it")
    name: ReceiverName | None = Field(None, description=RECEIVER_NAME_HELP)
    events: tuple[str, ...] = ("raised", "acknowledged", "escalated", "cleared")
    timeout_s: float = Field(5.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)
    probe: bool = Field(False, description="at the gateway's start, one HEAD request to the URL (no alert is sent): an "
                                           "unreachable host, a refused CA or a 401/403 show at commissioning. Off "
                                           "by default: a receiver may count, log or refuse any request")
    headers: dict[str, Annotated[str, REF]] = Field(default_factory=dict, description="values may be env:NAME or "
                                                                                      "file:PATH references")
    signing_secret: SecretRef | None = Field(None, description="a reference to a Standard Webhooks secret "
                                                               "(whsec_<base64>): each POST is signed "
                                                               "(webhook-id, webhook-timestamp, webhook-signature)")
    signing_secret_previous: SecretRef | None = Field(None, description="during a rotation, the secret being "
                                                                        "replaced: it signs too, so a receiver "
                                                                        "still holding it verifies")
    tls: Tls | None = Field(None, description="for an https:// receiver: the CA that signed its certificate "
                                              "(ca_file; a plant CA), a client certificate (mutual TLS). Without "
                                              "it the public CAs of certifi are trusted, as httpx does")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if is_reference(v):
            return v
        problem = _url_problem(v)
        if problem:
            raise ValueError(problem + " (or an env:NAME / file:PATH reference to one)")
        if urlsplit(v).password is not None:
            raise ValueError("contains a password (user:password@); put the whole URL in an env:NAME or file:PATH "
                             "reference")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if _CREDENTIAL_HEADER.search(name) and not is_reference(value):
                raise ValueError(f"{name}: a credential; give it as a reference env:NAME or file:/path, never the "
                                 "value itself")
        return v

    @model_validator(mode="after")
    def _rotation(self) -> WebhookConfig:
        if self.signing_secret_previous is not None and self.signing_secret is None:
            raise ValueError("signing_secret_previous is only for a rotation: give the new secret as signing_secret")
        return self

    def target(self, where: str = "webhook") -> WebhookTarget:
        """The URL, headers and signing keys with their references resolved; `ConfigError` naming ``where`` and the
        key (never the value) of each that cannot be read or is not usable."""
        problems: list[str] = []

        def resolved(key: str, value: str) -> str:
            if not is_reference(value):
                return value
            try:
                return resolve_secret(value, where=f"{where}.{key}")
            except ConfigError as exc:
                problems.extend(exc.problems)
                return ""

        url = resolved("url", self.url)
        problem = _url_problem(url) if url else None
        if problem:
            problems.append(f"{where}.url: the value of {self.url} {problem}")
        headers = {k: resolved(f"headers.{k}", v) for k, v in self.headers.items()}
        signing: dict[str, str] = {}
        keys: list[bytes] = []
        for key in ("signing_secret", "signing_secret_previous"):
            ref = getattr(self, key)
            secret = resolved(key, ref) if ref else ""
            if not secret:
                continue
            signing[key] = secret
            try:
                keys.append(signing_key(secret))
            except ValueError as exc:
                problems.append(f"{where}.{key}: the value of {ref} is not a Standard Webhooks secret ({exc}): give "
                                f"{SIGNING_PREFIX} followed by the base64 of {SIGNING_KEY_BYTES[0]} to "
                                f"{SIGNING_KEY_BYTES[1]} random bytes (maintenance/README.md)")
        clash = sorted(k for k in self.headers if k.lower() in SIGNED_HEADERS) if self.signing_secret else []
        if clash:  # the signature's own would replace them unseen
            problems.append(f"{where}.headers: {', '.join(clash)}: the signature's own headers, which signing_secret "
                            "sets: leave them out")
        context = None
        try:
            context = tls_context(self.tls, f"{where}.tls")
        except ConfigError as exc:
            problems.extend(exc.problems)
        if self.tls is not None and url and urlsplit(url).scheme != "https":
            problems.append(f"{where}.tls: the url is not https://: its TLS settings would not be used")
        if len(keys) == 2 and keys[0] == keys[1]:
            problems.append(f"{where}.signing_secret_previous: {self.signing_secret_previous} holds the same secret "
                            f"as signing_secret ({self.signing_secret}): a rotation needs the new secret in "
                            "signing_secret")
        if problems:
            raise ConfigError(problems)
        parts = urlsplit(url)
        if is_reference(self.url):
            name = f"webhook {self.url} ({_origin(url)})"
        else:
            # Not the path even when it is written in the file: a Slack-style URL's path is its token, and the name
            # is the receiver label on /metrics and in logs and alert_events. A hash of it keeps two receivers on
            # one host apart.
            name = f"webhook {_origin(url)} #{hashlib.sha256(parts.path.encode()).hexdigest()[:8]}"
        # What an error message must never repeat: the URL and its parts that may be a credential, and every
        # header value read from a reference, and the signing secrets.
        secrets = [url, parts.password, parts.query, parts.path,
                   *(headers[k] for k, v in self.headers.items() if is_reference(v)), *signing.values()]
        return WebhookTarget(url=url, headers=headers, name=name, signing_keys=tuple(keys),
                             secrets=tuple(s for s in secrets if s and len(s) > 1), tls=context)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A webhook's resolved address, headers and signing keys (secrets: never in its repr) and its name for logs."""

    url: str = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    name: str
    signing_keys: tuple[bytes, ...] = field(repr=False, default=())  # current first; none: not signed
    secrets: tuple[str, ...] = field(repr=False, default=())
    tls: ssl.SSLContext | None = field(repr=False, default=None)  # `edge.tls.tls_context` of ``tls``; None: httpx's

    def scrub(self, text: str) -> str:
        """``text`` (an error message) without any of the resolved secrets."""
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text


class Later(str):
    """The detail of a failure whose receiver said when to try again (HTTP 429 or 503 with ``Retry-After``):
    ``retry_after_s``. The outbox waits that long (at most `RETRY_AFTER_MAX_S`) before the next try."""

    retry_after_s: float = 0.0


RETRY_AFTER_MAX_S = 600.0  # a Retry-After longer than this (or a date far ahead) is not waited for in full


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), at most `RETRY_AFTER_MAX_S`;
    None when absent or not understood."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - time.time()), RETRY_AFTER_MAX_S)


class Refused(str):
    """The detail of a failure that sending the change again cannot fix (the receiver refused the request:
    HTTP 4xx other than 408/429). The gateway's outbox retries other failures (the receiver is down) until
    they are delivered, and goes on past these."""


def wanted(events: tuple[str, ...], ch: AlertChange) -> bool:
    """Whether a receiver taking ``events`` gets ``ch``. An "updated" that raised the severity (a vibration going
    from zone C to D: ``detail.severity_was``) goes to receivers of "escalated" too: webhooks take no "updated" by
    default (every flap is one), so the pager heard of a machine entering zone D only at the next escalation, an
    hour later.

    A "reopened" alert (its condition back soon after it cleared, `maintenance.alerts`) goes to receivers of
    "updated" (one more occurrence of an alert they know), and to receivers of "raised" while nobody has acknowledged
    it (the pager that closed the incident at "cleared" opens it again: same alert id, same incident); an
    acknowledged one does not page again (the crew has it), unless the receiver asks for "reopened".

    An "updated" whose condition got worse while the alert's severity had already risen by an escalation
    (``detail.condition_was``: a warning escalated to critical, then zone D) goes to receivers of "escalated" too."""
    if ch.event == "reopened":
        return ("reopened" in events or "updated" in events
                or ("raised" in events and ch.alert.acknowledged_at is None)
                or ("escalated" in events and "severity_was" in ch.detail))
    worse = "severity_was" in ch.detail or "condition_was" in ch.detail
    return ch.event in events or (ch.event == "updated" and worse and "escalated" in events)


def notification_id(ch: AlertChange) -> str:
    """The same for every copy of one change (retries, a re-send after a restart), different for two changes: what
    the alert is, what happened to it and when, hashed. Receivers drop repeats by it (payload ``notification_id``,
    webhook header ``Idempotency-Key``)."""
    a = ch.alert
    when = a.cleared_at if ch.event == "cleared" else ch.escalated_at if ch.event == "escalated" else ch.last_seen
    key = "|".join(str(x) for x in (a.id, ch.event, ch.escalation_level, ch.occurrences, a.severity,
                                    (when or a.raised_at).timestamp()))  # the same instant in any time zone
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def payload(ch: AlertChange) -> bytes:
    body = {"event": ch.event, "notification_id": notification_id(ch), "occurrences": ch.occurrences,
            "escalation_level": ch.escalation_level, **asdict(ch.alert), "detail": ch.detail}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class WebhookNotifier:
    """POSTs the JSON payload, signed when the webhook has a ``signing_secret``; 2xx is success, a 3xx or a 4xx but
    408/429 is `Refused`, anything else (5xx, no answer within ``timeout_s``) is tried ``attempts`` times."""

    RETRY_BASE_S = 0.5

    def __init__(self, cfg: WebhookConfig, target: WebhookTarget | None = None) -> None:
        """``target``: the resolved address (`WebhookConfig.target`, done at start-up by the gateway); resolved
        here when not given (`ConfigError` when a reference cannot be read)."""
        self.cfg = cfg
        self._target = target or cfg.target()
        self.name = cfg.name or self._target.name
        if cfg.tls is not None and cfg.tls.insecure:  # a choice to make knowingly, said at each start and reload
            log.warning("%s: tls.insecure = true: the receiver's host name is not checked against its certificate, "
                        "so any certificate its CA signed is taken for the receiver's", self.name,
                        extra={"event": "webhook_tls_insecure"})
        self.client = httpx.AsyncClient(timeout=cfg.timeout_s, headers=self._target.headers,
                                        verify=self._target.tls if self._target.tls is not None else True)

    def __repr__(self) -> str:
        return f"<WebhookNotifier {self.name}>"

    async def send(self, ch: AlertChange) -> tuple[bool, str]:
        if not wanted(self.cfg.events, ch):
            return True, "skipped"
        error = ""
        body, msg_id = payload(ch), notification_id(ch)
        for attempt in range(self.cfg.attempts):
            headers = {"content-type": "application/json", "idempotency-key": msg_id}
            if self._target.signing_keys:
                # Signed at each attempt: the timestamp is the attempt's, so a receiver's replay window (5 min in the
                # reference verifiers) takes a retry or an outbox re-send hours later.
                headers |= signed_headers(self._target.signing_keys, msg_id, body)
            try:
                # The whole attempt within timeout_s: httpx's timeout is per read, so a receiver sending its answer a
                # byte at a time held this receiver's queue for as long as it went on.
                status, location, wait = await within(self._post(body, headers), self.cfg.timeout_s)
                if 200 <= status < 300:
                    return True, f"HTTP {status}"
                error = f"HTTP {status}"
                if status in (429, 503) and wait is not None:
                    # The receiver said when (a rate limit, a maintenance): trying again at 0.5 s and 1 s hit the
                    # limit again and counted against it. The outbox waits that long, then sends it again.
                    error = Later(f"{error}, Retry-After {wait:g} s")
                    error.retry_after_s = wait
                    break
                if 300 <= status < 400:
                    # Not followed (the body, signature and credential headers would go to another address) and
                    # not sent again: the same answer would come for good, holding every later change behind it.
                    error = Refused(f"{error}: the receiver redirects{location}; set url to the address it "
                                    "redirects to")
                elif 400 <= status < 500 and status not in (408, 429):
                    error = Refused(error)
                if isinstance(error, Refused):
                    break
            except TimeoutError:
                error = f"no answer within timeout_s = {self.cfg.timeout_s:g} s"
            except (httpx.HTTPError, OSError) as exc:  # ssl.SSLError (a refused client certificate) escapes httpx
                # httpx may quote the URL (an invalid one, a redirect): the detail goes to logs and alert_events.
                error = self._target.scrub(f"{type(exc).__name__}: {exc}")
            if attempt + 1 < self.cfg.attempts:
                await asyncio.sleep(self.RETRY_BASE_S * 2**attempt)
        log.warning("%s failed for alert %s: %s", self.name, ch.alert.id, error)
        return False, error

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, float | None]:
        """POST ``body``; the status, for a redirect `` to <scheme://host:port>`` of its Location, and the seconds of
        a ``Retry-After``. The answer's body is not read: only the status counts, and a receiver's large or endless
        one held the send."""
        async with self.client.stream("POST", self._target.url, content=body, headers=headers) as r:
            return r.status_code, self._redirected_to(r), retry_after_s(r.headers.get("retry-after"))

    def _redirected_to(self, r: httpx.Response) -> str:
        """`` to <scheme://host:port>`` of a redirect's Location, or ""; only where it goes: its path or query may
        be a token."""
        location = r.headers.get("location", "")
        if not location:
            return ""
        try:
            return f" to {_origin(urljoin(self._target.url, location))}"
        except ValueError:  # a Location that is no URL
            return " (to an invalid Location)"

    @property
    def probes(self) -> bool:
        return self.cfg.probe

    async def probe(self) -> str | None:
        """With ``probe = true``: one HEAD request to the URL; why it failed, or None (any HTTP answer but 401, 403,
        407 and a redirect means the address, the TLS and the route are right). Without: None, nothing sent. No fake
        alert is ever POSTed: a pager would page for it."""
        if not self.cfg.probe:
            return None
        try:
            r = await self.client.head(self._target.url)
        except (httpx.HTTPError, OSError) as exc:
            return self._target.scrub(f"{type(exc).__name__}: {exc}")
        if r.status_code in (401, 403, 407):
            return f"HTTP {r.status_code} to a HEAD request: are its credentials (headers, URL token) refused?"
        if 300 <= r.status_code < 400:  # every alert would be refused the same way
            return (f"HTTP {r.status_code} to a HEAD request: the receiver redirects{self._redirected_to(r)}; set "
                    "url to the address it redirects to")
        return None

    async def aclose(self) -> None:
        await self.client.aclose()
