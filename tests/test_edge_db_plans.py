"""Query plans on TimescaleDB where chunks hold one tag only (a backfill of one sensor's history): the newest reading
of another tag must be found by the (tag_id, time) key, not by walking those chunks (migration m0003)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from console.routes.assets import _INDICATORS, LATEST
from console.routes.emissions import LATEST_BY_NAME
from edge.db.migrate import migrate

BACKFILL_DAYS = 4  # chunks of one tag each, 86,400 readings apiece


@pytest.fixture
def site(pg_dsn):
    """10 tags (asset P-1) at 1 Hz over 6 h, an indicator of each every 10 s, and before them 4 days of ``P-1.t0``
    alone; a measured tag and an indicator without readings. Schema as before m0003, ANALYZEd."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=6)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn, target=2)
        conn.execute("INSERT INTO tags (name, asset) SELECT 'P-1.t' || g, 'P-1' FROM generate_series(0, 9) g")
        conn.execute("INSERT INTO tags (name, asset) SELECT name || '.rms', '' FROM tags ORDER BY id")
        conn.execute("INSERT INTO tags (name, asset) VALUES ('P-1.spare', 'P-1'), ('P-1.t0.kurtosis', '')")
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT ts, t.id, t.id + extract(epoch FROM ts) %% 7, CASE WHEN t.id = 12 THEN 2 ELSE 0 END, ts"
                     " FROM generate_series(%s::timestamptz, %s, interval '1 s') ts JOIN tags t ON t.id <= 10"
                     "  OR (t.name LIKE '%%.rms' AND extract(second FROM ts)::int %% 10 = 0)", (start, now))
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT ts, 1, 0.5, 0, ts FROM generate_series(%s::timestamptz - %s * interval '1 day',"
                     " %s - interval '1 s', interval '1 s') ts", (start, BACKFILL_DAYS, start))
        conn.execute("ANALYZE readings")
        ids = dict(conn.execute("SELECT name, id FROM tags").fetchall())
    return pg_dsn, ids


def _answers(dsn: str, ids: dict[str, int]) -> dict:
    """What the console's lookups answer, as custom and as generic (prepared) plans."""
    indicators = sorted(i for n, i in ids.items() if n.startswith("P-1.t") and n.count(".") == 2)
    out = {}
    for generic in (False, True):
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row,
                             prepare_threshold=0 if generic else None) as conn:
            conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
            for name in ("P-1.t1", "P-1.t0", "P-1.spare"):
                out[generic, "latest", name] = conn.execute(LATEST, (ids[name],)).fetchone()
                out[generic, "by_name", name] = conn.execute(LATEST_BY_NAME, (name,)).fetchone()
            out[generic, "indicators"] = conn.execute(_INDICATORS, (indicators,)).fetchall()
    return out


def _explain(conn: psycopg.Connection, statement: str) -> dict:
    return conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}").fetchone()[0][0]


def _indexes(node: dict) -> set[str]:
    found = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        found |= _indexes(child)
    return found


def _generic(conn: psycopg.Connection, sql: str, arg: str) -> dict:
    """The plan of ``sql`` (one parameter) as the server runs a statement psycopg prepared (one plan for any tag)."""
    conn.execute("DEALLOCATE ALL")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE q AS {sql.replace('%s', '$1')}")
    return _explain(conn, f"EXECUTE q({arg})")


def test_lookups_of_other_tags_do_not_walk_a_backfilled_tags_chunks(site):
    """A tag without readings (configured, not yet delivering; an indicator not yet computed) walks every chunk for
    its newest reading. In the chunks of a backfilled tag the planner took every row for a match of any tag and
    read them all by the time index: 0.22-0.37 s at 30 days of 1 Hz (bench/bench_tsdb_plans.py); here 4 days, 5,000+
    pages, where a probe of the key reads 2-4 a chunk. The answers are the same before and after m0003."""
    dsn, ids = site
    before = _answers(dsn, ids)
    with psycopg.connect(dsn, autocommit=True) as conn:
        chunks = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()[0]
        old = _generic(conn, LATEST, str(ids["P-1.spare"]))
        assert old["Plan"]["Shared Hit Blocks"] + old["Plan"]["Shared Read Blocks"] > 1000  # the trap, reproduced
        migrate(conn)
    assert _answers(dsn, ids) == before
    assert before[True, "latest", "P-1.spare"] is None and before[True, "latest", "P-1.t1"] is not None
    assert before[True, "indicators"][0]["name"] == "P-1.t0.kurtosis"
    assert before[True, "indicators"][0]["latest_time"] is None and before[True, "indicators"][1]["latest_time"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql, arg in ((LATEST, str(ids["P-1.spare"])), (LATEST_BY_NAME, "'P-1.spare'"),
                         (_INDICATORS.replace("ANY(%s)", "ANY(%s::int[])"), f"'{{{ids['P-1.t0.kurtosis']}}}'")):
            plan = _generic(conn, sql, arg)["Plan"]
            assert not any("time_idx" in i for i in _indexes(plan)), sql
            assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] <= 10 * chunks, sql


def test_m0003_drops_only_the_time_index_of_readings(pg_dsn, plain_pg_dsn):
    """The rollups keep their bucket index; plain PostgreSQL, which never had the index, migrates too."""
    for dsn in (pg_dsn, plain_pg_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename IN"
                                                " ('readings', 'readings_1m', 'readings_1h')").fetchall()}
        assert "readings_time_idx" not in names and "readings_pkey" in names
        if dsn == pg_dsn:
            assert {"readings_1m_bucket_idx", "readings_1h_bucket_idx"} <= names
