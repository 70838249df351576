"""The alert board's API: list and filter, one alert with its history, acknowledge / clear / comment,
and a server-sent-event stream of changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from console import alerts, audit, suppressed
from console.auth import Principal, StillValid, client_address, require
from console.csvexport import RESPONSES, Column, CSVStream, export, file_name_part, stamp
from console.jsonresp import FastJSON
from console.params import time_range
from console.problems import Problem
from edge.timeouts import within

router = APIRouter(prefix="/api/alerts", tags=["alerts"], default_response_class=FastJSON)
# The stream's last event when its credential ends: the board reloads the page (-> log-in) instead of reconnecting.
SESSION_ENDED = b"event: session-ended\ndata: {}\n\n"


class Comment(BaseModel):
    comment: str = Field("", max_length=2000, description="why; kept in the alert's history and the audit log")


class Filters(BaseModel):
    site: list[str] | None = None
    asset: list[str] | None = None
    severity: list[str] | None = None
    state: list[Literal["raised", "acknowledged", "cleared"]] | None = None
    kind: list[str] | None = None


def filters(site: list[str] | None = Query(None), asset: list[str] | None = Query(None),
            severity: list[str] | None = Query(None),
            state: list[Literal["raised", "acknowledged", "cleared"]] | None = Query(None),
            kind: list[str] | None = Query(None)) -> Filters:
    """Repeatable filters (``?state=raised&state=acknowledged``); within one, any value matches."""
    return Filters(site=site, asset=asset, severity=severity, state=state, kind=kind)


@router.get("")
async def list_alerts(request: Request, f: Filters = Depends(filters), _: Principal = Depends(require("read")),
                      from_: str | None = Query(None, alias="from", description="raised at or after (ISO-8601)"),
                      to: str | None = None, last: str | None = Query(None, description="e.g. P30D"),
                      limit: int = Query(100, ge=1, le=1000), cursor: str | None = None):
    """Alerts newest first, filtered by site / asset / severity / state / kind and the time they were raised;
    ``counts`` gives the number per state and severity under the same filters but the state (board header)."""
    since = until = None
    if from_ or to or last:
        tr = time_range(from_, to, last, default=timedelta(days=3650))
        since, until = tr.start, tr.end
    return await alerts.list_alerts(request.app.state.db, limit=limit, cursor=cursor, since=since, until=until,
                                    **f.model_dump())


COLUMNS = (Column("id"), Column("raised_at", kind="time"), Column("severity"), Column("state"), Column("site"),
           Column("asset"), Column("tag"), Column("kind"), Column("message"), Column("acknowledged_at", kind="time"),
           Column("acknowledged_by"), Column("ack_comment"), Column("cleared_at", kind="time"), Column("cleared_by"))


@router.get(".csv", response_class=CSVStream, responses=RESPONSES)
async def alerts_csv(request: Request, f: Filters = Depends(filters), _: Principal = Depends(require("read")),
                     from_: str | None = Query(None, alias="from", description="raised at or after (ISO-8601)"),
                     to: str | None = None, last: str | None = Query(None, description="e.g. P30D")):
    """The alerts of `GET /api/alerts` under the same filters, all of them (no pages; at most
    ``console.csv_max_rows``, ``X-Valvoja-Truncated``), newest raised first, as CSV: the board's columns and the
    acknowledgement's comment."""
    since = until = None
    if from_ or to or last:
        tr = time_range(from_, to, last, default=timedelta(days=3650))
        since, until = tr.start, tr.end
    sql, params = alerts.export_query(await alerts.shape(request.app.state.db), since=since, until=until,
                                      **f.model_dump())
    # What the file holds: the first assets and the states chosen, the range.
    span = [stamp(since), stamp(until)] if since else []
    name = "_".join(["alerts", *(file_name_part(a, 40) for a in (f.asset or [])[:3]), *(f.state or []), *span])
    return await export(request, sql, params, COLUMNS, file_name=file_name_part(name, 200))


def _matches(row: dict, f: Filters, keys: tuple[str, ...] = ("site", "asset", "severity", "state", "kind")) -> bool:
    for key in keys:
        want = getattr(f, key)
        if want and row.get(key) not in want:
            return False
    return True


# What an alert keeps for life; its state and severity change (acknowledged, cleared, escalated).
_FIXED = ("site", "asset", "kind")


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: alert` with the alert row as JSON data, per change; "
                                            "`event: alert-left` with the row of a change that does not match the "
                                            "state or severity filter (any more); "
                                            "`event: session-ended` last when the credential ends"}})
async def stream(request: Request, f: Filters = Depends(filters), p: Principal = Depends(require("read"))):
    """Server-sent events: every insert or update of an alert matching the filters, as it happens; a change of an
    alert of the filter's sites, assets and kinds whose state or severity does not match them comes as
    ``event: alert-left`` (acknowledged or cleared under ``state=raised``: the client drops it).
    A comment line every ``alert_heartbeat_s`` (15 s) keeps proxies from closing the connection. When its
    session or API token stops being valid (log-out, expiry, user disabled, token revoked) the stream sends
    ``event: session-ended`` and ends (a browser reloads the page and so reaches the log-in page; reconnecting
    would only get 401). That is checked at each heartbeat and before each batch of events, a yes kept for
    `console.auth.RECHECK_S` (5 s; a log-out or revocation through this process voids it at once)."""
    feed = request.app.state.feed
    heartbeat = request.app.state.config.console.alert_heartbeat_s
    valid = StillValid(request.app.state.db, p)
    queue = feed.subscribe()

    async def events():
        try:
            yield b"retry: 2000\n: connected\n\n"
            while True:
                try:
                    rows = [await within(queue.get(), heartbeat)]
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    if not await valid():
                        yield SESSION_ENDED
                        return
                    yield b": keep-alive\n\n"
                    continue
                while not queue.empty():  # what else is waiting goes out under the same check
                    rows.append(queue.get_nowait())
                if not await valid():
                    yield SESSION_ENDED
                    return
                for row in rows:
                    if row is None:
                        yield b"event: reload\ndata: {}\n\n"
                        return
                    if _matches(row, f):
                        yield b"event: alert\ndata: " + orjson.dumps(row) + b"\n\n"
                    elif _matches(row, f, _FIXED):
                        # Changed out of the filter's states or severities: a client filtering on state=raised
                        # was never told of the acknowledgement and kept showing the alert as raised.
                        yield b"event: alert-left\ndata: " + orjson.dumps(row) + b"\n\n"
        finally:
            feed.unsubscribe(queue)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/suppressed")
async def list_suppressed(request: Request, asset: list[str] | None = Query(None),
                          _: Principal = Depends(require("read"))):
    """Conditions a current maintenance window hides (no alert is raised for them): asset, tag, kind, severity,
    message, when first seen in the window, and the window (id, reason, ``ends_at``, the zone it was planned in).
    Read-only; ``?asset=`` repeatable."""
    return {"items": await suppressed.current(request.app.state.db, asset)}


@router.get("/{alert_id}")
async def get_alert(request: Request, alert_id: str, _: Principal = Depends(require("read"))):
    """One alert with its evidence, its history (raised, acknowledged, escalated, cleared, notified, comments)
    and its reviews."""
    db = request.app.state.db
    row = await alerts.get(db, alert_id)
    row["history"] = await alerts.history(db, alert_id)
    row["reviews"] = await db.fetch("SELECT verdict, comment, reviewer, created_at FROM prediction_feedback "
                                    "WHERE alert_id = %s ORDER BY created_at, id", (alert_id,)) \
        if await db.has_table("prediction_feedback") else []
    return row


@router.get("/{alert_id}/trace")
async def trace(request: Request, alert_id: str, _: Principal = Depends(require("read"))):
    """Traceability of the alert (DESIGN.md §2), at its raise and at its latest return or rise of severity: each
    evidence tag and model input tag with its registry entry and the calibration record in force at the evidence
    time (a derived indicator's sources too, down to the measured tag); the prediction
    behind it (model id, ONNX sha256, registry version with its training data, parent and gate); the input window
    and whether its readings are still stored. A missing piece is named in a ``*_unknown`` field, never an error
    (`maintenance.trace`, shared with ``valvoja maintenance trace``)."""
    from maintenance.trace import trace_alert

    db = request.app.state.db
    await alerts.shape(db)
    async with db.conn() as conn:
        out = await trace_alert(conn, alert_id, registry_dir=request.app.state.config.models.registry)
    if out is None:
        raise Problem(404, f"no alert {alert_id!r}")
    return out


async def _change(request: Request, p: Principal, alert_id: str, action: str, comment: str):
    db = request.app.state.db
    await alerts.shape(db)
    async with db.conn() as conn, conn.transaction():
        if action == "ack":
            result = await alerts.acknowledge(conn, alert_id, p.name, comment)
        elif action == "clear":
            result = await alerts.clear(conn, alert_id, p.name, comment)
        else:
            result = await alerts.add_comment(conn, alert_id, p.name, comment)
        async with conn.cursor() as cur:
            await audit.record(cur, p, f"alert.{action}", target_kind="alert", target_id=alert_id,
                               detail={"comment": comment}, client=client_address(request))
    request.app.state.feed.wake()
    return result


@router.post("/{alert_id}/ack")
async def acknowledge(request: Request, alert_id: str, body: Comment, p: Principal = Depends(require("alerts.write"))):
    """Acknowledge a raised alert with a comment (engineer or admin). 409 if it was acknowledged or cleared."""
    return await _change(request, p, alert_id, "ack", body.comment)


@router.post("/{alert_id}/clear")
async def clear(request: Request, alert_id: str, body: Comment, p: Principal = Depends(require("alerts.write"))):
    """Clear an alert by hand (engineer or admin), with a comment saying why."""
    return await _change(request, p, alert_id, "clear", body.comment)


@router.post("/{alert_id}/comment")
async def comment(request: Request, alert_id: str, body: Comment, p: Principal = Depends(require("alerts.write"))):
    """Add a comment to an alert's history."""
    if not body.comment.strip():
        raise Problem(422, "comment: must not be empty", param="comment")
    return await _change(request, p, alert_id, "comment", body.comment)


class AlertReview(BaseModel):
    verdict: Literal["right", "wrong"]
    comment: str = Field("", max_length=2000)


@router.post("/{alert_id}/review")
async def review(request: Request, alert_id: str, body: AlertReview,
                 p: Principal = Depends(require("predictions.review"))):
    """Mark an alert right (a real fault) or wrong (a false alarm) with a comment (maintenance or admin);
    stored as feedback that model evaluation reads."""
    db = request.app.state.db
    await db.require("prediction_feedback", owner="maintenance")
    async with db.conn() as conn, conn.transaction():
        await alerts.exists(conn, alert_id)
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO prediction_feedback (alert_id, verdict, comment, reviewer) "
                              "VALUES (%s, %s, %s, %s) RETURNING id, created_at",
                              (alert_id, body.verdict, body.comment, p.name))
            fb = await cur.fetchone()
            await audit.record(cur, p, "alert.review", target_kind="alert", target_id=alert_id,
                               detail={"verdict": body.verdict, "comment": body.comment},
                               client=client_address(request))
    return {"alert_id": alert_id, "verdict": body.verdict, "feedback_id": fb["id"], "reviewed_by": p.name,
            "reviewed_at": fb["created_at"]}
