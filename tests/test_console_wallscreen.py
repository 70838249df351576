"""The live board on a 24/7 control-room screen, in headless Chromium: the console restarts (a proxy answers 503
meanwhile, as it does while its upstream is down), alerts are raised while it is away; the board must say it is
not live while it is not, come back by itself without a reload, show what was raised meanwhile, once each."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from console_support import ConsoleServer, fresh_database, insert_alert, seed_plant, seed_users
from test_console_browser import browser, login  # noqa: F401  (the Chromium fixture and log-in helper)


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self):  # http.server calls it by this name
        self.send_response(503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"upstream restarting")

    def log_message(self, *args):
        pass


@pytest.fixture
def database(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=1, step_s=60)
        insert_alert(dsn, "BEFORE", asset="P-101", message="raised before the restart")
        yield dsn


def test_board_recovers_after_a_console_restart_without_reload_or_duplicates(browser, database):  # noqa: F811
    first = ConsoleServer(database)
    with first:
        page = login(browser, first, "engineer")
        page.wait_for_selector("#live-dot.on", timeout=10000)
        page.evaluate("window.__notReloaded = true")
    # The console is away; a proxy in front answers 503 (an EventSource gives up for good on an HTTP error).
    proxy = ThreadingHTTPServer(("127.0.0.1", first.port), _Unavailable)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        insert_alert(database, "WHILE-AWAY", asset="P-101", message="raised while the console was away")
        page.wait_for_selector("#stale:not([hidden])", timeout=15000)
        assert "NOT LIVE since" in page.inner_text("#stale")
        assert "live" != page.inner_text("#live-text")
    finally:
        proxy.shutdown()
        proxy.server_close()
    with ConsoleServer(database, port=first.port) as second:
        page.wait_for_selector("tr[data-id='WHILE-AWAY']", timeout=40000)
        page.wait_for_selector("#stale", state="hidden", timeout=10000)
        assert page.inner_text("#live-text") == "live"
        insert_alert(database, "AFTER", asset="P-101", message="raised after the restart")
        page.wait_for_selector("tr[data-id='AFTER']", timeout=10000)
        ids = page.eval_on_selector_all("#alert-rows tr[data-id]", "rs => rs.map(r => r.dataset.id)")
        assert sorted(ids) == ["AFTER", "BEFORE", "WHILE-AWAY"], "each alert once"
        assert page.evaluate("window.__notReloaded") is True, "recovered without a page reload"
        assert page.errors == []
        page.context.close()
        assert second.port == first.port


@pytest.mark.parametrize(("plant_zone", "browser_zone", "shown"), [
    ("Europe/Helsinki", "UTC", "2026-01-15 12:00:00 +02:00"),  # the plant's zone, whatever the screen is set to
    ("Europe/Helsinki", "America/New_York", "2026-07-15 13:00:00 +03:00"),  # summer time: its own offset
    (None, "America/New_York", "2026-01-15 05:00:00 -05:00"),  # none configured: the browser's, with the offset
])
def test_times_are_shown_in_the_plant_time_zone_with_the_offset(browser, database, plant_zone,  # noqa: F811
                                                                 browser_zone, shown):
    """A control-room PC is often set to UTC: the board showed 10:00:00 for an alert raised at 12:00 plant time,
    with no offset to tell."""
    from datetime import datetime

    raised = datetime.fromisoformat(shown.replace(" +", "+").replace(" -", "-").replace(" ", "T"))
    insert_alert(database, "ZONED", asset="P-101", message="zoned", raised_at=raised)
    options = {"time_zone": plant_zone} if plant_zone else {}
    with ConsoleServer(database, **options) as srv:
        page = login(browser, srv, "viewer", timezone_id=browser_zone)
        page.wait_for_selector("tr[data-id='ZONED']", timeout=10000)
        assert page.inner_text("tr[data-id='ZONED'] td:first-child") == shown
        page.context.close()


def test_an_unknown_plant_time_zone_is_refused_at_load():
    from pydantic import ValidationError

    from console.config import ConsoleConfig

    with pytest.raises(ValidationError, match="IANA time zone"):
        ConsoleConfig.model_validate({"console": {"time_zone": "Europe/Helsinky"}})


def test_a_live_alert_leaves_a_comment_being_typed_in_another_row(browser, database):  # noqa: F811
    """Each live event rebuilt the whole table: an engineer typing why into an acknowledgement box lost the text
    (and an open history closed) whenever any other alert arrived, every few seconds in an alert storm."""
    from console_support import insert_alerts, make_alert

    with ConsoleServer(database) as srv:
        page = login(browser, srv, "engineer")
        page.wait_for_selector("#live-dot.on", timeout=10000)
        box = page.locator("tr[data-id='BEFORE'] .ack-comment")
        box.fill("valve V-12 closed by hand, checking")
        page.locator("tr[data-id='BEFORE'] details.hist summary").click()
        insert_alert(database, "NEWER", asset="F-201", message="a new alert")
        page.wait_for_selector("tr[data-id='NEWER']", timeout=10000)
        assert box.input_value() == "valve V-12 closed by hand, checking"
        assert page.locator("tr[data-id='BEFORE'] details.hist").get_attribute("open") is not None
        # an alert storm: 300 in one transaction, each shown once, newest first, the comment still there
        insert_alerts(database, [make_alert(f"STORM-{i:03d}", asset="B-301", message=f"storm {i}") for i in range(300)])
        page.wait_for_selector("tr[data-id='STORM-299']", timeout=20000)
        for _ in range(100):  # the storm's rows come in batches (CSP: no wait_for_function, it evaluates a string)
            if page.locator("#alert-rows tr[data-id]").count() >= 302:
                break
            page.wait_for_timeout(200)
        ids = page.eval_on_selector_all("#alert-rows tr[data-id]", "rs => rs.map(r => r.dataset.id)")
        assert len(set(ids)) == 302 and ids[-1] == "BEFORE"
        assert box.input_value() == "valve V-12 closed by hand, checking"
        assert page.errors == []
        page.context.close()


def test_an_alert_raised_while_the_board_reloads_its_list_is_shown(browser, database):  # noqa: F811
    """The board reloads its list when a filter changes (and when the console tells a board that fell behind in an
    alert storm to reload): it read the list, then opened a new stream. An alert raised after the list's query came in
    on the old stream, was dropped with the old rows when the list arrived, and the new stream had not seen it: it
    stayed off the board. The list's answer is held here until that alert has been raised and sent live."""
    import time

    held: list[str] = []

    def hold(route):
        if "limit=200" not in route.request.url or held:
            return route.continue_()
        answer = route.fetch()  # the list as the database had it before the alert
        time.sleep(0.5)  # the new stream (opened first now) is subscribed
        insert_alert(database, "DURING", asset="P-101", message="raised while the list was on its way")
        time.sleep(2.5)  # the console's feed (LISTEN, a 0.5 s poll) sends it live meanwhile
        held.append(route.request.url)
        route.fulfill(response=answer)

    with ConsoleServer(database) as srv:
        page = login(browser, srv, "engineer")
        page.wait_for_selector("#live-dot.on", timeout=10000)
        page.route("**/api/alerts?*", hold)
        page.select_option("#f-severity", "warning")
        for _ in range(100):  # the route's handler runs while the test waits on the page
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the list was held"
        page.wait_for_selector("tr[data-id='DURING']", timeout=10000)
        insert_alert(database, "LATER", asset="P-101", message="live after the reload")
        page.wait_for_selector("tr[data-id='LATER']", timeout=10000)
        ids = page.eval_on_selector_all("#alert-rows tr[data-id]", "rs => rs.map(r => r.dataset.id)")
        assert sorted(ids) == ["BEFORE", "DURING", "LATER"], "each once"
        assert page.errors == []
        page.context.close()


def test_board_recovers_after_the_database_drops_its_connections(browser, database):  # noqa: F811
    """A database restart as the console sees it: every connection of the console (pool, LISTEN) is cut."""
    import psycopg

    with ConsoleServer(database) as srv:
        page = login(browser, srv, "engineer")
        page.wait_for_selector("#live-dot.on", timeout=10000)
        page.evaluate("window.__notReloaded = true")
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid()")
        insert_alert(database, "AFTER-DB-CUT", asset="P-101", message="raised after the database cut")
        page.wait_for_selector("tr[data-id='AFTER-DB-CUT']", timeout=30000)
        insert_alert(database, "LATER", asset="P-101", message="live again")
        page.wait_for_selector("tr[data-id='LATER']", timeout=15000)
        ids = page.eval_on_selector_all("#alert-rows tr[data-id]", "rs => rs.map(r => r.dataset.id)")
        assert sorted(ids) == ["AFTER-DB-CUT", "BEFORE", "LATER"]
        assert page.evaluate("window.__notReloaded") is True
        page.context.close()


def test_chart_axis_is_labelled_in_the_plant_time_zone(browser, database):  # noqa: F811
    """The asset page's times are plant time, but its chart axes were labelled in the browser's zone: on a PC set to
    UTC, a plant 5 h 30 min east saw an alert marker at "06:00" that the alert table said was raised at 11:30 +05:30.
    Ticks fall on whole steps of the plant's clock and are labelled with it."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Asia/Kolkata")  # +05:30, no summer time: the browser's and the plant's hours differ
    with ConsoleServer(database, time_zone="Asia/Kolkata") as srv:
        page = login(browser, srv, "viewer", timezone_id="UTC")
        page.goto(srv.url + "/assets/P-101")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        labels = page.eval_on_selector_all(".trend[data-tag='P-101.vib_rms'] g.axis text[text-anchor='middle']",
                                           "ts => ts.map(t => t.textContent)")
        now = datetime.now(zone)
        assert labels and all(x.endswith(":00") for x in labels), labels  # 24 h range: 3-hour ticks of the plant
        last = now.replace(hour=int(labels[-1][:2]), minute=0, second=0, microsecond=0)
        behind = (now - last) % timedelta(days=1)
        assert behind < timedelta(hours=3), (labels, now)  # the newest tick is the plant's latest 3-hour mark
        assert int(labels[-1][:2]) % 3 == 0, labels
        assert page.errors == []
        page.context.close()


def test_maintenance_window_form_defaults_to_the_plant_time_zone(browser, database):  # noqa: F811
    """The window form's zone defaulted to the browser's: on a control-room PC set to UTC a Helsinki plant's
    22:00-02:00 window was planned two hours late unless the planner noticed and changed the zone field."""
    with ConsoleServer(database, time_zone="Europe/Helsinki") as srv:
        page = login(browser, srv, "maintenance", timezone_id="UTC")
        page.goto(srv.url + "/maintenance")
        page.wait_for_selector("#mw-zone", timeout=10000)
        assert page.input_value("#mw-zone") == "Europe/Helsinki"
        assert page.errors == []
        page.context.close()
