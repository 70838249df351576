"""CSV downloads (console/csvexport.py) against the real test database and console: each file read back with the
csv module holds what the JSON API answers for the same query, the row cap is said (header and file name), text
from devices and users cannot start a formula, awkward names are quoted, the plant time column has its offset, the
checks and guards are the JSON routes', and a download broken off gives its database connection back."""

from __future__ import annotations

import csv
import io
import math
import socket
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

import numpy as np
import psycopg
import pytest
from console_support import (
    ConsoleServer,
    fresh_database,
    insert_alerts,
    make_alert,
    seed_plant,
    seed_predictions,
    seed_users,
)

from emissions import synthetic

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
CAP = 100
ZONE = "Europe/Helsinki"
EVIL_TAG = '=cmd|\' /C calc\'!A0, "quoted"'
LINES_TAG = 'plant/line1/T-7, "east"\nsecond line'  # an alert's tag as a device named it
NEGATIVE_TAG = "P-101.offset"
FORMULAS = ["=1+2", "+SUM(A1)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn, prefix="console_csv") as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=6, step_s=60, end=END)
        seed_predictions(dsn, asset="P-101", hours=6, end=END)
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids = synthetic.ensure_tags(conn, [EVIL_TAG, NEGATIVE_TAG], asset="P-101")
            conn.execute("UPDATE tags SET unit = 'm³/h' WHERE id = %s", (ids[EVIL_TAG],))
            t = int((END - timedelta(minutes=10)).timestamp()) + 60 * np.arange(10, dtype=np.int64)
            synthetic.copy_readings(conn, ids[EVIL_TAG], t, np.arange(10, dtype=float) - 4.5)
            synthetic.copy_readings(conn, ids[NEGATIVE_TAG], t, -np.arange(10, dtype=float) - 0.25)
            conn.execute("INSERT INTO assets (name, site, kind) VALUES ('=EVIL', '@site', 'pump')")
        raised = END - timedelta(hours=1)
        insert_alerts(dsn, [make_alert(f"A-{i}", asset="P-101", message=f"alert {i}", severity="warning",
                                       raised_at=raised + timedelta(minutes=i)) for i in range(5)]
                      + [make_alert(f"X-{i}", asset="=EVIL", message=m, tag=[EVIL_TAG, LINES_TAG][i % 2],
                                    raised_at=raised + timedelta(minutes=10 + i)) for i, m in enumerate(FORMULAS)])
        with ConsoleServer(dsn, csv_max_rows=CAP, time_zone=ZONE) as srv:
            srv.dsn = dsn
            yield srv


def rows_of(r) -> tuple[list[str], list[dict]]:
    """The header and the rows of a CSV answer, read as a spreadsheet would (BOM, CRLF)."""
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.content.startswith(b"\xef\xbb\xbf"), "UTF-8 byte-order mark for Excel"
    assert r.content.endswith(b"\n")
    reader = csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline=""))
    return list(reader.fieldnames or []), list(reader)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def num(text: str) -> float | None:
    return float(text) if text else None


def file_name(r) -> str:
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment; ")
    return unquote(disposition.split("filename*=UTF-8''")[1])


def tag_url(name: str, what: str = "readings.csv") -> str:
    return f"/api/tags/{quote(name, safe='')}/{what}"


def iso(t: datetime) -> str:
    return t.isoformat()


def test_raw_readings_are_the_json_apis_with_utc_and_plant_time(server):
    start, end = END - timedelta(minutes=90), END - timedelta(minutes=1)
    q = {"from": iso(start), "to": iso(end)}
    with server.client("viewer") as c:
        js = c.get(tag_url("P-101.vib_rms", "readings"), params=q | {"resolution": "raw", "points": 5000}).json()
        r = c.get(tag_url("P-101.vib_rms"), params=q)
    head, rows = rows_of(r)
    assert head == ["time", "time_local", "tag", "value", "unit", "quality", "value_text"]
    assert r.headers["x-valvoja-truncated"] == "false" and r.headers["x-valvoja-row-limit"] == str(CAP)
    assert len(rows) == len(js["t"]) == 89
    assert [when(x["time"]) for x in rows] == [when(t) for t in js["t"]]
    assert [float(x["value"]) for x in rows] == js["v"]
    assert [int(x["quality"]) for x in rows] == js["q"]
    assert {x["tag"] for x in rows} == {"P-101.vib_rms"} and {x["unit"] for x in rows} == {"mm/s"}
    assert all(x["time"].endswith("Z") for x in rows)
    for x in rows:  # the same instant in plant time, with its offset (+02:00 in winter, +03:00 in summer)
        local = datetime.fromisoformat(x["time_local"])
        assert local == when(x["time"]) and local.utcoffset() in (timedelta(hours=2), timedelta(hours=3))
    assert file_name(r) == f"P-101.vib_rms_{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}_raw.csv"


@pytest.mark.parametrize("resolution, span, points", [("1m", timedelta(minutes=90), 1000),
                                                        ("1h", timedelta(hours=5), 10)])
def test_rollup_buckets_are_the_charts(server, resolution, span, points):
    """Per minute or hour: min, max, mean and count of the good readings and the bad count, bucket for bucket what
    the JSON API draws at that width (rollups inside, raw readings at the edges)."""
    q = {"from": iso(END - span - timedelta(minutes=7)), "to": iso(END - timedelta(minutes=7))}
    with server.client("viewer") as c:
        js = c.get(tag_url("P-101.bearing_temp", "readings"), params=q | {"resolution": resolution,
                                                                          "points": points}).json()
        head, rows = rows_of(c.get(tag_url("P-101.bearing_temp"), params=q | {"resolution": resolution}))
    assert js["bucket_s"] == {"1m": 60, "1h": 3600}[resolution]
    assert head == ["time", "time_local", "tag", "unit", "min", "max", "mean", "count", "bad_count"]
    assert len(rows) == len(js["t"]) > 3
    assert [when(x["time"]) for x in rows] == [when(t) for t in js["t"]]
    for key, col in (("min", "min"), ("max", "max"), ("avg", "mean")):
        assert [num(x[col]) for x in rows] == pytest.approx(js[key], rel=1e-12), col
    assert [int(x["count"]) for x in rows] == js["n"] and [int(x["bad_count"]) for x in rows] == js["bad"]


def test_the_row_cap_is_said_in_a_header_and_the_file_name(server):
    """At most ``csv_max_rows`` rows, the first ones; ``X-Valvoja-Truncated`` says so and so does the file name,
    which is what a spreadsheet user sees. A range of exactly the cap is not cut."""
    with server.client("viewer") as c:
        q = {"from": iso(END - timedelta(hours=3)), "to": iso(END)}
        js = c.get(tag_url("P-101.vib_rms", "readings"), params=q | {"resolution": "raw", "points": 5000}).json()
        r = c.get(tag_url("P-101.vib_rms"), params=q)
        _, rows = rows_of(r)
        assert len(js["t"]) == 180 and len(rows) == CAP
        assert [when(x["time"]) for x in rows] == [when(t) for t in js["t"][:CAP]]
        assert r.headers["x-valvoja-truncated"] == "true"
        assert file_name(r).endswith(f"_raw_TRUNCATED-{CAP}-rows.csv")
        exact = c.get(tag_url("P-101.vib_rms"), params={"from": iso(END - timedelta(minutes=CAP)), "to": iso(END)})
        assert len(rows_of(exact)[1]) == CAP and exact.headers["x-valvoja-truncated"] == "false"
        assert "TRUNCATED" not in file_name(exact)


def test_text_cells_cannot_start_a_formula_and_awkward_names_are_quoted(server):
    """A tag name with a leading '=', a comma and quotes comes back whole (quoted) behind a ``'``, one with a newline
    whole; an
    alert message, asset, site or tag beginning with = + - @ tab or CR likewise; numbers (negative values) stay
    numbers; the file name keeps nothing of the name that a file system or a header would choke on."""
    with server.client("viewer") as c:
        r = c.get(tag_url(EVIL_TAG), params={"last": "PT1H", "to": iso(END)})
        _, rows = rows_of(r)
        assert len(rows) == 10
        assert {x["tag"] for x in rows} == {"'" + EVIL_TAG} and {x["unit"] for x in rows} == {"m³/h"}
        assert [float(x["value"]) for x in rows] == [i - 4.5 for i in range(10)]
        assert rows[0]["value"] == "-4.5", "a negative number is a number, not a formula"
        assert '"\'' + EVIL_TAG.replace('"', '""') + '"' in r.content.decode("utf-8-sig"), "quoted as RFC 4180 says"
        name = file_name(r)
        assert name.endswith("_raw.csv") and not any(ch in name for ch in '\n"/\\,'), name
        ascii_name = r.headers["content-disposition"].split('filename="')[1].split('"')[0]
        assert ascii_name.isascii() and '"' not in ascii_name
        neg = rows_of(c.get(tag_url(NEGATIVE_TAG), params={"last": "PT1H", "to": iso(END)}))[1]
        assert neg[0]["value"] == "-0.25" and neg[0]["tag"] == NEGATIVE_TAG
        _, alerts = rows_of(c.get("/api/alerts.csv", params={"asset": "=EVIL"}))
    by_message = {a["message"]: a for a in alerts}
    assert set(by_message) == {"'" + m for m in FORMULAS}
    assert {a["asset"] for a in alerts} == {"'=EVIL"} and {a["site"] for a in alerts} == {"'@site"}
    assert {a["tag"] for a in alerts} == {"'" + EVIL_TAG, LINES_TAG}, "quoted, newline and all"


def test_alerts_are_the_boards_under_its_filters(server):
    q = {"asset": ["P-101", "=EVIL"], "state": ["raised", "acknowledged"], "severity": "warning"}
    with server.client("engineer") as c:
        c.post("/api/alerts/A-3/ack", json={"comment": "@seen, checked"}).raise_for_status()
        js = c.get("/api/alerts", params=q | {"limit": 1000}).json()["items"]
        r = c.get("/api/alerts.csv", params=q)
        head, rows = rows_of(r)
    assert head[:4] == ["id", "raised_at", "raised_at_local", "severity"]
    assert "ack_comment" in head and "cleared_by" in head
    assert [x["id"] for x in rows] == [a["id"] for a in js] and len(rows) == 11
    for x, a in zip(rows, js, strict=True):
        assert when(x["raised_at"]) == when(a["raised_at"])
        assert (x["state"], x["severity"], x["kind"]) == (a["state"], a["severity"], a["kind"])
    acked = next(x for x in rows if x["id"] == "A-3")
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "engineer"
    assert acked["ack_comment"] == "'@seen, checked"
    assert file_name(r) == "alerts_P-101_=EVIL_raised_acknowledged.csv"


def test_an_assets_predictions_with_intervals_and_reviews(server):
    """Every prediction of the range (not thinned), oldest first: the rows of ``/api/predictions?asset=``, with the
    interval or p-value, and the newest review with its comment."""
    with server.client("maintenance") as c:
        q = {"asset": "P-101", "from": iso(END - timedelta(hours=2)), "to": iso(END)}
        first = c.get("/api/predictions", params=q | {"limit": 1}).json()["items"][0]
        c.post(f"/api/predictions/{first['id']}/review",
               json={"verdict": "wrong", "comment": "=HYPERLINK(\"http://x\")"}).raise_for_status()
        js = c.get("/api/predictions", params=q | {"limit": 1000}).json()["items"]
        r = c.get("/api/assets/P-101/predictions.csv", params={"from": q["from"], "to": q["to"]})
        head, rows = rows_of(r)
    assert head == ["id", "time", "time_local", "asset", "kind", "model_id", "model_version", "target", "value",
                    "lower", "upper", "coverage", "p_value", "verdict", "reviewed_by", "reviewed_at",
                    "reviewed_at_local", "review_comment"]
    assert len(rows) == len(js) == 36
    js = sorted(js, key=lambda p: (when(p["time"]), p["id"]))
    assert [int(x["id"]) for x in rows] == [p["id"] for p in js]
    for x, p in zip(rows, js, strict=True):
        for key in ("value", "lower", "upper", "coverage", "p_value"):
            assert num(x[key]) == p[key], key
        assert (x["kind"], x["model_id"], x["model_version"], x["verdict"] or None) == (
            p["kind"], p["model_id"], p["model_version"], p["verdict"])
    reviewed = next(x for x in rows if int(x["id"]) == first["id"])
    assert reviewed["reviewed_by"] == "maintenance" and reviewed["review_comment"] == '\'=HYPERLINK("http://x")'
    assert file_name(r) == f"P-101_predictions_{END - timedelta(hours=2):%Y%m%dT%H%M%SZ}_{END:%Y%m%dT%H%M%SZ}.csv"


@pytest.mark.parametrize("url", ["/api/tags/P-101.vib_rms/readings.csv", "/api/alerts.csv",
                                 "/api/assets/P-101/predictions.csv"])
def test_guards_and_checks_are_the_json_routes(server, url):
    """No credentials: 401 (a problem document, not a file); a time without an offset or a bad duration: 422
    naming the parameter, before any byte of CSV."""
    with server.client() as anon:
        r = anon.get(url)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with server.client("viewer") as c:
        for params, where in (({"from": "2026-12-01T00:00"}, "from"), ({"last": "P1M"}, "last")):
            r = c.get(url, params=params)
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
            assert r.json()["param"] == where
        assert c.get("/api/tags/nope/readings.csv").status_code == 404


def test_the_openapi_document_shows_the_csv_answers(server):
    with server.client() as c:
        paths = c.get("/api/openapi.json").json()["paths"]
    for path in ("/api/tags/{name}/readings.csv", "/api/alerts.csv", "/api/assets/{name}/predictions.csv"):
        ok = paths[path]["get"]["responses"]["200"]
        assert "text/csv" in ok["content"] and "X-Valvoja-Truncated" in ok["headers"], path


def test_downloads_broken_off_give_their_database_connection_back(pg_admin_dsn, server):
    """A client that leaves in the middle of a download, or right after its headers: the export's transaction
    ends and its pooled connection comes back (a pool of 2 serves the next request at once after 6 of them)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        (tag,) = synthetic.ensure_tags(conn, ["BIG.flow"]).values()
        t = int((END - timedelta(days=2)).timestamp()) + np.arange(150_000, dtype=np.int64)
        synthetic.copy_readings(conn, tag, t, np.sin(t / 100.0))
    with ConsoleServer(server.dsn, pool_max=2, csv_max_rows=1_000_000) as small, small.client("viewer") as c:
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        request = (f"GET /api/tags/BIG.flow/readings.csv?last=P3D&to={quote(iso(END))} HTTP/1.1\r\n"
                   f"Host: console\r\nCookie: {cookie}\r\n\r\n").encode()
        for read in (200_000, 0, 200_000, 0, 200_000, 0):
            with socket.create_connection(("127.0.0.1", small.port), timeout=30) as s:
                s.sendall(request)
                got = b""
                while b"\r\n\r\n" not in got or len(got) < read:
                    got += s.recv(65536)
                assert got.startswith(b"HTTP/1.1 200"), got[:200]
        started = time.monotonic()
        assert c.get("/api/assets", timeout=10).status_code == 200
        assert time.monotonic() - started < 5
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND state LIKE 'idle in transaction%'").fetchone()[0]:
                assert time.monotonic() < deadline, "an export's transaction was left open"
                time.sleep(0.1)
        whole = c.get("/api/tags/BIG.flow/readings.csv", params={"last": "P3D", "to": iso(END)}, timeout=60)
        _, rows = rows_of(whole)
        assert len(rows) == 150_000 and not math.isnan(float(rows[-1]["value"]))
