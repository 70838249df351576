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


async def _run_worker(dsn: str, tmp_path, db: Database, *, metrics: Metrics | None = None, during=None) -> None:
    """The rollup worker as the gateway runs it, for a few of its rounds: 3 s, or while ``during(worker, fwd)``
    (the spool's worker, the forwarder) runs."""
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    fwd = Forwarder(worker, dsn, SiteConfig(), metrics or Metrics(), asyncio.Event())
    await fwd._connect()
    rollups = RollupWorker(fwd, dsn, db)
    task = asyncio.create_task(rollups.run())
    try:
        await (during(worker, fwd) if during else asyncio.sleep(3))
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


def test_the_prediction_that_reopened_an_alert_is_kept(pg_dsn, tmp_path):
    """A re-open replaces the row's evidence and keeps the return's in its `reopened` event (m0203), which the
    evidence read left out: once the row's evidence changed again, the prediction that re-opened the alert went
    after 180 days while the alert stayed for years."""
    t = utcnow().replace(microsecond=0) - timedelta(days=200)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            first, back = _predict(cur, "anom", "P-1", t), _predict(cur, "anom", "P-1", t + timedelta(hours=3))
            _alert(cur, "r1", "P-1", {"prediction": {"model_id": "anom", "time": t.isoformat()}}, t)
            cur.execute("INSERT INTO alert_events (alert_id, asset, kind, time, event, detail) VALUES ('r1', 'P-1',"
                        " 'anomaly', %s, 'reopened', %s)", (t + timedelta(hours=3), Jsonb(
                            {"evidence": {"prediction": {"model_id": "anom", "time": (t + timedelta(hours=3))
                                                         .isoformat()}}})))
            cur.execute("UPDATE alerts SET evidence = '{}'::jsonb WHERE id = 'r1'")  # a later update's
    asyncio.run(_run_worker(pg_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    with psycopg.connect(pg_dsn) as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM predictions").fetchall()} == {first, back}


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


# -- alerts --------------------------------------------------------------------------------------------------------

def _aged_alert(cur, key: str, asset: str, evidence: dict, raised, *, acked=None, cleared=None) -> None:
    """An alert as the gateway and the console leave it: raised, perhaps acknowledged, perhaps cleared, each at its
    time (the trigger writes the history), last touched when it last changed."""
    _alert(cur, key, asset, evidence, raised)
    if acked is not None:
        cur.execute("UPDATE alerts SET acknowledged_at = %s, acknowledged_by = 'anna', state = 'acknowledged'"
                    " WHERE id = %s", (acked, key))
    if cleared is not None:
        cur.execute("UPDATE alerts SET cleared_at = %s, cleared_by = 'system', state = 'cleared' WHERE id = %s",
                    (cleared, key))
        # A notification of the clear, and a person's note: they belong to the alert.
        cur.execute("INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
                    " VALUES (%s, %s, 'anomaly', %s, 'notified', '{\"receiver\": \"pager\"}')", (key, asset, cleared))
        cur.execute("INSERT INTO alert_comments (alert_id, time, author, comment) VALUES (%s, %s, 'anna', 'ok')",
                    (key, cleared))
    cur.execute("UPDATE alerts SET updated_at = %s WHERE id = %s",
                (max(t for t in (raised, acked, cleared) if t is not None), key))


def _alert_history(dsn: str) -> dict:
    """Alerts of 2,000 days ago (older than the default 1,827) in each state, with reviews, and recent ones; the
    predictions they name; events of suppressed conditions. Returns the ids to look at."""
    now = utcnow().replace(microsecond=0)
    old = now - timedelta(days=2000)
    ids: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        with conn.cursor() as cur:
            def ev(model: str, t) -> dict:
                return {"prediction": {"model_id": model, "time": t.isoformat()}}

            # Cleared long ago, nobody reviewed it: goes, with its history, comments and the prediction it named.
            ids["gone_prediction"] = _predict(cur, "anom", "P-1", old)
            _aged_alert(cur, "gone", "P-1", ev("anom", old), old, acked=old + timedelta(minutes=5),
                        cleared=old + timedelta(hours=1))
            # Still open, and acknowledged but not cleared, raised just as long ago: stay.
            ids["open_prediction"] = _predict(cur, "anom", "P-2", old)
            _aged_alert(cur, "open", "P-2", ev("anom", old), old)
            _aged_alert(cur, "acked", "P-3", {}, old, acked=old + timedelta(minutes=5))
            # Reviewed itself (`maintenance review`, the console): stays, with its review.
            _aged_alert(cur, "reviewed", "P-1", {}, old, cleared=old + timedelta(hours=1))
            cur.execute("INSERT INTO prediction_feedback (alert_id, verdict, reviewer) VALUES ('reviewed', 'wrong',"
                        " 'anna')")
            # Its raising prediction reviewed (counted by alert_precision for the alert), named by key in the
            # `raised` event only (the row's evidence was replaced since), and one named by id.
            t = old + timedelta(seconds=5)
            ids["reviewed_by_key"] = _predict(cur, "rul", "P-1", t)
            _aged_alert(cur, "pred-reviewed", "P-1", ev("rul", t), t, cleared=t + timedelta(hours=1))
            cur.execute("UPDATE alerts SET evidence = '{}'::jsonb WHERE id = 'pred-reviewed'")
            ids["reviewed_by_id"] = _predict(cur, "rul", "P-2", t)
            _aged_alert(cur, "pred-reviewed-id", "P-2", {"prediction": {"id": ids["reviewed_by_id"], "time": "?"}},
                        t, cleared=t + timedelta(hours=1))
            for p in (ids["reviewed_by_key"], ids["reviewed_by_id"]):
                cur.execute("INSERT INTO prediction_feedback (prediction_id, verdict, reviewer) VALUES (%s, 'right',"
                            " 'anna')", (p,))
            # Cleared ten days ago: stays.
            _aged_alert(cur, "recent", "P-1", {}, now - timedelta(days=11), cleared=now - timedelta(days=10))
            # Suppressed conditions (no alert): an old one goes; as old, inside a window not ended yet, and a recent
            # one stay.
            cur.execute("INSERT INTO maintenance_windows (asset, starts_at, ends_at, reason) VALUES"
                        " ('P-9', %s, now() + interval '1 day', 'long rebuild')", (old - timedelta(days=1),))
            for asset, at in (("P-1", old), ("P-9", old), ("P-1", now - timedelta(days=1))):
                cur.execute("INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
                            " VALUES (NULL, %s, 'anomaly', %s, 'suppressed', '{}')", (asset, at))
    return ids


def _precision(dsn: str) -> list[tuple]:
    from maintenance.review import alert_precision

    with psycopg.connect(dsn) as conn:
        return [(r["kind"], r["alerts"], r["right"], r["wrong"]) for r in alert_precision(conn)]


def test_old_cleared_alerts_go_with_their_history_and_open_acknowledged_reviewed_ones_stay(any_dsn, tmp_path):
    """`alerts` and `alert_events` kept every alert ever raised; what a review counts stays whatever its age."""
    _alert_history(any_dsn)
    before = _precision(any_dsn)
    asyncio.run(_run_worker(any_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    with psycopg.connect(any_dsn) as conn:
        alerts = {r[0] for r in conn.execute("SELECT id FROM alerts").fetchall()}
        assert alerts == {"open", "acked", "reviewed", "pred-reviewed", "pred-reviewed-id", "recent"}
        assert conn.execute("SELECT count(*) FROM alert_events WHERE alert_id = 'gone'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM alert_comments WHERE alert_id = 'gone'").fetchone()[0] == 0
        # What stays keeps its whole history, comments and reviews.
        assert conn.execute("SELECT count(*) FROM alert_events WHERE alert_id = 'reviewed'").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM alert_comments WHERE alert_id = 'reviewed'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM prediction_feedback").fetchone()[0] == 3
        loose = conn.execute("SELECT asset, time > now() - interval '2 days' FROM alert_events"
                             " WHERE alert_id IS NULL ORDER BY asset, time").fetchall()
        assert loose == [("P-1", True), ("P-9", False)]
    # The precision the reviews give is the same; only the one unreviewed alert is no longer counted.
    after = _precision(any_dsn)
    assert [(k, n + 1, r, w) for k, n, r, w in after] == before


def test_the_prediction_only_a_removed_alert_kept_goes_too(any_dsn, tmp_path):
    """A prediction named as an alert's evidence was kept for good; once the alert is gone, nothing asks for it."""
    ids = _alert_history(any_dsn)
    asyncio.run(_run_worker(any_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2)))
    with psycopg.connect(any_dsn) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM predictions").fetchall()}
    assert ids["gone_prediction"] not in left
    assert {ids["open_prediction"], ids["reviewed_by_key"], ids["reviewed_by_id"]} <= left


def test_zero_keeps_every_alert(pg_dsn, tmp_path):
    _alert_history(pg_dsn)
    asyncio.run(_run_worker(pg_dsn, tmp_path, Database(url="postgresql://x/y", rollup_interval_s=0.2,
                                                       alerts_retention_days=0)))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 7
        assert conn.execute("SELECT count(*) FROM alert_events WHERE alert_id IS NULL").fetchone()[0] == 3


def test_an_alert_round_cut_short_goes_on_at_the_next_past_the_alerts_it_keeps(pg_dsn):
    """Pages of one alert: a round out of time stops after its first page; the next reads on past pages of alerts it
    keeps (reviewed ones, older than the 20 it removes) instead of taking them for the end."""
    from edge.sink.housekeeping import trim

    _alert_history(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alerts (id, asset, kind, severity, state, raised_at, cleared_at, dedup_key,"
                     " last_seen, updated_at) SELECT 'bulk-' || s, 'P-5', 'anomaly', 'info', 'cleared', t, t,"
                     " 'bulk-' || s, t, t FROM generate_series(1, 20) s, (SELECT now() - interval '1900 days') x(t)")

    async def go():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            first = await trim(conn, None, None, alerts_days=1827, batch=10, budget_s=0)
            rest = await trim(conn, None, None, alerts_days=1827, batch=10, budget_s=60)
        return first, rest

    first, rest = asyncio.run(go())
    assert not first.done and first.alerts == 1
    assert rest.done and first.alerts + rest.alerts == 21 and first.alert_events + rest.alert_events == 1


def test_alerts_are_kept_at_least_a_quarter():
    with pytest.raises(ValueError, match="at least 92"):
        Database(alerts_retention_days=30)
    assert Database(alerts_retention_days=0).alerts_retention_days == 0
    assert Database().alerts_retention_days == 1827
