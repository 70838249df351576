"""The emissions page's events against the real test database, with averages and events computed and stored by
emissions/ (`job.run_span`). The daily compliance calendar: a day is marked by its own averages and events only;
the events of a month or a year (a monthly average over its ELV, the year's invalid-day count) come beside the days,
not on the first of them. The list of exceedances: page by page, none skipped or repeated."""

from __future__ import annotations

import pytest
from console_support import ConsoleServer, fresh_database, seed_users

TZ = "Europe/Helsinki"


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    """Stack K9 (large combustion plant, NOx monthly ELV 200, CI 20 %: daily limit 110 % = 220) computed over 2025:
    readings only in February, 250 mg/Nm³ every minute. Each February day is valid at validated 210 (within 220),
    the month's validated 210 is over its ELV of 200 (a breach), and every other day of the year has no data
    (invalid): 337 invalid days, over the 10 allowed (a breach of the year)."""
    import numpy as np
    import psycopg

    from emissions import job, periods, synthetic
    from emissions.config import StackConfig

    cfg = StackConfig.model_validate({"name": "K9", "regime": "lcp", "timezone": TZ,
                                      "pollutants": [{"name": "NOx", "tag": "K9.NOx", "elv": {"month": 200.0}}]})
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tid = synthetic.ensure_tags(conn, ["K9.NOx"], asset="K9")["K9.NOx"]
            feb = periods.parse_month("2025-02", TZ)
            t = np.arange(feb[0], feb[1], 60)
            synthetic.copy_readings(conn, tid, t, np.full(len(t), 250.0))
            year = periods.year_of(feb[0], TZ)
            job.run_span(conn, cfg, year[0], year[1])
        with ConsoleServer(dsn) as srv:
            srv.dsn = dsn
            yield srv


def test_a_months_exceedance_is_not_its_first_days(server):
    """February 2025: the month's breach was the 1st's "exceed" (with the monthly event in its tooltip) though that
    day was valid and within its limit like the 27 after it."""
    with server.client("viewer") as c:
        cal = c.get("/api/emissions/K9/calendar", params={"month": "2025-02"}).json()
    assert [d["status"] for d in cal["days"]] == ["valid"] * 28
    assert all(d["events"] == [] for d in cal["days"])
    month = {(e["rule"], e["period"], e["breach"], e["provisional"]) for e in cal["period_events"]}
    assert month == {("lcp_monthly", "month", True, False), ("invalid_days", "year", True, False)}
    (monthly,) = [e for e in cal["period_events"] if e["rule"] == "lcp_monthly"]
    assert monthly["value"] == pytest.approx(210.0) and monthly["limit_value"] == 200.0


def test_a_month_no_date_holds_is_a_422(server):
    """Year 0 and December 9999 (it ends in the year 10000) are no months a date can hold: they were a 500."""
    with server.client("viewer") as c:
        for month in ("0000-01", "9999-12", "2025-13"):
            r = c.get("/api/emissions/K9/calendar", params={"month": month})
            assert r.status_code == 422 and "is not a month" in r.json()["detail"], (month, r.status_code)


def test_the_years_invalid_days_are_not_1_januarys(server):
    """January 2025 had no data: every day invalid, none an exceedance. The year's invalid-day breach (337 > 10),
    an event of the year starting on 1 January, made that day "exceed"."""
    with server.client("viewer") as c:
        cal = c.get("/api/emissions/K9/calendar", params={"month": "2025-01"}).json()
    assert [d["status"] for d in cal["days"]] == ["invalid"] * 31
    (year,) = cal["period_events"]
    assert (year["rule"], year["value"], year["limit_value"], year["breach"]) == ("invalid_days", 337.0, 10.0, True)


def test_the_exceedances_page_on_without_skipping_or_repeating_one(server):
    """A month of a waste incinerator's half-hours over a limit is more than the 200 exceedances a page holds; the
    route returned the newest 200 and no way to the rest. 300 events of the last days, three rules per half-hour
    (one start each): read 120 at a time, every one comes once, newest first."""
    from datetime import UTC, datetime, timedelta

    import psycopg

    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    rows = [("K9", "NOx", rule, "exceedance", "half_hour", start + timedelta(minutes=30 * i),
             start + timedelta(minutes=30 * i + 30), 250.0 + i, 200.0, 200.0, False, False, "x")
            for i in range(100) for rule in ("test-a", "test-b", "test-c")]
    with psycopg.connect(server.dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO emission_events (stack, pollutant, rule, kind, period, period_start, period_end, "
                        "value, limit_value, elv, breach, provisional, config_sha256) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    try:
        got, cursor, pages = [], None, 0
        with server.client("viewer") as c:
            while True:
                body = c.get("/api/emissions/K9/events", params={"last": "P7D", "limit": 120,
                                                                  **({"cursor": cursor} if cursor else {})}).json()
                got += [(e["period_start"], e["rule"]) for e in body["items"]]
                pages += 1
                cursor = body.get("next_cursor")
                if not cursor:
                    break
            assert pages == 3 and len(got) == 300 and len(set(got)) == 300
            assert [datetime.fromisoformat(t) for t, _ in got] == sorted((r[5] for r in rows), reverse=True)
            assert c.get("/api/emissions/K9/events", params={"cursor": "nope"}).status_code == 422
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM emission_events WHERE rule LIKE 'test-%'")


def test_the_changed_closed_days_page_on_without_skipping_or_repeating_one(server):
    """A backlog taken over many 5-minute runs revises the same days at each run: 250 revisions of the last days,
    five per change time (one run), were cut at the 200 newest with no way to the rest. Read 100 at a time, every one
    comes once, newest change first."""
    from datetime import UTC, datetime, timedelta

    import psycopg

    now = datetime.now(UTC).replace(microsecond=0)
    day = now.replace(hour=0, minute=0, second=0) - timedelta(days=5)
    with psycopg.connect(server.dsn, autocommit=True) as conn, conn.cursor() as cur:
        (run_id,) = conn.execute("SELECT max(id) FROM emission_runs WHERE stack = 'K9'").fetchone()
        cur.executemany("INSERT INTO emission_revisions (stack, pollutant, period, period_start, period_end, old_value,"
                        " new_value, old_status, new_status, run_id, revised_at) VALUES ('K9', 'NOx', 'day', %s, %s,"
                        " %s, %s, 0, 0, %s, %s)",
                        [(day, day + timedelta(days=1), 100.0 + i, 101.0 + i, run_id,
                          now - timedelta(minutes=5 * (i // 5))) for i in range(250)])
        # A recomputation by hand: the list says who ran it and why (`valvoja emissions compute --reason`).
        cur.execute("UPDATE emission_runs SET reason = 'compute by anna: backlog' WHERE id = %s", (run_id,))
    try:
        got, cursor = [], None
        with server.client("viewer") as c:
            for _ in range(10):
                body = c.get("/api/emissions/K9/revisions", params={"last": "P2D", "period": "day", "limit": 100,
                                                                     **({"cursor": cursor} if cursor else {})}).json()
                got += [(r["revised_at"], r["old_value"]) for r in body["items"]]
                assert {r["run_reason"] for r in body["items"]} == {"compute by anna: backlog"}
                cursor = body.get("next_cursor")
                if not cursor:
                    break
        assert len(got) == 250 and len({v for _, v in got}) == 250
        assert [t for t, _ in got] == sorted((t for t, _ in got), reverse=True)
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM emission_revisions WHERE stack = 'K9'")
            conn.execute("UPDATE emission_runs SET reason = '' WHERE id = %s", (run_id,))
