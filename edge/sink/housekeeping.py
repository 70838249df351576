"""Retention of the tables besides ``readings`` that grow with every minute of running: predictions, dead letters,
emission runs and alerts.

``predictions`` takes a row every few seconds per model and asset (about 17,000 a day each, measured size in
docs/operations.md, "Disk budgets") and ``dead_letters`` one per refused payload (a device sending garbage sends it
all day); both grew until the disk was full. What is removed is what nobody can ask for any more:

- a prediction older than ``database.predictions_retention_days``, except one a reviewer gave a verdict on
  (``prediction_feedback``: ``valvoja models evaluate`` and the alert review summary count them) and one an alert
  names as its evidence (``alerts.evidence`` and the ``raised``/``updated``/``reopened`` events of ``alert_events``:
  "why was this raised?", and re-opened, must keep its answer, open or cleared);
- a dead letter older than ``database.dead_letters_retention_days``;
- an emission run (``emission_runs``: one per stack every 5 minutes, each with the stack's configuration, 4-5 KB)
  older than ``database.emission_runs_retention_days`` (at least 367: the late-data check reads the run that
  computed the year before to its end, made at most a year ago), except the newest of each stack and configuration
  (the console and an audit read the limits an average was judged by from it, by ``config_sha256``) and those with
  a ``reason`` (recomputations from late data, which reports quote);
- an alert (``alerts``, with what belongs to it: its ``alert_events`` history, escalations and notification
  outcomes, and its ``alert_comments``, all removed by their ``ON DELETE CASCADE``) cleared and untouched
  (``updated_at``: a re-open, an acknowledgement, a clear all set it) for more than
  ``database.alerts_retention_days``, except one a review counts. ``maintenance.review.alert_precision`` (``valvoja
  models evaluate feedback``, ``valvoja maintenance review precision``) takes an alert's latest own verdict
  (``prediction_feedback.alert_id``), else the verdict on the prediction its evidence names (by ``id``, or by model,
  the alert's asset and time). So an alert is kept whatever its age when it has a verdict of its own or when a
  prediction named by any of its evidence (the row's, and that of its ``raised``/``updated``/``reopened`` events: a
  superset of the one precision reads) has one: its review keeps counting, and its feedback rows (which cascade with
  it) are never removed. An open alert, acknowledged or not, is never removed (``cleared_at IS NULL``). Unreviewed
  alerts removed leave the ``alerts``/``unreviewed`` counts of the precision report for periods older than the
  retention; its precision is unchanged. The predictions such an alert kept as its evidence are then removed by the
  prediction retention of the same round (alerts go first). Events with no alert (``alert_id`` NULL: conditions a
  maintenance window suppressed) older than the same number of days go too, except those inside a window that has
  not ended (the console shows what a current window hides). The console's audit trail (``console_audit``) keeps
  naming a removed alert's id: it is who did what.

Rows go in batches, each its own short transaction, oldest first, and a round stops after ``budget_s`` (the rollup
connection is shared: a first round over years of predictions must not hold rollups back for minutes); the caller
runs the next round soon when one was cut short. Predictions cannot be dropped by chunk (the kept ones live in
them), so this is a DELETE on every edition; a plain PostgreSQL table has no index on ``time`` alone, so rows are
found per model by the ``(model_id, time)`` index, whose model ids are read by a skip scan of that index. Alerts are
found by the ``(updated_at, id)`` index (m0403, ``updated_at`` is never earlier than ``cleared_at``) and read in
pages of a tenth of ``batch`` (2,000: each alert takes its history, 5-10 events, with it) with their events'
evidence, which is parsed here as in `evidence_keys` (a malformed time in one alert must not stop retention for
good); a kept alert is passed over by that key, not read again in the round. Alerts and their events are plain
tables on every edition: a DELETE everywhere.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg

BATCH_ROWS = 20_000  # rows per DELETE: a transaction of ~0.1-0.3 s
ROUND_BUDGET_S = 20.0


@dataclass(slots=True)
class Trimmed:
    """Rows removed by one round, and whether the round got through everything due."""

    predictions: int = 0
    dead_letters: int = 0
    emission_runs: int = 0
    alerts: int = 0
    alert_events: int = 0  # events with no alert (suppressed conditions); an alert's own go with it, uncounted
    done: bool = True


def evidence_time(value) -> datetime | None:
    """An instant written into evidence jsonb as ISO-8601 text with its offset; None for anything else (evidence is
    written by several packages and versions: a missing or naive time is not guessed)."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


_INTEGER = re.compile(r"-?[0-9]+")


async def evidence_keys(conn: psycopg.AsyncConnection) -> tuple[list[int], list[tuple[str, str, datetime]]]:
    """Predictions alerts name as evidence: by ``id`` (evidence written with it) and by (model_id, asset, time), as
    the gateway writes it (it cannot know the id of a prediction still in its spool). Every alert kept is read (the
    alert retention bounds them: 91,000 in five years at 50 a day), the times parsed here: a malformed time in one
    alert must not stop retention for good. The server takes out the three fields as text and drops repeats (each
    raised alert names its prediction twice, in the row and in its ``raised`` event): sorting whole jsonb values
    for the ``UNION`` and decoding them here took 3.3-3.5 s at 182,500 alerts, this 1.3-1.9 s (0.65-0.8 s at the
    93,000 left by five years' retention; bench/bench_alert_retention.py)."""
    # Every statement in its own transaction: on the rollup connection (not autocommit) a read left one open, and
    # the deletes after it were savepoints inside it, rolled back with the connection.
    async with conn.transaction(), conn.cursor() as cur:
        # A field of the wrong JSON type is NULL, as the isinstance checks on the decoded value made it; jsonb
        # prints an integral id as digits, as the JSON decoder took it for an int.
        await cur.execute(
            "SELECT DISTINCT asset,"
            " CASE WHEN jsonb_typeof(pred -> 'id') = 'number' THEN pred ->> 'id' END,"
            " CASE WHEN jsonb_typeof(pred -> 'model_id') = 'string' THEN pred ->> 'model_id' END,"
            " CASE WHEN jsonb_typeof(pred -> 'time') = 'string' THEN pred ->> 'time' END"
            " FROM (SELECT asset, evidence -> 'prediction' AS pred FROM alerts WHERE evidence ? 'prediction'"
            "  UNION ALL SELECT asset, detail -> 'evidence' -> 'prediction' FROM alert_events"
            "  WHERE event IN ('raised', 'updated', 'reopened') AND detail -> 'evidence' ? 'prediction') e")
        rows = await cur.fetchall()
    ids, keys = set(), set()
    for asset, pred_id, model_id, pred_time in rows:
        if pred_id is not None and _INTEGER.fullmatch(pred_id):
            ids.add(int(pred_id))
        t = evidence_time(pred_time)
        if model_id is not None and t is not None:
            keys.add((model_id, asset, t))
    return sorted(ids), sorted(keys)


async def _reviewed_predictions(conn: psycopg.AsyncConnection) -> tuple[set[int], set[tuple[str, str, datetime]]]:
    """Predictions with a verdict, by id and by (model_id, asset, time): the ways an alert's evidence names one.
    Reviews are people's work (thousands), so they are read whole. An id whose prediction row is gone still counts
    (`maintenance.review.alert_precision` matches evidence by id against the feedback alone)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT DISTINCT prediction_id FROM prediction_feedback WHERE prediction_id IS NOT NULL")
        ids = {r[0] for r in await cur.fetchall()}
        await cur.execute("SELECT model_id, asset, time FROM predictions WHERE id = ANY(%s)", (sorted(ids),))
        keys = {(r[0], r[1], r[2]) for r in await cur.fetchall()}
    return ids, keys


def _names_reviewed(asset: str, preds: list, ids: set[int], keys: set[tuple[str, str, datetime]]) -> bool:
    """Whether any of an alert's evidence ``prediction`` entries names a reviewed prediction."""
    for pred in preds:
        if not isinstance(pred, dict):
            continue
        if isinstance(pred.get("id"), int) and pred["id"] in ids:
            return True
        t = evidence_time(pred.get("time"))
        if isinstance(pred.get("model_id"), str) and t is not None and (pred["model_id"], asset, t) in keys:
            return True
    return False


# A page of alerts cleared and untouched for ``days``, without a verdict of their own, after the key (updated_at, id)
# of the last page: read by the alerts_changed index. With the prediction entries of all their evidence.
_OLD_CLEARED_ALERTS = """
    SELECT a.id, a.asset, a.updated_at, a.evidence -> 'prediction',
           (SELECT coalesce(jsonb_agg(e.detail -> 'evidence' -> 'prediction'), '[]'::jsonb) FROM alert_events e
            WHERE e.alert_id = a.id AND e.event IN ('raised', 'updated', 'reopened')
              AND e.detail -> 'evidence' ? 'prediction')
    FROM alerts a
    WHERE a.updated_at < now() - %(days)s * interval '1 day'
      AND (a.updated_at, a.id) > (%(after_t)s::timestamptz, %(after_id)s::text)
      AND a.cleared_at < now() - %(days)s * interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM prediction_feedback f WHERE f.alert_id = a.id)
    ORDER BY a.updated_at, a.id LIMIT %(batch)s"""

# The conditions again: between the read and this, the alert may have been re-opened or reviewed.
_DELETE_ALERTS = """
    DELETE FROM alerts a WHERE a.id = ANY(%(ids)s::text[])
      AND a.updated_at < now() - %(days)s * interval '1 day' AND a.cleared_at < now() - %(days)s * interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM prediction_feedback f WHERE f.alert_id = a.id)"""

# Events of no alert (suppressed conditions), by the (alert_id, time) index; those a window not yet ended holds (for
# their asset and tag, as console/suppressed.py matches them) are what the console shows as hidden now.
_DELETE_LOOSE_EVENTS = """
    DELETE FROM alert_events WHERE id IN (
        SELECT e.id FROM alert_events e WHERE e.alert_id IS NULL AND e.time < now() - %(days)s * interval '1 day'
          AND NOT EXISTS (SELECT 1 FROM maintenance_windows w WHERE w.ends_at > now() AND w.starts_at <= e.time
                            AND e.time < w.ends_at AND (w.asset = '*' OR w.asset = e.asset)
                            AND (w.tag IS NULL OR w.tag = e.detail ->> 'tag'))
        ORDER BY e.time LIMIT %(batch)s)"""


async def _trim_alerts(conn: psycopg.AsyncConnection, days: int, batch: int, deadline: float) -> tuple[int, bool]:
    """Remove old cleared alerts nobody's review counts (see the module docstring); (alerts removed, done)."""
    ids, keys = await _reviewed_predictions(conn)
    after: tuple[datetime | str, str] = ("-infinity", "")
    removed = 0
    while True:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(_OLD_CLEARED_ALERTS, {"days": days, "after_t": after[0], "after_id": after[1],
                                                    "batch": batch})
            page = await cur.fetchall()
            doomed = [alert_id for alert_id, asset, _, pred, preds in page
                      if not _names_reviewed(asset, [pred, *preds], ids, keys)]
            if doomed:
                await cur.execute(_DELETE_ALERTS, {"ids": doomed, "days": days})
                removed += cur.rowcount
        if len(page) < batch:
            return removed, True
        after = (page[-1][2], page[-1][0])
        if time.monotonic() > deadline:
            return removed, False


async def _model_ids(conn: psycopg.AsyncConnection) -> list[str]:
    # A skip scan of predictions_model_time: one index probe per model instead of a scan of the table.
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "WITH RECURSIVE m AS (SELECT min(model_id) AS id FROM predictions"
            " UNION ALL SELECT (SELECT min(model_id) FROM predictions WHERE model_id > m.id) FROM m"
            " WHERE m.id IS NOT NULL) SELECT id FROM m WHERE id IS NOT NULL")
        return [r[0] for r in await cur.fetchall()]


_DELETE_PREDICTIONS = """
    WITH keep AS (SELECT * FROM unnest(%(k_model)s::text[], %(k_asset)s::text[], %(k_time)s::timestamptz[])
                  AS k(model_id, asset, time)),
    doomed AS (
        SELECT p.asset, p.model_id, p.target, p.time FROM predictions p
        WHERE p.model_id = %(model)s AND p.time < now() - %(days)s * interval '1 day'
          AND p.id <> ALL(%(ids)s::bigint[])
          AND NOT EXISTS (SELECT 1 FROM prediction_feedback f WHERE f.prediction_id = p.id)
          AND NOT EXISTS (SELECT 1 FROM keep k WHERE k.model_id = p.model_id AND k.asset = p.asset
                                                 AND k.time = p.time)
        ORDER BY p.model_id, p.time DESC LIMIT %(batch)s)
    DELETE FROM predictions p USING doomed d
    WHERE p.asset = d.asset AND p.model_id = d.model_id AND p.target = d.target AND p.time = d.time"""

_DELETE_DEAD_LETTERS = """
    DELETE FROM dead_letters WHERE id IN (
        SELECT id FROM dead_letters WHERE time < now() - %(days)s * interval '1 day' ORDER BY time DESC
        LIMIT %(batch)s)"""


_DELETE_EMISSION_RUNS = """
    DELETE FROM emission_runs WHERE id IN (
        SELECT id FROM emission_runs WHERE computed_at < now() - %(days)s * interval '1 day' AND reason = ''
          AND id <> ALL(%(keep)s::bigint[]) ORDER BY id LIMIT %(batch)s)"""


async def delete_batches(conn: psycopg.AsyncConnection, sql: str, params: dict, batch: int,
                         deadline: float) -> tuple[int, bool]:
    """Run ``sql`` (a DELETE of at most ``%(batch)s`` rows) until it removes fewer than ``batch``, each its own
    transaction; stops after the batch that ends past ``deadline`` (time.monotonic()). (rows removed, done)."""
    removed = 0
    while True:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(sql, {**params, "batch": batch})
            n = cur.rowcount
        removed += n
        if n < batch:
            return removed, True
        if time.monotonic() > deadline:
            return removed, False


async def trim(conn: psycopg.AsyncConnection, predictions_days: int | None, dead_letters_days: int | None,
               emission_runs_days: int | None = None, alerts_days: int | None = None, batch: int = BATCH_ROWS,
               budget_s: float = ROUND_BUDGET_S) -> Trimmed:
    """Remove alerts, predictions, dead letters and emission runs past their retention (None or 0: keep them); see
    the module docstring. Alerts go first: the predictions only their evidence kept go in the same round."""
    out = Trimmed()
    deadline = time.monotonic() + budget_s
    if alerts_days:
        out.alerts, out.done = await _trim_alerts(conn, alerts_days, max(1, batch // 10), deadline)
        if not out.done:
            return out
        out.alert_events, out.done = await delete_batches(conn, _DELETE_LOOSE_EVENTS, {"days": alerts_days}, batch,
                                                   deadline)
        if not out.done:
            return out
    if predictions_days:
        ids, keys = await evidence_keys(conn)
        params = {"days": predictions_days, "ids": ids, "k_model": [k[0] for k in keys],
                  "k_asset": [k[1] for k in keys], "k_time": [k[2] for k in keys]}
        for model in await _model_ids(conn):
            n, done = await delete_batches(conn, _DELETE_PREDICTIONS, {**params, "model": model}, batch, deadline)
            out.predictions += n
            if not done:
                out.done = False
                return out
    if dead_letters_days:
        n, out.done = await delete_batches(conn, _DELETE_DEAD_LETTERS, {"days": dead_letters_days}, batch, deadline)
        out.dead_letters += n
        if not out.done:
            return out
    if emission_runs_days:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT max(id) FROM emission_runs GROUP BY stack, config_sha256")
            keep = [r[0] for r in await cur.fetchall()]
        n, out.done = await delete_batches(conn, _DELETE_EMISSION_RUNS, {"days": emission_runs_days, "keep": keep},
                                           batch, deadline)
        out.emission_runs += n
    return out
