"""`valvoja maintenance train-anomaly --db`: on a systemd install the site file's database password is a credential
only the service's processes can read (`file:/run/credentials/...`); run by hand, the command takes the database
from --db and the password from libpq's PGPASSWORD, as `db migrate` and `emissions` do (docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ops_support import db_url

from edge.cli import main


def _site(tmp_path, url: str):
    site = tmp_path / "site.toml"
    site.write_text(f"""
[site]
gateway_id = "gw-by-hand"
state_dir = "var"

[database]
url = "{url}"
password = "file:/nonexistent/credentials/valvoja-gateway.service/db_password"

[maintenance]

[[maintenance.assets]]
name = "P-101"
anomaly = {{ signals = ["P-101.a", "P-101.b"], train_samples = 100, window = 3, alpha = 0.05 }}
""")
    return site


def _train(site, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "maintenance", "train-anomaly", "-c", str(site),
                           "--asset", "P-101", "--from", "2026-02-01T00:00:00+00:00", *extra],
                          capture_output=True, text=True)


def test_train_anomaly_takes_the_database_from_db_when_the_site_file_password_is_a_credential(tmp_path, pg_dsn):
    assert main(["db", "migrate", "--db", pg_dsn]) == 0
    site = _site(tmp_path, db_url(pg_dsn))
    without = _train(site)
    assert without.returncode == 1 and "cannot read secret file" in without.stderr, without.stderr
    with_db = _train(site, "--db", pg_dsn)
    # It reached the database: no readings stored there, so the period is too short (not a secret-file problem).
    assert with_db.returncode == 1, with_db.stdout
    assert "secret" not in with_db.stderr and "train_samples = 100" in with_db.stderr, with_db.stderr


def test_the_maintenance_help_names_every_action(capsys):
    """`valvoja maintenance --help`'s description named two of its four actions (README: evaluate, review,
    train-anomaly, window)."""
    with pytest.raises(SystemExit):
        main(["maintenance", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    description = text.split("positional arguments")[0]
    for words in ("benchmark files", "review", "anomaly detector again", "maintenance windows"):
        assert words in description, description
