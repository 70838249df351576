"""Database I/O of maintenance: alerts (lifecycle), predictions, maintenance windows (tables of m0200).

Async psycopg 3, one connection passed in by the caller (the gateway's or a CLI's). Writes are
idempotent where a replay can happen: predictions upsert on (asset, model_id, target, time); an alert
is keyed by its id, and the unique partial index on ``dedup_key`` keeps one open alert per condition
even when two writers race (the loser's insert updates the open alert instead). Updates and clears
address the open alert of the condition (its id, or its ``dedup_key`` where another writer's row absorbed
the insert), so the alert that exists is the one that changes.
The history (``alert_events``) is written by the table's trigger; this module only adds events that
have no row change behind them (suppressed conditions, notification outcomes).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from edge.records import Alert, Prediction
from maintenance.alerts import SEVERITIES, AlertChange, Window


def _jsonb(obj: dict) -> Jsonb:
    # orjson handles datetimes and numpy scalars that evidence dicts often contain.
    return Jsonb(obj, dumps=lambda o: orjson.dumps(o, option=orjson.OPT_SERIALIZE_NUMPY
                                                  | orjson.OPT_NON_STR_KEYS).decode())


async def write_predictions(conn: psycopg.AsyncConnection, preds: Iterable[Prediction]) -> list[int]:
    """Store predictions (upsert on asset, model, target, time); returns their ids in order."""
    ids = []
    async with conn.cursor() as cur:
        for p in preds:
            await cur.execute(
                "INSERT INTO predictions (time, model_id, model_version, asset, kind, target, value, lower, upper,"
                " coverage, p_value, input_start, input_end, details) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (asset, model_id, target, time) DO UPDATE SET model_version = EXCLUDED.model_version,"
                " value = EXCLUDED.value, lower = EXCLUDED.lower, upper = EXCLUDED.upper,"
                " coverage = EXCLUDED.coverage, p_value = EXCLUDED.p_value, details = EXCLUDED.details"
                " RETURNING id",
                (p.time, p.model_id, p.model_version, p.asset, p.kind, p.target, p.value, p.lower, p.upper,
                 p.coverage, p.p_value, p.input_start, p.input_end, _jsonb(p.details)))
            ids.append((await cur.fetchone())[0])
    return ids


DETECTOR_COLUMNS = ("model_id", "version", "asset", "in_service_at", "origin", "training_origin", "training_start",
                    "training_end", "training_samples", "left_out_flagged", "left_out_incomplete", "signals", "alpha",
                    "calibration_size", "config_sha256", "config")


async def write_detector_versions(conn: psycopg.AsyncConnection, records: Iterable[dict]) -> int:
    """Record live anomaly detector versions (`maintenance.live.detector_record`, m0204), once each: a replay, or a
    restart restoring a version already recorded, adds nothing (the first record of a version stays). Returns
    how many rows were added."""
    added = 0
    async with conn.cursor() as cur:
        for r in records:
            row = [r.get(k) for k in DETECTOR_COLUMNS]
            row[11], row[15] = _jsonb(r["signals"]), _jsonb(r["config"])
            await cur.execute(f"INSERT INTO anomaly_detector_versions ({', '.join(DETECTOR_COLUMNS)}) VALUES "
                              f"({', '.join(['%s'] * len(DETECTOR_COLUMNS))}) ON CONFLICT (model_id, version) "
                              "DO NOTHING", row)
            added += cur.rowcount
    return added


async def apply_changes(conn: psycopg.AsyncConnection, changes: Iterable[AlertChange], *,
                        source: str = "") -> None:
    """Persist what the alert manager decided, in one transaction."""
    async with conn.transaction(), conn.cursor() as cur:
        for ch in changes:
            a = ch.alert
            pred = a.evidence.get("prediction") or {}
            if ch.event == "suppressed":
                await cur.execute(
                    "INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
                    " VALUES (NULL, %s, %s, %s, 'suppressed', %s)",
                    (a.asset, a.kind, a.raised_at, _jsonb({"tag": a.tag, "severity": a.severity,
                                                         "message": a.message, **ch.detail})))
            elif ch.event == "raised":
                # A racing writer may already hold the open alert of this key: then it absorbs this one. The
                # same alert (a batch written again after a crash between COMMIT and the spool delete) is left
                # as it is, also when it was cleared in the console meanwhile (its id then conflicts with no open
                # row: the insert is skipped rather than refused, which dead-lettered the batch's alert changes).
                await cur.execute(
                    "INSERT INTO alerts (id, asset, tag, kind, severity, state, raised_at, message, evidence,"
                    " dedup_key, source, model_id, model_version, occurrences, last_seen)"
                    " SELECT %s, %s, %s::text, %s, %s, 'raised', %s, %s, %s, %s, %s, %s::text, %s::text, %s, %s"
                    " WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE id = %s)"
                    " ON CONFLICT (dedup_key) WHERE cleared_at IS NULL DO UPDATE SET"
                    " occurrences = alerts.occurrences + 1, last_seen = EXCLUDED.last_seen, updated_at = now()"
                    " WHERE alerts.id <> EXCLUDED.id",
                    (a.id, a.asset, a.tag, a.kind, a.severity, a.raised_at, a.message, _jsonb(a.evidence), ch.key,
                     source or a.kind, pred.get("model_id"), pred.get("model_version"), ch.occurrences,
                     ch.last_seen or a.raised_at, a.id))
            elif ch.event in ("updated", "escalated"):
                await _update(cur, ch)
                if "condition_was" in ch.detail:
                    # The condition got worse with the alert's severity already raised by an escalation: no severity
                    # change for the history trigger (m0201) to record, so the evidence of that moment (zone D) was
                    # only in the row, replaced by the next observation.
                    await cur.execute(
                        "INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
                        " SELECT id, asset, kind, %s, 'updated', %s FROM alerts"
                        " WHERE cleared_at IS NULL AND (id = %s OR dedup_key = %s)",
                        (ch.last_seen or a.raised_at,
                         _jsonb({"severity": a.severity, "condition_was": ch.detail["condition_was"],
                                 "message": a.message, "evidence": a.evidence}), a.id, ch.key))
            elif ch.event == "reopened":
                await _reopen(cur, ch)
            elif ch.event == "cleared":
                # Like an update, the clear never lowers the count: the row may hold occurrences this gateway's
                # in-memory alert never saw (another writer's, a start without the database).
                await cur.execute(
                    "UPDATE alerts SET cleared_at = %s, cleared_by = 'system', state = 'cleared',"
                    " occurrences = greatest(occurrences, %s), updated_at = now()"
                    " WHERE cleared_at IS NULL AND (id = %s OR dedup_key = %s)",
                    (a.cleared_at, ch.occurrences, a.id, ch.key))
            else:
                raise ValueError(f"unknown alert change {ch.event!r}")


async def _update(cur: psycopg.AsyncCursor, ch: AlertChange) -> None:
    """An "updated" or "escalated" change to the open alert of its condition."""
    a = ch.alert
    # An alert acknowledged in the console since the gateway's last sync (up to SYNC_INTERVAL_S) may
    # still be escalated by the gateway: the row does not go up for it (level, severity, the
    # "escalated" event after "acknowledged"), and the next sync hands the row's severity and level
    # back to the gateway (`AlertManager.acknowledged`).
    # Severity and level never fall while the alert is open: a change may come from another in-memory
    # alert of the condition (a redundant gateway's, or one raised again by a gateway started without the
    # database) whose lower values turned a critical, twice escalated alert back into a warning.
    await cur.execute(
        "UPDATE alerts SET"
        " severity = CASE WHEN acknowledged_at IS NOT NULL AND %(level)s > escalation_level THEN severity"
        "  WHEN array_position(%(order)s, %(severity)s) > array_position(%(order)s, severity)"
        "  THEN %(severity)s ELSE severity END,"
        " message = %(message)s, evidence = %(evidence)s,"
        " occurrences = greatest(occurrences, %(occurrences)s), last_seen = %(last_seen)s,"
        " escalated_at = CASE WHEN acknowledged_at IS NULL AND %(level)s > escalation_level"
        "  THEN %(escalated_at)s ELSE escalated_at END,"
        " escalation_level = CASE WHEN acknowledged_at IS NULL"
        "  THEN greatest(escalation_level, %(level)s) ELSE escalation_level END,"
        " updated_at = now() WHERE cleared_at IS NULL AND (id = %(id)s OR dedup_key = %(key)s)",
        {"severity": a.severity, "message": a.message, "evidence": _jsonb(a.evidence),
         "occurrences": ch.occurrences, "last_seen": ch.last_seen or a.raised_at,
         "level": ch.escalation_level, "escalated_at": ch.escalated_at or ch.last_seen, "id": a.id,
         "key": ch.key, "order": list(SEVERITIES)})


async def _reopen(cur: psycopg.AsyncCursor, ch: AlertChange) -> None:
    """Open again the alert the gateway cleared (``cleared_by = 'system'``): the condition came back within
    ``reopen_within_s``. When another open alert of the condition exists (another writer raised it meanwhile) the
    return is an occurrence of that one; a row cleared by a person, or open already (a replay), is left as it is."""
    a = ch.alert
    await cur.execute(
        "UPDATE alerts SET cleared_at = NULL, cleared_by = NULL,"
        " state = CASE WHEN acknowledged_at IS NULL THEN 'raised' ELSE 'acknowledged' END,"
        " severity = CASE WHEN array_position(%(order)s, %(severity)s) > array_position(%(order)s, severity)"
        "  THEN %(severity)s ELSE severity END,"
        " message = %(message)s, evidence = %(evidence)s, occurrences = greatest(occurrences, %(occurrences)s),"
        " last_seen = %(last_seen)s, reopened_at = %(last_seen)s, updated_at = now()"
        " WHERE id = %(id)s AND cleared_at IS NOT NULL AND cleared_by = 'system'"
        " AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.dedup_key = %(key)s AND o.cleared_at IS NULL)"
        " RETURNING asset, kind",
        {"severity": a.severity, "message": a.message, "evidence": _jsonb(a.evidence), "order": list(SEVERITIES),
         "occurrences": ch.occurrences, "last_seen": ch.last_seen or a.raised_at, "id": a.id, "key": ch.key})
    if await cur.fetchone() is not None:
        # The history trigger (m0201) writes no event for a cleared row opening again.
        await cur.execute(
            "INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
            " VALUES (%s, %s, %s, %s, 'reopened', %s)",
            (a.id, a.asset, a.kind, ch.last_seen or a.raised_at,
             _jsonb({"severity": a.severity, "occurrences": ch.occurrences, "message": a.message,
                     "evidence": a.evidence, **ch.detail})))
        return
    # Another writer's open alert of the condition: one more occurrence of it (a no-op when none is open).
    await cur.execute("UPDATE alerts SET occurrences = occurrences + 1, last_seen = greatest(last_seen, %s),"
                      " updated_at = now() WHERE cleared_at IS NULL AND dedup_key = %s AND id <> %s",
                      (ch.last_seen or a.raised_at, ch.key, a.id))


async def acknowledge(conn: psycopg.AsyncConnection, alert_id: str, who: str, comment: str = "",
                      at: datetime | None = None) -> bool:
    """Acknowledge an open, unacknowledged alert; False when it is not (already done, or cleared)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "UPDATE alerts SET acknowledged_at = coalesce(%s, now()), acknowledged_by = %s, ack_comment = %s,"
            " state = 'acknowledged', updated_at = now()"
            " WHERE id = %s AND acknowledged_at IS NULL AND cleared_at IS NULL RETURNING id",
            (at, who, comment, alert_id))
        return await cur.fetchone() is not None


async def clear(conn: psycopg.AsyncConnection, alert_id: str, who: str, at: datetime | None = None) -> bool:
    """Clear an open alert by hand; False when it was already cleared."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "UPDATE alerts SET cleared_at = coalesce(%s, now()), cleared_by = %s, state = 'cleared',"
            " updated_at = now() WHERE id = %s AND cleared_at IS NULL RETURNING id", (at, who, alert_id))
        return await cur.fetchone() is not None


async def comment(conn: psycopg.AsyncConnection, alert_id: str, author: str, text: str) -> None:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("INSERT INTO alert_comments (alert_id, author, comment) VALUES (%s, %s, %s)",
                          (alert_id, author, text))


async def log_event(conn: psycopg.AsyncConnection, alert: Alert, event: str, detail: dict, actor: str = "system"):
    """An event with no row change behind it (e.g. a notification's outcome)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("INSERT INTO alert_events (alert_id, asset, kind, event, actor, detail)"
                          " VALUES (%s, %s, %s, %s, %s, %s)",
                          (alert.id or None, alert.asset, alert.kind, event, actor, _jsonb(detail)))


async def open_alerts(conn: psycopg.AsyncConnection) -> list[tuple[Alert, int, datetime, int, datetime | None]]:
    """Open alerts for `AlertManager.load` after a restart: (alert, occurrences, last_seen, escalation_level,
    escalated_at)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM alerts WHERE cleared_at IS NULL")
        rows = await cur.fetchall()
    # A re-opened, unacknowledged alert escalates from its return (`AlertManager._reopen`), also after a restart.
    return [(row_to_alert(r), r["occurrences"], r["last_seen"], r["escalation_level"],
             max((t for t in (r["escalated_at"], r.get("reopened_at") if r["acknowledged_at"] is None else None)
                  if t is not None), default=None))
            for r in rows]


async def recently_cleared(conn: psycopg.AsyncConnection, within_s: float,
                           now: datetime) -> list[tuple[Alert, int, datetime, int, datetime | None]]:
    """Alerts the gateway cleared (not a person) less than ``within_s`` before ``now`` whose condition has no open
    alert, the latest per condition: for `AlertManager.load_recent` after a restart."""
    if within_s <= 0:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT DISTINCT ON (dedup_key) * FROM alerts a WHERE cleared_by = 'system'"
            " AND cleared_at > %s - make_interval(secs => %s)"
            " AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.dedup_key = a.dedup_key AND o.cleared_at IS NULL)"
            " ORDER BY dedup_key, cleared_at DESC", (now, within_s))
        rows = await cur.fetchall()
    return [(row_to_alert(r), r["occurrences"], r["last_seen"], r["escalation_level"], r["escalated_at"])
            for r in rows]


async def cleared_ids(conn: psycopg.AsyncConnection, ids: list[str]) -> dict[str, tuple[datetime, str]]:
    """Which of ``ids`` are stored and cleared (by a person in the console, or by another writer): id -> (cleared_at,
    cleared_by)."""
    cur = await conn.execute("SELECT id, cleared_at, coalesce(cleared_by, 'system') FROM alerts"
                             " WHERE id = ANY(%s) AND cleared_at IS NOT NULL", (ids,))
    return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


async def acknowledged_ids(conn: psycopg.AsyncConnection, ids: list[str]) -> dict[str, tuple[datetime, str]]:
    """Which of ``ids`` are acknowledged: id -> (acknowledged_at, acknowledged_by)."""
    cur = await conn.execute("SELECT id, acknowledged_at, coalesce(acknowledged_by, '') FROM alerts"
                             " WHERE id = ANY(%s) AND acknowledged_at IS NOT NULL", (ids,))
    return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


def row_to_alert(r: dict) -> Alert:
    return Alert(r["id"], r["asset"], r["tag"], r["kind"], r["severity"], r["raised_at"], r["message"],
                 r["acknowledged_at"], r["acknowledged_by"], r["cleared_at"], r["evidence"] or {})


async def get_alert(conn: psycopg.AsyncConnection, alert_id: str) -> dict | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM alerts WHERE id = %s", (alert_id,))
        return await cur.fetchone()


async def add_window(conn: psycopg.AsyncConnection, w: Window, created_by: str = "") -> int:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("INSERT INTO maintenance_windows (asset, tag, starts_at, ends_at, reason, created_by)"
                          " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                          (w.asset, w.tag, w.start, w.end, w.reason, created_by))
        return (await cur.fetchone())[0]


async def windows(conn: psycopg.AsyncConnection, after: datetime) -> list[Window]:
    """Maintenance windows that end after ``after`` (current and planned), cancelled ones left out (m0202)."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT asset, starts_at, ends_at, reason, tag, id FROM maintenance_windows"
                          " WHERE ends_at > %s AND cancelled_at IS NULL ORDER BY starts_at", (after,))
        return [Window(*row) for row in await cur.fetchall()]
