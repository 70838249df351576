"""``valvoja maintenance window add|list|end|cancel`` as a process against the real test database: local times
with a zone, JSON for scripts, refusals with their exit status, the audit entries, and the console API seeing
what the CLI planned."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from cli_support import valvoja
from console_support import ConsoleServer, fresh_database, seed_plant, seed_users

from edge.cli import main


def _valvoja(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return valvoja("maintenance", "window", *args, dsn=dsn)


def test_plan_list_end_cancel_from_the_command_line(pg_admin_dsn):
    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=1, step_s=600)
        r = _valvoja(dsn, "add", "--asset", "P-101", "--asset", "F-201", "--from", "2027-10-30T22:00",
                     "--to", "2027-10-31T06:00", "--tz", "Europe/Helsinki", "--reason", "WO-9 overhaul",
                     "--by", "anna", "--json")
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        assert [w["asset"] for w in made] == ["P-101", "F-201"]
        assert made[0]["starts_local"] == "2027-10-30T22:00:00+03:00"
        assert made[0]["ends_local"] == "2027-10-31T06:00:00+02:00"

        now = datetime.now(UTC)
        r = _valvoja(dsn, "add", "--asset", "B-301", "--from", (now - timedelta(hours=1)).isoformat(),
                     "--to", (now + timedelta(hours=1)).isoformat(), "--reason", "boiler inspection", "--by", "anna")
        assert r.returncode == 0 and "current" in r.stdout and "boiler inspection" in r.stdout, r.stderr
        current = int(r.stdout.split()[0].lstrip("#"))

        listed = _valvoja(dsn, "list", "--asset", "P-101", "--state", "upcoming")
        assert listed.returncode == 0 and "WO-9 overhaul" in listed.stdout and "B-301" not in listed.stdout
        assert "2027-10-30T22:00:00+03:00 -> 2027-10-31T06:00:00+02:00" in listed.stdout

        refused = _valvoja(dsn, "add", "--asset", "NOPE", "--from", "2027-01-01T00:00Z", "--to", "2027-01-02T00:00Z",
                           "--reason", "x")
        assert refused.returncode == 2 and "unknown asset(s) NOPE" in refused.stderr
        naive = _valvoja(dsn, "add", "--asset", "P-101", "--from", "2027-01-01T00:00", "--to", "2027-01-02T00:00",
                         "--reason", "x")
        assert naive.returncode == 2 and "--tz" in naive.stderr
        started = _valvoja(dsn, "cancel", str(current))
        assert started.returncode == 3 and "end it early" in started.stderr

        ended = _valvoja(dsn, "end", str(current), "--comment", "done", "--by", "pekka", "--json")
        assert ended.returncode == 0, ended.stderr
        assert json.loads(ended.stdout)[0]["state"] == "past"
        cancelled = _valvoja(dsn, "cancel", str(made[1]["id"]), "--reason", "parts late", "--by", "pekka")
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout

        with psycopg.connect(dsn) as conn:
            audit = conn.execute("SELECT action, actor, target_id, detail->>'via' FROM console_audit "
                                 "WHERE target_kind = 'maintenance_window' ORDER BY id").fetchall()
        assert audit == [("maintenance_window.create", "anna", str(made[0]["id"]), "cli"),
                         ("maintenance_window.create", "anna", str(made[1]["id"]), "cli"),
                         ("maintenance_window.create", "anna", str(current), "cli"),
                         ("maintenance_window.end", "pekka", str(current), "cli"),
                         ("maintenance_window.cancel", "pekka", str(made[1]["id"]), "cli")]

        with ConsoleServer(dsn) as srv, srv.client("viewer") as c:
            seen = c.get("/api/maintenance-windows", params={"state": "cancelled"}).json()["items"]
        assert [(w["id"], w["cancelled_by"], w["cancel_reason"]) for w in seen] == [
            (made[1]["id"], "pekka", "parts late")]


def test_list_help_says_state_is_repeatable(capsys):
    """docs/operations.md and maintenance/README.md run `list --state current --state upcoming`: the help says so."""
    with pytest.raises(SystemExit):
        main(["maintenance", "window", "list", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--state {current,upcoming,past,cancelled} repeatable (default: every state)" in text
