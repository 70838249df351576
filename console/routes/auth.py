"""Log-in and log-out: an HTML form for people (works without JavaScript) and a JSON API.

The log-in form is protected against log-in CSRF by a double-submit token (a cookie and a
hidden field that must match). Attempts are counted per user name and per client address before the
password is checked (a successful log-in takes its attempt back); past the configured limit the answer is
429 with Retry-After, without checking the password. scrypt runs in worker threads (`passwords`).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from console import audit
from console.app import STATIC
from console.auth import (
    COOKIE,
    PERMISSIONS,
    SECURE_COOKIE,
    Principal,
    claim_attempt,
    client_address,
    cookie_secure,
    credentials_changed,
    current_principal,
    login_client_key,
    session_cookie,
)
from console.passwords import (
    digest,
    hash_password_async,
    needs_rehash,
    new_secret,
    same_secret,
    verify_password_async,
)
from console.problems import Problem
from console.routes.pages import fill

router = APIRouter()
LOGIN_CSRF = "valvoja_login_csrf"


def login_csrf_cookie(request: Request) -> tuple[str, str]:
    """The log-in form's double-submit cookie: its name and path. Over TLS a ``__Host-`` one (which must have
    Path=/), so that a cookie planted by a sibling sub-domain or into a plain-HTTP answer cannot stand in for it
    (with both halves chosen, an attacker's page could log a browser in as the attacker)."""
    return (f"__Host-{LOGIN_CSRF}", "/") if cookie_secure(request) else (LOGIN_CSRF, "/login")


USERNAME_MAX, PASSWORD_MAX = 64, 1024  # console_users' name pattern; passwords.check_password_policy


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=USERNAME_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)


class Me(BaseModel):
    name: str
    kind: str
    role: str
    permissions: list[str]
    csrf_token: str | None = Field(None, description="send as X-CSRF-Token with unsafe requests (sessions only)")


def _me(p: Principal) -> Me:
    return Me(name=p.name, kind=p.kind, role=p.role, permissions=sorted(PERMISSIONS[p.role]), csrf_token=p.csrf)


async def _authenticate(request: Request, username: str, password: str) -> dict:
    """Check the password (rate-limited); returns the user row or raises 401/429."""
    wait = await claim_attempt(request, username)
    if wait is not None:
        raise Problem(429, f"too many failed log-ins; try again in {int(wait) + 1} s",
                      headers={"Retry-After": str(int(wait) + 1)})
    db = request.app.state.db
    user = await db.fetchone("SELECT id, username, role, password_hash, disabled FROM console_users "
                             "WHERE lower(username) = lower(%s)", (username,))
    ok = await verify_password_async(password, user["password_hash"] if user else None)
    if not ok or user is None or user["disabled"]:  # the attempt claimed above stays, as a failure
        raise Problem(401, "wrong user name or password (or the account is disabled)")
    return user


async def _start_session(request: Request, response: Response, user: dict, password: str) -> Principal:
    cfg = request.app.state.config.console
    sid, csrf = new_secret(), new_secret()
    expires = datetime.now(UTC) + timedelta(hours=cfg.session_hours)
    client = client_address(request)
    rehashed = await hash_password_async(password) if needs_rehash(user["password_hash"]) else None
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute("INSERT INTO console_sessions (id_hash, user_id, csrf_token, expires_at, client) "
                          "VALUES (%s, %s, %s, %s, %s)", (digest(sid), user["id"], csrf, expires, client))
        await cur.execute("DELETE FROM console_sessions WHERE expires_at < now()")
        # The session this browser had (another user's on a shared control-room PC, or one planted in it) ends here:
        # the new cookie replaced it in this browser only, and it stayed valid wherever else its id was known.
        previous = [digest(c) for c in (request.cookies.get(COOKIE), request.cookies.get(SECURE_COOKIE)) if c]
        if previous:
            await cur.execute("DELETE FROM console_sessions WHERE id_hash = ANY(%s)", (previous,))
        # This attempt (claimed as a failure before the check) and the user name's earlier failures from this client:
        # not from others, whose count toward the per-client limit this log-in must not reset (an attacker's
        # address got a fresh set of guesses at every log-in of the user it was guessing for).
        await cur.execute("DELETE FROM console_login_failures WHERE username = %s AND client = %s",
                          (user["username"].lower(), login_client_key(request)))
        if rehashed:
            await cur.execute("UPDATE console_users SET password_hash = %s WHERE id = %s", (rehashed, user["id"]))
        await cur.execute("UPDATE console_users SET last_login = now() WHERE id = %s", (user["id"],))
        p = Principal(name=user["username"], kind="user", role=user["role"], user_id=user["id"], csrf=csrf)
        await audit.record(cur, p, "login", target_kind="user", target_id=user["username"], client=client)
    if previous:
        credentials_changed()
    secure = cookie_secure(request)
    # __Host- cookies must be Secure with Path=/ and no Domain: the browser then refuses a cookie planted by a
    # sibling sub-domain. Plain-HTTP deployments (a plant LAN) cannot use the prefix.
    response.set_cookie(SECURE_COOKIE if secure else COOKIE, sid, max_age=int(cfg.session_hours * 3600),
                        path="/", secure=secure, httponly=True, samesite="lax")
    return p


async def _end_session(request: Request, response: Response) -> None:
    sid = session_cookie(request)
    if sid:
        async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute("DELETE FROM console_sessions WHERE id_hash = %s RETURNING user_id", (digest(sid),))
            row = await cur.fetchone()
            if row:
                p = getattr(request.state, "principal", None)
                await audit.record(cur, p, "logout", target_kind="user", target_id=p.name if p else row["user_id"],
                                   client=client_address(request))
        credentials_changed()
    for name in (COOKIE, SECURE_COOKIE):
        response.delete_cookie(name, path="/", secure=name == SECURE_COOKIE, httponly=True, samesite="lax")


@router.post("/api/auth/login", tags=["auth"], response_model=Me,
             responses={401: {"description": "wrong credentials"}, 429: {"description": "rate-limited"}})
async def api_login(request: Request, response: Response, body: Credentials) -> Me:
    """Start a browser session (sets the session cookie); answer includes the CSRF token to send back."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise Problem(415, "send the credentials as application/json")
    user = await _authenticate(request, body.username, body.password)
    return _me(await _start_session(request, response, user, body.password))


@router.post("/api/auth/logout", tags=["auth"], status_code=204)
async def api_logout(request: Request, p: Principal = Depends(current_principal)) -> Response:
    """End the current session."""
    response = Response(status_code=204)
    await _end_session(request, response)
    return response


@router.get("/api/auth/me", tags=["auth"], response_model=Me)
async def me(p: Principal = Depends(current_principal)) -> Me:
    """Who is calling, with which role and permissions."""
    return _me(p)


def _safe_next(value: str | None) -> str:
    """``value`` if it is a path on this console, else ``/``: where the log-in form may send the browser."""
    # Only local paths: "//evil.example" and "/\\evil" would be read as another host by browsers. Browsers also drop
    # tabs and line breaks from a URL before reading it ("/\t/evil.example" is "//evil.example" to them), so any
    # control character or space is refused too; a real page path has none (they come percent-encoded).
    if (not value or not value.startswith("/") or value.startswith(("//", "/\\"))
            or any(c <= " " or c == "\x7f" for c in value)):
        return "/"
    return value


def login_page(request: Request, *, error: str = "", status: int = 200, next_: str = "/",
               username: str = "") -> HTMLResponse:
    """The log-in form; after a refused attempt with its ``error`` and the user name typed (it came back empty: typed
    again after each wrong password), never the password."""
    token = new_secret()
    page = fill((STATIC / "login.html").read_text(), {
        "csrf": html.escape(token), "next": html.escape(_safe_next(next_)),
        "username": html.escape(username[:USERNAME_MAX]),
        "error": f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""})
    resp = HTMLResponse(page, status_code=status)
    name, path = login_csrf_cookie(request)
    resp.set_cookie(name, token, max_age=3600, path=path, secure=cookie_secure(request), httponly=True,
                    samesite="strict")
    return resp


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return login_page(request, next_=next)


@router.post("/login", include_in_schema=False)
async def login_submit(request: Request) -> Response:
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    next_ = _safe_next(form.get("next"))
    cookie, sent = request.cookies.get(login_csrf_cookie(request)[0], ""), form.get("csrf_token", "")
    if not cookie or not same_secret(sent, cookie):
        return login_page(request, error="The form expired; please log in again.", status=403, next_=next_)
    username, password = form.get("username", "").strip(), form.get("password", "")
    if not username or not password:
        return login_page(request, error="Enter a user name and a password.", status=422, next_=next_,
                          username=username)
    if len(username) > USERNAME_MAX or len(password) > PASSWORD_MAX:
        # As the JSON log-in refuses them: a user name of up to a mebibyte was counted and stored with each failure.
        return login_page(request, error=f"User names have at most {USERNAME_MAX} characters, passwords at most "
                                         f"{PASSWORD_MAX}.", status=422, next_=next_)
    try:
        user = await _authenticate(request, username, password)
    except Problem as exc:
        resp = login_page(request, error=exc.detail, status=exc.status, next_=next_, username=username)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp
    resp = RedirectResponse(next_, status_code=303)
    await _start_session(request, resp, user, password)
    name, path = login_csrf_cookie(request)
    resp.delete_cookie(name, path=path, secure=name.startswith("__Host-"))
    return resp


@router.post("/logout", include_in_schema=False)
async def logout_submit(request: Request, p: Principal = Depends(current_principal)) -> Response:
    resp = RedirectResponse("/login?next=" + quote("/"), status_code=303)
    await _end_session(request, resp)
    return resp
