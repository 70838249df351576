"""The console's defences against a hostile client or a hostile name, against the real console process and a fresh
PostgreSQL database: secrets compared as bytes (a non-ASCII CSRF token or API token is a refusal, not a crash),
templates filled in one pass (a name holding ``{{csrf}}`` stays text), security headers and ``no-store`` on every
answer that is not a static file (500s included), the log-in's redirect kept on the console, a log-in ending the
session the browser had, user names not told apart by timing, X-Forwarded-* believed only from trusted proxies, and
names a site configures or users type shown as text by the pages (headless Chromium)."""

from __future__ import annotations

import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import psycopg
import pytest
from console_support import PASSWORD, ConsoleServer, fresh_database, insert_alert, seed_plant, seed_users
from test_console_browser import browser, login  # noqa: F401  (the Chromium fixture and log-in helper)

from console.app import CSP

# Markup in names as a site could configure them or users type them; each would make an element with an id
# starting "xss-" if a page put it in as HTML.
# No "/" in them (a name with "/" is test_console_browser.py::test_an_asset_whose_name_has_a_slash_has_its_page).
XSS = {key: f'<img src=x id=xss-{key}><b id="xss-{key}-b" onclick=alert(1)>{key} & co'
       for key in ("asset", "site", "tag", "message", "comment", "reason", "kind")}
ASSET = XSS["asset"]
TAG = XSS["tag"]
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "x-frame-options": "DENY",
           "referrer-policy": "same-origin"}


@pytest.fixture(scope="module")
def server(pg_admin_dsn, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    (reports / "daily.html").write_text("<html><body><h1>NOx day</h1></body></html>")
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=2, step_s=60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO assets (name, site, kind) VALUES (%s, %s, %s)",
                         (ASSET, XSS["site"], XSS["kind"]))
            conn.execute("INSERT INTO tags (name, asset, unit) VALUES (%s, %s, 'mm/s')", (TAG, ASSET))
        insert_alert(dsn, "XSS-1", asset=ASSET, tag=TAG, message=XSS["message"])
        srv = ConsoleServer(dsn, reports_dir=str(reports))

        async def broken():  # an unhandled error, as a bug in any route would raise it
            raise RuntimeError("SELECT secret FROM somewhere")

        srv.app.add_api_route("/api/test-broken", broken, methods=["GET"])
        with srv:
            srv.dsn = dsn
            yield srv


@pytest.fixture(autouse=True)
def no_login_failures(server):
    """Each test starts with no log-in failures on record (they count per client for the window)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM console_login_failures")


def form_token(c: httpx.Client, next_: str = "/") -> tuple[str, str]:
    """The log-in form's page and its CSRF token (its cookie is now in ``c``)."""
    form = c.get("/login", params={"next": next_})
    return form.text, form.text.split('name="csrf_token" value="')[1].split('"')[0]


def test_a_non_ascii_csrf_or_api_token_is_refused_not_a_crash(server):
    """`hmac.compare_digest` raises TypeError for a str with a non-ASCII character: an ``X-CSRF-Token: é`` on any
    unsafe route, or a log-in form with ``csrf_token=é`` (no log-in needed), was a 500 with a traceback in the
    console's log for each request. Now refused as any wrong token is."""
    with server.client("engineer") as c:
        r = c.post("/api/alerts/XSS-1/comment", json={"comment": "x"}, headers={"X-CSRF-Token": "é".encode()})
        assert r.status_code == 403 and r.json()["type"] == "/problems/csrf", (r.status_code, r.text[:200])
        assert c.post("/api/alerts/XSS-1/comment", json={"comment": "ok"}).status_code == 200
    with server.client() as c:
        form_token(c)
        r = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": "väärä"})
        assert r.status_code == 403 and "form expired" in r.text, (r.status_code, r.text[:200])
        r = c.get("/api/assets", headers={"Authorization": "Bearer vlv_é".encode()})
        assert r.status_code == 401, (r.status_code, r.text[:200])


def test_placeholders_in_names_and_links_stay_text(server):
    """Pages were filled one placeholder after another, so one in a value put in before was filled too: the page
    of asset ``{{csrf}}`` had the session's CSRF token in its title (kept by the browser's history), and a log-in
    link with ``next=/{{error}}`` put the error paragraph's markup into the form's ``value="..."`` attribute."""
    with server.client("viewer") as c:
        csrf = c.headers["X-CSRF-Token"]
        page = c.get("/assets/" + quote("{{csrf}} {{nav}}"))
        title = re.search(r"<title>(.*)</title>", page.text)[1]
        assert csrf not in title and title.startswith("Asset {{csrf}} {{nav}}"), title
        assert page.text.count(csrf) == 2  # the meta tag and the log-out form's field, nothing else
    with server.client() as c:
        form_token(c, "/{{error}}")
        r = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": "forged",
                                   "next": "/{{error}}"})
        assert r.status_code == 403
        assert 'name="next" value="/{{error}}"' in r.text and r.text.count('<p class="error"') == 1, r.text


def test_everything_but_static_files_is_no_store_with_the_security_headers(server):
    """Only /api/ answers had ``Cache-Control: no-store``. A report file (plant data) came with Last-Modified and
    nothing else, which lets a shared cache keep it heuristically and hand it to someone not logged in; the pages
    and the log-in form carry CSRF tokens. An unhandled error's 500 had none of the security headers (Starlette
    answers it outside the app's middleware). Static files stay cacheable."""
    with server.client("viewer") as c:
        answers = {path: c.get(path) for path in (
            "/alerts", "/assets/P-101", "/login", "/reports/daily.html", "/api/assets", "/api/nothing-here",
            "/static/app.js", "/favicon.ico")}
    with server.client() as anon:  # uvicorn closes the connection after an unhandled error: a client of its own
        answers["/api/test-broken"] = anon.get("/api/test-broken")
    with server.client() as anon:
        answers["401"] = anon.get("/api/assets")
        answers["303"] = anon.get("/alerts", follow_redirects=False)
        answers["413"] = anon.post("/login", content=b"x" * (2 << 20),
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert answers["/api/test-broken"].status_code == 500
    assert "SELECT" not in answers["/api/test-broken"].text, "no detail of the error leaves the server"
    assert answers["/reports/daily.html"].status_code == 200 and answers["413"].status_code == 413
    for what, r in answers.items():
        for name, value in HEADERS.items():
            if what == "/reports/daily.html" and name == "content-security-policy":
                assert "sandbox" in r.headers[name]
                continue
            assert r.headers.get(name) == value, (what, r.status_code, name, r.headers.get(name))
        static = what.startswith("/static/") or what == "/favicon.ico"
        assert ("no-store" in r.headers.get("cache-control", "")) != static, (what, r.headers.get("cache-control"))


@pytest.mark.parametrize("target", [
    "//evil.example/", "/\\evil.example/", "\\\\evil.example/", "/\\/evil.example/", "https://evil.example/",
    "http:evil.example", "javascript:alert(1)", " //evil.example/", "%2F%2Fevil.example/", "/%5Cevil.example/",
    "\u3000//evil.example/", "evil.example"])
def test_the_log_in_form_sends_the_browser_only_to_a_page_of_the_console(server, target):
    """Another host written in each way a browser reads as one (scheme, scheme-relative, backslashes, encoded,
    leading space): after the log-in the browser is sent to a path of this console, never off it."""
    with server.client() as c:
        page, token = form_token(c, target)
        assert "evil.example" not in page or target.startswith("/%5C")
        r = c.post("/login", data={"username": "viewer", "password": PASSWORD, "csrf_token": token, "next": target},
                   follow_redirects=False)
        assert r.status_code == 303, (r.status_code, r.text[:200])
        location = r.headers["location"]
        # As a browser resolves it: the same scheme and host, whatever the path.
        resolved = httpx.URL(server.url).join(location.replace("\\", "/"))
        assert location.startswith("/") and not location.startswith(("//", "/\\")), location
        assert (resolved.scheme, resolved.host) == ("http", "127.0.0.1"), (location, resolved)


def test_a_log_in_ends_the_session_the_browser_had(server):
    """A session id is new at every log-in; the session that browser had before (another user's on a shared
    control-room PC, or one planted in it) stayed valid wherever else its id was known."""
    with server.client("viewer") as c:
        old = dict(c.cookies)
        assert c.get("/api/auth/me").json()["name"] == "viewer"
        r = c.post("/api/auth/login", json={"username": "engineer", "password": PASSWORD})
        assert r.status_code == 200 and dict(c.cookies) != old
        assert c.get("/api/auth/me").json()["name"] == "engineer"
    with httpx.Client(base_url=server.url, cookies=old) as stale:
        assert stale.get("/api/auth/me").status_code == 401, "the viewer's session ended with the new log-in"


def test_over_tls_only_the_host_prefixed_cookies_count(server):
    """Over TLS (here: X-Forwarded-Proto from the trusted loopback proxy) the console sets ``__Host-`` cookies, which
    a browser takes only from this host over TLS, but it read the plain-named ones too: a ``valvoja_session`` cookie
    planted by a sibling sub-domain or into a plain-HTTP answer (the planter's own session) logged a browser in as
    the planter, and a planted ``valvoja_login_csrf`` with a matching form field passed the log-in form's check."""
    tls = {"X-Forwarded-Proto": "https"}
    with server.client("viewer") as c:
        sid = c.cookies["valvoja_session"]  # a real session, logged in over plain HTTP
    with httpx.Client(base_url=server.url) as planted:
        assert planted.get("/api/auth/me", headers={"Cookie": f"valvoja_session={sid}"}).status_code == 200
        r = planted.get("/api/auth/me", headers={**tls, "Cookie": f"valvoja_session={sid}"})
        assert r.status_code == 401, (r.status_code, r.text[:200])
        r = planted.get("/alerts", headers={**tls, "Cookie": f"valvoja_session={sid}"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = planted.post("/login", headers={**tls, "Cookie": "valvoja_login_csrf=planted"},
                         data={"username": "viewer", "password": PASSWORD, "csrf_token": "planted"})
        assert r.status_code == 403 and "form expired" in r.text, (r.status_code, r.text[:200])
    with httpx.Client(base_url=server.url) as browser_over_tls:  # sends cookies by hand, as a browser over TLS
        form = browser_over_tls.get("/login", headers=tls)
        cookie = form.headers["set-cookie"]
        assert cookie.startswith("__Host-valvoja_login_csrf=") and "Secure" in cookie and "Path=/;" in cookie, cookie
        token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        r = browser_over_tls.post("/login", headers={**tls, "Cookie": f"__Host-valvoja_login_csrf={token}"},
                                  data={"username": "viewer", "password": PASSWORD, "csrf_token": token},
                                  follow_redirects=False)
        assert r.status_code == 303, (r.status_code, r.text[:200])
        sid = r.headers["set-cookie"].split("__Host-valvoja_session=")[1].split(";")[0]
        assert browser_over_tls.get("/api/auth/me", headers={**tls, "Cookie": f"__Host-valvoja_session={sid}"}
                                    ).json()["name"] == "viewer"


def test_the_log_in_form_refuses_over_long_names_as_the_json_log_in_does(server):
    """The JSON log-in refuses a user name over 64 characters (422); the form counted and stored any, up to the
    body limit, with each failed attempt."""
    with server.client() as c:
        _, token = form_token(c)
        r = c.post("/login", data={"username": "u" * 100_000, "password": "x", "csrf_token": token})
        assert r.status_code == 422 and "at most 64" in r.text, (r.status_code, r.text[:300])
        assert c.post("/api/auth/login", json={"username": "u" * 65, "password": "x"}).status_code == 422
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT max(length(username)) FROM console_login_failures").fetchone()[0] is None


def test_an_unknown_user_name_costs_the_same_time_as_a_wrong_password(server):
    """No user-name enumeration by timing: an unknown name is checked against a dummy scrypt hash. Each attempt
    from another address (X-Forwarded-For from the trusted loopback proxy) so that the log-in limit does not
    answer first."""
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    with server.client() as c:
        c.post("/api/auth/login", json={"username": "nobody-0", "password": "wrong"},  # dummy hash made once
               headers={"X-Forwarded-For": "198.51.100.250"})
        for i in range(8):
            for kind, name in (("known", "viewer"), ("unknown", f"nobody-{i}")):
                started = time.perf_counter()
                r = c.post("/api/auth/login", json={"username": name, "password": f"wrong-{i}"},
                           headers={"X-Forwarded-For": f"198.51.100.{i * 2 + (kind == 'unknown')}"})
                times[kind].append(time.perf_counter() - started)
                assert r.status_code == 401 and r.json()["detail"].startswith("wrong user name or password")
    known, unknown = statistics.median(times["known"]), statistics.median(times["unknown"])
    assert known > 0.01, f"a password check takes scrypt's time ({known:.4f} s)"
    assert abs(known - unknown) < 0.5 * known, (times, known, unknown)


def test_forwarded_headers_from_an_untrusted_peer_are_not_believed(server):
    """With only 10.0.0.0/8 trusted, the loopback client's X-Forwarded-For cannot give each attempt a new
    address (the limit still stops it) and its X-Forwarded-Proto cannot make the cookie look TLS-only."""
    with ConsoleServer(server.dsn, trusted_proxies=["10.0.0.0/8"], login_failures_max=3) as other:
        with httpx.Client(base_url=other.url, timeout=30) as c:
            codes = [c.post("/api/auth/login", json={"username": "viewer", "password": f"wrong-{i}"},
                            headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(5)]
            assert codes == [401, 401, 401, 429, 429], codes
        with psycopg.connect(server.dsn) as conn:
            clients = {r[0] for r in conn.execute("SELECT client FROM console_login_failures")}
        assert clients == {"127.0.0.1"}, clients
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM console_login_failures")
        with httpx.Client(base_url=other.url, timeout=30) as c:
            r = c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD},
                       headers={"X-Forwarded-Proto": "https"})
            assert r.status_code == 200 and r.headers["set-cookie"].startswith("valvoja_session=")
            assert "secure" not in r.headers["set-cookie"].lower()


def test_names_sites_configure_and_users_type_are_shown_as_text(server, browser):  # noqa: F811
    """Asset, site, kind, tag and alert message as stored, an acknowledgement's comment and a maintenance window's
    reason as users typed them, all markup: each page that shows them shows the text, and no element comes of it
    (the content security policy would stop a script, not an element or a form put in by markup)."""
    now = datetime.now(UTC)
    with server.client("admin") as c:
        assert c.post("/api/alerts/XSS-1/ack", json={"comment": XSS["comment"]}).status_code == 200
        r = c.post("/api/maintenance-windows", json={
            "assets": [ASSET], "starts_at": (now + timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(), "reason": XSS["reason"]})
        assert r.status_code == 201, r.text
    page = login(browser, server, "admin")
    shown = {
        "/alerts?state=": ("asset", "site", "tag", "message"),
        "/assets": ("asset", "site", "kind"),
        "/assets/" + quote(ASSET, safe=""): ("asset", "tag", "reason"),
        "/maintenance": ("asset", "reason"),
    }
    try:
        for path, keys in shown.items():
            page.goto(server.url + path)
            page.wait_for_function("() => !document.querySelector('main p.muted')?.textContent.startsWith('Loading')")
            if path.startswith("/alerts"):
                page.wait_for_selector('tr[data-id="XSS-1"]')
                page.click('tr[data-id="XSS-1"] details.hist summary')
                page.wait_for_selector('tr[data-id="XSS-1"] ul.history')
                keys += ("comment",)
            else:
                page.wait_for_load_state("networkidle")
            text = page.inner_text("body")
            for key in keys:
                assert XSS[key] in text, (path, key, text[:2000])
            assert page.eval_on_selector_all("[id^=xss-]", "els => els.length") == 0, path
        assert not page.errors, page.errors
    finally:
        page.context.close()
