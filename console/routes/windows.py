"""Maintenance windows: list (per asset, current / upcoming / past / cancelled, paged), plan, end early, cancel.

The rules (times and zones, lengths, history) are `maintenance.windows`, shared with
``valvoja maintenance window``; this module adds roles, CSRF (through `require`), the audit entry in the
change's transaction, and problem documents. A running gateway picks a change up at its next sync
(``edge.analytics.SYNC_INTERVAL_S``, 15 s).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from console import audit
from console.auth import Principal, client_address, require
from console.jsonresp import FastJSON
from console.params import decode_cursor, page
from console.problems import Problem
from maintenance import windows
from maintenance.windows import WindowError

router = APIRouter(prefix="/api/maintenance-windows", tags=["maintenance windows"], default_response_class=FastJSON)
State = Literal["current", "upcoming", "past", "cancelled"]


class NewWindow(BaseModel):
    assets: list[str] = Field(..., min_length=1, max_length=200,
                              description="asset names (one window each), or ['*'] for every asset")
    tag: str | None = Field(None, max_length=200, description="only this tag of the (single) asset")
    starts_at: str = Field(..., max_length=64, description="ISO-8601 with an offset (2026-10-24T22:00:00+03:00), "
                                                            "or local time (2026-10-24T22:00) with time_zone")
    ends_at: str = Field(..., max_length=64, description="as starts_at; a local end is the site's wall clock")
    time_zone: str | None = Field(None, max_length=64, description="IANA zone for local times, e.g. Europe/Helsinki")
    reason: str = Field(..., max_length=windows.MAX_REASON, description="work order or job; shown with suppressions")
    long: bool = Field(False, description=f"say so for a window longer than {windows.MAX_LENGTH.days} days")


class EndWindow(BaseModel):
    at: str | None = Field(None, max_length=64, description="new end (default now); offset, or local time in "
                                                            "time_zone or the window's own zone")
    time_zone: str | None = Field(None, max_length=64)
    comment: str = Field("", max_length=2000)


class CancelWindow(BaseModel):
    reason: str = Field("", max_length=2000)


def _problem(exc: WindowError) -> Problem:
    return Problem(exc.status, str(exc), **({"param": exc.param} if exc.param else {}))


def _auditor(request: Request, p: Principal):
    client = client_address(request)

    async def record(cur, action: str, window_id: int, detail: dict) -> None:
        await audit.record(cur, p, action, target_kind="maintenance_window", target_id=window_id, detail=detail,
                           client=client)

    return record


@router.get("")
async def list_windows(request: Request, _: Principal = Depends(require("read")),
                       asset: list[str] | None = Query(None, description="repeatable; also matches '*' windows"),
                       state: list[State] | None = Query(None, description="repeatable; default all"),
                       limit: int = Query(100, ge=1, le=1000), cursor: str | None = None):
    """Windows of the assets asked (and those for every asset), by state. Current and upcoming alone are listed
    soonest first; lists with past or cancelled windows newest first. ``next_cursor`` pages on."""
    await request.app.state.db.require("maintenance_windows", owner="maintenance")
    after = tuple(decode_cursor(cursor, n=2)) if cursor else None
    async with request.app.state.db.conn() as conn:
        rows = await windows.list_windows(conn, assets=asset, states=state, limit=limit, after=after)
    return page(rows, limit, ("starts_at", "id"))


@router.get("/{window_id}")
async def get_window(request: Request, window_id: int, _: Principal = Depends(require("read"))):
    """One window with its history columns (planned end, who ended or cancelled it)."""
    async with request.app.state.db.conn() as conn:
        try:
            return await windows.get(conn, window_id)
        except WindowError as exc:
            raise _problem(exc) from None


@router.post("", status_code=201)
async def plan_window(request: Request, body: NewWindow, p: Principal = Depends(require("windows.plan"))):
    """Plan a window on one or several assets (maintenance or admin): one row per asset, each with its audit
    entry, all or none. Local times are read in ``time_zone`` at their own date (DST-aware); a local time that
    is skipped or repeated by a clock change is refused with the candidates."""
    plan = windows.Plan(assets=body.assets, starts_at=body.starts_at, ends_at=body.ends_at, reason=body.reason,
                        time_zone=body.time_zone, tag=body.tag, long=body.long)
    async with request.app.state.db.conn() as conn:
        try:
            return {"items": await windows.create(conn, plan, p.name, _auditor(request, p))}
        except WindowError as exc:
            raise _problem(exc) from None


@router.post("/{window_id}/end")
async def end_window(request: Request, window_id: int, body: EndWindow,
                     p: Principal = Depends(require("windows.plan"))):
    """End a current window now, or shorten a window to ``at`` (from now on, before its end). The planned end
    stays in ``planned_ends_at``."""
    async with request.app.state.db.conn() as conn:
        try:
            return await windows.end_early(conn, window_id, p.name, _auditor(request, p), at=body.at,
                                           time_zone=body.time_zone, comment=body.comment)
        except WindowError as exc:
            raise _problem(exc) from None


@router.post("/{window_id}/cancel")
async def cancel_window(request: Request, window_id: int, body: CancelWindow,
                        p: Principal = Depends(require("windows.plan"))):
    """Cancel a window that has not started (409 for a started one: end it instead). The row stays, marked."""
    async with request.app.state.db.conn() as conn:
        try:
            return await windows.cancel(conn, window_id, p.name, _auditor(request, p), reason=body.reason)
        except WindowError as exc:
            raise _problem(exc) from None
