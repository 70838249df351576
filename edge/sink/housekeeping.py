"""Retention of the tables besides ``readings`` that grow with every minute of running: predictions and dead letters.

``predictions`` takes a row every few seconds per model and asset (about 17,000 a day each, measured size in
docs/operations.md, "Disk budgets") and ``dead_letters`` one per refused payload (a device sending garbage sends it
all day); both grew until the disk was full. What is removed is what nobody can ask for any more:

- a prediction older than ``database.predictions_retention_days``, except one a reviewer gave a verdict on
  (``prediction_feedback``: ``valvoja models evaluate`` and the alert review summary count them) and one an alert
  names as its evidence (``alerts.evidence`` and the ``raised``/``updated`` events of ``alert_events``: "why was
  this raised?" must keep its answer, open or cleared);
- a dead letter older than ``database.dead_letters_retention_days``;
- an emission run (``emission_runs``: one per stack every 5 minutes, each with the stack's configuration, 4-5 KB)
  older than ``database.emission_runs_retention_days`` (at least 367: the late-data check reads the run that
  computed the year before to its end, made at most a year ago), except the newest of each stack and configuration
  (the console and an audit read the limits an average was judged by from it, by ``config_sha256``) and those with
  a ``reason`` (recomputations from late data, which reports quote).

Rows go in batches, each its own short transaction, oldest first, and a round stops after ``budget_s`` (the rollup
connection is shared: a first round over years of predictions must not hold rollups back for minutes); the caller
runs the next round soon when one was cut short. Predictions cannot be dropped by chunk (the kept ones live in
them), so this is a DELETE on every edition; a plain PostgreSQL table has no index on ``time`` alone, so rows are
found per model by the ``(model_id, time)`` index, whose model ids are read by a skip scan of that index.
"""

from __future__ import annotations

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
    done: bool = True


def _time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


async def evidence_keys(conn: psycopg.AsyncConnection) -> tuple[list[int], list[tuple[str, str, datetime]]]:
    """Predictions alerts name as evidence: by ``id`` (evidence written with it) and by (model_id, asset, time), as
    the gateway writes it (it cannot know the id of a prediction still in its spool). Alerts are few (thousands),
    so they are read whole and parsed here: a malformed time in one alert must not stop retention for good."""
    # Every statement in its own transaction: on the rollup connection (not autocommit) a read left one open, and
    # the deletes after it were savepoints inside it, rolled back with the connection.
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "SELECT asset, evidence -> 'prediction' FROM alerts WHERE evidence ? 'prediction'"
            " UNION SELECT asset, detail -> 'evidence' -> 'prediction' FROM alert_events"
            " WHERE event IN ('raised', 'updated') AND detail -> 'evidence' ? 'prediction'")
        rows = await cur.fetchall()
    ids, keys = set(), set()
    for asset, pred in rows:
        if not isinstance(pred, dict):
            continue
        if isinstance(pred.get("id"), int):
            ids.add(pred["id"])
        t = _time(pred.get("time"))
        if isinstance(pred.get("model_id"), str) and t is not None:
            keys.add((pred["model_id"], asset, t))
    return sorted(ids), sorted(keys)


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


async def _delete(conn: psycopg.AsyncConnection, sql: str, params: dict, batch: int,
                  deadline: float) -> tuple[int, bool]:
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
               emission_runs_days: int | None = None, batch: int = BATCH_ROWS,
               budget_s: float = ROUND_BUDGET_S) -> Trimmed:
    """Remove predictions, dead letters and emission runs past their retention (None or 0: keep them); see the
    module docstring."""
    out = Trimmed()
    deadline = time.monotonic() + budget_s
    if predictions_days:
        ids, keys = await evidence_keys(conn)
        params = {"days": predictions_days, "ids": ids, "k_model": [k[0] for k in keys],
                  "k_asset": [k[1] for k in keys], "k_time": [k[2] for k in keys]}
        for model in await _model_ids(conn):
            n, done = await _delete(conn, _DELETE_PREDICTIONS, {**params, "model": model}, batch, deadline)
            out.predictions += n
            if not done:
                out.done = False
                return out
    if dead_letters_days:
        n, out.done = await _delete(conn, _DELETE_DEAD_LETTERS, {"days": dead_letters_days}, batch, deadline)
        out.dead_letters += n
        if not out.done:
            return out
    if emission_runs_days:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT max(id) FROM emission_runs GROUP BY stack, config_sha256")
            keep = [r[0] for r in await cur.fetchall()]
        n, out.done = await _delete(conn, _DELETE_EMISSION_RUNS, {"days": emission_runs_days, "keep": keep}, batch,
                                    deadline)
        out.emission_runs += n
    return out
