"""Console REST API against the real test database: log-in, sessions, CSRF, API tokens, roles, audit log,
assets and tags, readings over ranges with server-side downsampling, problem documents, gateway health."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from console_support import PASSWORD, ConsoleServer, free_port, fresh_database, seed_plant, seed_users

END = datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=72, step_s=10, end=END)
        with ConsoleServer(dsn, login_failures_max=3, login_user_failures_max=6, login_window_s=60) as srv:
            srv.dsn = dsn
            yield srv


@pytest.fixture(autouse=True)
def no_login_failures(request):
    """Each test starts with no log-in failures on record. They count per client (every test here is 127.0.0.1)
    for a minute, so which tests ran before on the same worker decided whether a log-in got 429: pytest-xdist
    hands a module's tests to its workers in no fixed order."""
    if "server" not in request.fixturenames:
        yield
        return
    import psycopg

    with psycopg.connect(request.getfixturevalue("server").dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM console_login_failures")
    yield


def test_openapi_document_lists_the_api(server):
    with server.client() as c:
        doc = c.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/alerts", "/api/alerts/{alert_id}/ack", "/api/tags/{name}/readings", "/api/assets",
                 "/api/emissions/{stack}/live", "/api/gateways", "/api/audit", "/api/auth/login"):
        assert path in doc["paths"], path


def test_unauthenticated_requests_get_problem_documents(server):
    with server.client() as c:
        r = c.get("/api/assets")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401 and "log in" in r.json()["detail"]
        page = c.get("/alerts", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")


def test_login_sets_a_hardened_cookie_and_wrong_password_is_refused(server):
    with server.client() as c:
        r = c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback: cookie_secure = auto
        assert r.json()["role"] == "viewer" and r.json()["csrf_token"]
        assert c.get("/api/auth/me").json()["name"] == "viewer"
    with server.client() as c:
        r = c.post("/api/auth/login", json={"username": "viewer", "password": "wrong-password"})
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


def test_cookie_is_secure_behind_a_tls_proxy(server):
    with server.client() as c:
        r = c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD},
                   headers={"X-Forwarded-Proto": "https"})
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-valvoja_session=") and "Secure" in cookie


def test_login_is_rate_limited_per_user_name(server):
    with server.client() as c:
        codes = [c.post("/api/auth/login", json={"username": "engineer", "password": f"wrong-{i}"}).status_code
                 for i in range(4)]
        assert codes == [401, 401, 401, 429]
        r = c.post("/api/auth/login", json={"username": "engineer", "password": PASSWORD})
        assert r.status_code == 429, "even the right password waits until the window has passed"
        assert int(r.headers["retry-after"]) >= 1


def test_html_login_form_needs_its_csrf_token_and_redirects(server):
    with server.client() as c:
        form = c.get("/login?next=/assets")
        assert form.status_code == 200 and 'name="csrf_token"' in form.text
        token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        bad = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": "forged",
                                     "next": "/assets"})
        assert bad.status_code == 403
        form = c.get("/login?next=/assets")
        token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        ok = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": token,
                                    "next": "//evil.example/"}, follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/", "no open redirect"
        assert c.get("/assets").status_code == 200


@pytest.mark.parametrize("target", ["/\t/evil.example/", "/\n/evil.example/", "/\r\n/evil.example"])
def test_log_in_does_not_redirect_off_site_through_a_tab_or_line_break(server, target):
    """Browsers drop tabs and line breaks from a URL before reading it: a log-in link with next=/%09/evil.example
    sent the browser, logged in, to //evil.example (another host) after the form."""
    with server.client() as c:
        form = c.get("/login", params={"next": target})
        assert "evil.example" not in form.text
        token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        ok = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": token,
                                    "next": target}, follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/", ok.headers.get("location")


def test_a_request_body_over_a_mebibyte_is_refused_before_it_is_read(server):
    """uvicorn passes on whatever body a client sends and the log-in form, the CSRF form field and JSON bodies
    were read whole: anyone who could reach the console could make it hold gigabytes (POST /login needs no
    session). A body over 1 MiB is refused with 413, declared (Content-Length) or streamed (chunked)."""
    big = b"username=viewer&password=" + b"x" * (1 << 20)

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    with server.client() as c:
        for body in (big, chunks()):
            r = c.post("/login", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
            assert r.status_code == 413, (r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "1048576" in r.json()["detail"]
        r = c.post("/api/auth/login", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, (r.status_code, r.text[:200])
    with server.client("engineer") as c:  # and what the console takes still works
        assert c.post("/api/auth/logout").status_code == 204


def test_logout_form_ends_the_session_and_is_audited(server):
    with server.client("maintenance") as c:
        page = c.get("/alerts")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        del c.headers["X-CSRF-Token"]  # a plain HTML form: the token comes in the form body only
        assert c.post("/logout", data={"csrf_token": "forged"}).status_code == 403
        r = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert c.get("/api/auth/me").status_code == 401
    with server.client("admin") as a:
        actions = [x["action"] for x in a.get("/api/audit", params={"actor": "maintenance"}).json()["items"]]
    assert actions[:2] == ["logout", "login"]


def test_unsafe_request_without_csrf_token_is_refused(server):
    with server.client("admin") as c:
        del c.headers["X-CSRF-Token"]
        r = c.post("/api/tokens", json={"name": "x", "role": "viewer"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]


def test_a_proxys_basic_authorization_header_leaves_the_session_in_charge(server):
    """Behind a proxy with its own basic auth (nginx passes the Authorization header on), every page answered 401
    "Authorization must be 'Bearer ...'" for a logged-in user. Only Bearer is the console's; the session decides."""
    with server.client("viewer") as c:
        c.headers["Authorization"] = "Basic cHJveHk6c2VjcmV0"
        assert c.get("/api/assets").status_code == 200
    with server.client() as anon:
        anon.headers["Authorization"] = "Basic cHJveHk6c2VjcmV0"
        r = anon.get("/api/assets")
        assert r.status_code == 401 and "log in first" in r.json()["detail"]
        anon.headers["Authorization"] = "Bearer"
        assert "must be 'Bearer <API token>'" in anon.get("/api/assets").json()["detail"]


def test_api_token_authenticates_machines_and_is_stored_hashed(server):
    import psycopg

    with server.client("admin") as c:
        r = c.post("/api/tokens", json={"name": "historian", "role": "viewer"})
        assert r.status_code == 201
        token, token_id = r.json()["token"], r.json()["id"]
    with psycopg.connect(server.dsn) as conn:
        stored = conn.execute("SELECT token_hash, prefix FROM console_api_tokens WHERE id = %s", (token_id,)).fetchone()
    assert token.encode() not in bytes(stored[0]) and len(bytes(stored[0])) == 32
    with server.client() as m:
        m.headers["Authorization"] = f"Bearer {token}"
        assert m.get("/api/assets").status_code == 200
        assert m.get("/api/auth/me").json() == {"name": "token:historian", "kind": "token", "role": "viewer",
                                                "permissions": ["read"], "csrf_token": None}
        assert m.post("/api/tokens", json={"name": "y"}).status_code == 403, "a viewer token cannot administer"
    with server.client("admin") as c:
        assert c.delete(f"/api/tokens/{token_id}").status_code == 204
    with server.client() as m:
        m.headers["Authorization"] = f"Bearer {token}"
        assert m.get("/api/assets").status_code == 401


def test_admin_manages_users_and_every_change_is_audited(server):
    with server.client("admin") as c:
        weak = c.post("/api/users", json={"username": "kalle", "password": "short", "role": "viewer"})
        assert weak.status_code == 422 and "10 characters" in weak.json()["detail"]
        r = c.post("/api/users", json={"username": "kalle", "password": "long-enough-pw", "role": "viewer"})
        assert r.status_code == 201 and "password_hash" not in r.json()
        assert c.post("/api/users", json={"username": "kalle", "password": "long-enough-pw",
                                          "role": "viewer"}).status_code == 409
        r = c.patch("/api/users/Kalle", json={"role": "engineer"})  # as case-insensitive as log-in
        assert r.status_code == 200 and r.json()["role"] == "engineer" and r.json()["username"] == "kalle"
        audit = c.get("/api/audit", params={"target_kind": "user", "target_id": "kalle"}).json()["items"]
    actions = [(a["action"], a["actor"]) for a in audit]
    assert ("user.change", "admin") in actions and ("user.create", "admin") in actions
    change = next(a for a in audit if a["action"] == "user.change")
    assert change["detail"] == {"before": {"role": "viewer"}, "after": {"role": "engineer"}}
    with server.client("viewer") as v:
        assert v.get("/api/users").status_code == 403
        assert v.post("/api/users", json={"username": "x", "password": "long-enough-pw",
                                          "role": "admin"}).status_code == 403


def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(pg_admin_dsn):
    """The admin API refuses (409) a change that leaves no enabled admin, and changes nothing; with another admin
    the same change goes through. A slip on the admin page's role select locked everyone out of administration."""
    with fresh_database(pg_admin_dsn, prefix="console_lastadmin") as dsn, ConsoleServer(dsn) as srv:
        seed_users(dsn)
        with srv.client("admin") as a:
            for change in ({"role": "viewer"}, {"disabled": True}):
                r = a.patch("/api/users/admin", json=change)
                assert r.status_code == 409 and "no enabled admin" in r.json()["detail"], r.text
            assert a.get("/api/auth/me").status_code == 200, "the refused change ended no session"
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT role, disabled FROM console_users WHERE username = 'admin'"
                                    ).fetchone() == ("admin", False)
            assert a.patch("/api/users/maintenance", json={"role": "admin"}).status_code == 200
            assert a.patch("/api/users/admin", json={"role": "viewer"}).status_code == 200


def test_a_database_that_goes_away_is_a_503_not_an_internal_error(pg_admin_dsn):
    """The database restarting (its connections cut, new ones refused): the API answered 500 "internal error; see
    the console log", which pages showed as if the console were broken. It is a 503 naming the database, with
    Retry-After, and the console serves again once the database is back."""
    from psycopg.conninfo import conninfo_to_dict

    with fresh_database(pg_admin_dsn, prefix="console_dbaway") as dsn, ConsoleServer(dsn) as srv:
        seed_users(dsn)
        name = conninfo_to_dict(dsn)["dbname"]
        with srv.client("viewer") as c:
            assert c.get("/api/assets").status_code == 200
            with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                try:
                    r = c.get("/api/assets")
                    assert r.status_code == 503, r.text
                    assert "database is not available" in r.json()["detail"] and r.headers["retry-after"] == "5"
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            for _ in range(50):  # the pool reconnects by itself
                if c.get("/api/assets").status_code == 200:
                    break
                time.sleep(0.2)
            assert c.get("/api/assets").status_code == 200


def test_assets_and_tags_with_calibration_in_force(server):
    with server.client("viewer") as c:
        assets = c.get("/api/assets").json()["items"]
        assert {a["name"] for a in assets} == {"P-101", "F-201", "B-301"}
        assert c.get("/api/assets", params={"site": "KIP-South"}).json()["items"][0]["name"] == "B-301"
        first = c.get("/api/assets", params={"limit": 2}).json()
        second = c.get("/api/assets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert len(first["items"]) == 2 and len(second["items"]) == 1 and second["next_cursor"] is None
        assert c.get("/api/sites").json()["items"] == [{"site": "KIP-North", "assets": 2},
                                                        {"site": "KIP-South", "assets": 1}]
        p101 = c.get("/api/assets/P-101").json()
        assert [t["name"] for t in p101["tags"]] == ["P-101.bearing_temp", "P-101.vib_rms"]
        assert p101["tags"][0]["calibration"]["certificate"].startswith("CAL-")
        assert c.get("/api/assets/nope").status_code == 404


def test_short_range_returns_raw_readings(server):
    with server.client("viewer") as c:
        r = c.get("/api/tags/P-101.vib_rms/readings",
                  params={"to": END.isoformat(), "last": "PT30M"}).json()
    assert r["source"] == "readings" and r["bucket_s"] == 0
    assert len(r["t"]) == 180 and len(r["v"]) == 180 and set(r["q"]) == {0}


def test_long_ranges_are_downsampled_from_rollups(server):
    with server.client("viewer") as c:
        day = c.get("/api/tags/P-101.vib_rms/readings",
                    params={"to": END.isoformat(), "last": "P1D", "points": 200}).json()
        assert day["source"] == "readings_1m" and day["bucket_s"] == 600
        assert 140 <= len(day["t"]) <= 145
        assert sum(day["n"]) == 8640, "every raw reading is counted once across the buckets"
        assert all(lo <= a <= hi for lo, a, hi in zip(day["min"], day["avg"], day["max"], strict=True))
        three = c.get("/api/tags/P-101.vib_rms/readings",
                      params={"to": END.isoformat(), "last": "P3D", "points": 50}).json()
        assert three["source"] == "readings_1h" and three["bucket_s"] == 7200 and sum(three["n"]) == 72 * 360
        mid = c.get("/api/tags/P-101.vib_rms/readings",
                    params={"to": END.isoformat(), "last": "PT6H", "points": 1000}).json()
        assert mid["source"] == "readings" and mid["bucket_s"] == 30, "6 h in 1000 points: raw, 30 s buckets"


def test_range_after_the_newest_rollup_is_read_from_raw_rows(server):
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        tag = conn.execute("SELECT id FROM tags WHERE name = 'F-201.vib_rms'").fetchone()[0]
        conn.execute("DELETE FROM readings_1m WHERE tag_id = %s AND bucket >= %s", (tag, END - timedelta(hours=2)))
    with server.client("viewer") as c:
        r = c.get("/api/tags/F-201.vib_rms/readings",
                  params={"to": END.isoformat(), "last": "P1D", "points": 200}).json()
    assert sum(r["n"]) == 8640, "buckets past the rollups' end come from raw readings"


@pytest.mark.parametrize(("params", "needle"), [
    ({"from": "2024-05-01T00:00:00"}, "no UTC offset"),
    ({"from": "yesterday"}, "not an ISO-8601 date-time"),
    ({"last": "1 week"}, "not an ISO-8601 duration"),
    ({"last": "P1M"}, "not an ISO-8601 duration"),
    ({"from": "2024-05-02T00:00Z", "to": "2024-05-01T00:00Z"}, "must be before"),
    # Beyond what a date holds: they were 500 "internal error" (OverflowError), a trace in the log per request.
    ({"last": "P999999999D"}, "longer than the maximum"),
    ({"last": "P1" + "0" * 400 + "D"}, "longer than the maximum"),
    ({"from": "0001-01-01T00:00:00+01:00"}, "out of range"),
    ({"to": "9999-12-31T23:59:59-01:00"}, "out of range"),
    ({"to": "0001-01-02T00:00Z", "last": "P2D"}, "before the year 1"),
    ({"points": 3}, "greater than or equal to 10"),
    ({"resolution": "5m"}, "resolution"),
])
def test_bad_time_ranges_are_explained(server, params, needle):
    with server.client("viewer") as c:
        r = c.get("/api/tags/P-101.vib_rms/readings", params=params)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert needle in r.json()["detail"], r.json()


def test_unknown_tag_and_bad_cursor(server):
    with server.client("viewer") as c:
        assert c.get("/api/tags/nope/readings").status_code == 404
        r = c.get("/api/assets", params={"cursor": "garbage!"})
        assert r.status_code == 422 and "cursor" in r.json()["detail"]


def test_gateway_page_reads_a_real_gateway_health_endpoint(pg_admin_dsn):
    from edge.http import HealthServer

    port = free_port()
    state = {"spool": {"readings": 1234, "bytes": 56789}, "collectors": {"mqtt-1": {"connected": True}},
             "database": {"connected": False, "last_error": "connection refused"}}
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run_health():
        hs = HealthServer("127.0.0.1", port, health=lambda: (False, state), metrics=lambda: b"")
        await hs.start()
        ready.set()
        await stop.wait()
        await hs.close()

    t = threading.Thread(target=lambda: loop.run_until_complete(run_health()), daemon=True)
    t.start()
    ready.wait(10)
    gateways = [{"name": "gw-1", "health_url": f"http://127.0.0.1:{port}/healthz"},
                {"name": "gw-down", "health_url": f"http://127.0.0.1:{free_port()}/healthz", "timeout_s": 1}]
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        with ConsoleServer(dsn, gateways=gateways) as srv, srv.client("viewer") as c:
            items = {g["name"]: g for g in c.get("/api/gateways").json()["items"]}
    loop.call_soon_threadsafe(stop.set)
    t.join(10)
    assert items["gw-1"]["reachable"] and not items["gw-1"]["healthy"] and items["gw-1"]["http_status"] == 503
    assert items["gw-1"]["health"]["spool"]["readings"] == 1234
    assert items["gw-down"]["reachable"] is False and "Connect" in items["gw-down"]["error"]


def _burst(server, attempts: list[tuple[str, str, str]]) -> list[int]:
    """POST /api/auth/login for every (user name, password, X-Forwarded-For) at once; the status codes in order."""
    import httpx

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/api/auth/login", json={"username": u, "password": pw},
                                               headers={"X-Forwarded-For": fwd}) for u, pw, fwd in attempts))
        return [r.status_code for r in rs]

    return asyncio.run(run())


def test_concurrent_wrong_passwords_get_at_most_the_limit_of_checks(server):
    # From 20 clients at once for one user name (its limit 6): six password checks, the rest refused unchecked.
    codes = _burst(server, [("engineer", f"wrong-{i}", f"198.51.100.{i + 1}") for i in range(20)])
    assert sorted(codes) == [401] * 6 + [429] * 14
    # From one client at once for 20 user names: the per-client limit holds the same way.
    codes = _burst(server, [(f"nobody{i}", "wrong", "198.51.100.200") for i in range(20)])
    assert sorted(codes) == [401] * 3 + [429] * 17


def test_ipv6_clients_are_counted_per_64_ipv4_per_address(server):
    """An IPv6 host holds a whole /64 and can use a new address for each attempt: each full address was its own
    client, so 20 addresses of one /64 got 20 password checks. Now the /64 is the client (IPv4: the address)."""
    import psycopg

    codes = _burst(server, [(f"nobody{i}", "wrong", f"2001:db8:1:2:{i:x}:{i * 7:x}::{i + 1:x}") for i in range(20)])
    assert sorted(codes) == [401] * 3 + [429] * 17
    with psycopg.connect(server.dsn) as conn:
        clients = {c for (c,) in conn.execute("SELECT client FROM console_login_failures")}
        assert clients == {"2001:db8:1:2::/64"}
        # The count is one indexed equality on the stored key, not a scan over addresses.
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT count(*) FROM console_login_failures WHERE client = '2001:db8:1:2::/64' "
            "AND time > now() - interval '60 s'"))
        assert "console_login_failures_client" in plan
    # Another /64 of the same /48 is another client; the per-user-name limit still holds on its own.
    assert _burst(server, [("nobody99", "wrong", "2001:db8:1:3::1")]) == [401]
    assert _burst(server, [("engineer", f"wrong-{i}", f"2001:db8:{i + 10:x}::1") for i in range(7)]).count(429) == 1
    # IPv4 neighbours are separate clients (a NAT'd plant network is one address, not a /24).
    assert _burst(server, [(f"v4-{i}", "wrong", f"198.51.100.{i + 100}") for i in range(4)]) == [401] * 4


def test_right_password_within_the_limit_logs_in_during_a_burst(server):
    codes = _burst(server, [("maintenance", "wrong-1", "198.51.100.77"), ("maintenance", PASSWORD, "198.51.100.77"),
                            ("maintenance", "wrong-2", "198.51.100.77")])
    assert codes == [401, 200, 401]


def test_password_checks_run_off_the_event_loop_a_few_at_a_time(server, monkeypatch):
    """While four log-ins are in their password checks (held there by the test), the console still answers
    other requests, and only HASH_CONCURRENCY checks run at once."""
    import hashlib
    from types import SimpleNamespace

    import httpx

    from console import passwords

    lock, running, peak = threading.Lock(), [0], [0]
    release, limit_reached = threading.Event(), threading.Event()

    def held_scrypt(*args, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] >= passwords.HASH_CONCURRENCY:
                limit_reached.set()
        try:
            release.wait(20)
            return hashlib.scrypt(*args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(passwords, "hashlib", SimpleNamespace(scrypt=held_scrypt, sha256=hashlib.sha256))
    codes: list[int] = []

    def login(user: str, i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            codes.append(c.post("/api/auth/login", json={"username": user, "password": PASSWORD},
                                headers={"X-Forwarded-For": f"198.51.100.{50 + i}"}).status_code)

    logins = [threading.Thread(target=login, args=(u, i)) for i, u in enumerate(("viewer", "engineer",
                                                                                "maintenance", "admin"))]
    try:
        for t in logins:
            t.start()
        assert limit_reached.wait(15), "the password checks did not run side by side"
        with server.client() as c:  # answered while every log-in is still in its password check
            assert c.get("/login", timeout=5).status_code == 200
            assert c.get("/static/app.css", timeout=5).status_code == 200
        assert running[0] == passwords.HASH_CONCURRENCY and not any(codes)
    finally:
        release.set()
        for t in logins:
            t.join(30)
    assert codes == [200] * 4 and peak[0] == passwords.HASH_CONCURRENCY


def test_client_address_is_the_first_untrusted_hop_from_the_right(server):
    import psycopg

    fwd = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}  # 6.6.6.6: whatever the client wrote itself
    with server.client() as c:
        def login(password: str) -> int:
            return c.post("/api/auth/login", json={"username": "viewer", "password": password}, headers=fwd).status_code

        assert login("wrong") == 401
        with psycopg.connect(server.dsn) as conn:
            rows = conn.execute("SELECT client FROM console_login_failures WHERE username = 'viewer'").fetchall()
        assert [r[0] for r in rows] == ["203.0.113.9"]
        assert login(PASSWORD) == 200
    with server.client("admin") as a:
        login = a.get("/api/audit", params={"actor": "viewer", "action": "login", "limit": 1}).json()["items"][0]
    assert login["client"] == "203.0.113.9"


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("127.0.0.1", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
    ("127.0.0.1", ["203.0.113.9, 127.0.0.1"], "203.0.113.9"),  # a second trusted proxy in the chain
    ("127.0.0.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),  # repeated headers are one list
    ("127.0.0.1", ["6.6.6.6, not-an-address"], "127.0.0.1"),
    ("127.0.0.1", ["::1, 127.0.0.1"], "::1"),  # all trusted: the farthest one
    ("127.0.0.1", [], "127.0.0.1"),
    ("192.0.2.1", ["203.0.113.9"], "192.0.2.1"),  # not a trusted proxy: its header is not believed
])
def test_client_address_from_forwarded_for(peer, forwarded, client):
    from types import SimpleNamespace

    from starlette.datastructures import Headers

    from console.auth import client_address
    from console.config import ConsoleConfig

    request = SimpleNamespace(client=SimpleNamespace(host=peer),
                              headers=Headers(raw=[(b"x-forwarded-for", f.encode()) for f in forwarded]),
                              app=SimpleNamespace(state=SimpleNamespace(config=ConsoleConfig())))
    assert client_address(request) == client


def test_trend_inside_one_rollup_bucket_reads_only_the_range(server):
    start = END.replace(minute=0) - timedelta(hours=3) + timedelta(minutes=10)
    with server.client("viewer") as c:
        r = c.get("/api/tags/P-101.vib_rms/readings", params={
            "from": start.isoformat(), "to": (start + timedelta(minutes=10)).isoformat(), "resolution": "1h"}).json()
    assert r["source"] == "readings_1h" and r["bucket_s"] == 3600
    assert sum(r["n"]) == 60, "10 minutes of 10 s readings, not the rest of the hour"


def test_tags_named_after_mqtt_topics_have_readings_latest_and_calibrations(server):
    """The MQTT collector's default tag name is the whole topic (``{topic}``: ``plant/line1/T-7``); the tag API must
    serve such names (the asset page asks for them URL-encoded, ``plant%2Fline1%2FT-7``), not answer 404."""
    from urllib.parse import quote

    import numpy as np
    import psycopg

    from emissions import synthetic

    name = "kip/line1/T-7.temp"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        tag_id = conn.execute("INSERT INTO tags (name, asset, unit, sampling_ms) VALUES (%s, '', 'degC', 10000) "
                              "RETURNING id", (name,)).fetchone()[0]
        conn.execute("INSERT INTO tag_calibrations (tag_id, valid_from, certificate, calibrated_on, uncertainty, "
                      "uncertainty_unit) VALUES (%s, %s, 'CAL-T7', %s, 0.2, 'degC')",
                      (tag_id, END - timedelta(days=10), (END - timedelta(days=10)).date()))
        t = int((END - timedelta(minutes=30)).timestamp()) + 10 * np.arange(180, dtype=np.int64)
        synthetic.copy_readings(conn, tag_id, t, np.full(180, 41.5))
    path = "/api/tags/" + quote(name, safe="")
    with server.client("viewer") as c:
        r = c.get(path + "/readings", params={"to": END.isoformat(), "last": "PT30M"})
        assert r.status_code == 200, r.text
        assert r.json()["tag"] == name and len(r.json()["t"]) == 180
        latest = c.get(path + "/latest")
        assert latest.status_code == 200 and latest.json()["reading"]["value"] == 41.5
        cal = c.get(path + "/calibrations")
        assert cal.status_code == 200 and cal.json()["items"][0]["certificate"] == "CAL-T7"
        assert c.get("/api/tags/" + quote("kip/nope", safe="") + "/readings").status_code == 404


def test_token_expiry_without_utc_offset_is_refused(server):
    """A naive ``expires_at`` would be read in the database session's time zone (the server's local zone on a plant
    machine), so the token would expire hours early or late; like every instant of the API it needs an offset."""
    with server.client("admin") as c:
        naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
        r = c.post("/api/tokens", json={"name": "naive", "expires_at": naive})
        assert r.status_code == 422, r.text
        assert "expires_at" in r.json()["detail"]
        aware = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        r = c.post("/api/tokens", json={"name": "aware", "expires_at": aware})
        assert r.status_code == 201
        assert datetime.fromisoformat(r.json()["expires_at"]) == datetime.fromisoformat(aware)


def test_one_address_cannot_lock_a_user_out_and_many_addresses_are_still_stopped(server):
    """The limit counted failures per user name over every client: three wrong passwords for "admin" from anyone on
    the network made the admin's own log-in wait, from any address, for as long as the attacker kept it up. Now one
    client (address, IPv6 /64) gets `login_failures_max` attempts across all names, and a user name
    `login_user_failures_max` (higher) across all clients: a lock-out needs many addresses, a brute force from many
    is still stopped."""
    attacker = [("admin", f"wrong-{i}", "203.0.113.66") for i in range(5)]
    assert _burst(server, attacker).count(401) == 3  # the per-client limit (3) stops one address
    assert _burst(server, [("admin", PASSWORD, "198.51.100.10")]) == [200]  # the admin elsewhere logs in
    assert _burst(server, [("admin", PASSWORD, "203.0.113.66")]) == [429]  # not from the attacker's address
    # From many addresses: the user name's ceiling (6 here) holds, whatever the addresses, even for the right one.
    codes = _burst(server, [("engineer", f"wrong-{i}", f"192.0.2.{i + 1}") for i in range(12)])
    assert sorted(codes) == [401] * 6 + [429] * 6
    assert _burst(server, [("engineer", PASSWORD, "198.51.100.11")]) == [429]


@pytest.mark.parametrize("server_fixture", ["pg_server", "plain_pg_server"])
def test_a_range_whose_minute_rollups_retention_removed_is_drawn_from_the_hourly_ones(server_fixture, request):
    """`rollups_1m_retention_days` removes the oldest 1-minute rollups and keeps the hourly ones. A range the
    1-minute rollups would serve that begins before what is left of them drew a line empty up to that point (and
    a mean over the readings left); it is drawn from the hourly rollups, every reading counted."""
    import time

    import psycopg
    from console_support import run_async

    from edge.db.features import detect
    from edge.sink.rollups import retention_1m

    admin = request.getfixturevalue(server_fixture).dsn()
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    with fresh_database(admin, prefix="console_1mret") as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=24 * 30, step_s=60, end=end)
        with psycopg.connect(dsn) as conn:
            features = detect(conn)

        async def trim():
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                return await retention_1m(conn, features, 14, time.monotonic() + 60)

        assert run_async(trim())[0] > 0

        def raw_count(start, stop):
            with psycopg.connect(dsn) as conn:
                return conn.execute("SELECT count(*) FROM readings r JOIN tags t ON t.id = r.tag_id"
                                    " WHERE t.name = 'P-101.vib_rms' AND r.time >= %s AND r.time < %s",
                                    (start, stop)).fetchone()[0]

        with ConsoleServer(dsn) as srv, srv.client("viewer") as c:
            old = c.get("/api/tags/P-101.vib_rms/readings", params={
                "from": (end - timedelta(days=25)).isoformat(), "to": (end - timedelta(days=10)).isoformat(),
                "points": 1000}).json()
            recent = c.get("/api/tags/P-101.vib_rms/readings", params={
                "from": (end - timedelta(days=9)).isoformat(), "to": (end - timedelta(days=2)).isoformat(),
                "points": 1000}).json()
        assert old["source"] == "readings_1h" and old["bucket_s"] == 3600, "the minutes are gone: hourly rollups"
        assert sum(old["n"]) == raw_count(end - timedelta(days=25), end - timedelta(days=10))
        assert recent["source"] == "readings_1m" and recent["bucket_s"] == 900, "the minutes are there: used"
        assert sum(recent["n"]) == raw_count(end - timedelta(days=9), end - timedelta(days=2))
