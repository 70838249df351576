"""Predictions with their uncertainty, per asset, and their review by maintenance teams (right / wrong +
comment). Reads maintenance's ``predictions`` table and writes its feedback table (see console/README.md
for the columns relied on); every review is also in the audit log."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from console import audit
from console.auth import Principal, client_address, require
from console.csvexport import RESPONSES, Column, CSVStream, export, file_name_part, stamp
from console.jsonresp import FastJSON
from console.params import decode_cursor, equal_filters, page, time_range
from console.problems import Problem

router = APIRouter(prefix="/api", tags=["predictions"], default_response_class=FastJSON)
OWNER = "maintenance"
PRED_COLUMNS = ("id", "model_id", "model_version", "asset", "time", "value", "lower", "upper", "coverage", "p_value",
                "kind")
FEEDBACK = "prediction_feedback"


class Review(BaseModel):
    verdict: Literal["right", "wrong"]
    comment: str = Field("", max_length=2000)


async def _check(db) -> set[str]:
    await db.require("predictions", owner=OWNER)
    cols = await db.columns("predictions")
    missing = [c for c in PRED_COLUMNS if c not in cols]
    if missing:
        raise Problem(503, f"the predictions table lacks column(s) {', '.join(missing)} the console needs",
                      missing=missing)
    return cols


def _review_join(has_feedback: bool, *, comment: bool = False) -> tuple[str, str]:
    """The newest review's columns and join (``comment``: its comment too, as ``review_comment``)."""
    if not has_feedback:
        return ("NULL::text AS verdict, NULL::text AS reviewed_by, NULL::timestamptz AS reviewed_at"
                + (", NULL::text AS review_comment" if comment else "")), ""
    return ("f.verdict, f.reviewer AS reviewed_by, f.created_at AS reviewed_at"
            + (", f.comment AS review_comment" if comment else ""),
            f"LEFT JOIN LATERAL (SELECT verdict, reviewer, created_at, comment FROM {FEEDBACK} x "
            # id breaks a tie of created_at (reviews written in one transaction share now()) as maintenance.review
            # does: the console showed the older verdict where `valvoja maintenance review list` showed the newer.
            "WHERE x.prediction_id = p.id ORDER BY created_at DESC, id DESC LIMIT 1) f ON true")


@router.get("/predictions")
async def list_predictions(request: Request, _: Principal = Depends(require("read")), asset: str | None = None,
                           kind: str | None = None, model_id: str | None = None,
                           reviewed: bool | None = Query(None, description="reviewed only (true) or not (false)"),
                           from_: str | None = Query(None, alias="from"), to: str | None = None,
                           last: str | None = None, limit: int = Query(100, ge=1, le=1000), cursor: str | None = None):
    """Predictions newest first with interval (lower, upper, nominal coverage) or p-value, model version,
    and the latest review."""
    db = request.app.state.db
    await _check(db)
    has_fb = await db.has_table(FEEDBACK)
    tr = time_range(from_, to, last, default=timedelta(days=30))
    where = ["p.time >= %(start)s", "p.time <= %(end)s"]
    params: dict = {"start": tr.start, "end": tr.end, "n": limit + 1}
    equal_filters(where, params, {"asset": ("p.asset", asset), "kind": ("p.kind", kind),
                                  "model_id": ("p.model_id", model_id)})
    if reviewed is not None and has_fb:
        where.append(("" if reviewed else "NOT ") + f"EXISTS (SELECT 1 FROM {FEEDBACK} x WHERE x.prediction_id = p.id)")
    if cursor:
        params["ct"], params["cid"] = decode_cursor(cursor, n=2)
        where.append("(p.time, p.id) < (%(ct)s::timestamptz, %(cid)s)")
    sel, join = _review_join(has_fb)
    rows = await db.fetch(f"SELECT p.*, {sel} FROM predictions p {join} WHERE {' AND '.join(where)} "
                          "ORDER BY p.time DESC, p.id DESC LIMIT %(n)s", params)
    return page(rows, limit, ("time", "id"))


@router.get("/assets/{name:path}/predictions")
async def asset_predictions(request: Request, name: str, _: Principal = Depends(require("read")),
                            from_: str | None = Query(None, alias="from"), to: str | None = None,
                            last: str | None = None, max_points: int = Query(2000, ge=10, le=20000)):
    """An asset's predictions as series per (kind, model, target), oldest first, for drawing with their
    interval bands; plus the newest of each series (e.g. the current RUL with its interval). A series longer
    than ``max_points`` is thinned evenly over the whole range; its oldest and newest rows are always kept."""
    db = request.app.state.db
    cols = await _check(db)
    tr = time_range(from_, to, last, default=timedelta(days=7))
    target = "p.target" if "target" in cols else "''"
    details = "p.details" if "details" in cols else "'{}'::jsonb"
    # Thinned in the database: of the n rows of a series (i = 0 .. n-1 by time) those where
    # floor(i * (m-1) / (n-1)) first takes each of its m values, i.e. i = 0, the newest (only i = n-1 reaches
    # m-1), and m-2 evenly spaced between; a series of at most m rows comes whole.
    rows = await db.fetch(
        "SELECT * FROM (SELECT p.id, p.kind, p.model_id, p.model_version, p.time, p.value, p.lower, p.upper, "
        f"p.coverage, p.p_value, {target} AS target, {details} AS details, "
        f"row_number() OVER (PARTITION BY p.kind, p.model_id, {target} ORDER BY p.time, p.id) - 1 AS i, "
        f"count(*) OVER (PARTITION BY p.kind, p.model_id, {target}) AS n "
        "FROM predictions p WHERE p.asset = %(asset)s AND p.time >= %(start)s AND p.time <= %(end)s) x "
        "WHERE n <= %(m)s OR i = 0 OR i * (%(m)s - 1) / greatest(n - 1, 1) "
        "> (i - 1) * (%(m)s - 1) / greatest(n - 1, 1) "
        "ORDER BY time, id", {"asset": name, "start": tr.start, "end": tr.end, "m": max_points})
    series: dict[tuple, dict] = {}
    for r in rows:
        del r["i"], r["n"]
        key = (r["kind"], r["model_id"], r["target"])
        s = series.setdefault(key, {"kind": r["kind"], "model_id": r["model_id"], "target": r["target"],
                                    "model_version": r["model_version"], "coverage": r["coverage"],
                                    "t": [], "value": [], "lower": [], "upper": [], "p_value": [], "threshold": None,
                                    "alpha": None})
        s["t"].append(r["time"])
        s["value"].append(r["value"])
        s["lower"].append(r["lower"])
        s["upper"].append(r["upper"])
        s["p_value"].append(r["p_value"])
        d = r["details"] or {}
        # An anomaly score may come with a score threshold, or (maintenance's conformal detectors) with the
        # false-alarm rate alpha its p-value is compared with.
        if d.get("threshold") is not None:
            s["threshold"] = d["threshold"]
        if d.get("alpha") is not None:
            s["alpha"] = d["alpha"]
        s["latest"] = r  # rows come oldest first and the newest of each series is always kept
    out = list(series.values())
    return {"asset": name, "from": tr.start, "to": tr.end, "series": out}


CSV_COLUMNS = (Column("id", kind="int"), Column("time", kind="time"), Column("asset"), Column("kind"),
               Column("model_id"), Column("model_version"), Column("target"), Column("value", kind="number"),
               Column("lower", kind="number"), Column("upper", kind="number"), Column("coverage", kind="number"),
               Column("p_value", kind="number"), Column("alpha", kind="number"), Column("verdict"),
               Column("reviewed_by"), Column("reviewed_at", kind="time"), Column("review_comment"))


@router.get("/assets/{name:path}/predictions.csv", response_class=CSVStream, responses=RESPONSES)
async def asset_predictions_csv(request: Request, name: str, _: Principal = Depends(require("read")),
                                from_: str | None = Query(None, alias="from"), to: str | None = None,
                                last: str | None = None):
    """An asset's predictions over a range (default the last 7 days) as CSV, oldest first, every row (not
    thinned; at most ``console.csv_max_rows``, ``X-Valvoja-Truncated``): value, interval (``lower``, ``upper``,
    nominal ``coverage``; ``upper`` empty next to a ``lower``: open-ended) or ``p_value`` with the ``alpha`` it is
    judged against, model and version, and the newest review (verdict, reviewer, time,
    comment), the rows of `GET /api/predictions?asset=`."""
    db = request.app.state.db
    cols = await _check(db)
    tr = time_range(from_, to, last, default=timedelta(days=7))
    sel, join = _review_join(await db.has_table(FEEDBACK), comment=True)
    target = "p.target" if "target" in cols else "NULL::text"
    # The level a p-value is judged against (details.alpha, as maintenance's detectors and the runtime store it):
    # a p-value alone in a spreadsheet does not say whether it was an alarm.
    alpha = ("CASE WHEN jsonb_typeof(p.details->'alpha') = 'number' THEN (p.details->>'alpha')::float8 END"
             if "details" in cols else "NULL::float8")
    sql = (f"SELECT p.id, p.time, p.asset, p.kind, p.model_id, p.model_version, {target} AS target, p.value, "
           f"p.lower, p.upper, p.coverage, p.p_value, {alpha} AS alpha, {sel} FROM predictions p {join} "
           "WHERE p.asset = %(asset)s AND p.time >= %(start)s AND p.time <= %(end)s ORDER BY p.time, p.id")
    return await export(request, sql, {"asset": name, "start": tr.start, "end": tr.end}, CSV_COLUMNS,
                        file_name=f"{file_name_part(name)}_predictions_{stamp(tr.start)}_{stamp(tr.end)}")


@router.post("/predictions/{prediction_id}/review")
async def review(request: Request, prediction_id: int, body: Review,
                 p: Principal = Depends(require("predictions.review"))):
    """Mark a prediction right or wrong with a comment (maintenance or admin). Stored as feedback that
    model evaluation reads; repeated reviews are kept (the newest counts)."""
    db = request.app.state.db
    await _check(db)
    await db.require(FEEDBACK, owner=OWNER)
    async with db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT id, model_id, model_version, kind FROM predictions WHERE id = %s", (prediction_id,))
        pred = await cur.fetchone()
        if pred is None:
            raise Problem(404, f"no prediction {prediction_id}")
        await cur.execute(f"INSERT INTO {FEEDBACK} (prediction_id, verdict, comment, reviewer) VALUES (%s, %s, %s, %s) "
                          "RETURNING id, created_at", (prediction_id, body.verdict, body.comment, p.name))
        fb = await cur.fetchone()
        await audit.record(cur, p, "prediction.review", target_kind="prediction", target_id=prediction_id,
                           detail={"verdict": body.verdict, "comment": body.comment, "model_id": pred["model_id"],
                                   "model_version": pred["model_version"]}, client=client_address(request))
    return {"prediction_id": prediction_id, "verdict": body.verdict, "feedback_id": fb["id"],
            "reviewed_at": fb["created_at"], "reviewed_by": p.name}

