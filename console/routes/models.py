"""Models: the registry (champion, candidates, retired) with their cards, and an uncertainty report per
model computed from the stored predictions: interval width and nominal coverage over time, and the
empirical coverage where the predicted quantity is a measured tag (the prediction's ``target``)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request

from console.auth import Principal, require
from console.jsonresp import FastJSON
from console.params import time_range
from console.problems import Problem

router = APIRouter(prefix="/api/models", tags=["models"], default_response_class=FastJSON)
OWNER = "models"
REGISTRY_TABLES = ("model_registry", "models", "model_versions")


async def _registry(db) -> str:
    for name in REGISTRY_TABLES:
        if await db.has_table(name):
            return name
    raise Problem(503, f"no model registry table ({' / '.join(REGISTRY_TABLES)}) in this database yet; it is created "
                       "by the models migrations (run `valvoja db migrate`)", missing=list(REGISTRY_TABLES))


def _order(cols: set[str]) -> str:
    for c in ("created_at", "created", "registered_at"):
        if c in cols:
            return f"{c} DESC"
    return "1"


@router.get("")
async def list_models(request: Request, _: Principal = Depends(require("read"))):
    """Every registered model version, grouped by model id, champion first (columns as the registry has them)."""
    db = request.app.state.db
    table = await _registry(db)
    cols = await db.columns(table)
    rows = await db.fetch(f"SELECT * FROM {table} ORDER BY {_order(cols)}")
    groups: dict[str, dict] = {}
    for r in rows:
        mid = str(r.get("model_id") or r.get("name") or r.get("id"))
        g = groups.setdefault(mid, {"model_id": mid, "champion": None, "candidates": [], "retired": []})
        status = (r.get("status") or "").lower()
        if status == "champion" and g["champion"] is None:
            g["champion"] = r
        elif status in ("retired", "archived"):
            g["retired"].append(r)
        else:
            g["candidates"].append(r)
    return {"table": table, "items": list(groups.values())}


@router.get("/{model_id}/uncertainty")
async def uncertainty(request: Request, model_id: str, _: Principal = Depends(require("read")),
                      from_: str | None = Query(None, alias="from"), to: str | None = None, last: str | None = None,
                      bucket: str = Query("day", pattern="^(hour|day|week)$")):
    """Per time bucket: predictions made, mean interval width, nominal coverage, and the empirical coverage
    (share of intervals holding the measured value: the 1-minute mean of the target tag at the prediction time)."""
    db = request.app.state.db
    await db.require("predictions", owner="maintenance")
    cols = await db.columns("predictions")
    tr = time_range(from_, to, last, default=timedelta(days=30))
    width = {"hour": "1 hour", "day": "1 day", "week": "7 days"}[bucket]
    b = db.features.bucket(width, "p.time")
    target_join = ("LEFT JOIN tags t ON t.name = p.target LEFT JOIN readings_1m r ON r.tag_id = t.id "
                   f"AND r.bucket = {db.features.bucket('1 minute', 'p.time')}" if "target" in cols else "")
    actual = "r.sum / nullif(r.count, 0)" if target_join else "NULL::float8"
    rows = await db.fetch(
        f"SELECT {b} AS t, count(*) AS n, avg(p.upper - p.lower) AS mean_width, avg(p.coverage) AS nominal, "
        f"count({actual}) AS n_truth, avg(CASE WHEN {actual} BETWEEN p.lower AND p.upper THEN 1.0 "
        f"WHEN {actual} IS NOT NULL THEN 0.0 END) AS empirical, avg(p.p_value) AS mean_p_value, "
        f"count(DISTINCT p.model_version) AS versions "
        f"FROM predictions p {target_join} WHERE p.model_id = %s AND p.time >= %s AND p.time <= %s "
        "GROUP BY 1 ORDER BY 1", (model_id, tr.start, tr.end))
    if not rows:
        raise Problem(404, f"no predictions of model {model_id!r} between {tr.start.isoformat()} "
                           f"and {tr.end.isoformat()}")
    return {"model_id": model_id, "bucket": bucket, "from": tr.start, "to": tr.end, "items": rows}
