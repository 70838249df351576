"""Predictions and dead letters have a retention: they grew with no limit (a row every few seconds per model and
asset) until the database disk was full. What reviews and alerts rely on is kept whatever its age."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from edge.db.migrate import migrate
from edge.forwarder import Forwarder, RollupWorker
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import utcnow
from edge.settings import Database, SiteConfig
from edge.spool import Spool


@pytest.fixture(params=["pg_dsn", "plain_pg_dsn"])
def any_dsn(request) -> str:
    """TimescaleDB (predictions a hypertable), then plain PostgreSQL (no index on time alone)."""
    return request.getfixturevalue(request.param)


def _predict(cur, model: str, asset: str, t) -> int:
    cur.execute("INSERT INTO predictions (time, model_id, model_version, asset, value) VALUES (%s, %s, '1', %s, 1.0)"
                " RETURNING id", (t, model, asset))
    return cur.fetchone()[0]


def _alert(cur, key: str, asset: str, evidence: dict, t) -> None:
    cur.execute("INSERT INTO alerts (id, asset, kind, severity, raised_at, dedup_key, last_seen, evidence)"
                " VALUES (%s, %s, 'anomaly', 'warning', %s, %s, %s, %s)", (key, asset, t, key, t, Jsonb(evidence)))


def _populate(dsn: str) -> dict[str, int]:
    """Old and new predictions of two models on two assets; the old ones that must stay; old and new dead letters."""
    now = utcnow().replace(microsecond=0)
    old = now - timedelta(days=200)
    keep = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO predictions (time, model_id, model_version, asset, value)"
                " SELECT %s + s * interval '5 s', m, '1', a, 1.0 FROM generate_series(0, 499) s,"
                " unnest(ARRAY['anom', 'rul']) m, unnest(ARRAY['P-1', 'P-2']) a", (old,))
            cur.execute(
                "INSERT INTO predictions (time, model_id, model_version, asset, value)"
                " SELECT %s - s * interval '5 s', m, '1', a, 1.0 FROM generate_series(0, 99) s,"
                " unnest(ARRAY['anom', 'rul']) m, unnest(ARRAY['P-1', 'P-2']) a", (now,))
            t = old - timedelta(hours=1)
            keep["reviewed"] = _predict(cur, "anom", "P-1", t)
            cur.execute("INSERT INTO prediction_feedback (prediction_id, verdict, reviewer) VALUES (%s, 'right', 'x')",
                        (keep["reviewed"],))
            # An open alert naming its prediction as the gateway does: by model and time (the asset is the alert's).
            keep["open_alert"] = _predict(cur, "anom", "P-2", t)
            _alert(cur, "a1", "P-2", {"prediction": {"model_id": "anom", "time": t.isoformat()}}, t)
            # A cleared alert whose evidence was replaced since: its `raised` event keeps the first prediction.
            first = t - timedelta(seconds=5)
            keep["raised_event"] = _predict(cur, "rul", "P-1", first)
            _alert(cur, "a2", "P-1", {"prediction": {"model_id": "rul", "time": first.isoformat()}}, t)
            cur.execute("UPDATE alerts SET evidence = '{}'::jsonb, cleared_at = now() WHERE id = 'a2'")
            # Evidence naming the prediction by id (console, publish), and one with a time nobody can parse.
            keep["by_id"] = _predict(cur, "rul", "P-2", t)
            _alert(cur, "a3", "P-2", {"prediction": {"id": keep["by_id"], "time": "yesterday"}}, t)
            cur.execute("INSERT INTO dead_letters (time, source, topic, payload, error) SELECT now() - d *"
                        " interval '1 day', 'mqtt', 't', '\\x00', 'bad' FROM generate_series(0, 59) d")
    return keep


async def _run_worker(dsn: str, tmp_path, db: Database) -> None:
    """The rollup worker as the gateway runs it, for a few of its rounds."""
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    fwd = Forwarder(worker, dsn, SiteConfig(), Metrics(), asyncio.Event())
    await fwd._connect()
    rollups = RollupWorker(fwd, dsn, db)
    task = asyncio.create_task(rollups.run())
    try:
        await asyncio.sleep(3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rollups.close()
        await fwd.close()
        worker.shutdown()


def test_old_predictions_and_dead_letters_are_removed_keeping_reviews_and_evidence(any_dsn, tmp_path):
    keep = _populate(any_dsn)
    asyncio.run(_run_worker(any_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    with psycopg.connect(any_dsn) as conn:
        old = conn.execute("SELECT id FROM predictions WHERE time < now() - interval '180 days'").fetchall()
        assert sorted(r[0] for r in old) == sorted(keep.values())
        assert conn.execute("SELECT count(*) FROM predictions WHERE time > now() - interval '1 day'"
                            ).fetchone()[0] == 400
        ages = conn.execute("SELECT min(now() - time), max(now() - time) FROM dead_letters").fetchone()
        assert ages[1] < timedelta(days=30) and ages[0] < timedelta(days=1)


def test_zero_keeps_them_all(pg_dsn, tmp_path):
    _populate(pg_dsn)
    asyncio.run(_run_worker(pg_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2,
                                                       predictions_retention_days=0, dead_letters_retention_days=0)))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 2000 + 400 + 4
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 60


def test_a_round_cut_short_goes_on_at_the_next(pg_dsn):
    from edge.sink.housekeeping import trim

    _populate(pg_dsn)

    async def go():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            first = await trim(conn, 180, 30, batch=100, budget_s=0)
            rest = await trim(conn, 180, 30, batch=100, budget_s=60)
        return first, rest

    first, rest = asyncio.run(go())
    assert not first.done and first.predictions == 100
    assert rest.done and first.predictions + rest.predictions == 2000 and rest.dead_letters == 30


def _runs(dsn: str) -> dict[str, int]:
    """Emission runs every 5 minutes of 500 days ago (two configurations, one recomputation with a reason) and of
    today; the ids of those that must stay."""
    keep = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            for sha, age in (("old-config", 500), ("new-config", 499)):
                cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages,"
                            " events, seconds, computed_at) SELECT 'K1', now(), now(), '{\"elv\": 1}', %s, 1, 0, 0.1,"
                            " now() - %s * interval '1 day' + s * interval '5 min' FROM generate_series(0, 287) s",
                            (sha, age))
            cur.execute("SELECT max(id) FROM emission_runs WHERE config_sha256 = 'old-config'")
            keep["newest_of_old_config"] = cur.fetchone()[0]
            cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages,"
                        " events, seconds, computed_at, reason) VALUES ('K1', now(), now(), '{}', 'new-config', 1, 0,"
                        " 0.1, now() - interval '450 days', 'late data: 240 readings') RETURNING id")
            keep["reason"] = cur.fetchone()[0]
            cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages,"
                        " events, seconds) VALUES ('K1', now(), now(), '{}', 'new-config', 1, 0, 0.1) RETURNING id")
            keep["today"] = cur.fetchone()[0]
    return keep


def test_old_emission_runs_are_removed_keeping_each_configuration_and_recomputations(pg_dsn, tmp_path):
    """`emission_runs` took a row every 5 minutes per stack with its configuration (4-5 KB) for good."""
    keep = _runs(pg_dsn)
    asyncio.run(_run_worker(pg_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    with psycopg.connect(pg_dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM emission_runs ORDER BY id").fetchall()]
    assert ids == sorted(keep.values())


def test_emission_runs_are_kept_at_least_a_year():
    with pytest.raises(ValueError, match="at least 367"):
        Database(emission_runs_retention_days=100)
    assert Database(emission_runs_retention_days=0).emission_runs_retention_days == 0


def test_a_refused_trim_is_said_once_and_leaves_the_rollups_alone(pg_dsn, tmp_path, caplog):
    """A role without DELETE on predictions (or a statement_timeout) refuses every round: the error went through the
    rollup refresh's handling, said as a rollup failure, with the rollups put behind a growing back-off."""
    import logging

    _populate(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN RAISE EXCEPTION 'permission denied for table predictions'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON predictions FOR EACH ROW EXECUTE FUNCTION refuse()")
    caplog.set_level(logging.DEBUG, logger="edge")
    asyncio.run(_run_worker(pg_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("retention_error") == 1 and "rollup_error" not in events
    assert not any("rollup refresh failed" in r.getMessage() for r in caplog.records)
