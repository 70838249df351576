"""Console API over the analytics tables, against the real test database: emission averages written by
emissions/ (live values against limits, calendar, events, reports), predictions with intervals and their
review (a maintenance user can review, a viewer or engineer cannot; each review is audited), the model
pages, and a clear 503 naming the table when an analytics table is absent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from console_support import (
    ConsoleServer,
    bad_indicator_readings,
    fresh_database,
    insert_revision,
    midday_zone,
    seed_emissions,
    seed_plant,
    seed_predictions,
    seed_users,
)


@pytest.fixture(scope="module")
def server(pg_admin_dsn, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    (reports / "WI1-2025-03-01.html").write_text("<h1>daily report</h1>")
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=24, step_s=60)
        seed_predictions(dsn, asset="P-101", hours=24)
        seed_emissions(dsn, days=3, timezone=midday_zone())
        with ConsoleServer(dsn, reports_dir=str(reports)) as srv:
            srv.dsn = dsn
            yield srv


def test_emission_stacks_carry_their_permit_limits(server):
    with server.client("viewer") as c:
        stacks = c.get("/api/emissions/stacks").json()["items"]
    assert [s["stack"] for s in stacks] == ["WI1"]
    nox = next(p for p in stacks[0]["pollutants"] if p["name"] == "NOx")
    day = next(r for r in nox["rules"] if r["period"] == "day")
    assert day["limit"] == 200.0 and stacks[0]["config_sha256"]
    # Strictest first, the order every page judges a value in (the config lists the 100 % half-hour rule first).
    half_hour = [r["limit"] for r in nox["rules"] if r["period"] == "half_hour"]
    assert half_hour == [200.0, 400.0]


def test_live_values_against_limits_with_day_projection(server):
    with server.client("viewer") as c:
        live = c.get("/api/emissions/WI1/live").json()
    nox = next(i for i in live["items"] if i["pollutant"] == "NOx")
    assert nox["reading"]["value"] > 0 and nox["tag"] == "WI1.NOx"
    hh = nox["averages"]["half_hour"]
    assert hh["value"] is not None and hh["limits"] and hh["percent_of_limit"] is not None
    # Against the strictest half-hour limit (the 97 % one, B = 200), not the first rule listed (the 100 % one, A = 400).
    assert [(x["limit"], x["share"]) for x in hh["limits"]] == [(200.0, 97.0), (400.0, 100.0)]
    check = hh["validated"] if hh["validated"] is not None else hh["value"]
    assert hh["percent_of_limit"] == pytest.approx(100 * check / 200.0)
    assert nox["averages"]["day"]["running"] is True
    assert nox["day"]["limit"] == 200.0 and nox["day"]["subs_total"] == 48
    assert nox["day"]["projection"] is not None and nox["day"]["subs_done"] >= 1


def test_calendar_events_averages_and_reports(server):
    with server.client("viewer") as c:
        cal = c.get("/api/emissions/WI1/calendar").json()
        assert len(cal["days"]) >= 28
        assert {d["status"] for d in cal["days"]} <= {"none", "valid", "invalid", "exceed", "off", "running"}
        assert any(d["status"] in ("valid", "invalid", "exceed") for d in cal["days"])
        avgs = c.get("/api/emissions/WI1/averages", params={"pollutant": "SO2", "period": "hour", "last": "P1D",
                                                            "limit": 10}).json()
        assert len(avgs["items"]) == 10 and avgs["next_cursor"]
        more = c.get("/api/emissions/WI1/averages", params={"pollutant": "SO2", "period": "hour", "last": "P1D",
                                                            "limit": 10, "cursor": avgs["next_cursor"]}).json()
        assert more["items"][0]["period_start"] > avgs["items"][-1]["period_start"]
        assert c.get("/api/emissions/WI1/events").status_code == 200
        assert c.get("/api/emissions/NOPE/live").status_code == 404
        files = c.get("/api/emissions/reports/files").json()["items"]
        assert [f["name"] for f in files] == ["WI1-2025-03-01.html"]
        assert "daily report" in c.get(files[0]["href"]).text
        # (paths out of reports_dir: test_console_authz sends them on a raw socket; httpx resolves "..")
        csp = c.get("/reports/WI1-2025-03-01.html").headers["content-security-policy"]
        assert csp.startswith("sandbox;") and "default-src 'none'" in csp and "script-src" not in csp, csp


def test_averages_without_a_mass_rate_have_no_mass_not_zero(server):
    """An operating hour without any flow or concentration reading is stored with mass_kg 0 and no rate: the API
    answered 0 kg (a measured zero to any client summing it), where the report shows "–". Now null; an hour that
    was not operating keeps its 0."""
    import psycopg

    old = datetime(2020, 6, 1, 10, tzinfo=UTC)  # far from every other test's range
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for i, (n_op, rate, kg) in enumerate([(60, None, 0.0), (60, 2.5, 2.5), (0, None, 0.0)]):
            conn.execute(
                "INSERT INTO emission_averages (stack, pollutant, period, period_start, period_end, status, valid, "
                "n_expected, n_operating, n_valid, n_substituted, substituted_share, ci, mass_kg_h, mass_kg, "
                "config_sha256) VALUES ('WI1', 'NOx', 'hour', %s, %s, %s, %s, 60, %s, %s, 0, 0, 0, %s, %s, 'x')",
                (old + timedelta(hours=i), old + timedelta(hours=i + 1), 1 if n_op else 2, False, n_op, 0, rate, kg))
    with server.client("viewer") as c:
        items = c.get("/api/emissions/WI1/averages", params={"pollutant": "NOx", "period": "hour",
                                                             "from": old.isoformat(),
                                                             "to": (old + timedelta(hours=3)).isoformat()}).json()
    assert [(x["mass_kg_h"], x["mass_kg"]) for x in items["items"]] == [(None, None), (2.5, 2.5), (None, 0.0)]


# The models seed_predictions writes on P-101. test_uncertainty_report_counts_an_open_upper_end_as_covering adds a
# RUL model of its own there ("open-end"), and pytest-xdist may have run it first on the same module server.
SEEDED_MODELS = ["temp-gbr", "anomaly:P-101", "pump-rul"]


def test_asset_predictions_come_as_series_with_intervals(server):
    with server.client("viewer") as c:
        body = c.get("/api/assets/P-101/predictions", params={"last": "P2D"}).json()
    kinds = {s["kind"]: s for s in body["series"] if s["model_id"] in SEEDED_MODELS}
    assert set(kinds) == {"regression", "anomaly", "rul"}
    reg = kinds["regression"]
    assert all(lo < v < hi for lo, v, hi in zip(reg["lower"], reg["value"], reg["upper"], strict=True))
    assert reg["coverage"] == 0.9 and reg["model_version"]
    assert kinds["anomaly"]["alpha"] == 0.25 and kinds["anomaly"]["threshold"] is None
    assert kinds["rul"]["latest"]["lower"] < kinds["rul"]["latest"]["value"] < kinds["rul"]["latest"]["upper"]


def test_thinned_asset_predictions_keep_the_newest_of_each_series(server):
    """144 predictions per series in the day, at most 10 points asked for: every series is thinned over the whole
    range, and ``latest`` is the newest row, not one near the start."""
    import psycopg

    with psycopg.connect(server.dsn) as conn:
        seeded = "FROM predictions WHERE asset = 'P-101' AND model_id = ANY(%s) GROUP BY kind"
        newest = dict(conn.execute(f"SELECT kind, max(time) {seeded}", (SEEDED_MODELS,)))
        oldest = dict(conn.execute(f"SELECT kind, min(time) {seeded}", (SEEDED_MODELS,)))
    with server.client("viewer") as c:
        body = c.get("/api/assets/P-101/predictions", params={"last": "P2D", "max_points": 10}).json()
    series = [s for s in body["series"] if s["model_id"] in SEEDED_MODELS]
    assert {s["kind"] for s in series} == set(newest) == {"regression", "anomaly", "rul"}
    for s in series:
        assert len(s["t"]) == 10 and len(s["value"]) == len(s["lower"]) == len(s["p_value"]) == 10
        assert s["t"] == sorted(s["t"])
        assert datetime.fromisoformat(s["latest"]["time"]) == newest[s["kind"]], s["kind"]
        assert datetime.fromisoformat(s["t"][-1]) == newest[s["kind"]], "the series reaches the end of the range"
        assert datetime.fromisoformat(s["t"][0]) == oldest[s["kind"]]
    anomaly = next(s for s in series if s["kind"] == "anomaly")
    assert anomaly["alpha"] == 0.25 and anomaly["latest"]["p_value"] == anomaly["p_value"][-1]


def test_asset_lists_derived_indicators_and_its_iso_zone(server):
    with server.client("viewer") as c:
        a = c.get("/api/assets/P-101").json()
    assert {d["name"] for d in a["derived"]} == {"P-101.vib_rms.iso_zone", "P-101.vib_rms.kurtosis"}
    assert [(z["tag"], z["zone"]) for z in a["iso_zones"]] == [("P-101.vib_rms", "C")]


def test_a_newer_bad_indicator_reading_is_not_the_assets_value_or_zone(server):
    """The asset's indicators and ISO zone were the newest reading whatever its quality: a zone D stored with quality
    BAD (derived from a broken sensor) and a BAD 9999 kurtosis were shown as the machine's. The newest good reading
    is the value; the newer bad one comes along (time, quality) to be flagged."""
    with bad_indicator_readings(server.dsn), server.client("viewer") as c:
        a = c.get("/api/assets/P-101").json()
    (zone,) = a["iso_zones"]
    assert zone["zone"] == "C", zone
    assert (zone["quality"], zone["bad_quality"]) == (0, 2), zone
    assert zone["bad_time"] > zone["time"]
    kurt = next(d for d in a["derived"] if d["name"] == "P-101.vib_rms.kurtosis")
    assert kurt["latest_value"] < 10 and kurt["bad_quality"] == 2 and kurt["bad_time"] > kurt["latest_time"], kurt
    with server.client("viewer") as c:  # without a newer bad one nothing is flagged
        a = c.get("/api/assets/P-101").json()
    assert all(d["bad_time"] is None for d in a["derived"]) and a["iso_zones"][0]["bad_time"] is None


def test_the_newest_review_is_the_one_the_command_line_shows(server):
    """Two reviews of a prediction written in one transaction share created_at (now()). The console took the first
    stored ("right"), `valvoja maintenance review list` (maintenance.review) the last ("wrong"): one prediction, two
    verdicts, depending on where it was looked at. Both now take the newest row on a tie of time."""
    from maintenance import review

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        pid, t = conn.execute("SELECT id, time FROM predictions WHERE asset = 'P-101' AND model_id = 'pump-rul' "
                              "ORDER BY time LIMIT 1").fetchone()
        with conn.transaction():
            for verdict in ("right", "wrong"):
                conn.execute("INSERT INTO prediction_feedback (prediction_id, verdict, reviewer) VALUES (%s, %s, "
                             "'import')", (pid, verdict))
        cli = {r["id"]: r["verdict"] for r in review.list_predictions(conn, "P-101", until=t, limit=1000)}
    assert cli[pid] == "wrong"
    with server.client("viewer") as c:
        items = c.get("/api/predictions", params={"asset": "P-101", "to": t.isoformat(), "from":
                                                  (t - timedelta(hours=1)).isoformat(), "limit": 1000}).json()["items"]
    assert next(p["verdict"] for p in items if p["id"] == pid) == "wrong"


def test_maintenance_reviews_a_prediction_and_others_cannot(server):
    rul = {"asset": "P-101", "model_id": "pump-rul"}  # the seeded RUL (SEEDED_MODELS)
    with server.client("viewer") as c:
        pred = c.get("/api/predictions", params={**rul, "limit": 1}).json()["items"][0]
        assert pred["verdict"] is None
        assert c.post(f"/api/predictions/{pred['id']}/review", json={"verdict": "right"}).status_code == 403
    with server.client("engineer") as c:
        assert c.post(f"/api/predictions/{pred['id']}/review", json={"verdict": "right"}).status_code == 403
    with server.client("maintenance") as c:
        bad = c.post(f"/api/predictions/{pred['id']}/review", json={"verdict": "maybe"})
        assert bad.status_code == 422
        nul = c.post(f"/api/predictions/{pred['id']}/review", json={"verdict": "wrong", "comment": "pump\x00 swap"})
        assert nul.status_code == 422 and "NUL" in nul.json()["detail"], nul.text  # was a 500
        r = c.post(f"/api/predictions/{pred['id']}/review", json={"verdict": "wrong", "comment": "pump was replaced"})
        assert r.status_code == 200 and r.json()["reviewed_by"] == "maintenance"
        got = c.get("/api/predictions", params={**rul, "limit": 1}).json()["items"][0]
        assert (got["verdict"], got["reviewed_by"]) == ("wrong", "maintenance")
        unreviewed = c.get("/api/predictions", params={**rul, "reviewed": False, "limit": 1000}).json()["items"]
        assert pred["id"] not in [p["id"] for p in unreviewed]
        audit = c.get("/api/audit", params={"action": "prediction.review"}).json()["items"]
        assert c.post("/api/predictions/999999/review", json={"verdict": "right"}).status_code == 404
    assert audit[0]["actor"] == "maintenance" and audit[0]["target_id"] == str(pred["id"])
    assert audit[0]["detail"]["verdict"] == "wrong" and audit[0]["detail"]["model_id"] == "pump-rul"


def test_model_uncertainty_report_from_stored_predictions(server):
    with server.client("viewer") as c:
        rep = c.get("/api/models/temp-gbr/uncertainty", params={"last": "P2D", "bucket": "hour"}).json()
        assert rep["items"] and all(abs(x["mean_width"] - 4.0) < 1e-9 for x in rep["items"])
        assert all(x["nominal"] == 0.9 for x in rep["items"])
        assert sum(x["n_truth"] for x in rep["items"]) > 0, "the target tag's readings give the truth"
        assert c.get("/api/models/nope/uncertainty").status_code == 404


def test_missing_analytics_tables_answer_503_naming_them(pg_admin_dsn):
    import psycopg

    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:  # as on a database migrated by an older build
            for table in ("alerts", "predictions", "emission_runs", "model_registry", "models", "model_versions"):
                conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        with ConsoleServer(dsn) as srv, srv.client("viewer") as c:
            for path, table, owner in (("/api/alerts", "alerts", "maintenance"),
                                       ("/api/predictions", "predictions", "maintenance"),
                                       ("/api/emissions/stacks", "emission_runs", "emissions"),
                                       ("/api/models", "model_registry", "models")):
                r = c.get(path)
                assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
                assert table in r.json()["detail"] and f"by the {owner} migrations" in r.json()["detail"], r.json()
            assert c.get("/api/assets").status_code == 200, "the rest of the console works"


def test_another_tags_indicators_are_not_listed_for_an_asset(server):
    """The asset's tag P-101.vib_rms: "_" was a LIKE wildcard, so the indicators of a tag P-101.vibXrms (of
    another device, or another asset's naming) were listed as this asset's."""
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tags (name, asset) VALUES ('P-101.vibXrms.kurtosis', '')")
        try:
            with server.client("viewer") as c:
                a = c.get("/api/assets/P-101").json()
        finally:
            conn.execute("DELETE FROM tags WHERE name = 'P-101.vibXrms.kurtosis'")
    assert {d["name"] for d in a["derived"]} == {"P-101.vib_rms.iso_zone", "P-101.vib_rms.kurtosis"}


def test_the_running_day_has_its_own_number_of_sub_periods():
    """The live view's "x/48 half-hours" and its projection to the day's end: a day of 23 or 25 hours in the stack's
    time zone was always counted as 24 (aware datetimes of one zone subtract as wall clock)."""
    from datetime import date
    from zoneinfo import ZoneInfo

    from console.routes.emissions import subs_in_day

    hel = ZoneInfo("Europe/Helsinki")
    assert subs_in_day(date(2025, 3, 30), hel, 1800) == 46
    assert subs_in_day(date(2025, 10, 26), hel, 3600) == 25
    assert subs_in_day(date(2025, 6, 1), hel, 1800) == 48


def _truth_minutes(dsn: str, tag: str, k: int) -> list[tuple[datetime, float]]:
    """``k`` minutes that have a 1-minute mean of ``tag`` (the report's truth), with that mean."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT r.bucket, r.sum / r.count FROM readings_1m r JOIN tags t ON t.id = r.tag_id "
                            "WHERE t.name = %s AND r.count > 0 ORDER BY r.bucket DESC LIMIT %s", (tag, k)).fetchall()


def test_the_day_projection_is_judged_against_the_strictest_day_limit(server):
    """With two day rules (200 mg/Nm³ on the daily ELV, 110 % of a 150 monthly ELV = 165), the running day's
    projection is compared with 165, as the per-period percentages are with their strictest limit; it took the
    rule listed first (200) and a day heading for 180 was not marked as heading over."""
    import json

    import psycopg

    cfg = {"timezone": "UTC", "pollutants": [{"name": "NOx", "tag": None, "elv": {"day": 200.0, "month": 150.0}}],
           "compliance": [{"name": "daily", "period": "day", "elv": "day"},
                          {"name": "daily_110", "period": "day", "elv": "month", "percent": 110.0}]}
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)  # the first hour of the running (UTC) day
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages, events, "
                     "seconds) VALUES ('TWO', %s, %s, %s, 'x', 1, 0, 0.1)", (start, now, json.dumps(cfg)))
        conn.execute("INSERT INTO emission_averages (stack, pollutant, period, period_start, period_end, value, "
                     "validated, status, valid, n_expected, n_operating, n_valid, n_substituted, substituted_share, "
                     "ci, config_sha256) VALUES ('TWO', 'NOx', 'hour', %s, %s, 180.0, 170.0, 0, true, 60, 60, 60, 0, "
                     "0, 10.0, 'x')", (start, start + timedelta(hours=1)))
    try:
        with server.client("viewer") as c:
            day = c.get("/api/emissions/TWO/live").json()["items"][0]["day"]
        assert day["limit"] == pytest.approx(165.0) and day["projection"] == pytest.approx(180.0)
        assert day["projected_over"] is True
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM emission_averages WHERE stack = 'TWO'")
            conn.execute("DELETE FROM emission_runs WHERE stack = 'TWO'")


def test_uncertainty_report_counts_an_open_upper_end_as_covering(server):
    """An open-ended interval (upper NULL: "lower or more", as a RUL at the model's cap is stored) covers every
    truth at or above its lower end; it was counted a miss. The mean width is of the closed intervals only, and
    how many were open is stated (an open interval has no finite width)."""
    from console_support import run_async

    from edge.records import Prediction
    from maintenance import store

    minutes = _truth_minutes(server.dsn, "P-101.bearing_temp", 4)
    assert len(minutes) == 4, "the plant's bearing temperature has 1-minute means"
    target = "P-101.bearing_temp"
    preds = [Prediction("open-end", "v1", "P-101", t, y, y - 1.0, None, 0.9, kind="rul", target=target)
             for t, y in minutes[:2]]  # open upper ends above the truth's lower bound: covered
    preds.append(Prediction("open-end", "v1", "P-101", minutes[2][0], minutes[2][1], minutes[2][1] + 1.0, None, 0.9,
                            kind="rul", target=target))  # the truth below the lower end: a miss
    preds.append(Prediction("open-end", "v1", "P-101", minutes[3][0], minutes[3][1], minutes[3][1] - 1.0,
                            minutes[3][1] + 3.0, 0.9, kind="rul", target=target))  # closed, width 4: covered

    async def write():
        import psycopg

        async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn, conn.transaction():
            await store.write_predictions(conn, preds)

    run_async(write())
    with server.client("viewer") as c:
        rep = c.get("/api/models/open-end/uncertainty", params={"last": "P2D", "bucket": "week"}).json()
    n = sum(x["n"] for x in rep["items"])
    covered = sum(x["empirical"] * x["n_truth"] for x in rep["items"] if x["empirical"] is not None)
    assert (n, sum(x["n_truth"] for x in rep["items"])) == (4, 4)
    assert covered == pytest.approx(3), "three of four intervals hold the truth (two of them open-ended)"
    # 3 of 4 is an estimate, stated with its exact 95 % interval (it was the bare 0.75, marked below 0.9 by the page)
    (item,) = [x for x in rep["items"] if x["n_judged"]]
    assert item["n_judged"] == 4 and "n_held" not in item
    assert (item["empirical_lower"], item["empirical_upper"]) == (pytest.approx(0.1941, abs=1e-4),
                                                                  pytest.approx(0.9937, abs=1e-4))
    assert "empirical_upper" in rep["notes"]["empirical"]
    assert sum(x["n_open"] for x in rep["items"]) == 3
    widths = [x["mean_width"] for x in rep["items"] if x["mean_width"] is not None]
    assert widths == [pytest.approx(4.0)], "the mean width is of the one closed interval"


def test_uncertainty_report_counts_an_open_lower_end_as_an_upper_bound(server):
    """A null lower bound next to a set upper one is "at most upper" (a one-sided bound), as the pages draw and print
    it ("(−∞ … 12]"); the summary left such intervals out of the empirical coverage (NULL, as if there were no
    interval) and did not count them as open."""
    from console_support import run_async

    from edge.records import Prediction
    from maintenance import store

    target = "P-101.bearing_temp"
    minutes = _truth_minutes(server.dsn, target, 7)[4:]  # minutes the other open-end test leaves alone
    assert len(minutes) == 3
    preds = [Prediction("open-low", "v1", "P-101", t, y, None, y + 1.0, 0.9, kind="regression", target=target)
             for t, y in minutes[:2]]  # the truth under the upper bound: covered
    preds.append(Prediction("open-low", "v1", "P-101", minutes[2][0], minutes[2][1], None, minutes[2][1] - 1.0, 0.9,
                            kind="regression", target=target))  # the truth above it: a miss

    async def write():
        import psycopg

        async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn, conn.transaction():
            await store.write_predictions(conn, preds)

    run_async(write())
    try:
        with server.client("viewer") as c:
            rep = c.get("/api/models/open-low/uncertainty", params={"last": "P2D", "bucket": "week"}).json()
        covered = sum(x["empirical"] * x["n_truth"] for x in rep["items"] if x["empirical"] is not None)
        assert sum(x["n_truth"] for x in rep["items"]) == 3
        assert covered == pytest.approx(2), rep["items"]
        assert sum(x["n_open"] for x in rep["items"]) == 3
        assert all(x["mean_width"] is None for x in rep["items"])
    finally:
        import psycopg

        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM predictions WHERE model_id = 'open-low'")


def test_a_report_whose_name_has_url_characters_is_linked_right(server):
    """A report file named with a space, '#' or '?' ("WI1 #2 2025-03.html") is linked URL-encoded: its raw name as
    href cut the link at the '#' (a fragment) and the page's link answered 404."""
    from pathlib import Path

    root = Path(server.cfg.console.reports_dir)
    name = "WI1 #2 ?draft 100%.html"
    (root / name).write_text("<h1>report two</h1>")
    try:
        with server.client("viewer") as c:
            item = next(r for r in c.get("/api/emissions/reports/files").json()["items"] if r["name"] == name)
            r = c.get(item["href"])
        assert r.status_code == 200 and "report two" in r.text, item["href"]
    finally:
        (root / name).unlink()


def test_uncertainty_report_of_an_anomaly_model_states_alpha_and_the_flagged_share(server):
    """An anomaly scorer's report gives the alpha its predictions carry and the share of stored predictions with
    p <= alpha (flagged), to set against alpha; not a bare mean p-value, which flagged samples (stored on every
    flag, others only every predict_every_s) pull down."""
    import psycopg

    with psycopg.connect(server.dsn) as conn:
        want = conn.execute("SELECT count(*), count(*) FILTER (WHERE p_value <= (details->>'alpha')::float8) "
                            "FROM predictions WHERE model_id = 'anomaly:P-101'").fetchone()
    assert want[1] > 0, "the seed's scores rise at the end: some predictions are flagged"
    with server.client("viewer") as c:
        rep = c.get("/api/models/anomaly:P-101/uncertainty", params={"last": "P2D", "bucket": "week"}).json()
    items = rep["items"]
    assert all(x["alpha"] == 0.25 for x in items)
    assert sum(x["n_p_values"] for x in items) == want[0]
    assert sum(x["flagged_share"] * x["n_p_values"] for x in items) == pytest.approx(want[1])
    assert all("mean_p_value" not in x for x in items)
    assert "every flagged" in rep["notes"]["flagged_share"]


def test_closed_days_a_later_run_changed_are_listed_and_marked_in_the_calendar(server):
    """A day's stored average changed after the day closed (late readings): a report made before differs from one
    made now. The page lists such changes with the value and status before and after, and marks the day in the
    calendar; the rows are those emissions/ stores (`emission_revisions`, one per changed average)."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    import psycopg

    with server.client("viewer") as c:
        tz = ZoneInfo(c.get("/api/emissions/WI1/live").json()["timezone"])
    day = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    run_id = insert_revision(server.dsn, day)
    insert_revision(server.dsn, day, period="half_hour", start_h=22, hours=0.5, old=None, new=90.0)
    try:
        with server.client("viewer") as c:
            every = c.get("/api/emissions/WI1/revisions").json()["items"]
            assert {(r["period"], r["old_value"], r["new_value"]) for r in every} == {
                ("day", 180.5, 150.25), ("half_hour", None, 90.0)}
            (only,) = c.get("/api/emissions/WI1/revisions", params={"period": "day", "last": "P1D"}).json()["items"]
            assert (only["old_status"], only["new_status"], only["run_id"]) == (1, 0, run_id)
            assert c.get("/api/emissions/WI1/revisions", params={"last": "PT10M"}).json()["items"] == []
            cal = c.get("/api/emissions/WI1/calendar", params={"month": day.strftime("%Y-%m")}).json()
            marked = {d["date"]: [r["pollutant"] for r in d["revisions"]] for d in cal["days"] if d["revisions"]}
            assert marked == {day.date().isoformat(): ["NOx"]}  # the day's own average, not its half-hours
            assert c.get("/api/emissions/NOPE/revisions").status_code == 404
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM emission_revisions WHERE stack = 'WI1'")
