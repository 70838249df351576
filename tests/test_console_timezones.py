"""Time zones in the console's API against the real TimescaleDB and plain PostgreSQL: trend buckets of a day or a
week begin at the plant's midnight (``console.time_zone``) across both DST changes of Europe/Helsinki in 2026,
from raw readings and from both rollups; a zone whose midnight is off the UTC hour (Asia/Kolkata, +05:30); and
every time the API and the CSV export give is the same text whatever the database session's TimeZone
(the test database's default is America/New_York) and the console process's TZ.

The series' value is the reading's own Unix time, so a bucket's ``min`` and ``max`` are its first and last
reading: a day bucket is the plant's day when its min is the local midnight and its max the last reading before
the next one."""

from __future__ import annotations

import csv
import io
import os
import time as time_mod
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from console_support import ConsoleServer, fresh_database, run_async, seed_users

from edge.db.features import Features, detect

HEL = ZoneInfo("Europe/Helsinki")
KOL = ZoneInfo("Asia/Kolkata")
STEP = 300  # s between readings: 12 an hour
TAG = "T-1.temp"
# Two stretches around the 2026 DST changes (29 March: 03:00 -> 04:00; 25 October: 04:00 -> 03:00, local).
STRETCHES = [(datetime(2026, 3, 16, tzinfo=UTC), datetime(2026, 4, 21, tzinfo=UTC)),
             (datetime(2026, 10, 12, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))]


def local(y: int, m: int, d: int, tz: ZoneInfo = HEL) -> datetime:
    return datetime(y, m, d, tzinfo=tz)


@pytest.fixture(scope="module", params=["pg_server", "plain_pg_server"])
def db(request):
    """A database on each edition whose sessions default to America/New_York, with one tag read every 5 minutes
    over both stretches and its 1-minute and 1-hour rollups made by the gateway's code."""
    from edge.sink import rollups
    from emissions import synthetic

    admin = request.getfixturevalue(request.param).dsn()
    with fresh_database(admin, prefix="console_tz") as dsn:
        seed_users(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f'ALTER DATABASE "{name}" SET TimeZone = \'America/New_York\'')
            conn.execute("INSERT INTO assets (name, site, kind) VALUES ('T-1', 'KIP', 'tank')")
            tag_id = conn.execute("INSERT INTO tags (name, asset, unit) VALUES (%s, 'T-1', 's') RETURNING id",
                                  (TAG,)).fetchone()[0]
            for start, end in STRETCHES:
                t = np.arange(int(start.timestamp()), int(end.timestamp()), STEP, dtype=np.int64)
                synthetic.copy_readings(conn, tag_id, t, t.astype(np.float64))
            features = detect(conn)

        async def roll() -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                for start, end in STRETCHES:
                    await rollups.refresh(aconn, features, [tag_id], start, end)

        run_async(roll())
        with psycopg.connect(dsn) as conn:  # a new session: the database's default now applies
            assert conn.execute("SHOW TimeZone").fetchone()[0] == "America/New_York"
        yield dsn, features


@pytest.fixture(scope="module")
def helsinki(db):
    with ConsoleServer(db[0], time_zone="Europe/Helsinki") as srv, srv.client("viewer") as c:
        yield c


def _series(c, start: datetime, end: datetime, points: int, resolution: str = "auto") -> dict:
    r = c.get(f"/api/tags/{TAG}/readings", params={"from": start.isoformat(), "to": end.isoformat(),
                                                   "points": points, "resolution": resolution})
    assert r.status_code == 200, r.text
    return r.json()


def _raw_count(dsn: str, start: datetime, end: datetime) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM readings WHERE time >= %s AND time < %s", (start, end)).fetchone()[0]


def _days(start: datetime, n: int, tz: ZoneInfo) -> list[datetime]:
    """``n`` local midnights of ``tz`` from ``start``'s date, as instants."""
    d0 = start.astimezone(tz).date()
    return [datetime.combine(d0 + timedelta(days=i), datetime.min.time(), tz) for i in range(n + 1)]


def _assert_plant_days(r: dict, edges: list[datetime]) -> None:
    """Each bucket is one local day: it starts at the midnight, holds every reading up to the next one and none
    after (min and max are its first and last reading's time), however long the day."""
    got = [datetime.fromisoformat(t) for t in r["t"]]
    assert got == edges[:-1], [t.astimezone(HEL).isoformat() for t in got]
    for i, (a, b) in enumerate(pairwise(edges)):
        assert r["min"][i] == a.timestamp() and r["max"][i] == b.timestamp() - STEP, i
        assert r["n"][i] == (b.timestamp() - a.timestamp()) // STEP, i  # same tzinfo: b - a is wall-clock


@pytest.mark.parametrize(("first", "change", "hours"), [(local(2026, 3, 26), local(2026, 3, 29), 23),
                                                        (local(2026, 10, 22), local(2026, 10, 25), 25)])
@pytest.mark.parametrize("resolution", ["auto", "1m"])
def test_day_buckets_are_the_plants_days_across_dst(db, helsinki, first, change, hours, resolution):
    """A week at day width (10 points: 16.8 h, rounded up to a day): each bucket is a Helsinki day, the day of the
    change one bucket of 23 or 25 hours. They were UTC days: each began at 02:00 or 03:00 local, 8 buckets for the
    7 days, and "the 29th's max" was a reading of the 30th at 02:55."""
    edges = _days(first, 7, HEL)
    r = _series(helsinki, edges[0], edges[-1], 10, resolution)
    assert r["bucket_s"] == 86400 and r["source"] == {"auto": "readings_1h", "1m": "readings_1m"}[resolution]
    _assert_plant_days(r, edges)
    assert r["zone"] == "Europe/Helsinki" and r["edges_exact"] is True
    i = edges.index(change)
    assert edges[i + 1].timestamp() - edges[i].timestamp() == hours * 3600 and r["n"][i] == hours * 12


def test_a_range_starting_mid_day_counts_every_reading_once(db, helsinki):
    """Edges off the rollups' grid come from raw rows, merged into the same local day as the rollups' part."""
    start, end = datetime(2026, 3, 27, 9, 30, tzinfo=UTC), datetime(2026, 4, 2, 17, 10, tzinfo=UTC)
    r = _series(helsinki, start, end, 10)
    assert r["bucket_s"] == 86400 and r["source"] == "readings_1h"
    assert [datetime.fromisoformat(t) for t in r["t"]] == _days(start, 7, HEL)[:7]
    assert sum(r["n"]) == _raw_count(db[0], start, end)
    assert r["min"][0] == start.timestamp() and r["max"][-1] == end.timestamp() - STEP


def test_week_buckets_begin_on_the_plants_monday(db, helsinki):
    """Four weeks at week width: Monday 00:00 Helsinki, the week of the spring change 167 hours."""
    edges = [datetime.combine(local(2026, 3, 23).date() + timedelta(days=7 * i), datetime.min.time(), HEL)
             for i in range(5)]  # 23 March 2026 is a Monday
    r = _series(helsinki, edges[0], edges[-1], 10)
    assert r["bucket_s"] == 7 * 86400 and r["source"] == "readings_1h"
    _assert_plant_days(r, edges)
    assert r["n"][0] == 167 * 12


def test_without_a_plant_zone_day_buckets_are_utc_days(db):
    with ConsoleServer(db[0]) as srv, srv.client("viewer") as c:
        edges = _days(datetime(2026, 3, 26, tzinfo=UTC), 7, ZoneInfo("UTC"))
        r = _series(c, edges[0], edges[-1], 10)
    _assert_plant_days(r, edges)
    assert r["zone"] == "UTC" and r["edges_exact"] is True


def test_a_half_hour_zone_is_exact_from_minute_rollups_and_says_when_hourly_ones_are_not(db):
    """Asia/Kolkata (+05:30): midnight is 18:30 UTC, in the middle of an hourly rollup. Drawn from the 1-minute
    rollups (auto), each bucket is the local day; forced onto the hourly rollups, each day is the 24 hours from
    00:30 and the answer says its edges are not exact."""
    with ConsoleServer(db[0], time_zone="Asia/Kolkata") as srv, srv.client("viewer") as c:
        edges = _days(datetime(2026, 3, 25, tzinfo=KOL), 7, KOL)
        auto = _series(c, edges[0], edges[-1], 10)
        hourly = _series(c, edges[0], edges[-1], 10, "1h")
    _assert_plant_days(auto, edges)
    assert auto["source"] == "readings_1m" and auto["edges_exact"] is True and auto["zone"] == "Asia/Kolkata"
    assert hourly["source"] == "readings_1h" and hourly["edges_exact"] is False
    assert [datetime.fromisoformat(t) for t in hourly["t"]] == edges[:-1]
    assert sum(hourly["n"]) == sum(auto["n"]), "the edges' halves are raw rows: every reading once"
    assert hourly["max"][1] == (edges[2] + timedelta(minutes=30)).timestamp() - STEP, "a whole hour past midnight"


def test_model_uncertainty_days_are_the_plants_days(db, helsinki):
    """The models page's coverage per day (and week) counts the predictions of each Helsinki day: one every 10
    minutes, 144 a day, 138 on 29 March. They were UTC days from 02:00 local."""
    from edge.records import Prediction
    from maintenance import store

    edges = _days(local(2026, 3, 26), 7, HEL)
    preds = [Prediction("tz-model", "v1", "T-1", datetime.fromtimestamp(t, UTC), 1.0, 0.0, 2.0, 0.9)
             for t in range(int(edges[0].timestamp()), int(edges[-1].timestamp()), 600)]

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(db[0], autocommit=True) as conn, conn.transaction():
            await store.write_predictions(conn, preds)

    run_async(write())
    r = helsinki.get("/api/models/tz-model/uncertainty", params={
        "from": edges[0].isoformat(), "to": (edges[-1] - timedelta(seconds=1)).isoformat(), "bucket": "day"}).json()
    assert [datetime.fromisoformat(i["t"]) for i in r["items"]] == edges[:-1]
    assert [i["n"] for i in r["items"]] == [144, 144, 144, 138, 144, 144, 144] and r["zone"] == "Europe/Helsinki"


def test_older_timescaledb_and_postgresql_bucket_local_days_alike(db):
    """`Features.local_bucket` has three forms (time_bucket with a zone from TimescaleDB 2.8, time_bucket of the
    local timestamp before, date_bin on PostgreSQL): each gives the same starts for every hour around both changes
    of 2026, in Helsinki, Kolkata, Lord Howe (a 30-minute DST change) and Havana (changes at midnight: the later
    instant of a midnight skipped or passed twice, `trend.local_midnight`), whatever the session's TimeZone."""
    from console.trend import local_midnight

    dsn, features = db
    forms = [Features("plain", None, features.server_version)]
    if features.timescaledb:
        forms += [Features("apache", "2.19.3", features.server_version), Features("apache", "2.7.2", 0)]
    # Cuba changes its clocks at midnight: on 8 March 2026 there is no 00:00, on 1 November there are two.
    starts = [a for a, _ in STRETCHES] + [datetime(2026, 3, 1, tzinfo=UTC)]
    hours = [a + timedelta(minutes=15 * i) for a in starts for i in range(4 * 24 * 30)]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW TimeZone").fetchone()[0] == "America/New_York"
        for zone in ("Europe/Helsinki", "Asia/Kolkata", "Australia/Lord_Howe", "America/Havana"):
            tz = ZoneInfo(zone)
            # As timestamps: PEP 495 makes == across zones False for a time passed twice, whatever the instant.
            want = [local_midnight(t.astimezone(tz).date(), tz).timestamp() for t in hours]
            for f in forms:
                got = [r[0].timestamp() for r in conn.execute(
                    f"SELECT {f.local_bucket('1 days', 't', '%(zone)s::text')} FROM unnest(%(ts)s::timestamptz[]) t",
                    {"zone": zone, "ts": hours}).fetchall()]
                assert got == want, (zone, f)


def test_times_do_not_depend_on_the_database_session_or_the_process_zone(db, monkeypatch):
    """The database's sessions default to America/New_York and the console's process runs with TZ=Asia/Tokyo: the
    API's times are UTC (+00:00) and the CSV's UTC column Z, its plant column the plant's offset. They came in the
    database's zone (-04:00 / -05:00), as psycopg gives a timestamptz in the session's."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time_mod.tzset()
    try:
        with ConsoleServer(db[0], time_zone="Europe/Helsinki") as srv, srv.client("viewer") as c:
            day = _series(c, local(2026, 3, 28), local(2026, 4, 4), 10)
            raw = _series(c, local(2026, 3, 29, ZoneInfo("UTC")), local(2026, 3, 29, ZoneInfo("UTC")) + timedelta(
                minutes=30), 100)
            latest = c.get(f"/api/tags/{TAG}/latest").json()
            text = c.get(f"/api/tags/{TAG}/readings.csv", params={
                "from": "2026-03-29T00:00:00Z", "to": "2026-03-29T02:00:00Z", "resolution": "1h"}).text
    finally:
        monkeypatch.delenv("TZ")
        time_mod.tzset()
    times = day["t"] + raw["t"] + [day["from"], day["to"], raw["from"]]
    times += [latest["reading"][k] for k in ("time", "receive_time", "server_time") if latest["reading"][k]]
    assert len(times) > 10 and all(t.endswith("+00:00") for t in times), times
    assert day["t"][:3] == ["2026-03-27T22:00:00+00:00", "2026-03-28T22:00:00+00:00", "2026-03-29T21:00:00+00:00"]
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert [(r["time"], r["time_local"]) for r in rows] == [("2026-03-29T00:00:00Z", "2026-03-29T02:00:00+02:00"),
                                                            ("2026-03-29T01:00:00Z", "2026-03-29T04:00:00+03:00")]
    assert os.environ.get("TZ") != "Asia/Tokyo"
