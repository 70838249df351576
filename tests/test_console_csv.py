"""CSV downloads (console/csvexport.py) against the real test database and console: each file read back with the
csv module holds what the JSON API answers for the same query, the row cap is said (header and file name), text
from devices and users cannot start a formula, awkward names are quoted, the plant time column has its offset, the
checks and guards are the JSON routes', and a download broken off gives its database connection back."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import re
import socket
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import numpy as np
import psycopg
import pytest
from console_support import (
    PASSWORD,
    ConsoleServer,
    fresh_database,
    insert_alerts,
    make_alert,
    seed_plant,
    seed_predictions,
    seed_users,
)

from edge.records import Flag
from emissions import synthetic

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
CAP = 100
ZONE = "Europe/Helsinki"
EVIL_TAG = '=cmd|\' /C calc\'!A0, "quoted"'
LINES_TAG = 'plant/line1/T-7, "east"\nsecond line'  # an alert's tag as a device named it
NEGATIVE_TAG = "P-101.offset"
FORMULAS = ["=1+2", "+SUM(A1)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "＝1+2", "＋SUM(A1)", "－2+3", "＠SUM(A1)"]
FLAGGED = int(Flag.OUT_OF_RANGE | Flag.FROZEN | Flag.SOURCE_STATUS)
BAD_SENSOR_FAILURE = 0x80320000
# Tag names as a site could configure them, each of which must not break the Content-Disposition header or make a
# misleading or unsafe file name: header injection, a path, accents and CJK, a right-to-left override ("exe.csv"
# shown reversed), a full-width slash, a zero-width space, a C1 control, one too long for a file name.
NAMES = ['x"; filename=evil.exe;\tSet-Cookie: pwn=1', "../../etc/passwd\\..\\boot.ini",
         "Pyhäjärvi ÅÄÖ/温度", "\u202egpj.exe", "pump\uff0fP-1\u2215a\u200bb\u0085c", "T" * 300]


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
            # Readings the gateway flagged: validation's bits, and a device's OPC UA status (BadSensorFailure).
            conn.execute("UPDATE readings SET flags = %s, status = %s, quality = 2 WHERE tag_id = "
                         "(SELECT id FROM tags WHERE name = 'P-101.vib_rms') AND time >= %s AND time < %s",
                         (FLAGGED, BAD_SENSOR_FAILURE, END - timedelta(minutes=30), END - timedelta(minutes=25)))
            names = synthetic.ensure_tags(conn, NAMES, asset="P-101")
            for tag_id in names.values():
                synthetic.copy_readings(conn, tag_id, t[:3], np.arange(3, dtype=float))
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
    assert head == ["time", "time_local", "tag", "value", "unit", "quality", "flags", "flag_names", "status",
                    "value_text"]
    assert r.headers["x-valvoja-truncated"] == "false" and r.headers["x-valvoja-row-limit"] == str(CAP)
    assert len(rows) == len(js["t"]) == 89
    assert [when(x["time"]) for x in rows] == [when(t) for t in js["t"]]
    assert [float(x["value"]) for x in rows] == js["v"]
    assert [int(x["quality"]) for x in rows] == js["q"]
    assert [int(x["flags"]) for x in rows] == js["flags"] and [int(x["status"], 16) for x in rows] == js["status"]
    # Each reading's why: validation's flags by name and the device's status code as OPC UA tools show it.
    flagged = [x for x in rows if x["flags"] != "0"]
    assert len(flagged) == 5 and {x["quality"] for x in flagged} == {"2"}
    assert {x["flag_names"] for x in flagged} == {"OUT_OF_RANGE|FROZEN|SOURCE_STATUS"}
    assert {x["status"] for x in flagged} == {"0x80320000"}
    assert {(x["flag_names"], x["status"]) for x in rows if x["flags"] == "0"} == {("", "0x00000000")}
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
    assert [x["id"] for x in rows] == [a["id"] for a in js] and len(rows) == 5 + len(FORMULAS)
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
                    "lower", "upper", "coverage", "p_value", "alpha", "verdict", "reviewed_by", "reviewed_at",
                    "reviewed_at_local", "review_comment"]
    assert len(rows) == len(js) == 36
    js = sorted(js, key=lambda p: (when(p["time"]), p["id"]))
    assert [int(x["id"]) for x in rows] == [p["id"] for p in js]
    for x, p in zip(rows, js, strict=True):
        for key in ("value", "lower", "upper", "coverage", "p_value"):
            assert num(x[key]) == p[key], key
        assert (x["kind"], x["model_id"], x["model_version"], x["verdict"] or None) == (
            p["kind"], p["model_id"], p["model_version"], p["verdict"])
        # a p-value with the level it is judged against (it was exported alone); intervals carry coverage instead
        assert num(x["alpha"]) == (p["details"] or {}).get("alpha")
    assert {num(x["alpha"]) for x in rows if x["kind"] == "anomaly"} == {0.25}
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
    ends and its pooled connection and download slot come back (two slots, a pool of 4: six downloads one after
    the other all start, and the next request is served at once)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        (tag,) = synthetic.ensure_tags(conn, ["BIG.flow"]).values()
        t = int((END - timedelta(days=2)).timestamp()) + np.arange(150_000, dtype=np.int64)
        synthetic.copy_readings(conn, tag, t, np.sin(t / 100.0))
    with (ConsoleServer(server.dsn, pool_max=4, csv_max_concurrent=2, csv_max_rows=1_000_000) as small,
          small.client("viewer") as c):
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


def test_file_names_from_awkward_tag_names_cannot_break_the_header(server):
    """Names come from the site's tag and asset names: quotes, ``;``, CR/LF, a path, accents and CJK, a right-to-left
    override, look-alike slashes, invisible characters and a 300-character name. Each answer has one
    Content-Disposition (and no header a name added), ``filename`` plain ASCII letters, digits and ``._-``,
    ``filename*`` UTF-8 percent-encoded (RFC 6266 / 8187) that decodes to a name without a path, control, invisible
    or separator character, at most 255 bytes, and still ending in the range and ``_raw.csv``."""
    plain = re.compile(r'^attachment; filename="([A-Za-z0-9._-]+)"; filename\*=UTF-8\'\'([A-Za-z0-9._~%-]+)$')
    got = {}
    with server.client("viewer") as c:
        for tag in NAMES:
            r = c.get(tag_url(tag), params={"last": "PT1H", "to": iso(END)})
            assert r.status_code == 200, (tag, r.text[:200])
            names = [k.lower() for k, _ in r.headers.multi_items()]
            assert names.count("content-disposition") == 1 and "set-cookie" not in names, (tag, names)
            m = plain.match(r.headers["content-disposition"])
            assert m, (tag, r.headers["content-disposition"])
            name = unquote(m.group(2), errors="strict")
            assert not any(unicodedata.category(ch)[0] in "CZ" for ch in name), (tag, name)
            assert not set(name) & set('/\\:*?"<>|;,\uff0f\u2215'), (tag, name)
            assert len(name.encode()) <= 255 and name.endswith(f"_{END:%Y%m%dT%H%M%SZ}_raw.csv"), (tag, name)
            assert not name.startswith(".") and len(rows_of(r)[1]) == 3
            got[tag] = (m.group(1), name)
        # An asset filter is the file name of the alerts: CR/LF (a tag route's path cannot hold one) and length.
        alerts = c.get("/api/alerts.csv", params={"asset": ["A" * 200, "B\u202e" * 50, 'P"\r\nSet-Cookie: pwn=1']})
        names = [k.lower() for k, _ in alerts.headers.multi_items()]
        assert names.count("content-disposition") == 1 and "set-cookie" not in names, names
        assert plain.match(alerts.headers["content-disposition"]), alerts.headers["content-disposition"]
    assert got[NAMES[2]][1].startswith("Pyhäjärvi_ÅÄÖ_温度_"), "accents and CJK kept in filename*"
    assert got[NAMES[2]][0].startswith("Pyhajarvi_AAO_"), "and without their accents in the ASCII name"
    assert got[NAMES[1]][1].startswith("etc_passwd_boot.ini_"), got[NAMES[1]]
    assert got[NAMES[3]][1].startswith("gpj.exe_"), "no right-to-left override"
    assert got[NAMES[4]][1].startswith("pump_P-1_a_b_c_"), got[NAMES[4]]
    assert got[NAMES[5]][1] == "T" * 120 + f"_{END - timedelta(hours=1):%Y%m%dT%H%M%SZ}_{END:%Y%m%dT%H%M%SZ}_raw.csv"
    name = file_name(alerts)
    assert name == "alerts_" + "A" * 40 + "_" + "_".join("B" * 20) + "_P_Set-Cookie_pwn=1.csv", name


def back_to(r) -> str:
    """Where the log-in form a redirect leads to sends the browser once logged in (its ``next``)."""
    where = urlsplit(r.headers["location"])
    assert where.path == "/login", r.headers["location"]
    return parse_qs(where.query)["next"][0]


def test_a_browser_without_a_session_is_sent_to_log_in_and_back(server):
    """A CSV button clicked after the session expired (a browser navigation: Accept names text/html) is sent to the
    log-in form, which sends it back to the page the button was on (else to the file), as a page would be; the 401
    problem document was saved as the .csv before. fetch() and API clients (no text/html, or a bearer token) keep
    the 401."""
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    page = f"{server.url}/assets/P-101?from=2026-12-01T00%3A00Z"
    url = tag_url("P-101.vib_rms") + "?last=PT1H"
    with server.client("viewer") as c:
        assert c.get(url, headers=html).status_code == 200, "logged in: the file, whatever the Accept"
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second' "
                         "WHERE user_id = (SELECT id FROM console_users WHERE username = 'viewer')")
        r = c.get(url, headers=html | {"Referer": page})
        assert r.status_code == 303, r.text[:200]
        assert back_to(r) == "/assets/P-101?from=2026-12-01T00%3A00Z"
        r = c.get(url, headers=html)  # no Referer (a link opened from a mail): back to the file itself
        assert r.status_code == 303 and back_to(r) == url
        r = c.get(url, headers=html | {"Referer": "http://elsewhere.example/assets/P-101"})
        assert r.status_code == 303 and back_to(r) == url
        for accept in ("*/*", "application/json", "text/csv"):  # fetch(), scripts, curl
            r = c.get(url, headers={"Accept": accept, "Referer": page})
            assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json", accept
        # The log-in form takes the browser back where it was.
        form = c.get("/login", params={"next": "/assets/P-101?from=x"})
        assert 'value="/assets/P-101?from=x"' in form.text
        r = c.post("/login", data={"username": "viewer", "password": PASSWORD, "next": "/assets/P-101?from=x",
                                   "csrf_token": c.cookies.get("valvoja_login_csrf", path="/login")})
        assert r.status_code == 303 and r.headers["location"] == "/assets/P-101?from=x", r.text[:200]
        assert c.get(url, headers=html).status_code == 200
    with server.client("admin") as admin:
        token = admin.post("/api/tokens", json={"name": "csv-redirect", "role": "viewer"}).json()["token"]
    with server.client() as machine:
        assert machine.get(url, headers=html | {"Authorization": f"Bearer {token}"}).status_code == 200
        for bearer in ("not-a-token", token + "x"):
            r = machine.get(url, headers=html | {"Authorization": f"Bearer {bearer}", "Referer": page})
            assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == "Bearer"
        r = machine.get("/api/alerts", headers=html)
        assert r.status_code == 401, "JSON routes are not pages: unchanged"


def test_concurrent_downloads_are_limited_and_the_console_keeps_answering(server, caplog):
    """Each download holds a pooled connection while it streams. With ``csv_max_concurrent = 2`` (pool of 4): two
    slow downloads (big files read slowly) run; a third is refused at once with 503, Retry-After and a problem
    document, logged once however many are refused; log-in and the API answer at once meanwhile; the two complete
    whole; a new one then runs."""
    n = 400_000  # ~25 MB of CSV: more than the loopback socket buffers, so a client not reading holds the download
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        (tag,) = synthetic.ensure_tags(conn, ["SLOW.flow"]).values()
        t = int((END - timedelta(days=10)).timestamp()) + np.arange(n, dtype=np.int64)
        synthetic.copy_readings(conn, tag, t, np.cos(t / 50.0))
    url = tag_url("SLOW.flow") + f"?last=P11D&to={quote(iso(END))}"
    with ConsoleServer(server.dsn, pool_max=4, csv_max_concurrent=2, csv_max_rows=1_000_000) as srv:
        clients = [httpx.Client(base_url=srv.url, timeout=60) for _ in range(2)]
        with srv.client("viewer") as c, contextlib.ExitStack() as stack:
            for slow in clients:
                stack.enter_context(slow)
                slow.cookies = c.cookies
            held = [stack.enter_context(slow.stream("GET", url)) for slow in clients]
            assert [r.status_code for r in held] == [200, 200]
            chunks = [r.iter_bytes() for r in held]
            first = [next(it) for it in chunks]  # started, then not read for a while
            caplog.set_level(logging.WARNING, logger="console.csvexport")
            for _ in range(2):
                started = time.monotonic()
                r = c.get(url)
                assert time.monotonic() - started < 1.0, "refused at once, not queued"
                assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
                assert r.headers["retry-after"] == "10"
                assert r.json()["type"] == "/problems/csv-busy" and r.json()["limit"] == 2
            busy = [x for x in caplog.records if getattr(x, "event", None) == "console_csv_busy"]
            assert len(busy) == 1 and srv.app.state.csv_slots.refused == 2
            time.sleep(1)  # the held downloads' server side is blocked on a full socket by now
            with srv.client() as other:  # a log-in and the API, while both downloads hold their connections
                started = time.monotonic()
                other.post("/api/auth/login", json={"username": "engineer", "password": PASSWORD}).raise_for_status()
                assert other.get("/api/alerts").status_code == 200 and other.get("/api/assets").status_code == 200
                assert time.monotonic() - started < 3, time.monotonic() - started
            bodies = [head + b"".join(it) for head, it in zip(first, chunks, strict=True)]
        for body in bodies:
            lines = body.decode("utf-8-sig").splitlines()
            assert len(lines) == n + 1 and lines[0].startswith("time,")
            assert when(lines[1].split(",")[0]) == datetime.fromtimestamp(int(t[0]), UTC)
            assert when(lines[-1].split(",")[0]) == datetime.fromtimestamp(int(t[-1]), UTC)
        assert bodies[0] == bodies[1]
        deadline = time.monotonic() + 2  # the slots are given back as the responses end
        with srv.client("viewer") as c:
            while (again := c.get(url)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert again.status_code == 200 and again.content == bodies[0]
            # given back once the response has ended on the server's side, which may be just after the client has
            # read the last byte (under load it was not yet, and the check failed: 1 == 0)
            while srv.app.state.csv_slots.running and time.monotonic() < deadline + 2:
                time.sleep(0.02)
            assert srv.app.state.csv_slots.running == 0
