"""Models page API against the real test database with really trained and registered models: only admins promote
and roll back; the gate's comparison comes back either way (a refusal is 409 with it in the problem document);
every promote, refusal and rollback is in the audit log with who and when; the uncertainty report of a version
is served as self-contained HTML, generated once and cached."""

from __future__ import annotations

import re

import psycopg
import pytest
from console_support import ConsoleServer, fresh_database, seed_users
from models_support import regression_table, spec

from models.registry import Registry
from models.train import train


@pytest.fixture(scope="module")
def server(pg_admin_dsn, tmp_path_factory):
    """v1 (HGB, 40 iterations) champion; candidates v2 (HGB, 200 iterations: better) and v3 (linear: worse)."""
    root = tmp_path_factory.mktemp("registry")
    cache = tmp_path_factory.mktemp("report-cache")
    table = regression_table(1500)
    with fresh_database(pg_admin_dsn, prefix="console_models") as dsn:
        seed_users(dsn)
        reg = Registry(root, dsn)
        v1 = reg.register(train(spec(params={"max_iter": 40}), table), actor="trainer").version
        reg.promote("syn", v1, actor="trainer")
        reg.register(train(spec(params={"max_iter": 200}), table), actor="trainer")
        reg.register(train(spec(estimator="linear"), table), actor="trainer")
        with ConsoleServer(dsn, models={"registry": str(root), "report_cache": str(cache)}) as srv:
            srv.dsn, srv.registry, srv.cache = dsn, reg, cache
            yield srv


def _audit(c, action: str) -> list[dict]:
    return c.get("/api/audit", params={"action": action}).json()["items"]


def test_openapi_documents_the_model_actions(server):
    with server.client() as c:
        doc = c.get("/api/openapi.json").json()
    paths = doc["paths"]
    for path in ("/api/models/{model_id}/versions/{version}/promote", "/api/models/{model_id}/rollback",
                 "/api/models/{model_id}/versions/{version}/report", "/api/models/{model_id}/versions/{version}/gate"):
        assert path in paths, path
    refused = paths["/api/models/{model_id}/versions/{version}/promote"]["post"]["responses"]["409"]
    assert "comparison" in refused["content"]["application/problem+json"]["example"]


def test_only_admins_promote_or_roll_back(server):
    for role in ("viewer", "engineer", "maintenance"):
        with server.client(role) as c:
            r = c.post("/api/models/syn/versions/2/promote", json={})
            assert r.status_code == 403 and "models.admin" in r.json()["detail"], (role, r.text)
            assert c.post("/api/models/syn/rollback", json={}).status_code == 403
            assert c.get("/api/models").status_code == 200, "but they see the registry"
    with server.client("admin") as c:
        del c.headers["X-CSRF-Token"]
        assert c.post("/api/models/syn/versions/2/promote", json={}).status_code == 403, "CSRF token required"
    assert server.registry.champion("syn").version == 1


def test_gate_refuses_a_worse_candidate_promotes_a_better_one_and_rolls_back(server):
    with server.client("admin") as c:
        cmp = c.get("/api/models/syn/versions/3/gate").json()
        assert cmp["accepted"] is False and cmp["champion"] == 1

        r = c.post("/api/models/syn/versions/3/promote", json={"comment": "try the linear one"})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        body = r.json()
        comp = body["comparison"]
        assert (comp["candidate"], comp["champion"], comp["metric"], comp["accepted"]) == (3, 1, "mae", False)
        assert comp["candidate_value"] > comp["champion_value"] and "worse" in body["detail"]
        assert comp["candidate_metrics"]["mae"] == comp["candidate_value"] and comp["rows"] == 300
        assert server.registry.champion("syn").version == 1

        r = c.post("/api/models/syn/versions/2/promote", json={"comment": "more trees"})
        assert r.status_code == 200, r.text
        res = r.json()
        assert (res["champion"], res["previous_champion"], res["promoted_by"]) == (2, 1, "admin")
        assert res["comparison"]["accepted"] and res["comparison"]["candidate_value"] <= res["comparison"][
            "champion_value"]
        assert "ACCEPTED" in res["text"]
        group = next(g for g in c.get("/api/models").json()["items"] if g["model_id"] == "syn")
        assert group["champion"]["version"] == 2
        assert [v["version"] for v in group["retired"]] == [1]

        refused, promoted = _audit(c, "model.promote_refused"), _audit(c, "model.promote")
        assert len(refused) == 1 and len(promoted) == 1
        assert (refused[0]["actor"], refused[0]["target_kind"], refused[0]["target_id"]) == ("admin", "model", "syn/3")
        assert refused[0]["detail"]["comparison"]["accepted"] is False
        assert refused[0]["detail"]["comment"] == "try the linear one" and refused[0]["time"]
        assert (promoted[0]["actor"], promoted[0]["target_id"]) == ("admin", "syn/2")
        assert promoted[0]["detail"]["previous_champion"] == 1 and promoted[0]["detail"]["comparison"]["accepted"]

        r = c.post("/api/models/syn/rollback", json={"comment": "v2 drifts in service"})
        assert r.status_code == 200, r.text
        assert (r.json()["champion"], r.json()["previous_champion"]) == (1, 2)
        assert server.registry.champion("syn").version == 1
        rb = _audit(c, "model.rollback")
        assert len(rb) == 1 and rb[0]["actor"] == "admin" and rb[0]["target_id"] == "syn/1"
        assert rb[0]["detail"] == {"model_id": "syn", "from": 2, "to": 1, "comment": "v2 drifts in service"}

        # nothing before v1 to go back to; unknown model / version
        r = c.post("/api/models/syn/rollback", json={})
        assert r.status_code == 404 and "no previous champion" in r.json()["detail"]
        assert c.post("/api/models/syn/rollback", json={"to": 1}).status_code == 409, "already the champion"
        assert c.post("/api/models/nope/versions/1/promote", json={}).status_code == 404
        assert c.post("/api/models/syn/versions/9/promote", json={}).status_code == 404
    with psycopg.connect(server.dsn) as conn:
        events = conn.execute("SELECT event, version, actor FROM model_events WHERE model_id = 'syn' "
                              "AND actor = 'admin' ORDER BY id").fetchall()
    assert events == [("refuse", 3, "admin"), ("promote", 2, "admin"), ("rollback", 1, "admin")]


def test_a_promotion_whose_audit_entry_fails_changes_nothing(server):
    """The registry change, its model_events row and the audit entry are one transaction: when the audit insert
    fails (a trigger refuses it here), the champion stays and no event is left behind."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'audit refused (test)'; END $$")
        conn.execute("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON console_audit FOR EACH ROW "
                     "WHEN (NEW.action LIKE 'model.%') EXECUTE FUNCTION test_refuse_audit()")
        events = conn.execute("SELECT count(*) FROM model_events").fetchone()[0]
    champion = server.registry.champion("syn").version
    try:
        with server.client("admin") as c:
            r = c.post("/api/models/syn/versions/2/promote", json={"comment": "audit will fail"})
            assert r.status_code == 500, r.text
            assert server.registry.champion("syn").version == champion
            with psycopg.connect(server.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM model_events").fetchone()[0] == events
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER test_refuse_audit ON console_audit")
            conn.execute("DROP FUNCTION test_refuse_audit()")


def test_uncertainty_report_of_a_version_is_self_contained_and_cached(server):
    with server.client("viewer") as c:
        r = c.get("/api/models/syn/versions/2/report")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        html = r.text
        assert "<svg" in html and "http://" not in html and "https://" not in html
        assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", html, re.I)
        files = list(server.cache.glob("syn/v2-*/report.html"))
        assert len(files) == 1
        mtime = files[0].stat().st_mtime_ns
        data = c.get("/api/models/syn/versions/2/report", params={"format": "json"}).json()
        assert files[0].stat().st_mtime_ns == mtime, "served from the cache"
        assert data["model"]["version"] == 2 and data["rows"] == 300
        assert data["model"]["drift_reference"] == "model card" and data["input_drift"]["status"] == "ok"
        assert 0.8 <= data["metrics"]["static"]["coverage"] <= 1.0
        assert c.get("/api/models/syn/versions/9/report").status_code == 404


def test_registry_errors_name_no_server_paths(server):
    """A version whose held-out rows went missing: the problem documents say what is wrong, and the registry's
    file paths stay in the console's log (any logged-in user reads problem documents)."""
    mv = server.registry.get("syn", 3)
    holdout = mv.path / "holdout.npz"
    moved = holdout.with_name("holdout.npz.away")
    holdout.rename(moved)
    try:
        with server.client("viewer") as c:
            report = c.get("/api/models/syn/versions/3/report")
            gate = c.get("/api/models/syn/versions/3/gate")
    finally:
        moved.rename(holdout)
    for r in (report, gate):
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert str(mv.path.parent.parent) not in detail and not re.search(r"(^|\s|\()/\w+/", detail), detail
    assert "holdout.npz" in report.json()["detail"] and "held-out rows of syn v3" in report.json()["detail"]
    assert "[models] registry" in gate.json()["detail"]
