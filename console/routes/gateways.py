"""Gateway health: each configured gateway's ``/healthz`` (collectors, spool depth, database link,
last errors) fetched live, and the dead letters stored in the database."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
from fastapi import APIRouter, Depends, Query, Request

from console.auth import require
from console.jsonresp import FastJSON
from console.params import decode_cursor, page, time_range
from console.problems import Problem

router = APIRouter(prefix="/api", default_response_class=FastJSON, dependencies=[Depends(require("read"))])


async def _probe(client: httpx.AsyncClient, gw) -> dict:
    t0 = time.perf_counter()
    out = {"name": gw.name, "health_url": gw.health_url, "metrics_url": gw.metrics_url}
    try:
        r = await client.get(gw.health_url, timeout=gw.timeout_s)
    except httpx.HTTPError as exc:
        return out | {"reachable": False, "healthy": False, "error": f"{type(exc).__name__}: {exc}".rstrip(": "),
                      "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}
    try:
        detail = r.json()
    except ValueError:
        detail = {"body": r.text[:500]}
    return out | {"reachable": True, "healthy": r.status_code == 200, "http_status": r.status_code,
                  "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1), "health": detail}


@router.get("/gateways", tags=["gateways"])
async def gateways(request: Request):
    """Health of every gateway in the console configuration, probed now (in parallel)."""
    gws = request.app.state.config.gateways
    async with httpx.AsyncClient(follow_redirects=False) as client:
        items = await asyncio.gather(*(_probe(client, gw) for gw in gws))
    return {"items": list(items)}


@router.get("/gateways/{name}", tags=["gateways"])
async def gateway(request: Request, name: str):
    """Health of one gateway."""
    for gw in request.app.state.config.gateways:
        if gw.name == name:
            async with httpx.AsyncClient(follow_redirects=False) as client:
                return await _probe(client, gw)
    raise Problem(404, f"no gateway {name!r} in the console configuration ([[gateways]])")


@router.get("/dead-letters", tags=["gateways"])
async def dead_letters(request: Request, source: str | None = None,
                       from_: str | None = Query(None, alias="from"), to: str | None = None, last: str | None = None,
                       limit: int = Query(50, ge=1, le=1000), cursor: str | None = None):
    """Messages a collector could not decode, newest first (payload shown as text, cut at 500 bytes)."""
    tr = time_range(from_, to, last, default=timedelta(days=7))
    where, params = ["time >= %(start)s", "time <= %(end)s"], {"start": tr.start, "end": tr.end, "n": limit + 1}
    if source:
        where.append("source = %(source)s")
        params["source"] = source
    if cursor:
        params["ct"], params["cid"] = decode_cursor(cursor, n=2)
        where.append("(time, id) < (%(ct)s::timestamptz, %(cid)s)")
    db = request.app.state.db
    rows = await db.fetch(
        "SELECT id, time, source, topic, encode(substring(payload for 500), 'escape') AS payload, "
        "length(payload) AS bytes, error "
        f"FROM dead_letters WHERE {' AND '.join(where)} ORDER BY time DESC, id DESC LIMIT %(n)s", params)
    out = page(rows, limit, ("time", "id"))
    counts = await db.fetch("SELECT source, count(*) AS n, max(time) AS newest FROM dead_letters "
                            "WHERE time >= %(start)s AND time <= %(end)s GROUP BY source ORDER BY source", params)
    return out | {"by_source": counts}
