"""Who is calling, and may they: sessions (browser), API tokens (machines), roles, CSRF.

- Browsers log in with a user name and password and get a session cookie (HttpOnly,
  SameSite=Lax, Secure when the request came over TLS, ``__Host-`` prefix then). The cookie
  holds a random 256-bit id; the database stores its SHA-256 only.
- Machines send ``Authorization: Bearer <token>``; tokens are stored as SHA-256 too and carry
  their own role. Bearer requests need no CSRF token (a browser never adds that header by itself).
- Every state-changing request made with a session cookie must carry the session's CSRF token,
  in the ``X-CSRF-Token`` header (fetch) or a ``csrf_token`` form field (plain HTML forms).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from console.passwords import digest, same_secret
from console.problems import Problem

ROLES = ("viewer", "engineer", "maintenance", "admin")
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "engineer": frozenset({"read", "alerts.write"}),
    "maintenance": frozenset({"read", "predictions.review", "windows.plan"}),
    "admin": frozenset({"read", "alerts.write", "predictions.review", "windows.plan", "users.admin", "models.admin"}),
}
COOKIE = "valvoja_session"
SECURE_COOKIE = "__Host-valvoja_session"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOCK_USER, LOCK_CLIENT = 0x766C6F67, 0x766C6F68  # advisory-lock classes of the log-in limit (two-key form)
RECHECK_S = 5.0  # how long `StillValid` keeps a yes (the live board's session re-check)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: str  # "user" | "token"
    role: str
    user_id: int | None = None
    csrf: str | None = None  # the session's CSRF token; None for bearer tokens
    session: bytes | None = None  # SHA-256 of the session id (sessions) ...
    token: bytes | None = None  # ... or of the API token (tokens)

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """An address as a socket or a proxy wrote it (``::1``, ``[2001:db8::7]:4711``, ``203.0.113.9:4711``), the
    port dropped and an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) as IPv4; None when it
    is not one. Compared and recorded as address objects, one client has one spelling whatever the proxy wrote."""
    text = text.strip()
    if text.startswith("["):  # IPv6 in brackets, maybe with a port: what else is there is not an address
        inside, sep, port = text[1:].partition("]")
        if not sep or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
        text = inside
    elif text.count(":") == 1:  # IPv4:port (an IPv6 address has at least two colons)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    return (addr.ipv4_mapped if isinstance(addr, IPv6Address) else None) or addr


def _trusted(request: Request, addr: IPv4Address | IPv6Address | None) -> bool:
    return addr is not None and any(addr in net for net in request.app.state.config.console.trusted_proxies)


def _peer(request: Request) -> tuple[str, IPv4Address | IPv6Address | None]:
    host = request.client.host if request.client else ""
    return host, _address(host)


def client_address(request: Request) -> str:
    """The caller's address. X-Forwarded-For is believed only from a configured proxy, and read from the right:
    each trusted proxy appends the address it got the request from, so the client is the first entry (from the
    right) that is not itself a trusted proxy; entries further left are whatever the client chose to send."""
    host, peer = _peer(request)
    if not _trusted(request, peer):
        return str(peer) if peer else host
    client = peer
    for entry in reversed(",".join(request.headers.getlist("x-forwarded-for")).split(",")):
        hop = _address(entry)
        if hop is None:
            break  # a malformed hop: nothing left of it can be told from forged
        client = hop
        if not _trusted(request, client):
            break
    return str(client)


def login_client_key(request: Request) -> str:
    """What the log-in limit counts a client by: an IPv4 address, or the /64 network of an IPv6 one. An IPv6
    host is usually given a whole /64 (SLAAC, privacy addresses) and can take a new address per attempt, so
    counting full IPv6 addresses let one client make the per-client limit's number of attempts from each."""
    client = client_address(request)
    addr = _address(client)
    if isinstance(addr, IPv6Address):
        return str(IPv6Network((addr, 64), strict=False))
    return client


def is_tls(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    return (_trusted(request, _peer(request)[1])
            and request.headers.get("x-forwarded-proto", "").lower() == "https")


def cookie_secure(request: Request) -> bool:
    mode = request.app.state.config.console.cookie_secure
    return mode == "always" or (mode == "auto" and is_tls(request))


def session_cookie(request: Request) -> str | None:
    """The session id the request came with: over TLS (`cookie_secure`) the ``__Host-`` cookie only, as a log-in
    over TLS sets it. Taking the plain-named one as well undid the prefix: a cookie a sibling sub-domain or anyone
    on the path of a plain-HTTP request to this host planted (``valvoja_session=<their own session>``) logged a
    browser without a session in as them."""
    return request.cookies.get(SECURE_COOKIE if cookie_secure(request) else COOKIE)


async def _from_token(request: Request, token: str) -> Principal:
    db = request.app.state.db
    row = await db.fetchone(
        "UPDATE console_api_tokens SET last_used_at = now() WHERE token_hash = %s AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now()) RETURNING id, name, role", (digest(token),))
    if row is None:
        raise Problem(401, "API token unknown, revoked or expired", headers={"WWW-Authenticate": "Bearer"})
    return Principal(name=f"token:{row['name']}", kind="token", role=row["role"], token=digest(token))


async def _from_session(request: Request, sid: str) -> Principal | None:
    db = request.app.state.db
    h = digest(sid)
    row = await db.fetchone(
        "UPDATE console_sessions s SET last_seen = now() FROM console_users u "
        "WHERE s.id_hash = %s AND u.id = s.user_id AND s.expires_at > now() AND NOT u.disabled "
        "RETURNING u.id, u.username, u.role, s.csrf_token", (h,))
    if row is None:
        return None
    return Principal(name=row["username"], kind="user", role=row["role"], user_id=row["id"],
                     csrf=row["csrf_token"], session=h)


def credentials_changed() -> None:
    """Call after committing a log-out, a change that ends a user's sessions, or a token revocation: every
    `StillValid` of this process asks the database again at its next check instead of trusting a kept yes."""
    StillValid.generation += 1


class StillValid:
    """Whether the session or token a long-lived response (the alert stream) came with is still good: not logged
    out, expired, revoked, nor its user disabled. A yes is kept for ``ttl`` seconds, never past the credential's
    own expiry, so a busy stream costs one query per ``ttl`` rather than one per batch of events. A log-out, user
    change or revocation made through this process (`credentials_changed`) voids every kept yes at once; one made
    by another console process or by the CLI is seen within ``ttl``."""

    generation = 0  # bumped by credentials_changed

    def __init__(self, db, principal: Principal, ttl: float | None = None, clock=time.monotonic):
        self.db, self.principal, self.clock = db, principal, clock
        self.ttl = RECHECK_S if ttl is None else ttl
        self.until, self.seen = -math.inf, -1

    async def __call__(self) -> bool:
        now = self.clock()
        if now < self.until and self.seen == StillValid.generation:
            return True
        seen = StillValid.generation
        left = await self._seconds_left()
        if left is None:
            self.until = -math.inf
            return False
        self.until, self.seen = now + min(self.ttl, left), seen
        return True

    async def _seconds_left(self) -> float | None:
        """None when no longer valid, else how long it still is (inf for a token without expiry)."""
        p = self.principal
        if p.kind == "token":
            sql = ("SELECT EXTRACT(EPOCH FROM expires_at - now())::float8 AS left_s FROM console_api_tokens "
                   "WHERE token_hash = %s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())")
            key = p.token
        else:
            sql = ("SELECT EXTRACT(EPOCH FROM s.expires_at - now())::float8 AS left_s FROM console_sessions s "
                   "JOIN console_users u ON u.id = s.user_id "
                   "WHERE s.id_hash = %s AND s.expires_at > now() AND NOT u.disabled")
            key = p.session
        row = await self.db.fetchone(sql, (key,)) if key is not None else None
        if row is None:
            return None
        return math.inf if row["left_s"] is None else max(row["left_s"], 0.0)


async def optional_principal(request: Request) -> Principal | None:
    """The authenticated caller or None; does not check CSRF."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    principal = None
    # Only Bearer is ours. Another scheme is for a proxy in front (nginx basic auth passes its Authorization
    # header on): answering it with 401 made every page fail behind such a proxy; the session cookie decides.
    if scheme.lower() == "bearer":
        if not token.strip():
            raise Problem(401, "Authorization must be 'Bearer <API token>'", headers={"WWW-Authenticate": "Bearer"})
        principal = await _from_token(request, token.strip())
    else:
        sid = session_cookie(request)
        if sid:
            principal = await _from_session(request, sid)
    request.state.principal = principal
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    """Reject a cookie-authenticated unsafe request without the session's CSRF token."""
    if request.method not in UNSAFE or principal.kind != "user":
        return
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        from urllib.parse import parse_qs

        sent = (parse_qs((await request.body()).decode("utf-8", "replace")).get("csrf_token") or [None])[0]
    if not sent or not principal.csrf or not same_secret(sent, principal.csrf):
        raise Problem(403, "missing or wrong CSRF token: send the X-CSRF-Token header (from /api/auth/me) "
                           "or the csrf_token form field", type_="/problems/csrf")


async def current_principal(request: Request) -> Principal:
    """Dependency: the authenticated caller (401 otherwise), CSRF-checked for unsafe methods."""
    principal = await optional_principal(request)
    if principal is None:
        raise Problem(401, "log in first (session cookie) or send an API token (Authorization: Bearer ...)",
                      headers={"WWW-Authenticate": "Bearer"})
    await check_csrf(request, principal)
    return principal


def login_redirect(next_: str) -> RedirectResponse:
    """303 to the log-in form, which sends the browser on to ``next_`` (a path of this console) once logged in."""
    return RedirectResponse("/login?next=" + quote(next_), status_code=303)


def browser_navigation(request: Request) -> bool:
    """Whether ``request`` is a browser loading a document (a link followed, an address typed): its ``Accept``
    names text/html, as fetch() (``*/*``) and API clients do not, and it carries no API token."""
    if request.headers.get("authorization", "").partition(" ")[0].lower() == "bearer":
        return False
    return "text/html" in request.headers.get("accept", "").lower()


def download_login_redirect(request: Request) -> RedirectResponse | None:
    """For a 401 on a file download (a CSV route): the log-in form when a browser followed the link, as for a page
    (its session expired meanwhile: the 401 problem document was saved as the .csv), else None (API clients keep
    the 401). Once logged in the browser goes back to the console page the link was on (``Referer``, same host),
    where the button is; without one to the download itself."""
    from console.csvexport import CSVStream

    route = request.scope.get("route")
    if getattr(route, "response_class", None) is not CSVStream or not browser_navigation(request):
        return None
    ref = urlsplit(request.headers.get("referer", ""))
    if (ref.netloc and ref.netloc == request.headers.get("host") and ref.path.startswith("/")
            and not ref.path.startswith(("/api/", "/login", "/logout", "/static/"))):
        back = ref.path + (f"?{ref.query}" if ref.query else "")
    else:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return login_redirect(back)


def require(permission: str):
    """Dependency factory: the caller must hold ``permission`` (403 naming the role otherwise)."""

    async def dep(principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.can(permission):
            allowed = [r for r in ROLES if permission in PERMISSIONS[r]]
            raise Problem(403, f"role '{principal.role}' may not do this ({permission}); it needs one of: "
                               f"{', '.join(allowed)}", type_="/problems/role")
        return principal

    dep.__name__ = f"require_{permission.replace('.', '_')}"
    return dep


async def claim_attempt(request: Request, username: str) -> float | None:
    """Count a log-in attempt against the limit before its password is checked: seconds to wait when too many
    attempts failed recently from this client or for this user name (nothing recorded then), else None with the
    attempt recorded as a failure, which a successful log-in deletes (`_start_session`). The client is
    `login_client_key` (an IPv6 client by its /64), stored in ``client`` so the (client, time) index serves.

    A client gets ``login_failures_max`` attempts per window across all user names; a user name gets
    ``login_user_failures_max`` (higher) across all clients. Counted per user name at the client's limit, anyone
    who could reach the console locked a named user (an admin) out everywhere with a few wrong passwords.

    Check and record are one transaction under advisory locks on the user name and the client, so concurrent
    attempts queue here and the limits hold as password checks made, not only as answers. The user-name lock is
    always taken first, so two attempts cannot wait for each other."""
    cfg = request.app.state.config.console
    key = {"u": username.lower(), "c": login_client_key(request), "w": cfg.login_window_s}
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_USER, key["u"]))
        await cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLIENT, key["c"]))
        await cur.execute(
            "SELECT count(*) FILTER (WHERE username = %(u)s) AS by_user, count(*) FILTER (WHERE client = %(c)s) "
            "AS by_client, extract(epoch FROM min(time) + make_interval(secs => %(w)s) - clock_timestamp()) AS wait "
            "FROM console_login_failures WHERE time > clock_timestamp() - make_interval(secs => %(w)s) "
            "AND (username = %(u)s OR client = %(c)s)", key)
        row = await cur.fetchone()
        if row["by_client"] >= cfg.login_failures_max or row["by_user"] >= cfg.login_user_failures_max:
            return max(float(row["wait"]), 1.0)
        await cur.execute("INSERT INTO console_login_failures (username, client) VALUES (%(u)s, %(c)s)", key)
        await cur.execute("DELETE FROM console_login_failures WHERE time < now() - interval '1 day'")
    return None
