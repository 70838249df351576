"""The console on a big site, against the real test database: 20,000 assets (180,000 tags) searched and paged on
the server, and an asset page whose indicator has 200,000 BAD readings after its newest good one. Response times
are printed (``-s``) and written by bench/bench_console_scale.py, never asserted."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest
from console_support import ConsoleServer, bad_run_after_good, fresh_database, seed_many_assets, seed_users

N_ASSETS = 20_000
N_BAD = 200_000


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_many_assets(dsn, N_ASSETS)
        with psycopg.connect(dsn, autocommit=True) as conn:  # names next to A-00042.t0's indicators, not its own
            conn.cursor().executemany("INSERT INTO tags (name) VALUES (%s)",
                                      [("A-00042.t00.rms",), ("A-00042.t0/rms",), ("A-00042.t0-.rms",)])
        srv_good = {
            # The good reading 200,000 readings back: beyond the raw lookback, found in the hourly rollups.
            "A-00042.t0.rms": bad_run_after_good(dsn, "A-00042.t0.rms", N_BAD),
            # The same without rollups (a database whose rollups are not kept): no good value in the bound.
            "A-00042.t1.rms": bad_run_after_good(dsn, "A-00042.t1.rms", N_BAD, rollups=False),
            # 300 bad ones: found among the raw readings.
            "A-00042.t2.rms": bad_run_after_good(dsn, "A-00042.t2.rms", 300, rollups=False),
        }
        with ConsoleServer(dsn) as srv:
            srv.dsn, srv.good = dsn, srv_good
            yield srv


def timed(c, path: str, **params) -> dict:
    t0 = time.perf_counter()
    r = c.get(path, params=params)
    print(f"{path} {params}: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert r.status_code == 200, r.text
    return r.json()


def test_the_asset_list_comes_a_page_at_a_time(server):
    with server.client("viewer") as c:
        first = timed(c, "/api/assets")
        assert len(first["items"]) == 200 and first["next_cursor"], "a bounded first page, and more"
        assert [a["name"] for a in first["items"][:2]] == ["A-00000", "A-00001"]
        assert first["items"][0]["tags"] == 3
        assert c.get("/api/assets", params={"limit": 1001}).status_code == 422


def test_paging_visits_each_asset_exactly_once(server):
    names: list[str] = []
    cursor = None
    with server.client("viewer") as c:
        while True:
            body = c.get("/api/assets", params={"limit": 1000, "cursor": cursor}).json()
            names += [a["name"] for a in body["items"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
    assert len(names) == N_ASSETS and len(set(names)) == N_ASSETS and names == sorted(names)


def test_search_finds_the_one_asset(server):
    with server.client("viewer") as c:
        one = timed(c, "/api/assets", q="a-12345")  # any case
        assert [a["name"] for a in one["items"]] == ["A-12345"] and one["next_cursor"] is None
        assert [a["name"] for a in c.get("/api/assets", params={"q": "12345"}).json()["items"]] == ["A-12345"]
        # LIKE's wildcards are the characters themselves: "A-1234_" is no pattern for A-12340 ... A-12349.
        assert c.get("/api/assets", params={"q": "A-1234_"}).json()["items"] == []
        assert c.get("/api/assets", params={"q": "%"}).json()["items"] == []
        none = timed(c, "/api/assets", q="no such asset")
        assert none == {"items": [], "next_cursor": None}
        assert len(c.get("/api/assets", params={"q": "  "}).json()["items"]) == 200, "blank: no search"
        assert c.get("/api/assets", params={"q": "x" * 201}).status_code == 422


def test_a_search_by_area_pages_through_its_assets_once(server):
    names: list[str] = []
    cursor = None
    with server.client("viewer") as c:
        timed(c, "/api/assets", q="AREA-07")
        while True:
            body = c.get("/api/assets", params={"q": "AREA-07", "limit": 150, "cursor": cursor}).json()
            assert {a["site"] for a in body["items"]} <= {"Area-07"}
            names += [a["name"] for a in body["items"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        motors = c.get("/api/assets", params={"q": "area-07", "kind": "motor", "limit": 1000}).json()["items"]
        pumps = c.get("/api/assets", params={"q": "area-07", "kind": "pump", "limit": 1000}).json()["items"]
    assert len(names) == len(set(names)) == N_ASSETS // 40 and names == sorted(names)
    assert names[:2] == ["A-00007", "A-00047"]
    assert (len(motors), pumps) == (N_ASSETS // 40, []), "a search within a filter (the area's assets are motors)"


def indicator(asset: dict, name: str) -> dict:
    return next(d for d in asset["derived"] if d["name"] == name)


def test_the_newest_good_indicator_value_behind_200000_bad_readings(server):
    with server.client("viewer") as c:
        a = timed(c, "/api/assets/A-00042")
    with psycopg.connect(server.dsn) as conn:
        (newest,) = conn.execute("SELECT max(time) FROM readings r JOIN tags t ON t.id = r.tag_id "
                                 "WHERE t.name = 'A-00042.t0.rms'").fetchone()
    far = indicator(a, "A-00042.t0.rms")
    assert (far["latest_value"], datetime.fromisoformat(far["latest_time"])) == (3.25, server.good["A-00042.t0.rms"])
    assert (far["latest_quality"], far["latest_source"]) == (0, "readings_1h"), far
    assert (datetime.fromisoformat(far["bad_time"]), far["bad_quality"]) == (newest, 2)
    near = indicator(a, "A-00042.t2.rms")
    assert (near["latest_value"], near["latest_source"], near["bad_quality"]) == (3.25, "readings", 2), near
    assert datetime.fromisoformat(near["latest_time"]) == server.good["A-00042.t2.rms"]
    # Without rollups and 200,000 bad readings back: none within the bound, said as such (the page names it).
    unrolled = indicator(a, "A-00042.t1.rms")
    assert unrolled["latest_time"] is None and unrolled["latest_source"] is None and unrolled["bad_quality"] == 2
    assert a["good_lookback"] == 1000
    untouched = indicator(a, "A-00042.t0.kurtosis")
    assert (untouched["latest_time"], untouched["bad_time"]) == (None, None)
    assert {d["name"] for d in a["derived"]} == {f"A-00042.t{j}.{s}" for j in range(3) for s in ("rms", "kurtosis")}


def readings_rows_read(dsn: str, sql: str, params) -> int:
    """How many rows the plan of ``sql`` read from ``readings`` (its chunks), by EXPLAIN ANALYZE."""
    with psycopg.connect(dsn) as conn:
        tables = {"readings"} | {r for (r,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass")}  # TimescaleDB's chunks
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()

    def walk(node: dict) -> int:  # rows are per loop; TimescaleDB's ChunkAppend passes its chunks' rows on
        own = 0
        if node.get("Relation Name") in tables and node["Node Type"] != "Custom Scan":
            own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
        return own + sum(walk(n) for n in node.get("Plans", []))
    return walk(plan[0]["Plan"])


def test_the_indicator_lookup_reads_a_bounded_number_of_readings(server):
    """The lookup read back over every newer bad reading to the good one: 200,000 rows for this indicator."""
    from console.routes import assets

    with psycopg.connect(server.dsn) as conn:
        (tag_id,) = conn.execute("SELECT id FROM tags WHERE name = 'A-00042.t0.rms'").fetchone()
    read = readings_rows_read(server.dsn, assets._INDICATORS, ([tag_id],))
    print(f"rows of readings read for one indicator behind {N_BAD} bad readings: {read}")
    assert read <= assets.GOOD_LOOKBACK + 10, read
