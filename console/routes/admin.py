"""Administration: users, API tokens, and the audit log (admins only; the audit log is readable by all
roles, since engineers and maintenance need to see who acknowledged or reviewed what)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from console import audit, users
from console.auth import Principal, client_address, credentials_changed, require
from console.jsonresp import FastJSON
from console.params import decode_cursor, equal_filters, page, time_range
from console.problems import Problem

router = APIRouter(prefix="/api", default_response_class=FastJSON)
Role = Literal["viewer", "engineer", "maintenance", "admin"]


class NewUser(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    password: str
    role: Role
    display_name: str = ""


class UserChange(BaseModel):
    role: Role | None = None
    display_name: str | None = None
    disabled: bool | None = None
    password: str | None = None


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Role = "viewer"
    # With an offset: a naive time would be read in the database session's time zone (the server's local one).
    expires_at: AwareDatetime | None = None


@router.get("/users", tags=["admin"])
async def list_users(request: Request, _: Principal = Depends(require("users.admin"))):
    """All console users (never their password hashes)."""
    return {"items": await request.app.state.db.fetch(f"SELECT {users.PUBLIC} FROM console_users ORDER BY username")}


@router.post("/users", tags=["admin"], status_code=201)
async def create_user(request: Request, body: NewUser, p: Principal = Depends(require("users.admin"))):
    """Create a local user; the password must be at least 10 characters."""
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        row = await users.add(cur, body.username, body.password, body.role, body.display_name)
        await audit.record(cur, p, "user.create", target_kind="user", target_id=body.username,
                           detail={"role": body.role}, client=client_address(request))
    return row


@router.patch("/users/{username}", tags=["admin"])
async def change_user(request: Request, username: str, body: UserChange,
                      p: Principal = Depends(require("users.admin"))):
    """Change a user's role, name, password or disabled flag; disabling ends their sessions."""
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise Problem(422, "nothing to change: give role, display_name, disabled or password")
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        # The admins' rows locked first, so two admins demoting each other at once cannot both pass the check below.
        await cur.execute("SELECT id FROM console_users WHERE role = 'admin' ORDER BY id FOR UPDATE")
        before, after = await users.change(cur, username, **changes)
        await _keep_an_admin(cur)
        shown = {k: v for k, v in changes.items() if k != "password"}
        shown |= {"password": "changed"} if body.password else {}
        await audit.record(cur, p, "user.change", target_kind="user", target_id=after["username"],
                           detail={"before": {k: before.get(k) for k in shown if k != "password"}, "after": shown},
                           client=client_address(request))
    credentials_changed()  # disabling, a new password or role ended the user's sessions
    return after


async def _keep_an_admin(cur) -> None:
    """Refuse (409, the change rolled back) a change that leaves no enabled admin: one click on an admin's own role
    select or "Disable" locked everyone out of user administration until someone ran the CLI on the server."""
    await cur.execute("SELECT count(*) AS n FROM console_users WHERE role = 'admin' AND NOT disabled")
    if (await cur.fetchone())["n"] == 0:
        raise Problem(409, "this would leave no enabled admin: make another user admin first "
                           "(or use `valvoja console user` on the server)", type_="/problems/last-admin")


@router.get("/tokens", tags=["admin"])
async def list_tokens(request: Request, _: Principal = Depends(require("users.admin"))):
    """API tokens (their first characters only; a token is shown once, when created)."""
    return {"items": await request.app.state.db.fetch(
        "SELECT id, name, prefix, role, created_by, created_at, expires_at, last_used_at, revoked_at "
        "FROM console_api_tokens ORDER BY id")}


@router.post("/tokens", tags=["admin"], status_code=201)
async def create_token(request: Request, body: NewToken, p: Principal = Depends(require("users.admin"))):
    """Create an API token for a machine. The token is in this answer only; store it now."""
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        token, row = await users.add_token(cur, body.name, body.role, p.name, body.expires_at)
        await audit.record(cur, p, "token.create", target_kind="token", target_id=row["id"],
                           detail={"name": body.name, "role": body.role}, client=client_address(request))
    return row | {"token": token}


@router.delete("/tokens/{token_id}", tags=["admin"], status_code=204)
async def revoke_token(request: Request, token_id: int, p: Principal = Depends(require("users.admin"))):
    """Revoke an API token; it stops working at once."""
    async with request.app.state.db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute("UPDATE console_api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL "
                          "RETURNING name", (token_id,))
        row = await cur.fetchone()
        if row is None:
            raise Problem(404, f"no active API token with id {token_id}")
        await audit.record(cur, p, "token.revoke", target_kind="token", target_id=token_id,
                           detail={"name": row["name"]}, client=client_address(request))
    credentials_changed()
    return Response(status_code=204)  # no body: a JSON "null" with 204 broke the HTTP framing


@router.get("/audit", tags=["admin"])
async def audit_log(request: Request, _: Principal = Depends(require("read")),
                    actor: str | None = None, action: str | None = None, target_kind: str | None = None,
                    target_id: str | None = None,
                    from_: str | None = Query(None, alias="from"), to: str | None = None, last: str | None = None,
                    limit: int = Query(100, ge=1, le=1000), cursor: str | None = None):
    """The audit log, newest first; filter by actor, action, target; paginate with ``cursor``."""
    from datetime import timedelta

    tr = time_range(from_, to, last, default=timedelta(days=3650))
    where, params = ["time >= %(start)s", "time <= %(end)s"], {"start": tr.start, "end": tr.end, "n": limit + 1}
    equal_filters(where, params, {c: (c, v) for c, v in (("actor", actor), ("action", action),
                                                          ("target_kind", target_kind), ("target_id", target_id))})
    if cursor:
        params["ct"], params["cid"] = decode_cursor(cursor, n=2)
        where.append("(time, id) < (%(ct)s::timestamptz, %(cid)s)")
    rows = await request.app.state.db.fetch(
        f"SELECT {audit.AUDIT_COLUMNS} FROM console_audit WHERE {' AND '.join(where)} "
        "ORDER BY time DESC, id DESC LIMIT %(n)s", params)
    return page(rows, limit, ("time", "id"))
