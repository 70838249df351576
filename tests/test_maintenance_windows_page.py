"""The maintenance windows page in real headless Chromium (as tests/test_console_browser.py): a maintenance user
plans a window on two assets in Helsinki local time from the form, sees it listed with its local times and ends
it; a viewer sees the list without the form. No script error (CSP: only 'self', no inline script)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from console_support import Dialogs
from test_console_browser import browser, login, shot  # noqa: F401 - the fixture and helpers of the browser tests
from test_maintenance_windows_api import server  # noqa: F401 - a console on a fresh database with the plant

HEL = ZoneInfo("Europe/Helsinki")


def test_plan_and_end_a_window_from_the_page(browser, server):  # noqa: F811
    page = login(browser, server, "maintenance")
    page.goto(server.url + "/maintenance")
    page.wait_for_selector("#mw-form")
    start = (datetime.now(UTC) - timedelta(minutes=10)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    end = (datetime.now(UTC) + timedelta(hours=4)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    page.select_option("#mw-assets", ["P-101", "F-201"])
    page.fill("#mw-start", start)
    page.fill("#mw-end", end)
    page.fill("#mw-zone", "Europe/Helsinki")
    page.fill("#mw-reason", "WO-5150 pump alignment")
    page.click("#mw-submit")
    page.wait_for_selector("tr[data-window] >> text=WO-5150 pump alignment")
    # this test's windows only: test_the_asset_page_names_its_current_window plans one on B-301 on the same
    # module server, and pytest-xdist may have run it first
    mine = page.locator("tr[data-window]", has_text="WO-5150 pump alignment")
    assert mine.count() == 2
    text = mine.first.inner_text()
    assert start.replace("T", " ") in text and "Europe/Helsinki" in text and "current" in text
    shot(page, "maintenance-windows")
    dialogs = Dialogs(page)
    dialogs.accept = True  # "End now" asks first (an accidental click ended the suppression of a running job)
    mine.locator("button[data-action=end]").first.click()
    page.wait_for_selector("tr[data-window] >> text=ended by maintenance")
    assert len(dialogs.asked) == 1 and "WO-5150 pump alignment" in dialogs.asked[0]
    assert mine.locator("button[data-action=end]").count() == 1
    with psycopg.connect(server.dsn) as conn:
        rows = conn.execute("SELECT asset, ended_by, time_zone FROM maintenance_windows WHERE reason = %s ORDER BY id",
                            ("WO-5150 pump alignment",)).fetchall()
    assert [r[1] for r in rows].count("maintenance") == 1 and {r[2] for r in rows} == {"Europe/Helsinki"}
    assert page.errors == []
    page.context.close()


def test_a_viewer_sees_the_windows_but_no_form(browser, server):  # noqa: F811
    page = login(browser, server, "viewer")
    page.goto(server.url + "/maintenance")
    page.wait_for_selector("h2 >> text=Current and upcoming")
    assert page.locator("#mw-form").count() == 0 and page.locator("button[data-action]").count() == 0
    assert page.errors == []
    page.context.close()


def test_the_asset_page_names_its_current_window(browser, server):  # noqa: F811
    with server.client("admin") as c:
        r = c.post("/api/maintenance-windows", json={
            "assets": ["B-301"], "starts_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "reason": "boiler inspection"})
        assert r.status_code == 201, r.text
    page = login(browser, server, "engineer")
    page.goto(server.url + "/assets/B-301")
    note = page.wait_for_selector("#asset-windows")
    assert "in a window" in note.inner_text() and "boiler inspection" in note.inner_text()
    assert page.errors == []
    page.context.close()
