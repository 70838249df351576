"""Models: the registry (champion, candidates, retired) with their cards; promotion through the gate and
rollback (admins, `models.registry` on the registry directory of ``[models]`` and the console's database);
the uncertainty report of a version (``valvoja models report``'s HTML, generated on demand from the version's
stored held-out rows); and an uncertainty summary per model from the stored predictions: interval width and
nominal coverage over time, and the empirical coverage where the predicted quantity is a measured tag (the
prediction's ``target``).

Promote and rollback run in `models.registry`, in one transaction with the ``model_events`` row naming the user
and the console's audit entry (the outcome and the gate's comparison, also when the gate refuses): the change
and its audit entry commit together or not at all."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from console import audit
from console.auth import Principal, client_address, require
from console.jsonresp import FastJSON
from console.params import time_range
from console.problems import Problem
from models.conformal import proportion_interval

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/models", tags=["models"], default_response_class=FastJSON)
OWNER = "models"
REGISTRY_TABLES = ("model_registry", "models", "model_versions")
# The report is a document of its own (inline CSS and SVG, no scripts): nothing may be fetched from anywhere.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
              "base-uri 'none'; form-action 'none'")


class PromoteBody(BaseModel):
    comment: str = Field("", max_length=2000, description="why (kept in the audit log)")


class RollbackBody(BaseModel):
    to: int | None = Field(None, ge=1, description="version to restore (default: the champion before this one)")
    comment: str = Field("", max_length=2000, description="why (kept in the audit log)")


REFUSAL_EXAMPLE = {
    "type": "/problems/gate-refused", "title": "Conflict", "status": 409,
    "detail": "the gate refused gt-nox v3: candidate mae 4.91 is worse than champion 4.62 (lower is better)",
    "instance": "/api/models/gt-nox/versions/3/promote", "comparison": {
    "model_id": "gt-nox", "candidate": 3, "champion": 2, "metric": "mae", "direction": "lower",
    "candidate_value": 4.91, "champion_value": 4.62, "rows": 1470, "holdout": "held-out rows of v3",
    "holdout_fingerprint": "7d6f...", "parity_passed": True, "accepted": False,
    "reason": "candidate mae 4.91 is worse than champion 4.62 (lower is better)",
    "candidate_metrics": {"mae": 4.91, "rmse": 6.3}, "champion_metrics": {"mae": 4.62, "rmse": 6.0}},
    "text": "gate REFUSED: gt-nox v3 vs champion v2 on 1470 held-out rows ..."}
PROBLEM = {"content": {"application/problem+json": {}}}
# What the uncertainty summary's columns mean where the stored predictions are a biased sample (API and page).
EMPIRICAL_LEVEL = 0.95
NOTES = {
    "empirical": "share of the n_judged intervals with a measured truth that hold it, with its exact (Clopper-Pearson) "
                 "95 % confidence interval empirical_lower .. empirical_upper; below nominal only where "
                 "empirical_upper is",
    "mean_width": "of closed intervals; n_open open-ended ones ('lower or more', 'upper or less') have no finite "
                  "width",
    "flagged_share": "share of the STORED predictions with p <= alpha (alpha: the smallest, alpha_max: the largest "
                     "in the bucket). Maintenance's live detectors store a prediction every predict_every_s and on "
                     "every flagged sample, so the share over-states the flag rate per scored sample; on a healthy "
                     "asset it is an upper bound of the false alarm rate, to compare with alpha.",
}


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
    """Per time bucket: predictions made; for intervals the mean width, nominal coverage and the empirical coverage
    (share of intervals holding the measured value: the 1-minute mean of the target tag at the prediction time);
    for anomaly scorers the alpha and the share of stored predictions flagged (p <= alpha).

    An open upper end (upper NULL next to a lower: "lower or more", a RUL at the model's cap) holds every value at
    or above its lower end, an open lower end ("upper or less") every value at or below its upper end; neither has
    a finite width, so ``mean_width`` is of the closed intervals and ``n_open`` says how many were open. A
    prediction with no interval (both bounds NULL) has no coverage (NULL, not a miss). Days and weeks begin at the
    plant's midnight (``zone``: ``console.time_zone``, else UTC)."""
    db = request.app.state.db
    await db.require("predictions", owner="maintenance")
    cols = await db.columns("predictions")
    tr = time_range(from_, to, last, default=timedelta(days=30))
    width = {"hour": "1 hour", "day": "1 day", "week": "7 days"}[bucket]
    # Days and weeks are the plant's (as the trends' day buckets): a UTC day began at 02:00 in Helsinki.
    zone = request.app.state.config.console.time_zone if bucket != "hour" else None
    b = db.features.local_bucket(width, "p.time", "%(zone)s::text") if zone else db.features.bucket(width, "p.time")
    target_join = ("LEFT JOIN tags t ON t.name = p.target LEFT JOIN readings_1m r ON r.tag_id = t.id "
                   f"AND r.bucket = {db.features.bucket('1 minute', 'p.time')}" if "target" in cols else "")
    actual = "r.sum / nullif(r.count, 0)" if target_join else "NULL::float8"
    # The alpha each anomaly prediction was flagged against (maintenance.live stores it in details).
    alpha = "(p.details->>'alpha')::float8" if "details" in cols else "NULL::float8"
    held = (f"CASE WHEN {actual} IS NULL OR (p.lower IS NULL AND p.upper IS NULL) THEN NULL "
            f"WHEN (p.lower IS NULL OR {actual} >= p.lower) AND (p.upper IS NULL OR {actual} <= p.upper) "
            "THEN 1.0 ELSE 0.0 END")
    rows = await db.fetch(
        f"SELECT {b} AS t, count(*) AS n, avg(p.upper - p.lower) AS mean_width, "
        "count(*) FILTER (WHERE (p.lower IS NULL) <> (p.upper IS NULL)) AS n_open, avg(p.coverage) AS nominal, "
        f"count({actual}) AS n_truth, avg({held}) AS empirical, count({held}) AS n_judged, "
        f"coalesce(sum({held}), 0)::int AS n_held, min({alpha}) AS alpha, max({alpha}) AS alpha_max, "
        f"count(p.p_value) FILTER (WHERE {alpha} IS NOT NULL) AS n_p_values, "
        f"avg(CASE WHEN p.p_value <= {alpha} THEN 1.0 WHEN p.p_value IS NOT NULL AND {alpha} IS NOT NULL "
        "THEN 0.0 END) AS flagged_share, count(DISTINCT p.model_version) AS versions "
        f"FROM predictions p {target_join} WHERE p.model_id = %(model)s AND p.time >= %(start)s "
        "AND p.time <= %(end)s GROUP BY 1 ORDER BY 1",
        {"model": model_id, "start": tr.start, "end": tr.end, "zone": zone})
    if not rows:
        raise Problem(404, f"no predictions of model {model_id!r} between {tr.start.isoformat()} "
                           f"and {tr.end.isoformat()}")
    for r in rows:
        # The empirical coverage of a bucket is itself an estimate from n_judged intervals: 2 of 3 is no evidence
        # of a miss against 90 %, 8,600 of 10,000 is (the page marked both alike, by a fixed 5-point tolerance).
        ci = proportion_interval(r.pop("n_held"), r["n_judged"], EMPIRICAL_LEVEL)
        r["empirical_lower"], r["empirical_upper"] = ci if ci is not None else (None, None)
    return {"model_id": model_id, "bucket": bucket, "zone": zone or "UTC", "from": tr.start, "to": tr.end,
            "items": rows, "notes": NOTES}


# ---------------------------------------------------------------- promote / rollback (admins)

def _registry_dir(request: Request) -> Path:
    return request.app.state.config.models.registry


# An absolute path of two or more parts, not inside a word (so "mm/s" or "a/b" stay).
_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/:;,'\"()\[\]]+/)+[^\s/:;,'\"()\[\]]*")


def _public(request: Request, message: str) -> str:
    """``message`` without server file paths (any logged-in user reads problem documents): the configured
    directories by their key, any other absolute path as ``<path>``."""
    cfg = request.app.state.config.models
    for key, path in (("report_cache", cfg.report_cache), ("registry", cfg.registry)):
        for form in {str(path.resolve()), str(path)}:
            message = message.replace(form, f"[models] {key}")
    return _PATH.sub("<path>", message)


async def _registry_call(request: Request, fn, *args, **kw):
    """Run a `models.registry` function in a worker thread (it opens its own connection and runs ONNX graphs) and
    turn its errors into problem documents (file paths stay in the log); `GateRefused` is passed through."""
    from edge.errors import ConfigError
    from models.export import ParityError
    from models.registry import GateRefused

    db = request.app.state.db
    await db.require("model_registry", "model_events", owner=OWNER)
    try:
        return await asyncio.to_thread(fn, *args, root=_registry_dir(request), dsn=db.conninfo, **kw)
    except GateRefused:
        raise
    except LookupError as exc:
        raise Problem(404, _public(request, str(exc).strip("'\""))) from None
    except (ValueError, ParityError) as exc:
        raise Problem(409, _public(request, str(exc))) from None
    except ConfigError as exc:
        log.warning("model registry: %s", exc)
        raise Problem(503, _public(request, f"model registry: {exc}")) from None
    except OSError as exc:
        log.warning("model registry directory %s: %s", _registry_dir(request), exc)
        raise Problem(503, f"model registry directory: {exc.strerror or 'cannot read or write a file'} (the console's "
                           "log names the file; check [models] registry and report_cache in its configuration)") \
            from None


async def _audit(request: Request, p: Principal, action: str, model_id: str, version, detail: dict) -> None:
    db = request.app.state.db
    async with db.conn() as conn, conn.transaction(), conn.cursor() as cur:
        await audit.record(cur, p, action, target_kind="model", target_id=f"{model_id}/{version}", detail=detail,
                           client=client_address(request))


@router.post("/{model_id}/versions/{version}/promote",
             responses={409: {"content": {"application/problem+json": {"example": REFUSAL_EXAMPLE}},
                              "description": "the gate refused (``comparison`` in the problem document), or the "
                                             "version cannot be promoted"},
                        404: {**PROBLEM, "description": "no such model or version"}})
async def promote(request: Request, model_id: str, version: int, body: PromoteBody | None = None,
                  p: Principal = Depends(require("models.admin"))):
    """The promotion gate (admins): candidate and champion ONNX graphs re-run on the candidate's stored held-out
    rows; the candidate becomes champion only when it passed parity, predicts the champion's target at its alpha
    and matches or beats it by the model's gate metric (fixed by its first promotion, not the candidate's card).
    The comparison is answered either way (a refusal is 409 with ``comparison``); both
    outcomes are in the audit log (``model.promote`` / ``model.promote_refused``) and in ``model_events``."""
    from models.registry import GateRefused
    from models.registry import promote as registry_promote

    comment = body.comment if body else ""
    client = client_address(request)
    audited = []

    def also(conn, cmp) -> None:  # in the registry's transaction
        c = cmp.to_dict()
        action, detail = "model.promote_refused", {"comparison": c, "comment": comment}
        if cmp.accepted:
            action, detail = "model.promote", {**detail, "previous_champion": c["champion"]}
        audit.record_sync(conn, p, action, target_kind="model", target_id=f"{model_id}/{version}", detail=detail,
                          client=client)
        audited.append(action)

    try:
        cmp = await _registry_call(request, registry_promote, model_id, version, actor=p.name, also=also)
    except GateRefused as exc:
        c = exc.comparison.to_dict()
        if not audited:  # refused before any change (already the champion): nothing to commit it with
            await _audit(request, p, "model.promote_refused", model_id, version, {"comparison": c, "comment": comment})
        raise Problem(409, f"the gate refused {model_id} v{version}: {c['reason']}", type_="/problems/gate-refused",
                      comparison=c, text=exc.comparison.describe()) from None
    c = cmp.to_dict()
    return {"model_id": model_id, "champion": version, "previous_champion": c["champion"], "comparison": c,
            "text": cmp.describe(), "promoted_by": p.name}


@router.post("/{model_id}/rollback", responses={404: {**PROBLEM, "description": "no such model or version"},
                                                409: {**PROBLEM, "description": "nothing to roll back to, or the "
                                                                                "version cannot be served"}})
async def rollback(request: Request, model_id: str, body: RollbackBody | None = None,
                   p: Principal = Depends(require("models.admin"))):
    """Put the previous champion back (or ``to``) and retire the current one (admins). No gate: this is the way
    back when a promoted model misbehaves in service; the restored version must have passed parity and its file
    must still have the registered sha256. Audited as ``model.rollback``."""
    from models.registry import rollback as registry_rollback

    body = body or RollbackBody()
    client = client_address(request)

    def also(conn, res: dict) -> None:  # in the registry's transaction
        audit.record_sync(conn, p, "model.rollback", target_kind="model", target_id=f"{model_id}/{res['to']}",
                          detail={**res, "comment": body.comment}, client=client)

    res = await _registry_call(request, registry_rollback, model_id, body.to, actor=p.name, also=also)
    return {**res, "champion": res["to"], "previous_champion": res["from"], "rolled_back_by": p.name}


@router.get("/{model_id}/versions/{version}/gate", responses={404: PROBLEM})
async def gate(request: Request, model_id: str, version: int, _: Principal = Depends(require("read"))):
    """The gate's comparison of a version with the current champion, without changing anything."""
    from models.registry import Registry

    def compare(model_id, version, *, root, dsn):
        return Registry(root, dsn).compare(model_id, version).to_dict()

    return await _registry_call(request, compare, model_id, version)


# ---------------------------------------------------------------- the uncertainty report of a version

_report_locks: dict[tuple, threading.Lock] = {}
_report_locks_guard = threading.Lock()


def _window(n: int) -> int:
    """Rows per point of the report's over-time plots: about a dozen points over the held-out rows."""
    return max(12, n // 12)


def _make_report(root: Path, dsn: str, cache: Path, model_id: str, version: int) -> Path:
    """``report.html`` + ``report.json`` of a registered version on its stored held-out rows, generated once per
    (model, version, ONNX sha256) into the cache; later requests get the file."""
    from models.registry import Registry, load_holdout
    from models.report import write_report
    from models.report_cli import model_report

    mv = Registry(root, dsn).get(model_id, version)
    if mv.kind != "regression":
        raise ValueError(f"{model_id} v{version} is an {mv.kind} model: the uncertainty report covers regressors "
                         "(intervals); its p-value calibration is in the card")
    safe_id = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_id)
    final = cache / safe_id / f"v{version}-{mv.sha256[:16]}"
    if (final / "report.html").is_file():
        return final
    with _report_locks_guard:
        lock = _report_locks.setdefault((model_id, version, mv.sha256), threading.Lock())
    with lock:
        if (final / "report.html").is_file():
            return final
        holdout = mv.path / "holdout.npz"
        if not holdout.is_file():
            raise FileNotFoundError(errno.ENOENT, f"the held-out rows of {model_id} v{version} (holdout.npz) are not "
                                                  "in the registry directory", str(holdout))
        table = load_holdout(holdout)
        # no status in the info: it changes, the cached report does not
        rep = model_report(mv.load(), table, model_id=model_id, info={"version": version},
                           data=f"held-out rows of v{version} ({len(table)} rows, stored at registration)",
                           window=_window(len(table)), adaptive_window=min(168, max(24, len(table) // 4)),
                           say=lambda _msg: None)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            write_report(rep, tmp)
            os.replace(tmp, final)  # whole or not at all
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "report.html").is_file():  # else another console process wrote it first
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@router.get("/{model_id}/versions/{version}/report",
            responses={200: {"content": {"text/html": {}, "application/json": {}},
                             "description": "the report (self-contained HTML: inline SVG, no scripts) or its JSON"},
                       404: PROBLEM, 409: PROBLEM})
async def report(request: Request, model_id: str, version: int, _: Principal = Depends(require("read")),
                 format: str = Query("html", pattern="^(html|json)$")):
    """The uncertainty report of a registered version (``valvoja models report``'s HTML + JSON): static and
    adaptive interval coverage against nominal over time, interval width, residuals, and input drift against the
    training data (the card's drift reference), on the held-out rows stored with the version. Generated on the
    first request and kept per ONNX sha256 in ``[models] report_cache``; coverage in service is
    ``/api/models/{model_id}/uncertainty`` (from stored predictions)."""
    cfg = request.app.state.config.models
    final = await _registry_call(request, _make_report_at(cfg.report_cache), model_id, version)
    if format == "json":
        return FileResponse(final / "report.json", media_type="application/json")
    return FileResponse(final / "report.html", media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": REPORT_CSP})


def _make_report_at(cache: Path):
    def run(model_id, version, *, root, dsn):
        return _make_report(root, dsn, cache, model_id, version)

    return run
