"""Who may call what, by enumeration: every route of the console's FastAPI app (``app.routes``) is in ROUTES with
what it needs, ROUTES is the table of console/README.md ("Who may call what"), and each route is called
without credentials, with every role that lacks its permission (session and API token), with the right role but
no CSRF token, and with an API token of the first role that holds the permission. Refusals must leave the database
as it was (every table of the schema compared before and after). A route added without a row here fails, and
so does one that forgets its guard.

Against the real console process and a fresh PostgreSQL database with seeded plant, alerts, predictions,
emissions, maintenance windows, a trained model registry and a report folder."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from console_support import (
    ConsoleServer,
    fresh_database,
    insert_alert,
    seed_emissions,
    seed_plant,
    seed_predictions,
    seed_users,
)
from fastapi.routing import iter_route_contexts
from models_support import regression_table, spec

from console.auth import PERMISSIONS
from models.registry import Registry
from models.train import train

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "console" / "README.md"

# What each role may do, as console/README.md documents it (checked against it, console.auth and static/app.js).
ROLE_PERMISSIONS = {
    "viewer": {"read"},
    "engineer": {"read", "alerts.write"},
    "maintenance": {"read", "predictions.review", "windows.plan"},
    "admin": {"read", "alerts.write", "predictions.review", "windows.plan", "users.admin", "models.admin"},
}
ROLES = tuple(ROLE_PERMISSIONS)

# (method, path) -> what it needs: "public" (no log-in by design), "logged in" (any session or API token),
# "page" (a browser session; else a redirect to the log-in form), or a permission of ROLE_PERMISSIONS.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/api/openapi.json"): "public",
    ("GET", "/static/{path}"): "public",
    ("GET", "/favicon.ico"): "public",
    ("GET", "/login"): "public",
    ("POST", "/login"): "public",
    ("POST", "/api/auth/login"): "public",
    ("POST", "/api/auth/logout"): "logged in",
    ("GET", "/api/auth/me"): "logged in",
    ("POST", "/logout"): "logged in",
    ("GET", "/reports/{path:path}"): "logged in",
    ("GET", "/"): "page",
    ("GET", "/alerts"): "page",
    ("GET", "/assets"): "page",
    ("GET", "/assets/{name:path}"): "page",
    ("GET", "/maintenance"): "page",
    ("GET", "/emissions"): "page",
    ("GET", "/models"): "page",
    ("GET", "/gateways"): "page",
    ("GET", "/admin"): "page",
    ("GET", "/api/users"): "users.admin",
    ("POST", "/api/users"): "users.admin",
    ("PATCH", "/api/users/{username}"): "users.admin",
    ("GET", "/api/tokens"): "users.admin",
    ("POST", "/api/tokens"): "users.admin",
    ("DELETE", "/api/tokens/{token_id}"): "users.admin",
    ("GET", "/api/audit"): "read",
    ("GET", "/api/assets"): "read",
    ("GET", "/api/assets/{name:path}"): "read",
    ("GET", "/api/sites"): "read",
    ("GET", "/api/tags"): "read",
    ("GET", "/api/tags/{name:path}/calibrations"): "read",
    ("GET", "/api/tags/{name:path}/readings"): "read",
    ("GET", "/api/tags/{name:path}/readings.csv"): "read",
    ("GET", "/api/tags/{name:path}/latest"): "read",
    ("GET", "/api/alerts"): "read",
    ("GET", "/api/alerts.csv"): "read",
    ("GET", "/api/alerts/stream"): "read",
    ("GET", "/api/alerts/suppressed"): "read",
    ("GET", "/api/alerts/{alert_id}"): "read",
    ("GET", "/api/alerts/{alert_id}/trace"): "read",
    ("POST", "/api/alerts/{alert_id}/ack"): "alerts.write",
    ("POST", "/api/alerts/{alert_id}/clear"): "alerts.write",
    ("POST", "/api/alerts/{alert_id}/comment"): "alerts.write",
    ("POST", "/api/alerts/{alert_id}/review"): "predictions.review",
    ("GET", "/api/maintenance-windows"): "read",
    ("GET", "/api/maintenance-windows/{window_id}"): "read",
    ("POST", "/api/maintenance-windows"): "windows.plan",
    ("POST", "/api/maintenance-windows/{window_id}/end"): "windows.plan",
    ("POST", "/api/maintenance-windows/{window_id}/cancel"): "windows.plan",
    ("GET", "/api/predictions"): "read",
    ("GET", "/api/assets/{name:path}/predictions"): "read",
    ("GET", "/api/assets/{name:path}/predictions.csv"): "read",
    ("POST", "/api/predictions/{prediction_id}/review"): "predictions.review",
    ("GET", "/api/emissions/stacks"): "read",
    ("GET", "/api/emissions/{stack}/live"): "read",
    ("GET", "/api/emissions/{stack}/averages"): "read",
    ("GET", "/api/emissions/{stack}/calendar"): "read",
    ("GET", "/api/emissions/{stack}/revisions"): "read",
    ("GET", "/api/emissions/{stack}/compliance"): "read",
    ("GET", "/api/emissions/{stack}/events"): "read",
    ("GET", "/api/emissions/reports/files"): "read",
    ("GET", "/api/models"): "read",
    ("GET", "/api/models/{model_id}/uncertainty"): "read",
    ("GET", "/api/models/{model_id}/versions/{version}/gate"): "read",
    ("GET", "/api/models/{model_id}/versions/{version}/report"): "read",
    ("POST", "/api/models/{model_id}/versions/{version}/promote"): "models.admin",
    ("POST", "/api/models/{model_id}/rollback"): "models.admin",
    ("GET", "/api/gateways"): "read",
    ("GET", "/api/gateways/{name}"): "read",
    ("GET", "/api/dead-letters"): "read",
}
NOT_A_PERMISSION = ("public", "logged in", "page")
REPORT = "daily/WI1-2026-12-01.html"


def _from_now(**delta) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


# A request each unsafe route carries out (the status it answers then); the refusals are sent the same request, so
# that an unchanged database means the guard stopped it, not a 404 or 409 of its own. Path parameters come from
# `ids` (the seeded rows), by the parameter's name unless a route names its own. A body made when sent is a function.
UNSAFE: dict[tuple[str, str], tuple[dict, dict | Callable[[], dict] | None, int]] = {
    ("POST", "/api/auth/logout"): ({}, None, 204),
    ("POST", "/logout"): ({}, None, 303),
    ("POST", "/api/users"): ({}, {"username": "newcomer", "password": "a long enough pw 1", "role": "admin"}, 201),
    ("PATCH", "/api/users/{username}"): ({"username": "bystander"}, {"role": "admin", "display_name": "x"}, 200),
    ("POST", "/api/tokens"): ({}, {"name": "new-token", "role": "admin"}, 201),
    ("DELETE", "/api/tokens/{token_id}"): ({}, None, 204),
    ("POST", "/api/alerts/{alert_id}/ack"): ({"alert_id": "AZ-ack"}, {"comment": "seen"}, 200),
    ("POST", "/api/alerts/{alert_id}/clear"): ({"alert_id": "AZ-clear"}, {"comment": "fixed"}, 200),
    ("POST", "/api/alerts/{alert_id}/comment"): ({"alert_id": "AZ-comment"}, {"comment": "looking"}, 200),
    ("POST", "/api/alerts/{alert_id}/review"): ({"alert_id": "AZ-review"}, {"verdict": "right"}, 200),
    ("POST", "/api/maintenance-windows"): ({}, lambda: {"assets": ["F-201"], "starts_at": _from_now(days=1),
                                                        "ends_at": _from_now(days=2), "reason": "WO-9"}, 201),
    ("POST", "/api/maintenance-windows/{window_id}/end"): ({"window_id": "current_window"}, {}, 200),
    ("POST", "/api/maintenance-windows/{window_id}/cancel"): ({"window_id": "upcoming_window"}, {}, 200),
    ("POST", "/api/predictions/{prediction_id}/review"): ({}, {"verdict": "wrong"}, 200),
    ("POST", "/api/models/{model_id}/versions/{version}/promote"): ({"version": 2}, {}, 200),
    ("POST", "/api/models/{model_id}/rollback"): ({}, {}, 200),
}
# Read routes whose seeded parameter differs from the default of its name.
PARAMS = {("GET", "/api/models/{model_id}/uncertainty"): {"model_id": "temp-gbr"},
          ("GET", "/api/models/{model_id}/versions/{version}/gate"): {"version": 2},
          ("GET", "/api/maintenance-windows/{window_id}"): {"window_id": "current_window"},
          ("GET", "/api/gateways/{name}"): {"name": "gw-1"}}
PARAMS |= {("GET", f"/api/tags/{{name:path}}/{what}"): {"name": "P-101.vib_rms"}
           for what in ("calibrations", "readings", "readings.csv", "latest")}
QUERY = {("GET", "/api/models/{model_id}/uncertainty"): {"last": "P2D"}}


@pytest.fixture(scope="module")
def server(pg_admin_dsn, tmp_path_factory):
    registry, cache = tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("report-cache")
    reports = tmp_path_factory.mktemp("reports")
    (reports / REPORT).parent.mkdir()
    (reports / REPORT).write_text("<html><body>daily report</body></html>")
    (reports.parent / "secret.txt").write_text("outside the reports folder")
    (reports / "outside.txt").symlink_to(reports.parent / "secret.txt")
    table = regression_table(600)
    with fresh_database(pg_admin_dsn, prefix="console_authz") as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=2, step_s=60)
        seed_predictions(dsn, hours=2)
        seed_emissions(dsn, days=1)
        for aid in ("AZ-read", "AZ-ack", "AZ-clear", "AZ-comment", "AZ-review"):
            insert_alert(dsn, aid, message=f"alert {aid}")
        reg = Registry(registry, dsn)
        reg.promote("syn", reg.register(train(spec(params={"max_iter": 20}), table), actor="trainer").version,
                    actor="trainer")
        reg.register(train(spec(params={"max_iter": 120}), table), actor="trainer")
        with ConsoleServer(dsn, models={"registry": str(registry), "report_cache": str(cache)},
                           reports_dir=str(reports),
                           gateways=[{"name": "gw-1", "health_url": "http://127.0.0.1:9/healthz", "timeout_s": 1}]
                           ) as srv:
            srv.dsn, srv.registry, srv.reports = dsn, reg, reports
            srv.tokens, srv.ids = {}, {}
            with srv.client("admin") as a:
                for role in ROLES:
                    srv.tokens[role] = a.post("/api/tokens", json={"name": f"t-{role}", "role": role}).json()["token"]
                srv.ids["token_id"] = a.post("/api/tokens", json={"name": "victim"}).json()["id"]
                a.post("/api/users", json={"username": "bystander", "password": "a long enough pw 2",
                                           "role": "viewer"}).raise_for_status()
                now = datetime.now(UTC)
                for key, start, end in (("current_window", now - timedelta(hours=1), now + timedelta(hours=5)),
                                        ("upcoming_window", now + timedelta(days=2), now + timedelta(days=3))):
                    r = a.post("/api/maintenance-windows", json={"assets": ["B-301"], "starts_at": start.isoformat(),
                                                                  "ends_at": end.isoformat(), "reason": key})
                    srv.ids[key] = r.json()["items"][0]["id"]
            with psycopg.connect(dsn) as conn:
                (srv.ids["prediction_id"],) = conn.execute("SELECT min(id) FROM predictions").fetchone()
            srv.ids |= {"username": "viewer", "alert_id": "AZ-read", "name": "P-101", "stack": "WI1",
                        "model_id": "syn", "version": 1, "path": REPORT}
            yield srv


def _route_table(app) -> set[tuple[str, str]]:
    """(method, path) of every route of ``app`` (through the included routers, as FastAPI's OpenAPI document walks
    them, but also those left out of it); a mount (the static files) as ``<mount>/{path}``."""
    out = set()
    for route in iter_route_contexts(app.routes):
        if route.methods is None:  # a Mount
            out.add(("GET", route.path + "/{path}"))
            continue
        out |= {(m, route.path) for m in route.methods if m != "HEAD" or "GET" not in route.methods}
    return out


def _url(server, method: str, path: str, params: dict | None = None) -> str:
    values = server.ids | {"path": "app.css" if path.startswith("/static") else REPORT}
    values |= PARAMS.get((method, path), {}) | (params or {})
    values = {k: server.ids.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: str(values[m.group(1)]), path)


def _send(c: httpx.Client, method: str, path: str, server, params: dict | None = None,
          body=None) -> httpx.Response:
    url = _url(server, method, path, params)
    if path == "/api/alerts/stream":  # an endless stream: its status and headers are what is checked
        with c.stream(method, url) as r:
            return httpx.Response(r.status_code, headers=r.headers)
    return c.request(method, url, json=body() if callable(body) else body, params=QUERY.get((method, path)),
                     follow_redirects=False)


def snapshot(dsn: str) -> dict[str, tuple]:
    """A digest of every table of the schema; the times a request touches by reading (a session's last_seen, a
    token's last_used_at) are left out."""
    with psycopg.connect(dsn) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "ORDER BY tablename")]
        # Per table, the count and the sum of the rows' 64-bit hashes: any row added, removed or changed shows.
        row = "hashtextextended((to_jsonb(t) - 'last_seen' - 'last_used_at')::text, 0)"
        return {name: conn.execute(f'SELECT count(*), sum({row}) FROM "{name}" t').fetchone() for name in tables}


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))


def _token_client(server, role: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {server.tokens[role]}"})


def _refused(r: httpx.Response, status: int, type_: str | None = None) -> bool:
    if r.status_code != status or r.headers.get("content-type") != "application/problem+json":
        return False
    return type_ is None or r.json()["type"] == type_


def test_every_route_is_in_the_table_and_the_table_is_the_readmes(server):
    routes = _route_table(server.app)
    missing = sorted(routes - ROUTES.keys())
    assert not missing, (f"route(s) {missing} are in no row of ROUTES: add each with what it needs to ROUTES in "
                         f"{Path(__file__).name} and to the table 'Who may call what' in console/README.md")
    assert not sorted(ROUTES.keys() - routes), "ROUTES names routes the console no longer has"
    assert set(UNSAFE) == {k for k in ROUTES if k[0] != "GET" and ROUTES[k] != "public"}, \
        "every unsafe route needs a request in UNSAFE"
    documented = {(m, p): need.strip("`") for m, p, need in
                  re.findall(r"^\| `(GET|POST|PATCH|PUT|DELETE) ([^`]+)` \| ([^|]+?) \|", README.read_text(), re.M)}
    assert documented == ROUTES, {k: (documented.get(k), ROUTES.get(k)) for k in documented.keys() | ROUTES.keys()
                                  if documented.get(k) != ROUTES.get(k)}
    assert {need for need in ROUTES.values() if need not in NOT_A_PERMISSION} <= set().union(*ROLE_PERMISSIONS.values())


def test_the_roles_are_those_the_readme_documents_and_the_pages_show(server):
    assert {r: set(p) for r, p in PERMISSIONS.items()} == ROLE_PERMISSIONS
    text = README.read_text()
    for role, perms in ROLE_PERMISSIONS.items():
        row = re.search(rf"^\| `{role}` \| ([^|]+) \|", text, re.M)
        assert row and set(re.findall(r"`([\w.]+)`", row.group(1))) == perms, (role, row and row.group(0))
    js = (ROOT / "console" / "static" / "app.js").read_text()
    for role, perms in ROLE_PERMISSIONS.items():
        listed = re.search(rf"\b{role}: \[([^\]]*)\]", js)
        assert listed and set(re.findall(r'"([\w.]+)"', listed.group(1))) == perms, role


def test_without_credentials_only_the_public_routes_answer(server):
    """401 problem document for the API and report files, the log-in form for pages, and nothing changed; the
    public routes answer."""
    before = snapshot(server.dsn)
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        for (method, path), need in sorted(ROUTES.items()):
            if need == "public" and method != "GET":
                continue  # log-in forms: they may change what they change (failures counted), see the README
            params, body, _ = UNSAFE.get((method, path), ({}, None, 0))
            r = _send(anon, method, path, server, params, body)
            where = f"{method} {path}: {r.status_code} {r.text[:200]}"
            if need == "public":
                assert r.status_code == 200, where
            elif need == "page":
                assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), where
            else:
                assert _refused(r, 401), where
    assert not _changed(before, snapshot(server.dsn))


def test_each_role_without_the_permission_is_refused_and_nothing_changes(server):
    """Every role below what a route needs, by session (CSRF token sent) and by API token: 403 naming the
    permission, and every table as it was (a table named in the failure says which route wrote it)."""
    for role in ROLES:
        with server.client(role) as session, _token_client(server, role) as token:
            before, sent = snapshot(server.dsn), []
            for (method, path), need in sorted(ROUTES.items()):
                if need in NOT_A_PERMISSION or need in ROLE_PERMISSIONS[role]:
                    continue
                params, body, _ = UNSAFE.get((method, path), ({}, None, 0))
                for how, c in (("session", session), ("token", token)):
                    r = _send(c, method, path, server, params, body)
                    where = f"{role} ({how}) {method} {path}: {r.status_code} {r.text[:200]}"
                    assert _refused(r, 403, "/problems/role") and need in r.json()["detail"], where
                    sent.append(f"{method} {path}")
            assert not _changed(before, snapshot(server.dsn)), (role, sent)


def test_every_read_route_answers_each_role(server):
    """A viewer (the least role) gets each read route with the seeded ids: the table's "read" is what it is;
    pages and files answer sessions, API tokens get the API."""
    with server.client("viewer") as session, _token_client(server, "viewer") as token:
        for (method, path), need in sorted(ROUTES.items()):
            if method != "GET" or need not in ("read", "logged in", "page", "public"):
                continue
            for how, c in (("session", session), ("token", token)):
                r = _send(c, method, path, server)
                where = f"viewer ({how}) GET {path}: {r.status_code} {r.text[:300]}"
                if need == "page" and how == "token":
                    assert r.status_code == 303, where  # a page is for a browser: the log-in form
                else:
                    assert r.status_code == 200, where


def test_the_right_role_needs_the_csrf_token_with_a_session_and_none_with_an_api_token(server):
    """Each unsafe route: the first role holding its permission, by session without the CSRF token, is refused
    (403 /problems/csrf) and nothing changes; by API token (no CSRF token, as the README says) it is carried out."""
    def first_role(key):
        need = ROUTES[key]
        return next(r for r in ROLES if need == "logged in" or need in ROLE_PERMISSIONS[r])

    with ExitStack() as stack:
        sessions = {role: stack.enter_context(server.client(role)) for role in ROLES}
        for c in sessions.values():
            del c.headers["X-CSRF-Token"]
        before = snapshot(server.dsn)
        for (method, path), (params, body, _) in UNSAFE.items():
            r = _send(sessions[first_role((method, path))], method, path, server, params, body)
            where = f"{first_role((method, path))} (session, no CSRF) {method} {path}: {r.status_code} {r.text[:200]}"
            assert _refused(r, 403, "/problems/csrf"), where
        assert not _changed(before, snapshot(server.dsn))
    for (method, path), (params, body, status) in UNSAFE.items():  # in order: promote before rollback
        role = first_role((method, path))
        with _token_client(server, role) as t:
            r = _send(t, method, path, server, params, body)
            assert r.status_code == status, f"{role} (token) {method} {path}: {r.status_code} {r.text[:300]}"


def _raw_get(server, target: str) -> tuple[int, str]:
    """GET ``target`` exactly as written (an HTTP client would resolve ``..`` itself), by the viewer's API token."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: console\r\nAuthorization: Bearer {server.tokens['viewer']}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("target", [
    "/reports/../secret.txt", "/reports/daily/../../secret.txt", "/reports/%2e%2e/secret.txt",
    "/reports/daily/..%2f..%2fsecret.txt", "/reports/{outside}", "/reports/outside.txt", "/reports/%00",
    "/reports/daily/a%00b", "/reports/" + "x" * 3000])
def test_report_files_outside_the_folder_or_of_impossible_names_are_not_found(server, target):
    """Only files inside ``reports_dir`` are served: ``..`` and absolute names (sent as written; an HTTP client
    resolves ``..`` itself) and a symlink out of the folder are 404, and so is a name with NUL or one longer than
    a file name may be (they were a 500)."""
    status, body = _raw_get(server, target.format(outside=quote(str(server.reports.parent / "secret.txt"), safe="")))
    assert status == 404 and "outside the reports folder" not in body, (status, body[:200])
    assert _raw_get(server, "/reports/" + REPORT)[0] == 200


def test_the_report_list_offers_only_what_is_served(server):
    """The emissions page's report list: a symlink out of ``reports_dir`` was listed (its target's size and time)
    with a link that answered 404."""
    with _token_client(server, "viewer") as c:
        items = c.get("/api/emissions/reports/files").json()["items"]
        assert [f["name"] for f in items] == [REPORT]
        assert all(c.get(f["href"]).status_code == 200 for f in items)


@pytest.mark.parametrize("change", [{"disabled": True}, {"password": "another long pw 9"}, {"role": "viewer"}])
def test_a_users_changed_credentials_end_their_open_sessions_at_once(server, change):
    """Disabled, a new password or a lower role: the session opened before answers 401 at its next request, and
    a new log-in has only what the user has now."""
    name = f"moved-{next(iter(change))}"
    with server.client("admin") as a:
        a.post("/api/users", json={"username": name, "password": "a long enough pw 4", "role": "engineer"})
        with server.client(username=name, password="a long enough pw 4") as u:
            assert u.post("/api/alerts/AZ-read/comment", json={"comment": "before"}).status_code == 200
            assert a.patch(f"/api/users/{name}", json=change).status_code == 200
            assert _refused(u.post("/api/alerts/AZ-read/comment", json={"comment": "after"}), 401)
            assert _refused(u.get("/api/auth/me"), 401)
    if "role" in change:
        with server.client(username=name, password="a long enough pw 4") as u:
            assert _refused(u.post("/api/alerts/AZ-read/comment", json={"comment": "as viewer"}), 403, "/problems/role")


def test_a_malformed_json_body_is_not_answered_before_who_may_call(server):
    """FastAPI decodes the body before it runs a route's dependencies: malformed JSON was answered 422 to a caller
    without credentials, without the CSRF token or with the wrong role. Every unsafe route: no credentials 401, a
    session without the CSRF token 403 (csrf), each role without the permission 403 (role), the right one 422; the
    log-in form, public, 422 to anyone. Nothing changes."""
    def post_bad(c: httpx.Client, method: str, path: str) -> httpx.Response:
        return c.request(method, _url(server, method, path, UNSAFE.get((method, path), ({},))[0]),
                         content=b'{"comment": ', follow_redirects=False,
                         headers={"Content-Type": "application/json"})

    # The routes that read a JSON body (a route without one does not decode it: a request to it is just carried out)
    unsafe = sorted({(m, r.path) for r in iter_route_contexts(server.app.routes)
                     if getattr(r, "body_field", None) is not None and r.path.startswith("/api/")
                     for m in r.methods if m != "GET"})
    assert len(unsafe) >= 10, unsafe
    with ExitStack() as stack:
        anon = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
        sessions = {role: stack.enter_context(server.client(role)) for role in ROLES}
        no_csrf = stack.enter_context(server.client(ROLES[-1]))
        del no_csrf.headers["X-CSRF-Token"]
        before = snapshot(server.dsn)  # the log-ins above are changes of their own
        for method, path in unsafe:
            need = ROUTES[(method, path)]
            r = post_bad(anon, method, path)
            where = f"{method} {path}: {r.status_code} {r.text[:200]}"
            if need == "public":
                assert r.status_code == 422, where
                continue
            assert _refused(r, 401), "no credentials, " + where
            assert _refused(post_bad(no_csrf, method, path), 403, "/problems/csrf"), "no CSRF token, " + where
            for role, c in sessions.items():
                r = post_bad(c, method, path)
                where = f"{role} {method} {path}: {r.status_code} {r.text[:200]}"
                if need == "logged in" or need in ROLE_PERMISSIONS[role]:
                    assert r.status_code == 422, where
                else:
                    assert _refused(r, 403, "/problems/role"), where
        assert not _changed(before, snapshot(server.dsn))
