"""The maintenance windows page in real headless Chromium (as tests/test_console_browser.py): a maintenance user
plans a window on two assets in Helsinki local time from the form, sees it listed with its local times and ends
it; a viewer sees the list without the form; the asset choices search the server. No script error (CSP: only
'self', no inline script)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from console_support import Dialogs
from test_console_browser import api_requests_at_load, browser, login, shot  # noqa: F401 - the fixture and helpers of the browser tests
from test_maintenance_windows_api import server  # noqa: F401 - a console on a fresh database with the plant

HEL = ZoneInfo("Europe/Helsinki")


def pick(page, picker: str, typed: str, asset: str) -> None:
    """Choose ``asset`` in the asset picker ``picker`` (V.assetPicker) by typing ``typed`` into its search box."""
    page.fill(f"#{picker}-q", typed)
    page.click(f"#{picker}-results[data-q='{typed}'] [data-asset='{asset}']")


def chosen(page, picker: str) -> list[str]:
    return page.locator(f"#{picker}-chosen [data-asset]").evaluate_all("cs => cs.map((c) => c.dataset.asset)")


def test_plan_and_end_a_window_from_the_page(browser, server):  # noqa: F811
    page = login(browser, server, "maintenance")
    page.goto(server.url + "/maintenance")
    page.wait_for_selector("#mw-form")
    start = (datetime.now(UTC) - timedelta(minutes=10)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    end = (datetime.now(UTC) + timedelta(hours=4)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    pick(page, "mw-assets", "p-1", "P-101")
    pick(page, "mw-assets", "f-2", "F-201")
    assert chosen(page, "mw-assets") == ["P-101", "F-201"]
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


def test_a_site_wide_window_is_one_window_on_every_asset(browser, server):  # noqa: F811
    """A turnaround stops the whole site: the form offered only assets picked one by one (thousands on a big site),
    though the API takes '*'. "every asset" plans one window on '*' and sets the picked ones aside. Two days ahead,
    so it suppresses nothing the module's other tests raise."""
    page = login(browser, server, "maintenance")
    page.goto(server.url + "/maintenance")
    page.wait_for_selector("#mw-form")
    start = (datetime.now(UTC) + timedelta(days=2)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    end = (datetime.now(UTC) + timedelta(days=3)).astimezone(HEL).strftime("%Y-%m-%dT%H:%M")
    pick(page, "mw-assets", "p-1", "P-101")
    page.check("#mw-every")
    assert "disabled" in page.get_attribute("#mw-assets", "class") and page.is_disabled("#mw-assets-q")
    page.fill("#mw-start", start)
    page.fill("#mw-end", end)
    page.fill("#mw-zone", "Europe/Helsinki")
    page.fill("#mw-reason", "WO-7000 site turnaround")
    page.click("#mw-submit")
    row = page.locator("tr[data-window]", has_text="WO-7000 site turnaround")
    row.wait_for(timeout=10000)
    assert row.count() == 1 and "every asset" in row.inner_text() and "upcoming" in row.inner_text()
    with psycopg.connect(server.dsn) as conn:
        assets = conn.execute("SELECT asset FROM maintenance_windows WHERE reason = %s",
                              ("WO-7000 site turnaround",)).fetchall()
    assert assets == [("*",)]
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


def test_the_asset_choices_search_the_server_and_the_filter_stays_in_the_address(browser, server):  # noqa: F811
    """The page read the whole asset list (at 20,000 assets, 20 requests) for a select in its filter and one in its
    form. Both search the server as one types; the filter's choice is kept in the address."""
    with server.client("maintenance") as c:
        for asset, reason in (("B-301", "WO-9 boiler flue"), ("F-201", "WO-9 fan belt")):
            r = c.post("/api/maintenance-windows", json={
                "assets": [asset], "reason": reason, "starts_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
                "ends_at": (datetime.now(UTC) + timedelta(days=2, hours=1)).isoformat()})
            assert r.status_code == 201, r.text
    page = login(browser, server, "maintenance")
    try:
        asked = api_requests_at_load(page, server.url + "/maintenance", "body[data-ready='1']")
        assert not [u for u in asked if "/api/assets" in u], "no asset list read at load"
        page.type("#mw-assets-q", "-", delay=20)
        page.wait_for_selector("#mw-assets-results[data-q='-']", state="attached")
        assert page.locator("#mw-assets-results [data-asset]").all_inner_texts() == ["B-301", "F-201", "P-101"]
        page.type("#mw-assets-q", "3")
        page.wait_for_selector("#mw-assets-results[data-q='-3']", state="attached")
        assert page.locator("#mw-assets-results [data-asset]").all_inner_texts() == ["B-301"]
        page.click("#mw-assets-results [data-asset='B-301']")
        assert chosen(page, "mw-assets") == ["B-301"]
        pick(page, "mw-filter", "f-2", "F-201")
        page.wait_for_selector("#mw-content[data-asset='F-201']", state="attached")
        mine = page.locator("tr[data-window]", has_text="WO-9")
        assert mine.count() == 1 and "WO-9 fan belt" in mine.inner_text(), "the boiler's window is not listed"
        assert chosen(page, "mw-assets") == ["B-301"], "the form keeps its assets when the lists are loaded again"
        assert page.url.endswith("/maintenance?asset=F-201"), page.url
        page.reload()  # the filter is in the address
        page.wait_for_selector("#mw-content[data-asset='F-201']", state="attached")
        assert chosen(page, "mw-filter") == ["F-201"]
        assert mine.count() == 1 and "WO-9 fan belt" in mine.inner_text()
        page.click("#mw-filter-chosen [data-asset='F-201'] button")  # back to every asset
        page.wait_for_selector("#mw-content[data-asset='']", state="attached")
        assert "WO-9 boiler flue" in page.inner_text("#mw-content")
        shot(page, "maintenance-windows-asset-filter")
        assert page.errors == []
    finally:
        page.context.close()
