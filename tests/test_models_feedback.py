"""``valvoja models evaluate feedback``: precision of past alerts from the maintenance teams' reviews, against the
real test database with alerts raised and reviewed through maintenance's own store and review code."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from edge.cli import main as valvoja
from edge.db.migrate import migrate
from edge.records import Prediction
from maintenance import review, store
from maintenance.alerts import AlertManager, AlertPolicy

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


async def _raise_alerts(dsn: str) -> tuple[list[int], list[dict]]:
    """Six anomaly alerts: four raised from predictions of model ``an:P-101`` (one a day apart from the rest),
    two without a model. Returns the prediction ids and the alerts in raise order."""
    m = AlertManager(AlertPolicy(clear_after_s=0))
    preds = [Prediction("an:P-101", "abc123", "P-101", at(h * 3600), 10.0 + h, p_value=0.001, kind="anomaly",
                        details={"alpha": 0.01}) for h in (0, 1, 2, 48)]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = await store.write_predictions(conn, preds)
        changes = []
        for k, (asset, s) in enumerate([("P-101", 0), ("P-102", 3600), ("P-103", 7200), ("P-104", 48 * 3600),
                                        ("P-105", 100), ("P-106", 200)]):
            ev = ({"prediction": {"id": ids[k], "model_id": "an:P-101", "model_version": "abc123", "p_value": 0.001}}
                  if k < 4 else {})
            changes += m.observe(asset=asset, tag=None, kind="anomaly", active=True, t=at(s), evidence=ev)
            changes += m.observe(asset=asset, tag=None, kind="anomaly", active=False, t=at(s + 1))
        await store.apply_changes(conn, changes)
        async with conn.cursor() as cur:
            await cur.execute("SELECT id, asset, model_id FROM alerts ORDER BY raised_at, asset")
            alerts = [dict(zip(("id", "asset", "model_id"), r, strict=True)) for r in await cur.fetchall()]
    return ids, alerts


@pytest.fixture
def reviewed(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    ids, alerts = asyncio.run(_raise_alerts(pg_dsn))
    by_asset = {a["asset"]: a["id"] for a in alerts}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        review.review_prediction(conn, ids[0], "right", "bearing outer race pitted", "anna")  # via its prediction
        review.review_alert(conn, by_asset["P-102"], "right", "", "anna")
        review.review_alert(conn, by_asset["P-103"], "right", "", "bob")
        review.review_alert(conn, by_asset["P-103"], "wrong", "valve test, not a fault", "anna")  # newest counts
        review.review_alert(conn, by_asset["P-104"], "wrong", "", "anna")
        review.review_alert(conn, by_asset["P-105"], "wrong", "", "bob")
        # P-106 stays unreviewed
    return pg_dsn


def test_feedback_precision_per_model_and_overall(reviewed, tmp_path, capsys):
    out = tmp_path / "precision.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "alert precision from reviews" in text and "an:P-101" in text
    doc = json.loads(out.read_text())
    rows = {r["model_id"]: r for r in doc["rows"]}
    model = rows["an:P-101"]
    assert (model["alerts"], model["right"], model["wrong"], model["unreviewed"]) == (4, 2, 2, 0)
    assert model["precision"] == pytest.approx(0.5)
    other = rows[""]
    assert (other["alerts"], other["right"], other["wrong"], other["unreviewed"]) == (2, 0, 1, 1)
    assert other["precision"] == 0.0
    assert {k: doc["overall"][k] for k in ("right", "wrong", "precision")} == {"right": 2, "wrong": 3,
                                                                                "precision": pytest.approx(0.4)}
    # the same numbers maintenance's own command prints (one implementation)
    with psycopg.connect(reviewed) as conn:
        assert review.alert_precision(conn) == doc["rows"]


def test_feedback_precision_states_its_confidence_interval(pg_dsn, tmp_path, capsys):
    """Three alerts reviewed right: precision 1.000 with its exact 95 % interval [0.292, 1] (Clopper-Pearson:
    0.025 ** (1/3)). It was printed and exported as a bare 1.000, as if three reviews proved a perfect model."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    _, alerts = asyncio.run(_raise_alerts(pg_dsn))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for a in alerts:
            if a["asset"] in ("P-102", "P-103", "P-104"):  # three of model an:P-101's four alerts
                review.review_alert(conn, a["id"], "right", "", "anna")
    out = tmp_path / "p.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", pg_dsn, "--model-id", "an:P-101",
                    "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1.000 [0.292, 1.000] 95%" in text and "precision [95% interval]" in text
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert (row["right"], row["wrong"], row["precision"]) == (3, 0, 1.0)
    assert row["precision_lower"] == pytest.approx(0.025 ** (1 / 3), abs=1e-9)
    assert (row["precision_upper"], row["precision_level"]) == (1.0, 0.95)
    assert doc["overall"]["precision_lower"] == pytest.approx(0.025 ** (1 / 3), abs=1e-9)
    assert review.precision_with_interval(0, 0) == {"precision": None, "precision_lower": None,
                                                     "precision_upper": None, "precision_level": None}
    from scipy.stats import binom

    # the bounds are the exact ones: at each, the observed count is just at the 2.5 % tail of the binomial
    r = review.precision_with_interval(7, 3)
    assert binom.sf(6, 10, r["precision_lower"]) == pytest.approx(0.025)
    assert binom.cdf(7, 10, r["precision_upper"]) == pytest.approx(0.025)
    assert main_review_precision(pg_dsn, capsys).count("1.00 [0.29, 1.00] 95%") == 1


def main_review_precision(dsn: str, capsys) -> str:
    """`valvoja maintenance review precision`'s output: the same interval as ``models evaluate feedback``."""
    assert valvoja(["maintenance", "review", "precision", "--db", dsn, "--model-id", "an:P-101"]) == 0
    return capsys.readouterr().out


def test_feedback_filters_by_time_and_model(reviewed, tmp_path, capsys):
    out = tmp_path / "p.json"
    args = ["models", "evaluate", "feedback", "--db", reviewed, "--model-id", "an:P-101",
            "--since", "2026-03-01T08:30:00+00:00", "--until", "2026-03-02T08:00:00", "--json", str(out)]
    assert valvoja(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and (rows[0]["alerts"], rows[0]["right"], rows[0]["wrong"]) == (2, 1, 1)
    assert "model an:P-101" in capsys.readouterr().out
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, "--since", "2030-01-01"]) == 0
    assert "no alerts in this range" in capsys.readouterr().out


def test_feedback_until_a_date_counts_that_whole_day(reviewed, tmp_path, capsys):
    """``--until 2026-03-03`` (a date): alerts raised on the 3rd count. It was the 3rd's first instant, so P-104's
    alert at 08:00 that day was left out (3 alerts instead of 4) and the precision was of another period."""
    out = tmp_path / "p.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, "--model-id", "an:P-101",
                    "--until", "2026-03-03", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["alerts"], row["right"], row["wrong"]) == (4, 2, 2)
    assert "until 2026-03-03T23:59:59.999999+00:00" in capsys.readouterr().out
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, "--model-id", "an:P-101",
                    "--until", "2026-03-02", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["alerts"] == 3


def test_feedback_needs_a_database_and_a_valid_time(pg_dsn, capsys, monkeypatch):
    monkeypatch.delenv("VALVOJA_DB_URL", raising=False)
    assert valvoja(["models", "evaluate", "feedback"]) == 1
    assert "no database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        valvoja(["models", "evaluate", "feedback", "--db", pg_dsn, "--since", "yesterday"])
    assert exc.value.code == 2 and "not an ISO 8601 time" in capsys.readouterr().err
    assert valvoja(["models", "evaluate", "feedback", "--db", pg_dsn]) == 1  # not migrated
    assert "valvoja db migrate" in capsys.readouterr().err


async def _live_alerts(dsn: str) -> list[int]:
    """Three anomaly alerts as the gateway raises them: the evidence names the prediction by model, version and time
    (`maintenance.live`; the gateway cannot know the database id of a prediction still in its spool), and the
    predictions are stored by the forwarder. Returns the ids of the three evidence predictions and of one more
    prediction of the first asset, an hour later, that no alert names."""
    m = AlertManager(AlertPolicy(clear_after_s=0))
    preds = [Prediction("anomaly:P-20" + str(k), "sha-live", "P-20" + str(k), at(k * 60), 9.0, p_value=0.001,
                        kind="anomaly", input_start=at(k * 60 - 600), input_end=at(k * 60)) for k in (1, 2, 3)]
    preds.append(Prediction("anomaly:P-201", "sha-live", "P-201", at(3660), 1.0, p_value=0.6, kind="anomaly"))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = await store.write_predictions(conn, preds)
        changes = []
        for p in preds[:3]:
            ev = {"prediction": {"model_id": p.model_id, "model_version": p.model_version, "value": p.value,
                                 "p_value": p.p_value, "alpha": 0.01, "time": p.time, "input_start": p.input_start,
                                 "input_end": p.input_end}, "top_signals": []}
            changes += m.observe(asset=p.asset, tag=None, kind="anomaly", active=True, t=p.time, evidence=ev)
            changes += m.observe(asset=p.asset, tag=None, kind="anomaly", active=False, t=at(3600))
        await store.apply_changes(conn, changes)
    return ids


def test_feedback_counts_the_review_of_the_prediction_behind_a_live_alert(pg_dsn):
    """Maintenance teams review a gateway alert's prediction in the predictions view (the console's
    /predictions/{id}/review). The alert's evidence names that prediction by model and time, not by id, so its
    review was never found: the alert stayed 'unreviewed' and the precision ignored the team's verdict."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    ids = asyncio.run(_live_alerts(pg_dsn))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        review.review_prediction(conn, ids[0], "wrong", "pump was being flushed", "anna")
        review.review_prediction(conn, ids[1], "right", "seal leaking", "bob")
        review.review_prediction(conn, ids[3], "right", "", "bob")  # a prediction no alert names: counts for none
        rows = {r["model_id"]: r for r in review.alert_precision(conn)}
    got = {m: (r["alerts"], r["right"], r["wrong"], r["unreviewed"]) for m, r in rows.items()}
    assert got == {"anomaly:P-201": (1, 0, 1, 0), "anomaly:P-202": (1, 1, 0, 0), "anomaly:P-203": (1, 0, 0, 1)}


async def _alerts_of_two_versions(dsn: str) -> dict[str, str]:
    """Model ``an:P-30`` raised two alerts under version ``f1…`` and, retrained, two under ``a2…`` (a version that
    sorts first but came later), and an ISO 20816 zone rule raised one (no model): asset -> alert id."""
    m = AlertManager(AlertPolicy(clear_after_s=0, reopen_within_s=0))
    v1, v2 = "f1" + "0" * 62, "a2" + "0" * 62
    specs = [("P-31", 0, v1), ("P-32", 60, v1), ("P-33", 7200, v2), ("P-34", 7260, v2)]
    changes = []
    for asset, s, version in specs:
        ev = {"prediction": {"model_id": "an:P-30", "model_version": version, "p_value": 0.001, "alpha": 0.01}}
        changes += m.observe(asset=asset, tag=None, kind="anomaly", active=True, t=at(s), evidence=ev)
        changes += m.observe(asset=asset, tag=None, kind="anomaly", active=False, t=at(s + 1))
    changes += m.observe(asset="P-35", tag="P-35.vib", kind="iso20816", active=True, t=at(100),
                         evidence={"zone": "C", "value": 7.4})
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await store.apply_changes(conn, changes)
        async with conn.cursor() as cur:
            await cur.execute("SELECT asset, id FROM alerts")
            return dict(await cur.fetchall())


def test_feedback_precision_is_per_model_version(pg_dsn, tmp_path, capsys):
    """The version a model had when it raised the alert is the detector judged: version f1… was right twice, its
    retrained successor a2… wrong twice. Both were reported as one row of model an:P-30, precision 0.500 [0.068,
    0.932], a figure neither version had, so a retrain that made things worse did not show."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    ids = asyncio.run(_alerts_of_two_versions(pg_dsn))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for asset, verdict in (("P-31", "right"), ("P-32", "right"), ("P-33", "wrong"), ("P-34", "wrong"),
                               ("P-35", "right")):
            review.review_alert(conn, ids[asset], verdict, "", "anna")
    out = tmp_path / "p.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", pg_dsn, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    got = [(r["kind"], r["model_id"], r["model_version"][:2], r["alerts"], r["right"], r["wrong"], r["precision"])
           for r in rows]
    # the versions in the order they raised alerts (f1… first), the zone rule apart with no model or version
    assert got == [("anomaly", "an:P-30", "f1", 2, 2, 0, 1.0), ("anomaly", "an:P-30", "a2", 2, 0, 2, 0.0),
                   ("iso20816", "", "", 1, 1, 0, 1.0)]
    assert rows[0]["model_version"] == "f1" + "0" * 62
    assert "f10000000000" in text and "a20000000000" in text
    assert main_review_precision_of(pg_dsn, "an:P-30", capsys).count("an:P-30") == 2


def main_review_precision_of(dsn: str, model_id: str, capsys) -> str:
    assert valvoja(["maintenance", "review", "precision", "--db", dsn, "--model-id", model_id]) == 0
    return capsys.readouterr().out


async def _alerts_with_odd_evidence(dsn: str) -> list[int]:
    """Alerts of model ``an:P-40`` whose evidence names its prediction in ways no writer of this version does (by a
    name, a fraction, an id past bigint, a time that is no time, a time without its offset), and one as the gateway
    does (model and time). Returns the ids of the predictions behind the last two."""
    m = AlertManager(AlertPolicy(clear_after_s=0, reopen_within_s=0))
    preds = [Prediction("an:P-40", "v1", f"P-4{k}", at(600), 9.0, p_value=0.001, kind="anomaly") for k in (4, 5)]
    odd = [{"id": "P-7"}, {"id": 12.5}, {"id": "99999999999999999999"}, {"time": "n/a"},
           {"time": "2026-03-01T08:10:00"}, {"time": at(600).isoformat()}]
    changes = []
    for k, ev in enumerate(odd):
        ev = {"prediction": {"model_id": "an:P-40", "model_version": "v1", "p_value": 0.001, **ev}}
        changes += m.observe(asset=f"P-4{k}", tag=None, kind="anomaly", active=True, t=at(600), evidence=ev)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = await store.write_predictions(conn, preds)
        await store.apply_changes(conn, changes)
    return ids


def test_feedback_survives_evidence_it_cannot_read(pg_dsn, tmp_path, capsys):
    """One alert whose evidence named its prediction as "P-7" (or at "n/a") failed the whole report: `models evaluate
    feedback` exited 1 with "invalid input syntax for type bigint", for every model. Such evidence names no
    prediction now; the reviews that can be read still count."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    naive, gateway = asyncio.run(_alerts_with_odd_evidence(pg_dsn))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        review.review_prediction(conn, gateway, "right", "", "anna")
        # a time without its offset is not guessed (as retention does not: edge.sink.housekeeping.evidence_time)
        review.review_prediction(conn, naive, "wrong", "", "anna")
    out = tmp_path / "p.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", pg_dsn, "--json", str(out)]) == 0, capsys.readouterr()
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["alerts"], row["right"], row["wrong"], row["unreviewed"]) == (6, 1, 0, 5)


def test_review_precision_takes_the_same_range_as_evaluate_feedback(reviewed, tmp_path, capsys):
    """`valvoja maintenance review precision` is documented as giving the numbers of `models evaluate feedback`, but
    had no --until (argparse: unrecognized arguments), so a closed period could not be asked of it."""
    out = tmp_path / "p.json"
    rng = ["--since", "2026-03-01T08:30:00+00:00", "--until", "2026-03-01", "--model-id", "an:P-101"]
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, *rng, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["alerts"], row["right"], row["wrong"]) == (2, 1, 1)  # P-102 and P-103; not P-104 of the 3rd
    capsys.readouterr()
    assert valvoja(["maintenance", "review", "precision", "--db", reviewed, *rng]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "alerts     2  right    1  wrong    1  unreviewed    0  precision 0.50 [0.01, 0.99] 95%" in line


def test_feedback_json_is_the_documented_document(reviewed, tmp_path, capsys):
    """--json has the keys models/README.md lists, times with their offsets, and the overall line's counts: it had
    right and wrong but not the alerts and unreviewed counts the text prints (6 alerts, 1 unreviewed here)."""
    out = tmp_path / "p.json"
    assert valvoja(["models", "evaluate", "feedback", "--db", reviewed, "--since", "2026-03-01T10:00+02:00",
                    "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    interval = {"precision", "precision_lower", "precision_upper", "precision_level"}
    assert set(doc) == {"since", "until", "model_id", "rows", "overall"}
    assert (doc["since"], doc["until"], doc["model_id"]) == ("2026-03-01T10:00:00+02:00", None, None)
    assert all(set(r) == {"kind", "model_id", "model_version", "alerts", "right", "wrong", "unreviewed"} | interval
               for r in doc["rows"])
    assert set(doc["overall"]) == {"alerts", "right", "wrong", "unreviewed"} | interval
    assert {k: doc["overall"][k] for k in ("alerts", "right", "wrong", "unreviewed")} == \
        {"alerts": 6, "right": 2, "wrong": 3, "unreviewed": 1}
    assert "  all" in capsys.readouterr().out
