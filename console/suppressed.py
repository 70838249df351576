"""Conditions a current maintenance window hides: what the control room does not see as alerts.

The gateway raises no alert for a condition on an asset inside a maintenance window; it logs one
``suppressed`` row in ``alert_events`` per condition and window (maintenance/alerts.py, store.py:
``asset``, ``kind``, ``time``, ``detail`` with ``tag``, ``severity``, ``message``, the window's ``reason`` and,
from gateways of this version on, its ``window_id``). The window shown is found as the gateway found it, not by
that id (rows of older gateways lack it, and of overlapping windows the one ending last is what matters): a
window that is not cancelled, for the event's asset (or ``'*'``) and tag (or every tag), holding the event's time.
Only windows current now count: once a window ends (or is ended early) what it hid is raised as an alert again if
still active.

One row per condition (asset, tag, kind): the first time it was seen in the window, and of overlapping windows
the one ending last (how long it stays hidden).
"""

from __future__ import annotations

from console.db import Database

SQL = """
SELECT DISTINCT ON (e.asset, e.detail->>'tag', e.kind)
       e.asset, e.detail->>'tag' AS tag, e.kind, e.detail->>'severity' AS severity,
       e.detail->>'message' AS message, e.time AS seen_at,
       w.id AS window_id, w.asset AS window_asset, w.reason AS window_reason, w.starts_at AS window_starts_at,
       w.ends_at AS window_ends_at, w.time_zone AS window_time_zone
  FROM maintenance_windows w
  JOIN alert_events e ON e.event = 'suppressed' AND e.time >= w.starts_at AND e.time < w.ends_at
       AND (w.asset = '*' OR e.asset = w.asset) AND (w.tag IS NULL OR w.tag = e.detail->>'tag')
 WHERE w.cancelled_at IS NULL AND w.starts_at <= now() AND w.ends_at > now()
   AND (%(assets)s::text[] IS NULL OR e.asset = ANY(%(assets)s::text[]))
 ORDER BY e.asset, e.detail->>'tag', e.kind, w.ends_at DESC, e.time
 LIMIT %(limit)s"""


async def current(db: Database, assets: list[str] | None = None, limit: int = 500) -> list[dict]:
    """The conditions hidden now by a current maintenance window, by asset, tag and kind (read-only)."""
    rows = await db.fetch(SQL, {"assets": assets or None, "limit": limit})
    return [{"asset": r["asset"], "tag": r["tag"], "kind": r["kind"], "severity": r["severity"],
             "message": r["message"] or "", "seen_at": r["seen_at"],
             "window": {"id": r["window_id"], "asset": r["window_asset"], "reason": r["window_reason"],
                        "starts_at": r["window_starts_at"], "ends_at": r["window_ends_at"],
                        "time_zone": r["window_time_zone"] or None}} for r in rows]
