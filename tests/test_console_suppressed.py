"""Conditions hidden by a maintenance window, on the board and the asset page: the gateway logs a ``suppressed``
event instead of raising (maintenance/alerts.py); the console showed nothing of them, so the control room did
not know what a window was hiding. Events are written by maintenance's own AlertManager and store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from console_support import ConsoleServer, fresh_database, run_async, seed_plant, seed_users
from test_console_browser import browser, login  # noqa: F401  (the Chromium fixture and log-in helper)

NOW = datetime.now(UTC).replace(microsecond=0)


def _window(dsn: str, asset: str, start: datetime, end: datetime, reason: str, *, tag: str | None = None,
            cancelled: bool = False) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO maintenance_windows (asset, tag, starts_at, ends_at, planned_ends_at, reason, time_zone,"
            " cancelled_at) VALUES (%s, %s, %s, %s, %s, %s, 'Europe/Helsinki', %s) RETURNING id",
            (asset, tag, start, end, end, reason, NOW if cancelled else None)).fetchone()[0]


def _observe(dsn: str, windows: list, conditions: list[dict]) -> None:
    """Conditions through the gateway's AlertManager (windows as the gateway loads them), changes stored by
    maintenance.store: what a gateway does with an active condition in a window."""
    from maintenance import store
    from maintenance.alerts import AlertManager

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            mgr = AlertManager(windows=await store.windows(conn, NOW - timedelta(days=1)))
            changes = []
            for c in conditions:
                changes += mgr.observe(active=True, **c)
            await store.apply_changes(conn, changes, source="test")
            return [ch.event for ch in changes]

    return run_async(go())


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=2, step_s=60)
        w = _window(dsn, "P-101", NOW - timedelta(hours=1), NOW + timedelta(hours=3), "WO-4711 bearing change")
        _window(dsn, "B-301", NOW - timedelta(hours=1), NOW + timedelta(hours=3), "cancelled job", cancelled=True)
        past = _window(dsn, "F-201", NOW - timedelta(hours=5), NOW - timedelta(hours=4), "done overhaul")
        events = _observe(dsn, [], [
            dict(asset="P-101", tag="P-101.bearing_temp", kind="threshold", t=NOW - timedelta(minutes=30),
                 severity="critical", message="bearing temperature high"),
            # the same condition again: one event per condition and window, one row on the board
            dict(asset="P-101", tag="P-101.bearing_temp", kind="threshold", t=NOW - timedelta(minutes=20),
                 severity="critical", message="bearing temperature high"),
            dict(asset="F-201", tag="F-201.vib_rms", kind="threshold", t=NOW - timedelta(hours=4, minutes=30),
                 severity="warning", message="vibration high (window long over)"),
        ])
        assert events == ["suppressed", "suppressed"]
        with ConsoleServer(dsn) as srv:
            srv.dsn, srv.window, srv.past = dsn, w, past
            yield srv


def test_api_lists_what_a_current_window_hides(server):
    with server.client("viewer") as c:
        items = c.get("/api/alerts/suppressed").json()["items"]
        assert [(i["asset"], i["tag"], i["severity"], i["message"]) for i in items] == [
            ("P-101", "P-101.bearing_temp", "critical", "bearing temperature high")]
        w = items[0]["window"]
        assert w["id"] == server.window and w["reason"] == "WO-4711 bearing change"
        assert datetime.fromisoformat(w["ends_at"]) == NOW + timedelta(hours=3)
        assert w["time_zone"] == "Europe/Helsinki"
        assert c.get("/api/alerts/suppressed", params={"asset": "F-201"}).json()["items"] == []
        assert len(c.get("/api/alerts/suppressed", params={"asset": "P-101"}).json()["items"]) == 1
        # read-only: nothing to post
        assert c.post("/api/alerts/suppressed").status_code in (403, 405)
    with psycopg.connect(server.dsn) as conn:  # the partial index serves the events' time range
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT 1 FROM alert_events WHERE event = 'suppressed' AND time >= now() - interval '1 h'"))
    assert "alert_events_suppressed" in plan


def test_a_window_ended_early_hides_nothing_more(server):
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("UPDATE maintenance_windows SET ends_at = now() - interval '1 minute', ended_at = now() "
                     "WHERE id = %s", (server.window,))
    try:
        with server.client("viewer") as c:
            assert c.get("/api/alerts/suppressed").json()["items"] == []
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("UPDATE maintenance_windows SET ends_at = planned_ends_at, ended_at = NULL WHERE id = %s",
                         (server.window,))


def test_board_and_asset_page_show_the_suppressed_condition(browser, server):  # noqa: F811
    page = login(browser, server, "engineer")
    page.wait_for_selector("#suppressed tr[data-asset='P-101']", timeout=10000)
    text = page.inner_text("#suppressed")
    assert "P-101" in text and "bearing temperature high" in text
    assert f"window #{server.window}" in text and "until" in text and "WO-4711 bearing change" in text
    assert page.locator("#suppressed button").count() == 0, "read-only"
    page.goto(server.url + "/assets/P-101")
    page.wait_for_selector("#asset-suppressed", timeout=10000)
    assert f"window #{server.window}" in page.inner_text("#asset-suppressed")
    page.goto(server.url + "/assets/F-201")
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert page.locator("#asset-suppressed").count() == 0
    assert page.errors == []
    page.context.close()
