"""Users and API tokens in the database; shared by the admin API and the ``valvoja console`` CLI.

Functions take an async cursor (dict rows) so the caller decides the transaction, and writes
its audit entry in the same one.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from console.passwords import check_password_policy, digest, hash_password_async, new_secret
from console.problems import Problem

PUBLIC = "id, username, display_name, role, disabled, created_at, updated_at, last_login"


async def add(cur, username: str, password: str, role: str, display_name: str = "") -> dict:
    """Insert a user; 422 for a weak password, 409 if the name is taken (case-insensitively)."""
    why = check_password_policy(password)
    if why:
        raise Problem(422, f"password {why}", param="password")
    password_hash = await hash_password_async(password)
    await cur.execute("SELECT 1 FROM console_users WHERE lower(username) = lower(%s)", (username,))
    if await cur.fetchone():
        raise Problem(409, f"user {username!r} exists already")
    try:
        await cur.execute(f"INSERT INTO console_users (username, display_name, password_hash, role) "
                          f"VALUES (%s, %s, %s, %s) RETURNING {PUBLIC}",
                          (username, display_name, password_hash, role))
    except psycopg.errors.CheckViolation as exc:
        raise Problem(422, f"invalid user: {exc.diag.message_primary}") from None
    return await cur.fetchone()


async def change(cur, username: str, *, role: str | None = None, display_name: str | None = None,
                 disabled: bool | None = None, password: str | None = None) -> tuple[dict, dict]:
    """Update a user; returns (before, after). Disabling or a new password ends the user's sessions."""
    password_hash = None
    if password is not None:
        why = check_password_policy(password)
        if why:
            raise Problem(422, f"password {why}", param="password")
        password_hash = await hash_password_async(password)  # before the row is locked
    # Case-insensitive like log-in and creation (names are unique that way): "Anna" is anna's account.
    await cur.execute(f"SELECT {PUBLIC} FROM console_users WHERE lower(username) = lower(%s) FOR UPDATE",
                      (username,))
    before = await cur.fetchone()
    if before is None:
        raise Problem(404, f"no user {username!r}")
    sets, params = ["updated_at = now()"], []
    if role is not None:
        sets.append("role = %s")
        params.append(role)
    if display_name is not None:
        sets.append("display_name = %s")
        params.append(display_name)
    if disabled is not None:
        sets.append("disabled = %s")
        params.append(disabled)
    if password_hash is not None:
        sets.append("password_hash = %s")
        params.append(password_hash)
    await cur.execute(f"UPDATE console_users SET {', '.join(sets)} WHERE id = %s RETURNING {PUBLIC}",
                      (*params, before["id"]))
    after = await cur.fetchone()
    if disabled or password is not None or (role is not None and role != before["role"]):
        # A role change takes effect at once too: sessions carry no cached role, but ending them is clearer.
        await cur.execute("DELETE FROM console_sessions WHERE user_id = %s", (before["id"],))
    return before, after


async def add_token(cur, name: str, role: str, created_by: str, expires_at: datetime | None = None) -> tuple[str, dict]:
    """Create an API token; returns (the token, its public row). Only the SHA-256 is stored."""
    token = "vlv_" + new_secret()
    await cur.execute(
        "INSERT INTO console_api_tokens (name, token_hash, prefix, role, created_by, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, name, prefix, role, created_by, created_at, expires_at",
        (name, digest(token), token[:10], role, created_by, expires_at))
    return token, await cur.fetchone()
