"""The alert board API against the real test database: list with filters and pagination, roles
(a viewer cannot acknowledge; an engineer can), the audit entry of each change, concurrent acknowledge,
history, and the server-sent-event stream delivering a new alert."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from console_support import (
    PASSWORD,
    ConsoleServer,
    fresh_database,
    insert_alert,
    insert_alerts,
    make_alert,
    seed_plant,
    seed_users,
)

import console.auth
from console.auth import Principal, StillValid, credentials_changed

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=2, step_s=60)
        insert_alerts(dsn, [make_alert(f"A{i:03d}", asset=["P-101", "F-201", "B-301"][i % 3],
                                       severity=["info", "warning", "critical"][i % 3],
                                       raised_at=T0 + timedelta(seconds=i), message=f"alert number {i}",
                                       evidence={"tag": "P-101.vib_rms", "value": 7.1 + i}) for i in range(30)])
        with ConsoleServer(dsn, alert_heartbeat_s=0.5) as srv:
            srv.dsn = dsn
            yield srv


def test_list_newest_first_with_filters_and_counts(server):
    # only the 30 seeded alerts: the stream tests raise alerts of their own (now) on the same server, and
    # pytest-xdist may have run them first
    seeded = {"to": (T0 + timedelta(seconds=29)).isoformat()}
    with server.client("viewer") as c:
        page = c.get("/api/alerts", params={"limit": 10, **seeded}).json()
        assert [a["id"] for a in page["items"]] == [f"A{i:03d}" for i in range(29, 19, -1)]
        assert page["items"][0]["state"] == "raised" and page["items"][0]["site"] in ("KIP-North", "KIP-South")
        crit = c.get("/api/alerts", params={"severity": "critical", "limit": 100, **seeded}).json()
        assert {a["severity"] for a in crit["items"]} == {"critical"} and len(crit["items"]) == 10
        south = c.get("/api/alerts", params={"site": "KIP-South", **seeded}).json()["items"]
        assert {a["asset"] for a in south} == {"B-301"}
        two = c.get("/api/alerts", params=[("asset", "P-101"), ("asset", "F-201"), *seeded.items()]).json()["items"]
        assert len(two) == 20
        assert sum(x["n"] for x in page["counts"]) >= 30
        bad = c.get("/api/alerts", params={"state": "sleeping"})
        assert bad.status_code == 422 and "state" in bad.json()["detail"]


def test_pagination_walks_every_alert_once(server):
    seen, cursor = [], None
    with server.client("viewer") as c:
        while True:
            page = c.get("/api/alerts", params={"limit": 7, **({"cursor": cursor} if cursor else {})}).json()
            seen += [a["id"] for a in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert len(seen) == len(set(seen)) >= 30


def test_viewer_cannot_acknowledge_and_nothing_changes(server):
    with server.client("viewer") as c:
        r = c.post("/api/alerts/A001/ack", json={"comment": "seen"})
        assert r.status_code == 403 and "engineer" in r.json()["detail"]
        assert c.get("/api/alerts/A001").json()["acknowledged_at"] is None
    with server.client("maintenance") as c:
        assert c.post("/api/alerts/A001/ack", json={"comment": "x"}).status_code == 403


def test_engineer_acknowledges_with_comment_and_it_is_audited(server):
    with server.client("engineer") as c:
        r = c.post("/api/alerts/A002/ack", json={"comment": "bearing greased, watching"})
        assert r.status_code == 200, r.text
        a = c.get("/api/alerts/A002").json()
        assert a["state"] == "acknowledged" and a["acknowledged_by"] == "engineer"
        again = c.post("/api/alerts/A002/ack", json={"comment": "again"})
        assert again.status_code == 409 and "acknowledged by engineer" in again.json()["detail"]
        assert c.post("/api/alerts/A002/clear", json={"comment": "back to normal"}).status_code == 200
        assert c.post("/api/alerts/A002/comment", json={"comment": "root cause: misalignment"}).status_code == 200
        a = c.get("/api/alerts/A002").json()
        assert a["state"] == "cleared"
        assert [(h["action"], h["actor"]) for h in a["history"]] == [
            ("raised", "system"), ("acknowledged", "engineer"), ("cleared", "engineer"), ("comment", "engineer"),
            ("comment", "engineer")]
        assert a["history"][1]["comment"] == "bearing greased, watching"
        assert [h["comment"] for h in a["history"][3:]] == ["back to normal", "root cause: misalignment"]
        assert (a["ack_comment"], a["cleared_by"]) == ("bearing greased, watching", "engineer")
        audit = c.get("/api/audit", params={"target_kind": "alert", "target_id": "A002"}).json()["items"]
    assert [(x["action"], x["actor"]) for x in audit] == [
        ("alert.comment", "engineer"), ("alert.clear", "engineer"), ("alert.ack", "engineer")]
    assert all(x["client"] == "127.0.0.1" and x["time"] for x in audit)


def test_two_engineers_acknowledging_at_once_give_one_acknowledgement(server):
    with server.client("engineer") as a, server.client("admin") as b, ThreadPoolExecutor(2) as pool:
        f1 = pool.submit(a.post, "/api/alerts/A003/ack", json={"comment": "mine"})
        f2 = pool.submit(b.post, "/api/alerts/A003/ack", json={"comment": "mine too"})
        codes = sorted([f1.result().status_code, f2.result().status_code])
    assert codes == [200, 409]


def test_maintenance_reviews_an_alert_and_an_engineer_cannot(server):
    with server.client("engineer") as c:
        assert c.post("/api/alerts/A004/review", json={"verdict": "wrong"}).status_code == 403
    with server.client("maintenance") as c:
        r = c.post("/api/alerts/A004/review", json={"verdict": "wrong", "comment": "sensor cable loose"})
        assert r.status_code == 200, r.text
        a = c.get("/api/alerts/A004").json()
        assert [(x["verdict"], x["reviewer"]) for x in a["reviews"]] == [("wrong", "maintenance")]
        audit = c.get("/api/audit", params={"target_id": "A004", "action": "alert.review"}).json()["items"]
    assert audit[0]["detail"] == {"verdict": "wrong", "comment": "sensor cable loose"}


def test_the_alert_list_carries_each_alerts_newest_review(server):
    """The board's and the asset page's list (GET /api/alerts) had no verdict: an alert reviewed through the API
    showed nowhere as reviewed. Each item now has its own newest review; a name in the body is not the reviewer."""
    with server.client("maintenance") as c:
        for verdict in ("right", "wrong"):  # a re-review: the newest counts
            r = c.post("/api/alerts/A007/review", json={"verdict": verdict, "comment": "ääni \U0001f6e0",
                                                         "reviewer": "somebody else"})
            assert r.status_code == 200, r.text
    with server.client("viewer") as c:
        items = c.get("/api/alerts", params={"asset": "F-201", "limit": 1000}).json()["items"]
        assert c.post("/api/alerts/A010/review", json={"verdict": "right"}).status_code == 403
    a7 = next(a for a in items if a["id"] == "A007")
    assert (a7["verdict"], a7["reviewed_by"]) == ("wrong", "maintenance") and a7["reviewed_at"]
    assert next(a for a in items if a["id"] == "A010")["verdict"] is None


def test_unknown_alert_is_404(server):
    with server.client("engineer") as c:
        assert c.get("/api/alerts/nope").status_code == 404
        assert c.post("/api/alerts/nope/ack", json={"comment": ""}).status_code == 404


def _read_events(client: httpx.Client, out: list, ready: threading.Event, params: dict | None = None,
                 named: bool = False):
    """The stream's `alert` events as (arrival time, row); with ``named`` every event's data as (event, row)."""
    try:
        with client.stream("GET", "/api/alerts/stream", params=params) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    ready.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and named:
                    out.append((event, json.loads(line[6:])))
                elif line.startswith("data: ") and event == "alert":
                    out.append((time.monotonic(), json.loads(line[6:])))
    except httpx.HTTPError:
        pass  # closed by the test


def test_stream_delivers_a_new_alert_and_its_acknowledgement(server):
    reader = httpx.Client(base_url=server.url, timeout=None)
    reader.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).raise_for_status()
    got: list = []
    ready = threading.Event()
    t = threading.Thread(target=_read_events, args=(reader, got, ready), daemon=True)
    t.start()
    assert ready.wait(10)
    t_raise = time.monotonic()
    insert_alert(server.dsn, "LIVE-1", asset="F-201", severity="critical", message="fan vibration zone D")
    deadline = time.monotonic() + 10
    while not any(a["id"] == "LIVE-1" for _, a in got) and time.monotonic() < deadline:
        time.sleep(0.02)
    arrived = next(ts for ts, a in got if a["id"] == "LIVE-1")
    with server.client("engineer") as e:
        e.post("/api/alerts/LIVE-1/ack", json={"comment": "on it"}).raise_for_status()
    while not any(a["id"] == "LIVE-1" and a["state"] == "acknowledged" for _, a in got) and time.monotonic() < deadline:
        time.sleep(0.02)
    reader.close()
    row = next(a for _, a in got if a["id"] == "LIVE-1")
    assert row["severity"] == "critical" and row["site"] == "KIP-North"
    assert any(a["state"] == "acknowledged" for _, a in got if a["id"] == "LIVE-1")
    assert arrived - t_raise < 5.0


def test_a_stream_filtered_by_state_is_told_when_an_alert_leaves_that_state(server):
    """A client of /api/alerts/stream?state=raised got the new alert and then nothing: the acknowledgement does not
    match state=raised, so it was not sent, and the client showed the alert as raised until it reloaded. It now
    comes as `alert-left`; an alert of another asset (outside the stream's fixed filters) does not."""
    reader = httpx.Client(base_url=server.url, timeout=None)
    reader.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).raise_for_status()
    got: list[tuple[str, dict]] = []
    ready = threading.Event()
    threading.Thread(target=_read_events, args=(reader, got, ready, {"state": "raised", "asset": "F-202"}, True),
                     daemon=True).start()
    assert ready.wait(10)
    insert_alert(server.dsn, "LEFT-1", asset="F-202", severity="warning", message="fan bearing temperature")
    insert_alert(server.dsn, "LEFT-2", asset="F-203", severity="warning", message="another asset")
    with server.client("engineer") as e:
        e.post("/api/alerts/LEFT-1/ack", json={"comment": "checking"}).raise_for_status()
        e.post("/api/alerts/LEFT-2/ack", json={"comment": "checking"}).raise_for_status()
    deadline = time.monotonic() + 10
    while not any(ev == "alert-left" for ev, _ in got) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # and nothing of LEFT-2 follows
    reader.close()
    assert [(ev, a["id"], a["state"]) for ev, a in got] == [("alert", "LEFT-1", "raised"),
                                                           ("alert-left", "LEFT-1", "acknowledged")]


class _Stream:
    """An alert stream read in a thread: every line, and whether the server ended it."""

    def __init__(self, client: httpx.Client):
        self.lines: list[str] = []
        self.connected, self.ended = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._read, args=(client,), daemon=True)
        self.thread.start()
        assert self.connected.wait(10)

    def _read(self, client: httpx.Client) -> None:
        with client.stream("GET", "/api/alerts/stream") as r:
            for line in r.iter_lines():
                self.lines.append(line)
                if line.startswith(": connected"):
                    self.connected.set()
        self.ended.set()

    def last_event(self) -> str | None:
        events = [line[7:] for line in self.lines if line.startswith("event: ")]
        return events[-1] if events else None


@pytest.fixture
def heartbeat(server):
    """Set the stream's heartbeat for one test (it is read per request)."""
    console = server.cfg.console
    before = console.alert_heartbeat_s

    def set_(seconds: float) -> None:
        object.__setattr__(console, "alert_heartbeat_s", seconds)

    yield set_
    set_(before)


@pytest.fixture
def recheck(monkeypatch):
    """Keep a stream's yes for a minute: what ends a stream in the test must be the credential's own expiry or
    this process saying that credentials changed, never the cached answer running out by chance."""
    monkeypatch.setattr(console.auth, "RECHECK_S", 60.0)


def _stream_user(server, name: str) -> httpx.Client:
    with server.client("admin") as a:
        a.post("/api/users", json={"username": name, "password": PASSWORD, "role": "viewer"}).raise_for_status()
    c = httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=None))
    r = c.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def test_stream_of_a_disabled_user_ends_before_the_next_alert(server, heartbeat, recheck):
    heartbeat(60)  # no heartbeat in this test: the check before the event must end the stream
    reader = _stream_user(server, "board-disabled")
    s = _Stream(reader)
    try:
        insert_alert(server.dsn, "BEFORE-DISABLE", message="reaches the board; its check is kept a minute")
        deadline = time.monotonic() + 10
        while not any("BEFORE-DISABLE" in line for line in s.lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("BEFORE-DISABLE" in line for line in s.lines)
        with server.client("admin") as a:
            a.patch("/api/users/board-disabled", json={"disabled": True}).raise_for_status()
        insert_alert(server.dsn, "AFTER-DISABLE", message="must not reach a disabled user")
        assert s.ended.wait(10), "the stream goes on after the user was disabled"
    finally:
        reader.close()
    assert not any("AFTER-DISABLE" in line for line in s.lines)
    assert s.last_event() == "session-ended", "the board is told to reload (-> log-in), not left reconnecting"


@pytest.mark.parametrize("how", ["logout", "token revoked"])
def test_idle_stream_ends_at_the_heartbeat_after_its_credential_ends(server, heartbeat, recheck, how):
    heartbeat(0.3)
    if how == "logout":
        reader = _stream_user(server, "board-logout")
    else:
        with server.client("admin") as a:
            tok = a.post("/api/tokens", json={"name": "board", "role": "viewer"}).json()
        reader = httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=None),
                              headers={"Authorization": f"Bearer {tok['token']}"})
    s = _Stream(reader)
    try:
        while not any(line.startswith(": keep-alive") for line in s.lines) and not s.ended.is_set():
            time.sleep(0.05)
        assert not s.ended.is_set(), "a valid stream stays open"
        if how == "logout":
            with httpx.Client(base_url=server.url, cookies=reader.cookies, headers=reader.headers) as same:
                assert same.post("/api/auth/logout").status_code == 204
        else:
            with server.client("admin") as a:
                assert a.delete(f"/api/tokens/{tok['id']}").status_code == 204
        assert s.ended.wait(10), f"the stream goes on after {how}"
    finally:
        reader.close()
    assert s.last_event() == "session-ended"


def test_stream_ends_with_session_ended_when_the_session_expires(server, heartbeat, recheck):
    """No sliding expiry: every open board reaches ``session_hours``. Its stream's kept yes never outlives the
    session, and its last event sends the board to the log-in page."""
    heartbeat(0.3)
    cfg = server.cfg.console
    hours = cfg.session_hours
    object.__setattr__(cfg, "session_hours", 3 / 3600)
    try:
        reader = _stream_user(server, "board-expiry")
    finally:
        object.__setattr__(cfg, "session_hours", hours)
    s = _Stream(reader)
    try:
        while not any(line.startswith(": keep-alive") for line in s.lines) and not s.ended.is_set():
            time.sleep(0.05)
        assert not s.ended.is_set(), "a valid stream stays open"
        assert s.ended.wait(15), "the stream goes on after its session expired"
    finally:
        reader.close()
    assert s.last_event() == "session-ended"


class _FakeDb:
    """`fetchone` answering the validity query with ``left`` (seconds left, None = no expiry, False = invalid)."""

    def __init__(self, left):
        self.left, self.queries = left, 0

    async def fetchone(self, sql, params):
        self.queries += 1
        return None if self.left is False else {"left_s": self.left}


async def test_validity_is_asked_once_per_recheck_period_and_never_kept_past_expiry():
    now = [100.0]
    session = Principal(name="u", kind="user", role="viewer", session=b"h")
    db = _FakeDb(3600.0)
    valid = StillValid(db, session, ttl=5.0, clock=lambda: now[0])
    for _ in range(50):  # a busy board: 50 batches in under 5 s cost one query
        assert await valid()
        now[0] += 0.09
    assert db.queries == 1
    now[0] += 1.0
    assert await valid() and db.queries == 2, "asked again once the yes is 5 s old"

    credentials_changed()  # a log-out or revocation through this process: asked at the next check
    assert await valid() and db.queries == 3
    assert await valid() and db.queries == 3

    db.left = 2.0  # the session ends in 2 s: the yes is kept 2 s, not 5
    now[0] += 10
    assert await valid() and db.queries == 4
    now[0] += 2.01
    db.left = False
    assert not await valid() and db.queries == 5
    assert not await valid() and db.queries == 6, "a no is not kept"

    token = StillValid(_FakeDb(None), Principal(name="t", kind="token", role="viewer", token=b"t"), ttl=5.0,
                       clock=lambda: now[0])
    assert await token() and token.until == now[0] + 5.0, "a token without expiry: kept the recheck period"


def test_the_feeds_poll_pages_through_alerts_changed_in_one_transaction(pg_dsn):
    """The feed's safety-net poll (when a NOTIFY was missed) took changes after its watermark, 1,000 at most, and
    moved the watermark to the last one's time: alerts beyond the first 1,000 changed in one transaction (one
    now()) were never sent. It now pages by (change time, id)."""
    import asyncio

    import psycopg

    from console.alerts_feed import AlertFeed
    from console.db import Database

    async def go() -> int:
        db = Database(pg_dsn)
        await db.open()
        feed = AlertFeed(db)
        got: list[dict] = []
        feed.publish = got.extend  # what the poll would send to the streams
        feed.subscribers.add(object())
        await feed._fetch([])  # sets the watermark
        await asyncio.sleep(0.05)
        with psycopg.connect(pg_dsn) as conn:  # one transaction: one now() for every row
            conn.execute("INSERT INTO alerts (id, asset, kind, severity, state, raised_at, last_seen, message,"
                         " dedup_key) SELECT 'bulk-' || i, 'P-1', 'rule:r' || i, 'warning', 'raised', now(), now(),"
                         " 'm', 'k' || i FROM generate_series(1, 1050) i")
        await feed._fetch([])
        await db.close()
        return len({r["id"] for r in got})

    assert asyncio.run(go()) == 1050


def test_the_feeds_poll_finds_a_change_that_committed_after_a_later_stamped_one(pg_dsn):
    """An alert's change time is its transaction's start: the gateway's forwarder copies a batch of readings, then
    raises the alert, then commits. A change stamped later (another gateway, an acknowledgement in the console)
    committed and polled meanwhile moved the poll's watermark past it: when its notification was missed as well (the
    LISTEN connection reconnecting), the alert never reached the boards. Each version is still sent once."""
    import asyncio

    import psycopg

    from console.alerts_feed import AlertFeed
    from console.db import Database

    insert = ("INSERT INTO alerts (id, asset, kind, severity, state, raised_at, last_seen, message, dedup_key)"
              " VALUES (%s, 'P-1', 'rule:r', 'warning', 'raised', now(), now(), 'm', %s)")

    async def go() -> list[list[str]]:
        db = Database(pg_dsn)
        await db.open()
        feed = AlertFeed(db)
        sent: list[list[str]] = []
        feed.publish = lambda rows: sent.append(sorted(str(r["id"]) for r in rows))  # what the streams would get
        feed.subscribers.add(object())
        await feed._fetch([])  # sets the watermark
        with psycopg.connect(pg_dsn) as slow:  # the forwarder's batch: stamped now, committed at the end
            slow.execute(insert, ("SLOW", "k-slow"))
            await asyncio.sleep(0.05)
            with psycopg.connect(pg_dsn, autocommit=True) as quick:
                quick.execute(insert, ("QUICK", "k-quick"))
            await feed._fetch([])  # no notification of either: the poll alone
        await feed._fetch([])  # SLOW committed now, stamped before QUICK
        await feed._fetch([])
        await db.close()
        return sent

    assert asyncio.run(go()) == [["QUICK"], ["SLOW"]]


def test_an_alert_raised_right_after_the_console_started_reaches_the_boards(pg_dsn):
    """The feed set its watermark at its first poll, up to ``poll_s`` after the start: an alert raised in between
    (a board connected, an alert right away) was before the watermark and never sent. Found when
    test_stream_delivers_a_new_alert_and_its_acknowledgement ran first in its module."""
    import asyncio

    from console.alerts_feed import AlertFeed
    from console.db import Database

    async def go() -> list[str]:
        db = Database(pg_dsn)
        await db.open()
        feed = AlertFeed(db, poll_s=1.0)
        await feed.start()
        queue = feed.subscribe()
        try:
            await asyncio.to_thread(insert_alert, pg_dsn, "EARLY-1")
            return [(await asyncio.wait_for(queue.get(), 5))["id"]]
        finally:
            await feed.stop()
            await db.close()

    assert asyncio.run(go()) == ["EARLY-1"]


def test_a_comment_with_a_nul_character_is_refused_not_a_server_error(server):
    """A comment pasted from a PLC export or a binary log can hold a NUL character, which PostgreSQL text cannot
    store: the acknowledgement failed with 500 "internal error" and the engineer could not tell why. 422, saying so."""
    with server.client("engineer") as c, server.client("maintenance") as m:
        for client, path in ((c, "/api/alerts/A010/ack"), (c, "/api/alerts/A010/clear"),
                             (c, "/api/alerts/A010/comment"), (m, "/api/alerts/A010/review")):
            body = {"comment": "valve\x00 checked"} | ({"verdict": "right"} if path.endswith("review") else {})
            r = client.post(path, json=body)
            assert r.status_code == 422 and "NUL" in r.json()["detail"], (path, r.status_code, r.text)
        assert c.post("/api/alerts/A010/ack", json={"comment": "valve checked"}).status_code == 200


def test_nul_characters_anywhere_in_a_request_are_refused_not_a_server_error(server):
    """PostgreSQL text cannot hold NUL, and psycopg refuses to send it: a filter or a name with %00 in it (a
    scanner, a mistyped link, a paste) ended in 500 "internal error" and an ERROR with a traceback in the console
    log, on every endpoint the comment fix did not reach. 422, saying why."""
    with server.client("admin") as a, server.client("maintenance") as m:
        for client, method, path, kw in (
                (a, "get", "/api/alerts", {"params": {"asset": "P-101\x00"}}),
                (a, "get", "/api/assets", {"params": {"site": "KIP\x00"}}),
                (a, "get", "/api/assets/P-101%00", {}),
                (a, "get", "/api/tags/P-101.vib_rms%00/readings", {"params": {"last": "PT1H"}}),
                (a, "get", "/api/audit", {"params": {"actor": "x\x00"}}),
                (a, "post", "/api/users", {"json": {"username": "nul1", "password": "a long enough pw 1",
                                                    "role": "viewer", "display_name": "Ni\x00lo"}}),
                (m, "post", "/api/alerts/A011/review", {"json": {"verdict": "right", "comment": "a\x00b"}})):
            r = getattr(client, method)(path, **kw)
            assert r.status_code == 422 and "NUL" in r.json()["detail"], (path, r.status_code, r.text)


def test_the_feeds_poll_reads_a_page_not_every_alert_ever_raised(pg_dsn):
    """Soak: the live feed polls every second for as long as the console runs, and the alerts table keeps every
    alert ever raised (no retention). Without an index on the change time each poll scanned and sorted the whole
    table: 100,000 alerts (a few years of a site) cost ~1,900 pages read per second, growing with every alert.
    With ``alerts_changed`` the poll reads a handful of pages however long the history."""
    import asyncio

    import psycopg

    from console.alerts import changed_page_sql, shape
    from console.db import Database

    async def go() -> tuple[int, int]:
        db = Database(pg_dsn)
        await db.open()
        sh = await shape(db)
        await db.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO alerts (id, asset, kind, severity, state, raised_at, last_seen, cleared_at,"
                         " message, dedup_key, updated_at) SELECT 'old-' || i, 'P-1', 'rule:r', 'warning', 'cleared',"
                         " t, t, t, 'an alert of the past years', 'k', t FROM (SELECT i, now() - i * interval '10 min'"
                         " AS t FROM generate_series(1, 100000) i) s")
            conn.execute("ANALYZE alerts")
            pages = conn.execute("SELECT relpages FROM pg_class WHERE relname = 'alerts'").fetchone()[0]
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + changed_page_sql(sh),
                                (datetime.now(UTC) - timedelta(seconds=5), "")).fetchone()[0][0]["Plan"]
        return pages, plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]

    pages, read = asyncio.run(go())
    assert pages > 1000
    assert read < 50, f"the poll read {read} pages of a {pages}-page alerts table"
