"""Review by maintenance teams: predictions and alerts per asset with their uncertainty, right/wrong
feedback, and the precision of past alerts for model evaluation (DESIGN.md §7).

Feedback rows (``prediction_feedback``) point at a prediction or an alert; repeated reviews are kept
and the newest one counts (the console writes the same table). Synchronous psycopg: used by the
command line and by ``valvoja models evaluate`` (`alert_precision`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

import psycopg
from psycopg.rows import dict_row

from edge.sink.housekeeping import evidence_time
from maintenance.uncertainty import proportion_interval

Verdict = Literal["right", "wrong"]
PRECISION_LEVEL = 0.95  # confidence of the interval stated with every precision from reviews
# The console's limit on a review comment (console/routes: Field(max_length=2000), characters): the command line
# stored any length, and a comment the console could not have taken showed on its pages all the same.
COMMENT_MAX_CHARS = 2000

_LATEST_ALERT_VERDICT = (
    "LEFT JOIN LATERAL (SELECT verdict, comment AS review_comment, reviewer, created_at AS reviewed_at"
    " FROM prediction_feedback f WHERE f.alert_id = a.id ORDER BY created_at DESC, id DESC LIMIT 1) fb ON true")
_LATEST_PREDICTION_VERDICT = (
    "LEFT JOIN LATERAL (SELECT verdict, comment AS review_comment, reviewer, created_at AS reviewed_at"
    " FROM prediction_feedback f WHERE f.prediction_id = p.id ORDER BY created_at DESC, id DESC LIMIT 1) fb ON true")


def list_predictions(conn: psycopg.Connection, asset: str, *, since: datetime | None = None,
                     until: datetime | None = None, kind: str | None = None, limit: int = 100) -> list[dict]:
    """An asset's predictions, newest first: value, interval (lower, upper, nominal coverage) or p-value,
    model version, input span, and the latest review."""
    where, params = ["p.asset = %(asset)s"], {"asset": asset, "n": limit}
    for col, op, val in (("time", ">=", since), ("time", "<=", until), ("kind", "=", kind)):
        if val is not None:
            key = f"{col}{len(params)}"
            where.append(f"p.{col} {op} %({key})s")
            params[key] = val
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT p.*, fb.* FROM predictions p {_LATEST_PREDICTION_VERDICT} WHERE {' AND '.join(where)}"
                    " ORDER BY p.time DESC LIMIT %(n)s", params)
        return cur.fetchall()


def list_alerts(conn: psycopg.Connection, asset: str, *, since: datetime | None = None, limit: int = 100) -> list[dict]:
    """An asset's alerts, newest first, with the uncertainty of the prediction behind each (from its
    evidence: p-value or interval, model version) and the latest review."""
    where, params = ["a.asset = %(asset)s"], {"asset": asset, "n": limit}
    if since is not None:
        where.append("a.raised_at >= %(since)s")
        params["since"] = since
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT a.*, fb.* FROM alerts a {_LATEST_ALERT_VERDICT} WHERE {' AND '.join(where)}"
                    " ORDER BY a.raised_at DESC LIMIT %(n)s", params)
        rows = cur.fetchall()
    for r in rows:
        pred = (r.get("evidence") or {}).get("prediction") or {}
        # alpha: the level an anomaly's p-value was judged against (without it "p=0.004" says nothing of
        # whether that raised the alert); upper absent with lower present is an open-ended interval.
        r["uncertainty"] = {k: pred.get(k) for k in ("p_value", "alpha", "lower", "upper", "coverage",
                                                     "model_version") if pred.get(k) is not None}
    return rows


def _review(conn: psycopg.Connection, column: str, target, verdict: Verdict, comment: str, reviewer: str) -> int:
    if verdict not in ("right", "wrong"):
        raise ValueError(f"verdict must be 'right' or 'wrong', not {verdict!r}")
    if not reviewer.strip():
        raise ValueError("a review needs the reviewer's name")
    if len(comment) > COMMENT_MAX_CHARS:
        raise ValueError(f"the comment has {len(comment)} characters; at most {COMMENT_MAX_CHARS}")
    table, key = ("predictions", "id") if column == "prediction_id" else ("alerts", "id")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SELECT 1 FROM {table} WHERE {key} = %s", (target,))
        if cur.fetchone() is None:
            raise LookupError(f"no {table[:-1]} {target!r}")
        cur.execute(f"INSERT INTO prediction_feedback ({column}, verdict, comment, reviewer) VALUES (%s, %s, %s, %s)"
                    " RETURNING id", (target, verdict, comment, reviewer))
        return cur.fetchone()[0]


def review_prediction(conn: psycopg.Connection, prediction_id: int, verdict: Verdict, comment: str,
                      reviewer: str) -> int:
    """Mark a prediction right or wrong; returns the feedback id."""
    return _review(conn, "prediction_id", prediction_id, verdict, comment, reviewer)


def review_alert(conn: psycopg.Connection, alert_id: str, verdict: Verdict, comment: str, reviewer: str) -> int:
    """Mark an alert right (a real problem) or wrong (a false alarm); returns the feedback id."""
    return _review(conn, "alert_id", alert_id, verdict, comment, reviewer)


def alert_precision(conn: psycopg.Connection, *, since: datetime | None = None, until: datetime | None = None,
                    model_id: str | None = None) -> list[dict]:
    """Precision of past alerts from reviews, per (kind, model, model version): right / (right + wrong) by the
    latest verdict of each alert, with how many alerts are still unreviewed. The version is the one that raised the
    alert (``alerts.model_version``): a retrained model is another detector, and one version's false alarms pooled
    with another's gave a precision neither had; rows of a model come in the order its versions first raised an
    alert. Alerts without a model (rules, ISO 20816 zones) have ``model_id`` and ``model_version`` ''.

    An alert raised from a prediction also counts the review of that prediction when the alert itself has none:
    the prediction its evidence names by ``id``, or, as the gateway writes evidence (it cannot know the id of a
    prediction still in its spool), by the alert's asset and the evidence's ``model_id`` and ``time``. The
    evidence is the one that *raised* the alert (its ``raised`` event, m0201), not the row's, which the latest
    return of the condition replaced: the prediction a crew was paged for is the one whose review counts (the row's
    evidence for alerts raised before m0201, which kept none in the event)."""
    where, params = ["true"], {}
    if since is not None:
        where.append("a.raised_at >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("a.raised_at <= %(until)s")
        params["until"] = until
    if model_id is not None:
        where.append("a.model_id = %(model_id)s")
        params["model_id"] = model_id
    # The evidence that raised each alert; its prediction's id and key are parsed here, not cast in SQL: evidence is
    # written by several packages and versions, and one alert naming its prediction as "P-7" or at "n/a" made the
    # cast fail the whole report (InvalidTextRepresentation) for every alert of every model.
    raising = f"""
        WITH raising AS (
            SELECT a.id, a.kind, a.model_id, a.model_version, a.raised_at, a.asset, coalesce(
                       (SELECT e.detail -> 'evidence' FROM alert_events e
                        WHERE e.alert_id = a.id AND e.event = 'raised' AND e.detail ? 'evidence'
                        ORDER BY e.time, e.id LIMIT 1),
                       a.evidence) AS evidence
            FROM alerts a WHERE {' AND '.join(where)})"""
    with conn.cursor() as cur:
        cur.execute(raising + """ SELECT id, evidence #>> '{prediction,id}', evidence #>> '{prediction,model_id}',
                                         evidence #>> '{prediction,time}' FROM raising
                                  WHERE jsonb_typeof(evidence -> 'prediction') = 'object'""", params)
        named = [(alert_id, _bigint(pred_id), pred_model, evidence_time(pred_time))
                 for alert_id, pred_id, pred_model, pred_time in cur.fetchall()]
    alert_ids, pred_ids, pred_models, pred_times = (list(c) for c in zip(*named, strict=True)) if named else \
        ([], [], [], [])
    params.update(n_alert=alert_ids, n_id=pred_ids, n_model=pred_models, n_time=pred_times)
    sql = raising + """,
        named AS (SELECT * FROM unnest(%(n_alert)s::text[], %(n_id)s::bigint[], %(n_model)s::text[],
                                       %(n_time)s::timestamptz[]) AS n(alert_id, pred_id, model_id, time)),
        latest AS (
            SELECT a.id, a.kind, coalesce(a.model_id, '') AS model_id,
                   coalesce(a.model_version, '') AS model_version, a.raised_at,
                   coalesce(
                       (SELECT verdict FROM prediction_feedback f WHERE f.alert_id = a.id
                        ORDER BY created_at DESC, id DESC LIMIT 1),
                       (SELECT verdict FROM prediction_feedback f
                        WHERE f.prediction_id = coalesce(
                            n.pred_id,
                            -- live alerts name their prediction by its key (model, time; the asset is the
                            -- alert's): without this their predictions' reviews were never counted
                            (SELECT p.id FROM predictions p
                             WHERE p.model_id = n.model_id AND p.asset = a.asset AND p.time = n.time
                             ORDER BY p.id LIMIT 1))
                        ORDER BY created_at DESC, id DESC LIMIT 1)) AS verdict
            FROM raising a LEFT JOIN named n ON n.alert_id = a.id)
        SELECT kind, model_id, model_version, count(*) AS alerts,
               count(*) FILTER (WHERE verdict = 'right') AS right,
               count(*) FILTER (WHERE verdict = 'wrong') AS wrong,
               count(*) FILTER (WHERE verdict IS NULL) AS unreviewed
        FROM latest GROUP BY kind, model_id, model_version
        ORDER BY kind, model_id, min(raised_at), model_version"""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    for r in rows:
        r.update(precision_with_interval(r["right"], r["wrong"]))
    return rows


_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _bigint(text: str | None) -> int | None:
    """An evidence prediction id (jsonb text) as a bigint; None for anything else (a name, a fraction, past bigint)."""
    if text is None or not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def precision_with_interval(right: int, wrong: int, level: float = PRECISION_LEVEL) -> dict:
    """``precision`` = right / (right + wrong) with its exact (Clopper-Pearson) two-sided ``level`` confidence
    interval ``precision_lower`` .. ``precision_upper`` and ``precision_level``; all None without a review.

    A precision from a handful of reviews is a model output like any other: three right verdicts read as a bare
    100 % while they are consistent with a precision as low as 29 % (95 %). Clopper-Pearson rather than the normal
    approximation because review counts are small and often all right or all wrong, where the normal interval
    collapses to a width of zero."""
    ci = proportion_interval(right, right + wrong, level)
    if ci is None:
        return {"precision": None, "precision_lower": None, "precision_upper": None, "precision_level": None}
    lower, upper = ci
    return {"precision": right / (right + wrong), "precision_lower": lower, "precision_upper": upper,
            "precision_level": level}


def format_precision(r: dict, digits: int = 2) -> str:
    """``0.67 [0.09, 0.99] 95 %``: a precision as the review reports print it, never without its interval."""
    if r.get("precision") is None:
        return "-"
    return (f"{r['precision']:.{digits}f} [{r['precision_lower']:.{digits}f}, {r['precision_upper']:.{digits}f}] "
            f"{r['precision_level']:.0%}")
