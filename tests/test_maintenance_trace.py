"""Traceability of an alert (DESIGN.md §2, `maintenance.trace`) against the real test database: the calibration in
force at the evidence time (not the newest), the prediction with its model version and registry entry, a rule alert
without a prediction, missing calibrations and tags, evidence readings removed by retention; the same chain from
``GET /api/alerts/{id}/trace`` and from ``valvoja maintenance trace``."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from cli_support import valvoja
from console_support import ConsoleServer, fresh_database, insert_alert, run_async, seed_plant, seed_users
from psycopg.rows import dict_row

from edge.records import Prediction, Reading

END = datetime.now(UTC).replace(second=0, microsecond=0)
STEP = 600  # readings every 10 minutes from END - 4 days to END


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn):
    with fresh_database(pg_admin_dsn, prefix="trace") as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=96, step_s=STEP, end=END)
        yield dsn


def trace(dsn: str, alert_id: str, registry_dir=None) -> dict | None:
    from maintenance.trace import trace_alert

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await trace_alert(conn, alert_id, registry_dir=registry_dir)

    return run_async(go())


def write_predictions(dsn: str, preds: list[Prediction]) -> None:
    from maintenance import store

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await store.write_predictions(conn, preds)

    run_async(go())


def update_alert(dsn: str, alert_id: str, key: str, **fields) -> None:
    """A rise of severity with new evidence, as the alert manager writes it (the ``updated`` event keeps it)."""
    from maintenance import store
    from maintenance.alerts import AlertChange
    from maintenance.store import get_alert, row_to_alert

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            a = row_to_alert(await get_alert(conn, alert_id))
            from dataclasses import replace

            await store.apply_changes(conn, [AlertChange("updated", replace(a, **fields), key,
                                                         last_seen=fields["evidence"]["prediction"]["time"])])

    run_async(go())


def add_calibration(dsn: str, tag: str, valid_from: datetime, certificate: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tag_calibrations (tag_id, valid_from, certificate, calibrated_on, uncertainty, "
                     "uncertainty_unit) SELECT id, %s, %s, %s, 0.2, 'mm/s' FROM tags WHERE name = %s",
                     (valid_from, certificate, valid_from.date(), tag))


def anomaly_evidence(t: datetime, version: str = "5eed" * 16) -> dict:
    return {"prediction": {"model_id": "anomaly:P-101", "model_version": version, "value": 0.93, "p_value": 0.004,
                           "alpha": 0.01, "time": t, "input_start": t - timedelta(minutes=30), "input_end": t},
            "top_signals": [{"signal": "P-101.vib_rms", "share": 0.8}, {"signal": "P-101.bearing_temp", "share": 0.2}],
            "data_quality": {"samples": 3, "good": 1.0, "out_of_range": 0.0, "missing": 0.0, "unverified": False}}


def test_anomaly_alert_traces_calibration_in_force_then_not_the_newest(dsn):
    t1, t2 = END - timedelta(hours=2), END - timedelta(hours=1)
    version = "5eed" * 16
    # A new certificate for the vibration sensor after the evidence: the alert was raised under the old one.
    add_calibration(dsn, "P-101.vib_rms", END - timedelta(minutes=30), "CAL-NEW-9")
    write_predictions(dsn, [Prediction("anomaly:P-101", version, "P-101", t, 0.9, p_value=0.004, kind="anomaly",
                                       input_start=t - timedelta(minutes=30), input_end=t,
                                       details={"alpha": 0.01, "signals": ["P-101.vib_rms", "P-101.bearing_temp"]})
                            for t in (t1, t2)])
    insert_alert(dsn, "AN-1", kind="anomaly", raised_at=t1, message="P-101: anomalous operation",
                 evidence=anomaly_evidence(t1, version))
    update_alert(dsn, "AN-1", "P-101||anomaly#AN-1", severity="critical", evidence=anomaly_evidence(t2, version))

    tr = trace(dsn, "AN-1")
    assert tr["alert"]["kind"] == "anomaly" and tr["notes"] == []
    raised, updated = tr["moments"]
    assert (raised["moment"], updated["moment"]) == ("raised", "updated")
    assert raised["evidence_time"] == t1 and updated["evidence_time"] == t2
    p = raised["prediction"]
    assert p["model_id"] == "anomaly:P-101" and p["model_version"] == version and p["p_value"] == 0.004
    assert p["stored"]["time"] == t1 and p["stored"]["input_start"] == t1 - timedelta(minutes=30)
    assert p["registry"] is None and "not in the model registry" in p["registry_unknown"]
    assert raised["window"] == {"start": t1 - timedelta(minutes=30), "end": t1, "of": "the prediction's inputs"}
    # A version that came into service before the gateway recorded detector versions: said, not failed.
    assert p["detector"] is None and "before the gateway recorded detector versions" in p["detector_unknown"]
    tags = {t["tag"]: t for t in raised["tags"]}
    assert list(tags) == ["P-101.vib_rms", "P-101.bearing_temp"]  # the model's signals, from the stored prediction
    vib = tags["P-101.vib_rms"]
    assert vib["registry"]["asset"] == "P-101" and vib["registry"]["unit"] == "mm/s"
    assert vib["calibration"]["certificate"] == "CAL-0000"  # in force at t1, not CAL-NEW-9
    assert vib["calibration"]["valid_from"] <= t1
    assert vib["readings"]["window_raw"] == 4  # every 10 minutes over the 30 minutes, both ends
    assert tags["P-101.bearing_temp"]["calibration"]["certificate"] == "CAL-0001"


def record_detector(dsn: str, version: str, origin: str, training: dict | None) -> None:
    """A detector version's record as the gateway's forwarder writes it (`maintenance.store`)."""
    from maintenance import store

    t = training or {}
    rec = {"model_id": "anomaly:P-101", "version": version, "asset": "P-101",
           "in_service_at": END - timedelta(hours=30), "origin": origin, "training_origin": t.get("origin"),
           "training_start": t.get("start"), "training_end": t.get("end"), "training_samples": t.get("samples"),
           "left_out_flagged": t.get("flagged"),
           "left_out_incomplete": t.get("incomplete"), "signals": ["P-101.vib_rms", "P-101.bearing_temp"],
           "alpha": 0.01, "calibration_size": 108, "config_sha256": "c0f" * 21 + "c", "config": {"window": 10}}

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await store.write_detector_versions(conn, [rec])

    run_async(go())


def test_an_anomaly_alert_is_traced_to_the_detector_version_and_what_it_was_trained_on(dsn):
    """The live detector's record (m0204): its training window, samples, how it was made; a version restored from a
    state file that kept no training notes says its training is unknown."""
    start, end = END - timedelta(hours=31), END - timedelta(hours=30, minutes=30)
    record_detector(dsn, "7a1e" * 16, "self_trained", {"origin": "self_trained", "start": start, "end": end,
                                                       "samples": 1800, "flagged": 3, "incomplete": 0})
    record_detector(dsn, "01d0" * 16, "restored", None)
    t = END - timedelta(hours=3)
    for alert_id, version in (("AN-TRAINED", "7a1e" * 16), ("AN-RESTORED", "01d0" * 16)):
        insert_alert(dsn, alert_id, kind="anomaly", raised_at=t, message="P-101: anomalous operation",
                     evidence=anomaly_evidence(t, version))
    from maintenance.trace_cli import render

    tr = trace(dsn, "AN-TRAINED")
    det = tr["moments"][0]["prediction"]["detector"]
    clock = "%Y-%m-%d %H:%M:%S +00:00"  # render's default: UTC
    assert (f"trained on 1800 samples {start.strftime(clock)} .. {end.strftime(clock)} (3 left out as flagged)"
            in render(tr))
    assert (det["training_start"], det["training_end"], det["training_samples"]) == (start, end, 1800)
    assert (det["origin"], det["left_out_flagged"], det["calibration_size"]) == ("self_trained", 3, 108)
    assert det["signals"] == ["P-101.vib_rms", "P-101.bearing_temp"] and "training_unknown" not in det
    p = trace(dsn, "AN-RESTORED")["moments"][0]["prediction"]
    assert "detector_unknown" not in p and p["detector"]["origin"] == "restored"
    assert "restored from a state file written before" in p["detector"]["training_unknown"]


def test_rule_alert_without_prediction_traces_its_reading(dsn):
    t = END - timedelta(hours=3)
    with psycopg.connect(dsn) as conn:
        (value,) = conn.execute("SELECT value FROM readings r JOIN tags g ON g.id = r.tag_id "
                                "WHERE g.name = 'P-101.bearing_temp' AND r.time = %s", (t,)).fetchone()
    insert_alert(dsn, "RULE-1", kind="rule:temp_high", tag="P-101.bearing_temp", raised_at=t,
                 evidence={"rule": {"name": "temp_high", "kind": "threshold", "above": 60.0},
                           "readings": [{"tag": "P-101.bearing_temp", "time": t, "value": value}],
                           "detail": "above 60", "data_quality": {"good": 1.0, "unverified": False}})
    tr = trace(dsn, "RULE-1")
    (m,) = tr["moments"]
    assert m["prediction"] is None and "raised from readings" in m["prediction_unknown"]
    assert m["condition"]["rule"]["name"] == "temp_high"
    (tag,) = m["tags"]
    assert tag["tag"] == "P-101.bearing_temp" and tag["calibration"]["certificate"] == "CAL-0001"
    assert tag["readings"]["evidence"] == [{"time": t, "value": value, "stored": True, "stored_value": value}]
    assert m["window"]["of"] == "the evidence readings"


def test_an_alert_raised_by_the_rule_engine_is_traced_as_it_stored_it(dsn):
    """The evidence shape as maintenance's rule engine writes it, not one written by hand for the test."""
    from maintenance import store
    from maintenance.alerts import AlertManager, AlertPolicy
    from maintenance.rules import RuleConfig, RuleEngine

    t = END - timedelta(hours=10)
    with psycopg.connect(dsn) as conn:
        (value,) = conn.execute("SELECT value FROM readings r JOIN tags g ON g.id = r.tag_id "
                                "WHERE g.name = 'B-301.steam_flow' AND r.time = %s", (t,)).fetchone()
    engine = RuleEngine([RuleConfig(name="flow_high", tag="B-301.steam_flow", kind="threshold", high=value - 1)],
                        AlertManager(AlertPolicy(escalate_after_s=None)))
    changes = engine.update([Reading("B-301.steam_flow", t, value, t)])
    assert [c.event for c in changes] == ["raised"]

    async def write():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await store.apply_changes(conn, changes, source="rules")

    run_async(write())
    (m,) = trace(dsn, changes[0].alert.id)["moments"]
    assert m["condition"]["rule"]["name"] == "flow_high" and m["prediction"] is None
    (tag,) = m["tags"]
    assert tag["tag"] == "B-301.steam_flow" and tag["calibration"]["certificate"] == "CAL-0003"
    assert tag["readings"]["evidence"] == [{"time": t, "value": value, "stored": True, "stored_value": value}]


def test_missing_calibrations_and_tags_are_said_not_failed(dsn):
    t = END - timedelta(hours=5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tags (name, asset, unit, configured) VALUES "
                     "('P-101.vib_rms.rms', '', 'mm/s', false), ('P-101.flow', 'P-101', 'm3/h', true)")
    # P-101.flow's only record starts after the evidence; the derived RMS has none (its source tag has).
    add_calibration(dsn, "P-101.flow", END - timedelta(hours=1), "CAL-FLOW-1")
    insert_alert(dsn, "ISO-1", kind="iso20816", tag="P-101.vib_rms", raised_at=t,
                 evidence={"readings": [{"tag": "P-101.vib_rms.rms", "time": t, "value": 7.3},
                                        {"tag": "P-101.flow", "time": t, "value": 12.0},
                                        {"tag": "GONE.tag", "time": t, "value": 1.0}],
                           "zone": "C", "boundaries_mm_s": [2.3, 4.5, 7.1]})
    tr = trace(dsn, "ISO-1")
    tags = {x["tag"]: x for x in tr["moments"][0]["tags"]}
    rms = tags["P-101.vib_rms.rms"]
    assert rms["calibration"] is None and rms["calibration_unknown"].endswith("the tag has none")
    assert rms["registry"]["configured"] is False
    assert rms["derived_from"]["tag"] == "P-101.vib_rms" and rms["derived_from"]["calibration"]["certificate"] \
        == "CAL-0000"
    assert rms["readings"]["evidence"][0]["stored"] is False  # never written as a reading here
    flow = tags["P-101.flow"]
    assert flow["calibration"] is None and "the first is valid from" in flow["calibration_unknown"]
    assert tags["GONE.tag"]["registry"] is None and "not in the tag registry" in tags["GONE.tag"]["registry_unknown"]
    assert tags["P-101.vib_rms"]["calibration"]["certificate"] == "CAL-0000"  # the alert's own tag


def test_a_two_level_derived_tag_is_traced_to_the_measured_tag(dsn, monkeypatch):
    """A rule on the ISO 20816 zone of a series' mean (`<tag>.mean.iso_zone`, made by maintenance from the indicator
    `<tag>.mean`, itself from the measured tag): each level with its registry entry, down to the measured tag's
    calibration in force then; the depth bound and the cycle guard say where they stopped the chain."""
    import maintenance.trace
    from maintenance.trace_cli import render

    t = END - timedelta(hours=12)
    zone_tag, mean_tag = "P-101.vib_rms.mean.iso_zone", "P-101.vib_rms.mean"
    with psycopg.connect(dsn, autocommit=True) as conn:  # as the sink registers derived readings' tags
        conn.execute("INSERT INTO tags (name, configured) VALUES (%s, false), (%s, false)", (zone_tag, mean_tag))
    add_calibration(dsn, "P-101.vib_rms", END - timedelta(minutes=20), "CAL-AFTER-ZONE")
    insert_alert(dsn, "ZONE-1", kind="rule:zone_c", tag=zone_tag, raised_at=t,
                 evidence={"rule": {"name": "zone_c"}, "readings": [{"tag": zone_tag, "time": t, "value": 2.0}]})
    (tag,) = trace(dsn, "ZONE-1")["moments"][0]["tags"]
    assert tag["tag"] == zone_tag and tag["calibration"] is None and tag["registry"]["configured"] is False
    mean = tag["derived_from"]
    assert mean["tag"] == mean_tag and mean["calibration"] is None and mean["registry"]["configured"] is False
    vib = mean["derived_from"]
    assert vib["tag"] == "P-101.vib_rms" and vib["registry"]["asset"] == "P-101" and vib["at"] == t
    assert vib["calibration"]["certificate"] == "CAL-0000"  # in force at the evidence, not CAL-AFTER-ZONE
    assert "derived_from" not in vib and "derived_from_unknown" not in vib  # calibrated: the measured tag
    text = render(trace(dsn, "ZONE-1"))
    assert f"tag {zone_tag}" in text and f"      tag {mean_tag}" in text and "          tag P-101.vib_rms" in text

    monkeypatch.setattr(maintenance.trace, "DERIVED_DEPTH", 1)
    (tag,) = trace(dsn, "ZONE-1")["moments"][0]["tags"]
    assert "derived_from" not in tag["derived_from"]
    assert tag["derived_from"]["derived_from_unknown"] == ("derived tags are followed 1 level(s) deep: P-101.vib_rms "
                                                           "is not followed")
    monkeypatch.undo()
    # The source of a derived tag is named by its name today (a strict prefix: no cycle); another rule must not loop.
    monkeypatch.setattr(maintenance.trace, "_source_name", {zone_tag: mean_tag, mean_tag: zone_tag}.get)
    (tag,) = trace(dsn, "ZONE-1")["moments"][0]["tags"]
    assert "derived_from" not in tag["derived_from"]
    assert tag["derived_from"]["derived_from_unknown"] == (
        f"the chain of derived tags comes back to {zone_tag} ({zone_tag} -> {mean_tag} -> {zone_tag}): not followed")


def test_sensor_and_emission_alerts_take_their_window_from_their_evidence(dsn):
    t = END - timedelta(hours=7)
    insert_alert(dsn, "SENSOR-1", kind="sensor", tag="F-201.vib_rms", raised_at=t,
                 evidence={"problem": "frozen", "window": [t - timedelta(minutes=20), t],
                           "data_quality": {"good": 0.0, "frozen": 1.0}})
    (m,) = trace(dsn, "SENSOR-1")["moments"]
    assert m["window"]["of"] == "the window the sensor was judged on" and m["condition"]["problem"] == "frozen"
    assert m["tags"][0]["readings"]["window_raw"] == 3 and m["tags"][0]["calibration"]["certificate"] == "CAL-0002"

    start = END - timedelta(hours=8)
    insert_alert(dsn, "EMIS-1", asset="B-301", kind="emission_projection", tag="B-301.O2", raised_at=start,
                 evidence={"stack": "B-301", "pollutant": "O2", "rule": "day", "period": "day",
                           "period_start": start.isoformat(), "period_end": (start + timedelta(hours=1)).isoformat(),
                           "projected": 5.2, "threshold": 5.0, "config_sha256": "ab" * 32})
    (m,) = trace(dsn, "EMIS-1")["moments"]
    assert m["window"] == {"start": start, "end": start + timedelta(hours=1), "of": "the emission averaging period"}
    assert m["condition"]["config_sha256"] == "ab" * 32 and m["prediction"] is None
    assert m["tags"][0]["calibration"]["certificate"] == "CAL-0004" and m["tags"][0]["readings"]["window_raw"] == 7


def test_a_long_window_counts_its_readings_up_to_a_bound(dsn, monkeypatch):
    import maintenance.trace

    monkeypatch.setattr(maintenance.trace, "COUNT_BOUND", 5)
    t = END - timedelta(hours=11)
    insert_alert(dsn, "LONG-1", kind="sensor", tag="F-201.vib_rms", raised_at=t,
                 evidence={"problem": "no_data", "window": [t - timedelta(hours=2), t]})
    rd = trace(dsn, "LONG-1")["moments"][0]["tags"][0]["readings"]
    assert rd["window_raw"] == 5 and rd["window_raw_at_least"] is True


def test_malformed_evidence_is_traced_as_far_as_it_goes(dsn):
    """Evidence is written by several packages and versions and never checked: odd shapes give reasons, not
    errors."""
    insert_alert(dsn, "ODD-1", kind="anomaly", raised_at=END - timedelta(hours=9))
    with psycopg.connect(dsn, autocommit=True) as conn:  # another writer's shape (maintenance's store refuses it)
        conn.execute("UPDATE alerts SET evidence = %s WHERE id = 'ODD-1'",
                     (json.dumps({"readings": "oops", "prediction": "x", "window": [1], "top_signals": 7,
                                  "period_start": "yesterday"}),))
    insert_alert(dsn, "ODD-2", kind="rule:x", raised_at=END - timedelta(hours=9),
                 evidence={"readings": [{"tag": "P-101.vib_rms", "time": "not a time", "value": None}, 5],
                           "prediction": {"model_id": 3, "time": "never", "input_start": None}})
    raised, m = trace(dsn, "ODD-1")["moments"]
    assert raised["evidence_unknown"] == "this moment stored no evidence" and m["moment"] == "latest"
    assert m["tags"] == [] and "names no tag" in m["tags_unknown"] and m["window"] is None and m["window_unknown"]
    (m,) = trace(dsn, "ODD-2")["moments"]
    assert m["prediction"]["stored"] is None and "does not name the model" in m["prediction"]["registry_unknown"]
    assert m["tags"][0]["readings"]["evidence"][0]["stored"] is False


@pytest.mark.parametrize("edition", ["timescaledb", "plain"])
def test_evidence_readings_removed_by_retention_are_said_to_be_gone(request, edition):
    """Retention by drop_chunks (TimescaleDB) and by DELETE (plain PostgreSQL) alike."""
    from edge.db.features import detect
    from edge.sink import rollups

    admin = request.getfixturevalue("pg_admin_dsn") if edition == "timescaledb" else \
        request.getfixturevalue("plain_pg_server").dsn()
    with fresh_database(admin, prefix="trace_ret") as dsn:
        seed_plant(dsn, hours=96, step_s=STEP, end=END)
        t = END - timedelta(days=3)
        insert_alert(dsn, "OLD-1", kind="rule:o2_low", tag="B-301.O2", raised_at=t,
                     evidence={"rule": {"name": "o2_low"}, "readings": [{"tag": "B-301.O2", "time": t, "value": 3.9}]})
        before = trace(dsn, "OLD-1")["moments"][0]["tags"][0]["readings"]
        assert before["evidence"][0]["stored"] is True and "window_unknown" not in before

        with psycopg.connect(dsn, autocommit=True) as conn:
            features = detect(conn)

        async def drop():
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await rollups.retention(conn, features, 1)

        run_async(drop())
        after = trace(dsn, "OLD-1")["moments"][0]["tags"][0]
        assert after["calibration"]["certificate"] == "CAL-0004"  # the calibration history is kept
        rd = after["readings"]
        assert rd["evidence"][0]["stored"] is False and rd["window_raw"] == 0
        assert "removed by retention" in rd["window_unknown"] and "one-minute rollup" in rd["window_unknown"]


def test_a_registered_model_version_is_traced_to_its_card_and_onnx_file(dsn, tmp_path):
    from models_support import regression_table, spec

    from models.registry import Registry
    from models.train import train

    reg = Registry(tmp_path, dsn)
    v = reg.register(train(spec(model_id="trace-rul", params={"max_iter": 20}), regression_table(600)))
    t = END - timedelta(hours=4)
    insert_alert(dsn, "RUL-1", kind="rul", raised_at=t,
                 evidence={"prediction": {"model_id": "trace-rul", "model_version": v.sha256, "value": 40.0,
                                          "lower": 20.0, "upper": None, "coverage": 0.9, "time": t,
                                          "input_start": t - timedelta(hours=1), "input_end": t}})
    p = trace(dsn, "RUL-1", registry_dir=tmp_path)["moments"][0]["prediction"]
    r = p["registry"]
    assert r["version"] == v.version and r["status"] == "candidate" and r["sha256"] == v.sha256
    assert r["onnx_file"] == "present, sha256 matches"
    assert r["training_fingerprint"] and r["gate_metric"] == "mae" and r["gate_value"] == r["holdout_metrics"]["mae"]
    assert p["stored"] is None and "not stored" in p["stored_unknown"]
    m = trace(dsn, "RUL-1")["moments"][0]
    assert m["tags"] == [] and "made before the gateway recorded them" in m["tags_unknown"]
    other = m["prediction"]["registry"]
    assert "not checked" in other["onnx_file_unknown"]


def _valvoja(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return valvoja("maintenance", "trace", *args, dsn=dsn)


def test_api_and_command_line_give_the_same_chain(dsn):
    t = END - timedelta(hours=6)
    insert_alert(dsn, "BOTH-1", kind="rule:vib", tag="P-101.vib_rms", raised_at=t,
                 evidence={"rule": {"name": "vib"}, "readings": [{"tag": "P-101.vib_rms", "time": t, "value": 2.6}]})
    with ConsoleServer(dsn) as srv, srv.client("viewer") as c:
        with srv.client() as anonymous:
            assert anonymous.get("/api/alerts/BOTH-1/trace").status_code == 401
        api = c.get("/api/alerts/BOTH-1/trace")
        assert api.status_code == 200, api.text
        assert c.get("/api/alerts/NOPE/trace").status_code == 404
        assert "/api/alerts/{alert_id}/trace" in c.get("/api/openapi.json").json()["paths"]
    body = api.json()
    assert body["moments"][0]["tags"][0]["calibration"]["certificate"] == "CAL-0000"
    cli = _valvoja(dsn, "BOTH-1", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["moments"][0]["tags"][0]["calibration"]["certificate"] == "CAL-0000"
    assert json.loads(cli.stdout) == body, "--json is the API's document, times written the same way"
    text = _valvoja(dsn, "BOTH-1")
    assert text.returncode == 0 and "calibration in force at" in text.stdout and "CAL-0000" in text.stdout
    assert "prediction: unknown because no prediction behind it" in text.stdout
    missing = _valvoja(dsn, "NOPE")
    assert missing.returncode == 3 and "no alert" in missing.stderr


def test_the_command_line_shows_plant_time_across_summer_time(dsn, monkeypatch):
    """Text in plant time with offsets (+03:00 in summer, +02:00 in winter for Helsinki), the zone named once;
    --utc for UTC; the host's zone ($TZ) without --tz; --json stays ISO-8601 in UTC."""
    from maintenance.trace_cli import host_zone, render

    summer = datetime(2026, 7, 15, 9, 30, tzinfo=UTC)
    winter = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
    add_calibration(dsn, "B-301.steam_flow", winter, "CAL-WINTER")
    insert_alert(dsn, "DST-1", asset="B-301", kind="rule:flow", tag="B-301.steam_flow", raised_at=summer,
                 evidence={"rule": {"name": "flow"}, "readings": [{"tag": "B-301.steam_flow", "time": summer,
                                                                   "value": 130.0}]})
    text = _valvoja(dsn, "DST-1", "--tz", "Europe/Helsinki")
    assert text.returncode == 0, text.stderr
    assert "times: Europe/Helsinki (plant time; --utc for UTC), with their UTC offsets" in text.stdout
    assert "raised 2026-07-15 12:30:00 +03:00" in text.stdout
    assert ("calibration in force at 2026-07-15 12:30:00 +03:00: CAL-WINTER (calibrated 2026-01-10, ±0.2 mm/s, "
            "valid from 2026-01-10 10:00:00 +02:00)") in text.stdout
    assert "reading 2026-07-15 12:30:00 +03:00 = 130.0" in text.stdout
    # a time within a reason too (retention has removed the raw readings of July)
    assert "the oldest raw reading of the tag still stored is at 20" in text.stdout and "+00:00" not in text.stdout
    doc = json.loads(_valvoja(dsn, "DST-1", "--tz", "Europe/Helsinki", "--json").stdout)
    assert doc["alert"]["raised_at"] == "2026-07-15T09:30:00+00:00"  # the API's document, written as the API writes it
    assert doc["moments"][0]["tags"][0]["calibration"]["valid_from"] == "2026-01-10T08:00:00+00:00"
    bad = _valvoja(dsn, "DST-1", "--tz", "Mars/Olympus")
    assert bad.returncode == 2 and "'Mars/Olympus' is not an IANA time zone" in bad.stderr

    tr = trace(dsn, "DST-1")
    utc = render(tr)  # --utc
    assert "times: UTC" in utc and "raised 2026-07-15 09:30:00 +00:00" in utc
    assert "valid from 2026-01-10 08:00:00 +00:00" in utc
    monkeypatch.setenv("TZ", "America/New_York")  # no --tz: the host's zone
    tz, name = host_zone()
    host = render(tr, tz, name)
    assert name == "America/New_York" and "raised 2026-07-15 05:30:00 -04:00" in host
    assert "valid from 2026-01-10 03:00:00 -05:00" in host


def test_calibration_date_type(dsn):
    """The record's date stays a date (the page and the CLI print it as the certificate's day)."""
    t = END - timedelta(hours=2)
    insert_alert(dsn, "DATE-1", kind="rule:x", tag="F-201.vib_rms", raised_at=t, evidence={})
    tag = trace(dsn, "DATE-1")["moments"][0]["tags"][0]
    assert isinstance(tag["calibration"]["calibrated_on"], date)
    assert trace(dsn, "NO-SUCH") is None
