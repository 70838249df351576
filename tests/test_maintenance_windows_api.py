"""Maintenance windows through the console API against the real console server and database: plan on several
assets with local times and a zone (DST), list by state and asset with pages, end early, cancel, validation,
roles, CSRF and the audit entry of each change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from console_support import ConsoleServer, fresh_database, seed_plant, seed_users

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(d: timedelta) -> str:
    return (NOW + d).isoformat()


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=1, step_s=600)
        with ConsoleServer(dsn) as srv:
            srv.dsn = dsn
            yield srv


def plan(c: httpx.Client, **body) -> httpx.Response:
    body = {"assets": ["P-101"], "starts_at": iso(timedelta(hours=1)), "ends_at": iso(timedelta(hours=3)),
            "reason": "WO-1 seal replacement"} | body
    return c.post("/api/maintenance-windows", json=body)


def test_plan_on_two_assets_is_listed_and_audited(server):
    with server.client("maintenance") as c:
        r = plan(c, assets=["P-101", "F-201"], reason="WO-4711 coupling alignment")
        assert r.status_code == 201, r.text
        items = r.json()["items"]
        assert [w["asset"] for w in items] == ["P-101", "F-201"]
        assert all(w["state"] == "upcoming" and w["created_by"] == "maintenance" for w in items)
        assert items[0]["planned_ends_at"] == items[0]["ends_at"]
        ids = {w["id"] for w in items}
        upcoming = c.get("/api/maintenance-windows", params={"state": "upcoming", "asset": "F-201"}).json()
        assert ids & {w["id"] for w in upcoming["items"]} == {items[1]["id"]}
    with server.client("admin") as c:
        audit = c.get("/api/audit", params={"target_kind": "maintenance_window"}).json()["items"]
    mine = [a for a in audit if a["target_id"] in {str(i) for i in ids}]
    assert {(a["action"], a["actor"], a["detail"]["reason"]) for a in mine} == {
        ("maintenance_window.create", "maintenance", "WO-4711 coupling alignment")}
    assert len(mine) == 2 and all(a["client"] == "127.0.0.1" for a in mine)


def test_helsinki_window_across_the_end_of_summer_time_ends_at_the_wall_clock_time_asked(server):
    """22:00 Saturday to 06:00 Sunday, Helsinki time, over the last Sunday of October 2027 (04:00 EEST -> 03:00
    EET): 8 hours on the clock face, 9 hours of real time; it ends when the plant's clocks say 06:00."""
    with server.client("maintenance") as c:
        r = plan(c, starts_at="2027-10-30T22:00", ends_at="2027-10-31T06:00", time_zone="Europe/Helsinki",
                 reason="annual overhaul night shift")
        assert r.status_code == 201, r.text
        w = r.json()["items"][0]
    assert datetime.fromisoformat(w["starts_at"]) == datetime(2027, 10, 30, 19, 0, tzinfo=UTC)
    assert datetime.fromisoformat(w["ends_at"]) == datetime(2027, 10, 31, 4, 0, tzinfo=UTC)
    assert w["starts_local"] == "2027-10-30T22:00:00+03:00" and w["ends_local"] == "2027-10-31T06:00:00+02:00"
    assert w["time_zone"] == "Europe/Helsinki"
    assert datetime.fromisoformat(w["ends_at"]) - datetime.fromisoformat(w["starts_at"]) == timedelta(hours=9)
    # shortened with a local time and no zone: read in the window's own zone
    with server.client("maintenance") as c:
        twice = c.post(f"/api/maintenance-windows/{w['id']}/end", json={"at": "2027-10-31T03:30"})
        assert twice.status_code == 422 and "happens twice" in twice.json()["detail"]
        short = c.post(f"/api/maintenance-windows/{w['id']}/end", json={"at": "2027-10-31T05:00"}).json()
    assert datetime.fromisoformat(short["ends_at"]) == datetime(2027, 10, 31, 3, 0, tzinfo=UTC)
    assert short["ends_local"] == "2027-10-31T05:00:00+02:00" and short["planned_ends_at"] == w["ends_at"]


def test_a_local_time_the_clocks_repeat_or_skip_is_refused_not_guessed(server):
    with server.client("maintenance") as c:
        twice = plan(c, starts_at="2027-10-31T03:30", ends_at="2027-10-31T08:00", time_zone="Europe/Helsinki")
        assert twice.status_code == 422 and "happens twice" in twice.json()["detail"]
        assert "+03:00" in twice.json()["detail"] and "+02:00" in twice.json()["detail"]
        skipped = plan(c, starts_at="2027-03-28T03:30", ends_at="2027-03-28T08:00", time_zone="Europe/Helsinki")
        assert skipped.status_code == 422 and "does not exist" in skipped.json()["detail"]
        # with an offset it is unambiguous
        ok = plan(c, starts_at="2027-10-31T03:30:00+02:00", ends_at="2027-10-31T08:00:00+02:00")
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"ends_at": iso(timedelta(minutes=30))}, 422, "must be after starts_at"),
    ({"starts_at": iso(-timedelta(hours=3)), "ends_at": iso(-timedelta(hours=1))}, 422, "in the past"),
    ({"ends_at": iso(timedelta(days=20))}, 422, "long=true"),
    ({"ends_at": iso(timedelta(days=400)), "long": True}, 422, "at most 366 days"),
    ({"assets": ["P-101", "NOPE-9"]}, 422, "unknown asset(s) NOPE-9"),
    ({"assets": []}, 422, "assets"),
    ({"assets": ["*", "P-101"]}, 422, "give it alone"),
    ({"reason": "  "}, 422, "reason"),
    ({"reason": "seal\x00"}, 422, "NUL"),
    ({"assets": ["P-1\x0001"]}, 422, "NUL"),
    ({"starts_at": "2027-05-01T08:00"}, 422, "no UTC offset"),
    ({"starts_at": "2027-05-01T08:00", "time_zone": "Mars/Olympus"}, 422, "not an IANA time zone"),
    ({"starts_at": "next tuesday"}, 422, "not an ISO-8601"),
    ({"tag": "F-201.vib_rms"}, 422, "not a tag of asset P-101"),
])
def test_validation(server, body, status, says):
    with server.client("maintenance") as c:
        r = plan(c, **body)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_a_long_window_said_so_and_a_tag_window_are_accepted(server):
    with server.client("admin") as c:
        long = plan(c, ends_at=iso(timedelta(days=30)), long=True, reason="turnaround")
        tag = plan(c, tag="P-101.vib_rms", reason="sensor swap")
        every = plan(c, assets=["*"], reason="site shutdown")
    assert long.status_code == tag.status_code == every.status_code == 201
    assert tag.json()["items"][0]["tag"] == "P-101.vib_rms" and every.json()["items"][0]["asset"] == "*"


def test_roles_and_csrf(server):
    for role in ("viewer", "engineer"):
        with server.client(role) as c:
            r = plan(c)
            assert r.status_code == 403 and "windows.plan" in r.json()["detail"]
            assert c.get("/api/maintenance-windows").status_code == 200
    with server.client("maintenance") as c:
        del c.headers["X-CSRF-Token"]
        r = plan(c)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    with server.client() as anonymous:
        assert anonymous.get("/api/maintenance-windows").status_code == 401


def test_end_early_and_cancel_keep_the_history(server):
    with server.client("maintenance") as c:
        cur = plan(c, starts_at=iso(-timedelta(hours=1)), reason="pump P-101 bearing").json()["items"][0]
        assert cur["state"] == "current"
        up = plan(c, reason="next week").json()["items"][0]
        # an upcoming window cannot be "ended now"; a started one cannot be cancelled
        assert c.post(f"/api/maintenance-windows/{up['id']}/end", json={}).status_code == 409
        r = c.post(f"/api/maintenance-windows/{cur['id']}/cancel", json={"reason": "done"})
        assert r.status_code == 409 and "end it early" in r.json()["detail"]
        # shorten, then end now
        short = c.post(f"/api/maintenance-windows/{cur['id']}/end", json={"at": iso(timedelta(hours=2))})
        assert short.status_code == 200 and short.json()["ends_at"] == iso(timedelta(hours=2))
        longer = c.post(f"/api/maintenance-windows/{cur['id']}/end", json={"at": iso(timedelta(hours=5))})
        assert longer.status_code == 422 and "plan another window" in longer.json()["detail"]
        past = c.post(f"/api/maintenance-windows/{cur['id']}/end", json={"at": iso(-timedelta(minutes=30))})
        assert past.status_code == 422 and "in the past" in past.json()["detail"]
        ended = c.post(f"/api/maintenance-windows/{cur['id']}/end", json={"comment": "finished early"}).json()
        assert ended["state"] == "past" and ended["ended_by"] == "maintenance"
        assert ended["planned_ends_at"] == cur["ends_at"] and ended["ends_at"] < cur["ends_at"]
        assert c.post(f"/api/maintenance-windows/{cur['id']}/end", json={}).status_code == 409
        cancelled = c.post(f"/api/maintenance-windows/{up['id']}/cancel", json={"reason": "parts late"}).json()
        assert cancelled["state"] == "cancelled" and cancelled["cancel_reason"] == "parts late"
        assert c.get(f"/api/maintenance-windows/{up['id']}").json()["cancelled_by"] == "maintenance"
        assert c.post("/api/maintenance-windows/999999/cancel", json={}).status_code == 404
    with server.client("admin") as c:
        audit = c.get("/api/audit", params={"target_kind": "maintenance_window", "limit": 500}).json()["items"]
    trail = sorted((a["id"], a["action"], a["target_id"]) for a in audit
                   if a["target_id"] in (str(cur["id"]), str(up["id"])))
    assert [(act, t) for _, act, t in trail] == [
        ("maintenance_window.create", str(cur["id"])), ("maintenance_window.create", str(up["id"])),
        ("maintenance_window.end", str(cur["id"])), ("maintenance_window.end", str(cur["id"])),
        ("maintenance_window.cancel", str(up["id"]))]


def test_lists_page_by_state_and_asset(server):
    with server.client("maintenance") as c:
        made = [plan(c, assets=["B-301"], starts_at=iso(timedelta(hours=10 + i)), ends_at=iso(timedelta(hours=11 + i)),
                     reason=f"B-301 job {i}").json()["items"][0]["id"] for i in range(5)]
        seen, cursor = [], None
        while True:
            params = {"asset": "B-301", "state": "upcoming", "limit": 2} | ({"cursor": cursor} if cursor else {})
            pg = c.get("/api/maintenance-windows", params=params).json()
            seen += [w["id"] for w in pg["items"] if w["asset"] == "B-301"]
            cursor = pg["next_cursor"]
            if not cursor:
                break
        assert seen == made  # soonest first, each once
        everything = c.get("/api/maintenance-windows", params={"limit": 1000}).json()["items"]
        starts = [w["starts_at"] for w in everything]
        assert starts == sorted(starts, reverse=True)  # with past ones: newest first
        bad = c.get("/api/maintenance-windows", params={"state": "sleeping"})
        assert bad.status_code == 422
        assert c.get("/api/maintenance-windows", params={"cursor": "zz"}).status_code == 422


def test_two_planners_ending_one_window_at_once_end_it_once(server):
    with server.client("maintenance") as c:
        w = plan(c, starts_at=iso(-timedelta(hours=1)), reason="race").json()["items"][0]

    def end(_):
        with server.client("admin") as c:
            return c.post(f"/api/maintenance-windows/{w['id']}/end", json={}).status_code
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(end, range(4)))
    assert codes == [200, 409, 409, 409]
    with server.client("admin") as c:
        audit = c.get("/api/audit", params={"target_kind": "maintenance_window", "target_id": str(w["id"])}).json()
    assert sorted(a["action"] for a in audit["items"]) == ["maintenance_window.create", "maintenance_window.end"]


def test_the_openapi_document_has_the_windows(server):
    with server.client() as c:
        doc = c.get("/api/openapi.json").json()
    assert {"/api/maintenance-windows", "/api/maintenance-windows/{window_id}/end",
            "/api/maintenance-windows/{window_id}/cancel"} <= set(doc["paths"])
    assert "maintenance windows" in {t["name"] for t in doc["tags"]}
