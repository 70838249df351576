"""The audit log: every change made through the console (acknowledge, clear, comment, review,
promote, user and token administration, log-in and log-out) with who, when and from where.

`record` takes the cursor of the transaction that makes the change, so the change and its
audit entry commit together or not at all.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from console.auth import Principal

_INSERT = ("INSERT INTO console_audit (actor, actor_kind, action, target_kind, target_id, detail, client) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s)")


def _values(principal: Principal | None, action: str, target_kind: str, target_id: Any, detail: dict | None,
            client: str, actor: str | None) -> tuple:
    name = actor or (principal.name if principal else "anonymous")
    kind = principal.kind if principal else ("system" if actor is None else "user")
    return (name, kind, action, target_kind, str(target_id), Jsonb(detail or {}), client)


async def record(cur, principal: Principal | None, action: str, *, target_kind: str = "", target_id: Any = "",
                 detail: dict | None = None, client: str = "", actor: str | None = None) -> None:
    """Append one audit entry within the caller's transaction."""
    await cur.execute(_INSERT, _values(principal, action, target_kind, target_id, detail, client, actor))


def record_sync(conn, principal: Principal | None, action: str, *, target_kind: str = "", target_id: Any = "",
                detail: dict | None = None, client: str = "", actor: str | None = None) -> None:
    """`record` on a synchronous connection, within its transaction (the model registry's, for promotions)."""
    conn.execute(_INSERT, _values(principal, action, target_kind, target_id, detail, client, actor))


AUDIT_COLUMNS = "id, time, actor, actor_kind, action, target_kind, target_id, detail, client"
