"""Reading and changing alerts in the ``alerts`` table (created by maintenance/, migration m0200).

The console relies on these columns (DESIGN.md §2 `Alert`): ``id, asset, tag, kind, severity,
raised_at, message, acknowledged_at, acknowledged_by, cleared_at, evidence``. Further columns the
table has (state, comment, suppression, counts, ...) are passed through to the API as they are.
The state is the table's ``state`` column when it has one, else derived from the timestamps.

Acknowledge, clear and comment go through maintenance's own store functions (the alert lifecycle
has one owner; its table trigger writes the history to ``alert_events``). They are conditional
updates (``... WHERE acknowledged_at IS NULL``), so two engineers clicking at once give one
acknowledgement and one 409; the caller writes the audit entry in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.params import decode_cursor, page
from console.problems import Problem

REQUIRED = ("id", "asset", "kind", "severity", "raised_at", "acknowledged_at", "acknowledged_by", "cleared_at")
STATES = ("raised", "acknowledged", "cleared")
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Shape:
    """What the alerts table looks like in this database."""

    columns: frozenset[str]

    @property
    def state_sql(self) -> str:
        if "state" in self.columns:
            return "a.state"
        return ("CASE WHEN a.cleared_at IS NOT NULL THEN 'cleared' WHEN a.acknowledged_at IS NOT NULL "
                "THEN 'acknowledged' ELSE 'raised' END")

    @property
    def changed_sql(self) -> str:
        """When the row last changed: updated_at if present, else the latest lifecycle time."""
        if "updated_at" in self.columns:
            return "a.updated_at"
        return "greatest(a.raised_at, a.acknowledged_at, a.cleared_at)"

    @property
    def select(self) -> str:
        return (f"SELECT a.*, {self.state_sql} AS state, {self.changed_sql} AS changed_at, s.site AS site "
                "FROM alerts a LEFT JOIN assets s ON s.name = a.asset")


async def shape(db) -> Shape:
    await db.require("alerts", owner="maintenance")
    cols = await db.columns("alerts")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise Problem(503, f"the alerts table lacks column(s) {', '.join(missing)} the console needs", missing=missing)
    return Shape(frozenset(cols))


def _filters(sh: Shape, *, site=None, asset=None, severity=None, state=None, kind=None, since=None, until=None):
    where, params = [], {}
    for name, col, val in (("site", "s.site", site), ("asset", "a.asset", asset), ("severity", "a.severity", severity),
                           ("kind", "a.kind", kind), ("state", sh.state_sql, state)):
        if val:
            where.append(f"{col} = ANY(%({name})s)")
            params[name] = list(val)
    if since is not None:
        where.append("a.raised_at >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("a.raised_at <= %(until)s")
        params["until"] = until
    return where, params


async def list_alerts(db, *, limit: int, cursor: str | None = None, **filters) -> dict:
    """A page of alerts, newest raised first, with the counts per state and severity under the same filters
    except the state (so the board shows how many are raised, acknowledged and cleared whatever it lists)."""
    sh = await shape(db)
    where, params = _filters(sh, **filters)
    count_where, _ = _filters(sh, **(filters | {"state": None}))
    if cursor:
        params["ct"], params["cid"] = decode_cursor(cursor, n=2)
        where.append("(a.raised_at, a.id::text) < (%(ct)s::timestamptz, %(cid)s)")
    params["n"] = limit + 1
    cond = " AND ".join(where) or "true"
    rows = await db.fetch(f"{sh.select} WHERE {cond} ORDER BY a.raised_at DESC, a.id::text DESC LIMIT %(n)s", params)
    for r in rows:
        r["cursor_id"] = str(r["id"])
    out = page(rows, limit, ("raised_at", "cursor_id"))
    for r in out["items"]:
        r.pop("cursor_id", None)
    await _with_reviews(db, out["items"])
    counts = await db.fetch(
        f"SELECT {sh.state_sql} AS state, a.severity, count(*) AS n FROM alerts a LEFT JOIN assets s "
        f"ON s.name = a.asset WHERE {' AND '.join(count_where) or 'true'} GROUP BY 1, 2", params)
    out["counts"] = counts
    return out


async def _with_reviews(db, items: list[dict]) -> None:
    """Each alert's own newest review (``verdict``, ``reviewed_by``, ``reviewed_at``; None without one), the verdict
    the precision of past alerts counts first (maintenance.review): an alert could be reviewed through the API
    alone, so an ISO 20816 zone or rule alert, which has no prediction to review, got no verdict from the console."""
    for r in items:
        r.update(verdict=None, reviewed_by=None, reviewed_at=None)
    if not items or not await db.has_table("prediction_feedback"):
        return
    rows = await db.fetch("SELECT DISTINCT ON (alert_id) alert_id, verdict, reviewer, created_at "
                          "FROM prediction_feedback WHERE alert_id = ANY(%s) "
                          "ORDER BY alert_id, created_at DESC, id DESC", ([str(r["id"]) for r in items],))
    latest = {f["alert_id"]: f for f in rows}
    for r in items:
        f = latest.get(str(r["id"]))
        if f is not None:
            r.update(verdict=f["verdict"], reviewed_by=f["reviewer"], reviewed_at=f["created_at"])


def export_query(sh: Shape, **filters) -> tuple[str, dict]:
    """The board's list (newest raised first) under ``filters`` as one query without a page size: the CSV
    download's (``tag``, ``message``, ``ack_comment``, ``cleared_by``: null where the table has no such column)."""
    where, params = _filters(sh, **filters)
    tag, message, ack_comment, cleared_by = (f"a.{c}" if c in sh.columns else f"NULL::text AS {c}"
                                             for c in ("tag", "message", "ack_comment", "cleared_by"))
    return (f"SELECT a.id, a.raised_at, a.severity, {sh.state_sql} AS state, s.site, a.asset, {tag}, a.kind, "
            f"{message}, a.acknowledged_at, a.acknowledged_by, {ack_comment}, a.cleared_at, {cleared_by} "
            f"FROM alerts a LEFT JOIN assets s ON s.name = a.asset WHERE {' AND '.join(where) or 'true'} "
            "ORDER BY a.raised_at DESC, a.id::text DESC", params)


async def get(db, alert_id: str) -> dict:
    sh = await shape(db)
    row = await db.fetchone(f"{sh.select} WHERE a.id::text = %s", (alert_id,))
    if row is None:
        raise Problem(404, f"no alert {alert_id!r}")
    return row


CHANGED_PAGE = 1000


async def changed_since(db, since, ids: list[str] | None = None, after_id: str = "") -> list[dict]:
    """Alerts with the given ids, or (without ids) the first `CHANGED_PAGE` changed after (``since``, ``after_id``)
    in (change time, id) order: a keyset, so alerts changed in one transaction (one ``now()``) beyond a page are
    the next page, not skipped."""
    sh = await shape(db)
    if ids:
        return await db.fetch(f"{sh.select} WHERE a.id::text = ANY(%s) ORDER BY 1", (ids,))
    return await db.fetch(changed_page_sql(sh), (since, after_id))


def changed_page_sql(sh: Shape) -> str:
    """The live feed's poll (every second, for as long as the console runs): one page of alerts changed after
    (change time, id). The alerts table keeps every alert ever raised; the index ``alerts_changed`` (migration
    m0403) makes this a short index range whatever their number."""
    return (f"{sh.select} WHERE ({sh.changed_sql}, a.id::text) > (%s, %s)"
            f" ORDER BY {sh.changed_sql}, a.id::text LIMIT {CHANGED_PAGE}")


async def acknowledge(conn, alert_id: str, who: str, comment: str) -> dict:
    """Acknowledge a raised alert (409 if already acknowledged or cleared)."""
    from maintenance import store

    if not await store.acknowledge(conn, alert_id, who, comment):
        await _explain_conflict(conn, alert_id, "acknowledge")
    return {"id": alert_id, "state": "acknowledged"}


async def clear(conn, alert_id: str, who: str, comment: str) -> dict:
    """Clear an alert by hand (409 if already cleared); a non-empty comment goes to its comments."""
    from maintenance import store

    if not await store.clear(conn, alert_id, who):
        await _explain_conflict(conn, alert_id, "clear")
    if comment.strip():
        await store.comment(conn, alert_id, who, comment)
    return {"id": alert_id, "state": "cleared"}


async def add_comment(conn, alert_id: str, who: str, comment: str) -> dict:
    from maintenance import store

    await exists(conn, alert_id)
    await store.comment(conn, alert_id, who, comment)
    return {"id": alert_id}


async def history(db, alert_id: str) -> list[dict]:
    """The alert's trail (maintenance's ``alert_events``) and its comments, oldest first."""
    events = await db.fetch("SELECT time, event AS action, actor, coalesce(detail->>'comment', '') AS comment, detail "
                            "FROM alert_events WHERE alert_id = %s", (alert_id,)) \
        if await db.has_table("alert_events") else []
    comments = await db.fetch("SELECT time, 'comment' AS action, author AS actor, comment, '{}'::jsonb AS detail "
                              "FROM alert_comments WHERE alert_id = %s", (alert_id,)) \
        if await db.has_table("alert_comments") else []
    return sorted(events + comments, key=lambda h: h["time"])


async def exists(conn, alert_id: str) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT 1 FROM alerts WHERE id::text = %s", (alert_id,))
        if await cur.fetchone() is None:
            raise Problem(404, f"no alert {alert_id!r}")


async def _explain_conflict(conn, alert_id: str, action: str) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT acknowledged_at, acknowledged_by, cleared_at FROM alerts WHERE id::text = %s",
                          (alert_id,))
        row = await cur.fetchone()
    if row is None:
        raise Problem(404, f"no alert {alert_id!r}")
    if row["cleared_at"] is not None:
        raise Problem(409, f"cannot {action}: alert {alert_id} was cleared at {row['cleared_at'].isoformat()}")
    raise Problem(409, f"cannot {action}: alert {alert_id} was acknowledged by {row['acknowledged_by']} at "
                       f"{row['acknowledged_at'].isoformat()}")
