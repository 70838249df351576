"""RUL in the gateway: a C-MAPSS test file replayed as readings through `MaintenanceLive` gives, cycle by cycle,
the predictions of the offline model (same features, ONNX graph, interval, model version), served from an
exported directory or the registry's champion; the lower end of the interval can raise an alert."""

import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from analytics_support import spool_emit

from edge.errors import ConfigError
from edge.files import pack_state, read_state
from edge.records import Flag, Quality, Reading
from maintenance import cmapss
from maintenance.config import AssetConfig, MaintenanceConfig, RulAssetConfig
from maintenance.live import MaintenanceLive

SAMPLE = Path(__file__).parent / "data" / "cmapss"
T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from maintenance.rul_eval import evaluate
    from maintenance.rul_export import export

    r = evaluate(SAMPLE, "FD001", folds=4, select=False, max_iter=50, progress=lambda s: None)
    d = tmp_path_factory.mktemp("rul") / "model"
    export(r, d)
    return r, d


def rul_asset(u: int, model_dir, **kw) -> AssetConfig:
    cfg = {"model_dir": str(model_dir) if model_dir else None, "sensors": tuple(f"E{u}.s{j}" for j in range(1, 22)),
           "settings": tuple(f"E{u}.set{k}" for k in range(1, 4)), "cycle_s": 60.0, **kw}
    return AssetConfig(name=f"E{u}", rul=RulAssetConfig(**cfg))


def replay(test: cmapss.Fleet):
    """One batch per cycle: every engine's 3 settings and 21 sensors at the cycle's time."""
    for c in range(1, int(test.cycle.max()) + 1):
        t = T0 + timedelta(seconds=60 * (c - 1))
        batch = []
        for i in np.flatnonzero(test.cycle == c):
            u = int(test.unit[i])
            batch += [Reading(f"E{u}.set{k + 1}", t, float(test.settings[i, k]), t) for k in range(3)]
            batch += [Reading(f"E{u}.s{j + 1}", t, float(test.sensors[i, j]), t) for j in range(21)]
        yield batch


async def run(live: MaintenanceLive, test: cmapss.Fleet):
    preds, changes = [], []
    for batch in replay(test):
        _, p, c = await live.process(batch)
        preds += p
        changes += c
    return preds, changes


async def test_replayed_engines_get_the_offline_predictions(fitted):
    r, d = fitted
    card = json.loads((d / "card.json").read_text())
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    units = test.units().tolist()
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=tuple(rul_asset(u, d) for u in units)))
    preds, changes = await run(live, test)
    assert not changes
    assert len(preds) == len(test.unit)  # one per cycle and engine
    offline = r["model"].predict(test.unit, test.cycle, test.settings, test.sensors)
    by = {(p.asset, p.details["cycle"]): p for p in preds}
    live_values = np.array([by[(f"E{u}", c)].value for u, c in zip(test.unit, test.cycle, strict=True)])
    assert np.allclose(live_values, offline, atol=1e-3)  # float32 graph vs scikit-learn
    last = [max((p for p in preds if p.asset == f"E{u}"), key=lambda p: p.time) for u in units]
    assert np.allclose([p.value for p in last], r["pred"], atol=1e-3)
    p = last[0]
    assert p.kind == "rul" and p.model_id == "rul-cmapss-fd001" and p.model_version == card["sha256"]
    assert p.coverage == pytest.approx(0.9) and p.lower <= p.value
    assert (p.upper is None) == p.details["open_ended"] and (p.upper is None or p.upper >= p.value)
    assert p.time == T0 + timedelta(seconds=60 * int(test.cycle[test.unit == units[0]].max()))
    assert p.input_start == T0


async def test_a_card_bin_without_a_finite_offset_serves_an_open_interval(fitted, tmp_path):
    """A calibration bin with too few residuals has an infinite offset, which the strict-JSON card stores as null.
    Served live it is the widest interval, [0, inf) (upper None: open-ended), never NaN bounds."""
    import shutil

    _, d = fitted
    model = tmp_path / "model"
    shutil.copytree(d, model)
    card = json.loads((model / "card.json").read_text())
    n = len(card["rul_intervals"]["below"])
    card["rul_intervals"]["below"] = card["rul_intervals"]["above"] = [None] * n
    (model / "card.json").write_text(json.dumps(card))
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, model, alert_below=30.0),)))
    preds, changes = await run(live, test)
    mine = [p for p in preds if p.asset == f"E{u}"]
    assert mine and all(p.lower == 0.0 and p.upper is None and p.details["open_ended"] for p in mine)
    assert any(c.event == "raised" for c in changes), "a lower end of 0 is below alert_below"


async def test_registry_champion_alert_and_predict_every(fitted, tmp_path):
    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    out = register(r, tmp_path / "reg")
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], predict_every=5,
                      alert_below=1000.0)
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))
    preds, changes = await run(live, one)
    assert [p.details["cycle"] for p in preds] == list(range(1, len(one.unit) + 1, 5))
    assert preds[0].details["registry_version"] == 1 and preds[0].model_version == out["sha256"]
    raised = [c for c in changes if c.event == "raised"]
    assert len(raised) == 1 and raised[0].alert.kind == "rul"  # de-duplicated: one open alert
    ev = raised[0].alert.evidence["prediction"]
    assert ev["model_version"] == out["sha256"] and ev["lower"] < 1000 and ev["coverage"] == pytest.approx(0.9)


def _engine_asset(model_dir) -> AssetConfig:
    """Asset ENG read like a C-MAPSS engine: sensors ENG.s1..s21, settings ENG.set1..3, a cycle counter tag."""
    return AssetConfig(name="ENG", rul=RulAssetConfig(
        model_dir=str(model_dir), sensors=tuple(f"ENG.s{j}" for j in range(1, 22)),
        settings=tuple(f"ENG.set{k}" for k in range(1, 4)), cycle_tag="ENG.cycles"))


def test_rul_config_errors(fitted):
    _, d = fitted
    with pytest.raises(ValueError, match="model_dir or registry"):
        RulAssetConfig(sensors=("a",), cycle_s=1.0)
    few = AssetConfig(name="E1", rul=RulAssetConfig(model_dir=str(d), sensors=("E1.s1", "E1.s2"), cycle_s=60.0))
    with pytest.raises(ConfigError, match="sensor column"):
        MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(few,)))


async def stored_engine(model_dir, dsn: str) -> tuple[int, list, list]:
    """The first engine of the test file replayed (an alert while the lower end is below 1000 cycles) and its
    records written as the gateway's analytics task spools them (`edge.analytics`): (unit, predictions, changes)."""
    import psycopg

    from edge.analytics import alert_change_record, prediction_record, write_records
    from edge.db.migrate import migrate

    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, model_dir, alert_below=1000.0),)))
    preds, changes = await run(live, test.select(test.unit == u))
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            refused = await write_records(conn, [prediction_record(p) for p in preds] +
                                          [alert_change_record(c) for c in changes])
    assert refused == []
    return u, preds, changes


async def test_rul_predictions_and_alert_stored_through_the_gateway_records(fitted, pg_dsn):
    """The records the gateway's analytics task spools (`edge.analytics`) land in the predictions table with the
    interval, its coverage and the model version; the RUL alert carries the prediction as evidence."""
    import psycopg
    from psycopg.rows import dict_row

    _, d = fitted
    card = json.loads((d / "card.json").read_text())
    u, preds, _ = await stored_engine(d, pg_dsn)
    with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM predictions WHERE asset = %s ORDER BY time", (f"E{u}",)).fetchall()
        alerts = conn.execute("SELECT * FROM alerts WHERE asset = %s", (f"E{u}",)).fetchall()
    assert len(rows) == len(preds)
    last, p = rows[-1], preds[-1]
    assert last["kind"] == "rul" and last["model_id"] == "rul-cmapss-fd001" and last["model_version"] == card["sha256"]
    assert last["value"] == pytest.approx(p.value) and last["lower"] == pytest.approx(p.lower)
    assert last["upper"] == (None if p.upper is None else pytest.approx(p.upper))
    assert last["coverage"] == pytest.approx(0.9) and last["details"]["cycle"] == p.details["cycle"]
    assert len(alerts) == 1 and alerts[0]["kind"] == "rul"
    assert alerts[0]["evidence"]["prediction"]["model_version"] == card["sha256"]


async def test_a_rul_alert_is_traced_to_the_tags_its_model_reads(fitted, pg_dsn):
    """A RUL alert's evidence names no tag: its trace (`maintenance.trace`, from the database) names the tags the
    served version reads, the configured sensors at the card's columns (a model of one operating condition reads
    no setting), each with its registry entry and the calibration in force at the prediction's time."""
    import psycopg

    from maintenance.trace import trace_alert

    _, d = fitted
    card = json.loads((d / "card.json").read_text())
    u, _, changes = await stored_engine(d, pg_dsn)
    columns = card["preprocessing"]["sensors"] or list(range(21))
    assert len(card["preprocessing"]["conditions"]["centres"]) == 1  # FD001: one operating condition
    inputs = [f"E{u}.s{j + 1}" for j in columns]
    assert 0 < len(inputs) < 21, "the card's sensor selection, not every configured sensor"
    configured = [f"E{u}.set{k}" for k in range(1, 4)] + [f"E{u}.s{j}" for j in range(1, 22)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO tags (name, asset, unit) VALUES (%s, %s, '')",
                                  [(n, f"E{u}") for n in configured])
        for valid_from, cert in ((T0 - timedelta(days=30), "CAL-E-OLD"), (T0 + timedelta(days=300), "CAL-E-NEW")):
            conn.execute("INSERT INTO tag_calibrations (tag_id, valid_from, certificate, calibrated_on, uncertainty) "
                         "SELECT id, %s, %s || '-' || name, %s, 0.1 FROM tags", (valid_from, cert, valid_from.date()))
    (alert_id,) = {c.alert.id for c in changes}
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        tr = await trace_alert(conn, alert_id)
        # The evidence names them too: traced while the prediction row is still in the gateway's spool (or gone).
        await conn.execute("DELETE FROM predictions")
        gone = (await trace_alert(conn, alert_id))["moments"][0]
    for m in tr["moments"]:
        assert m["prediction"]["stored"]["details"]["signals"] == inputs
        assert [t["tag"] for t in m["tags"]] == inputs and "tags_unknown" not in m
        for t in m["tags"]:
            assert t["registry"]["asset"] == f"E{u}" and t["at"] == m["prediction"]["time"]
            assert t["calibration"]["certificate"] == f"CAL-E-OLD-{t['tag']}"  # in force then, not the newer one
            assert t["readings"]["window_raw"] == 0  # the replay's readings were not stored here: said
    assert gone["prediction"]["stored"] is None and [t["tag"] for t in gone["tags"]] == inputs


def damage(path: Path) -> bytes:
    good = path.read_bytes()
    path.write_bytes(b"not the registered graph")
    return good


def restore(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize("index", ["json", "db"])
async def test_promotion_and_rollback_swap_the_served_version_live(fitted, tmp_path, index, request, caplog):
    """A version promoted while the gateway runs serves from the next cycle, its features rebuilt from the cycles
    already seen (its predictions equal the offline ones of that version); a rolled-back-to version whose file no
    longer matches its sha256 on the gateway's disk is refused once, logged and counted, and the served version
    goes on."""
    import logging

    from edge.metrics import Metrics
    from maintenance.rul_eval import evaluate
    from maintenance.rul_export import register
    from models.registry import Registry

    dsn = None
    if index == "db":  # the index the console promotes in (registry_db)
        import psycopg

        from edge.db.migrate import migrate

        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
    r2, _ = fitted
    # v1: capped at 40 cycles, a poor model the promotion gate lets v2 replace
    r1 = evaluate(SAMPLE, "FD001", folds=4, select=False, caps=(40.0,), max_iter=50, progress=lambda s: None)
    root = tmp_path / "reg"
    reg = Registry(root, dsn)
    v1 = register(r1, root, dsn=dsn)
    reg.promote(v1["model_id"], v1["version"])
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    asset = rul_asset(u, None, registry=str(root), model_id=v1["model_id"], registry_db=dsn is not None,
                      refresh_s=0.0)
    metrics = Metrics()
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)), dsn=dsn, metrics=metrics)
    batches = list(replay(one))
    third = len(batches) // 3
    preds = []
    for i, batch in enumerate(batches):
        if i == third:
            v2 = register(r2, root, dsn=dsn)
            reg.promote(v2["model_id"], v2["version"])
        if i == 2 * third:
            reg.rollback(v1["model_id"])  # back to v1 (its file checked by the rollback) ...
            good = damage(Path(v1["path"], "model.onnx"))  # ... then damaged on the gateway's disk
        with caplog.at_level(logging.ERROR, logger="maintenance.rul_live"):
            preds += (await live.process(batch))[1]
    versions = [p.details["registry_version"] for p in preds]
    assert versions == [1] * third + [2] * (len(batches) - third)
    assert {p.model_version for p in preds} == {v1["sha256"], v2["sha256"]}
    offline = [r.predict(one.unit, one.cycle, one.settings, one.sensors) for r in (r1["model"], r2["model"])]
    assert not np.allclose(offline[0], offline[1], atol=1.0)  # two different models
    got = np.array([p.value for p in preds])
    want = np.where(np.array(versions) == 1, offline[0], offline[1])
    assert np.allclose(got, want, atol=1e-3)  # v2 from its first cycle as if it had served from the start
    assert live.rul.swaps == 1 and live.rul.refusals == 1
    (st,) = live.rul.status()  # what /healthz shows: the version served and the one refused
    assert (st["version"], st["sha256"], st["refused_sha256"]) == (2, v2["sha256"], v1["sha256"])
    assert st["cycles"] == len(batches)
    refused = [r for r in caplog.records if "not served" in r.getMessage()]
    assert len(refused) == 1 and "sha256" in refused[0].getMessage()  # once, not every cycle
    swaps = {s.labels["outcome"]: s.value for m in metrics.model_swaps.collect() for s in m.samples
             if s.name.endswith("_total")}
    assert swaps == {"swapped": 1.0, "refused": 1.0, "error": 0.0}  # each outcome there from the start

    # The file restored, the champion is served at the next refresh: a refusal was for good (until a restart or
    # another promotion), so the gateway went on serving v2 while the registry and the console named v1.
    restore(Path(v1["path"], "model.onnx"), good)
    await live.process(batches[-1])
    (st,) = live.rul.status()
    assert (st["version"], st["sha256"], st["refused_sha256"]) == (1, v1["sha256"], None)
    assert live.rul.swaps == 2 and live.rul.refusals == 1


def test_registry_db_without_a_database_is_a_config_error(fitted, tmp_path):
    asset = rul_asset(1, None, registry=str(tmp_path / "reg"), model_id="rul-cmapss-fd001", registry_db=True)
    with pytest.raises(ConfigError, match="registry_db needs the site database"):
        MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))


def _process(live: MaintenanceLive, batches) -> list:
    import asyncio

    async def go():
        return [p for b in batches for p in (await live.process(b))[1]]

    return asyncio.run(go())


def test_no_champion_at_start_serves_once_promoted_from_the_first_cycle(fitted, tmp_path, caplog):
    import logging

    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    out = register(r, tmp_path / "reg")  # a candidate only
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], refresh_s=0.0)
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))
    assert "no champion yet" in caplog.text
    batches = list(replay(one))
    half = len(batches) // 2
    assert _process(live, batches[:half]) == []  # nothing to serve yet; the cycles are kept
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    preds = _process(live, batches[half:])
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert [p.details["cycle"] for p in preds] == list(range(half + 1, len(batches) + 1))
    assert np.allclose([p.value for p in preds], offline[half:], atol=1e-3)  # features from cycle 1 on


def test_a_champion_whose_file_is_damaged_at_start_does_not_stop_the_gateway(fitted, tmp_path, caplog):
    """The champion's model.onnx no longer matches its sha256 (or is missing) when the gateway starts: the
    IntegrityError was raised out of MaintenanceLive, so the whole gateway did not start, though restoring the file
    or promoting another version mends it without a configuration change. Now it is refused as at a refresh (logged
    and counted once, tried again at each refresh); the cycles are kept and the model serves once restored."""
    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    out = register(r, tmp_path / "reg")
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    good = damage(Path(out["path"], "model.onnx"))
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], refresh_s=0.0)
    with caplog.at_level(logging.ERROR, logger="maintenance.rul_live"):
        live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))
    (st,) = live.rul.status()
    assert (st["version"], st["refused_sha256"]) == (None, out["sha256"]) and live.rul.refusals == 1
    assert "not served at start" in caplog.text and "sha256" in caplog.text
    batches = list(replay(one))
    half = len(batches) // 2
    assert _process(live, batches[:half]) == []  # refused again at each refresh, not logged again
    assert caplog.text.count("not served") == 1 and live.rul.refusals == 1
    restore(Path(out["path"], "model.onnx"), good)
    preds = _process(live, batches[half:])
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert [p.details["cycle"] for p in preds] == list(range(half + 1, len(batches) + 1))
    assert np.allclose([p.value for p in preds], offline[half:], atol=1e-3)  # the kept cycles replayed


def test_a_champion_lost_by_an_index_restore_is_said_once(fitted, tmp_path, caplog):
    """index.json restored from a backup taken before the promotion: the registry names no champion; the served
    version went on without a word. Now said once (model_champion_gone); the served version goes on."""
    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    out = register(r, tmp_path / "reg")
    backup = (tmp_path / "reg" / "index.json").read_bytes()
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    u = int(cmapss.load(SAMPLE / "test_FD001.txt").units()[0])
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], refresh_s=0.0)
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))
    (tmp_path / "reg" / "index.json").write_bytes(backup)
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        live.rul.refresh(force=True)
        live.rul.refresh(force=True)
    gone = [rec for rec in caplog.records if getattr(rec, "event", "") == "model_champion_gone"]
    assert len(gone) == 1 and f"v{out['version']} goes on being served" in gone[0].getMessage()
    assert live.rul.status()[0]["version"] == out["version"]


def test_registry_database_down_at_start_then_back(fitted, tmp_path, own_pg_server, caplog):
    """The gateway starts while the database holding the registry index is down (no RUL yet, logged once,
    counted), and serves the champion once the database is back, its features from the asset's first cycle."""
    import logging

    import psycopg

    from edge.db.migrate import migrate
    from edge.metrics import Metrics
    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    dsn = own_pg_server.create_database("rul_registry", timescaledb=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    out = register(r, tmp_path / "reg", dsn=dsn)
    Registry(tmp_path / "reg", dsn).promote(out["model_id"], out["version"])
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    batches = list(replay(one))
    half = len(batches) // 2
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], registry_db=True,
                      refresh_s=0.0)
    metrics = Metrics()
    own_pg_server.stop()
    try:
        with caplog.at_level(logging.ERROR, logger="maintenance.rul_live"):
            live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)), dsn=dsn, metrics=metrics)
            assert _process(live, batches[:half]) == []
    finally:
        own_pg_server.start()
    assert sum("registry not readable" in rec.getMessage() for rec in caplog.records) == 1
    errors = metrics.model_swaps.labels(out["model_id"], "error")._value.get()
    assert errors >= half  # every refresh (each batch here) that failed is counted
    preds = _process(live, batches[half:])
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert [p.details["cycle"] for p in preds] == list(range(half + 1, len(batches) + 1))
    assert np.allclose([p.value for p in preds], offline[half:], atol=1e-3)
    assert preds[0].model_version == out["sha256"]


def _two_lives(test: cmapss.Fleet, units: list[int], rng) -> list[list[Reading]]:
    """Counter mode: one batch per cycle (the counter, then three readings per tag), engine after engine on the
    same asset ``ENG`` (the counter going back to 1 between them), and a last counter that closes the last cycle."""
    t = T0
    batches = []
    for u in units:  # the second engine replaces the first on the same asset
        one = test.select(test.unit == u)
        for i in range(len(one.unit)):
            span = float(rng.uniform(40, 200))
            batch = [Reading("ENG.cycles", t, float(one.cycle[i]), t)]
            for k in range(3):  # three readings per tag in the cycle, spread around the row's value
                tk = t + timedelta(seconds=span * (k + 1) / 4)
                noise = (k - 1) * 1e-4
                batch += [Reading(f"ENG.set{j + 1}", tk, float(one.settings[i, j]) + noise, tk) for j in range(3)]
                batch += [Reading(f"ENG.s{j + 1}", tk, float(one.sensors[i, j]) + noise, tk) for j in range(21)]
            batches.append(batch)
            t += timedelta(seconds=span)
    batches.append([Reading("ENG.cycles", t, 1.0, t)])  # the counter of a third engine: closes the last cycle
    return batches


def test_cycles_from_a_counter_tag_of_irregular_cycles_and_a_new_life(fitted):
    """With ``cycle_tag`` a cycle is what the asset's counter says, however long it lasts: the replayed engines
    (cycles of 40-200 s, several readings per tag per cycle) get the offline predictions at each counter change;
    a counter going back to 1 (the engine replaced) starts a new life whose predictions are those of the new
    engine's history alone."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    units = [int(u) for u in test.units()[:2]]
    rng = np.random.default_rng(3)
    asset = _engine_asset(d)
    live = MaintenanceLive(MaintenanceConfig(period_s=1.0, assets=(asset,)))
    batches = _two_lives(test, units, rng)
    preds = _process(live, batches)
    lives = [test.select(test.unit == u) for u in units]
    want = np.concatenate([r["model"].predict(f.unit, f.cycle, f.settings, f.sensors) for f in lives])
    cycles = np.concatenate([test.cycle[test.unit == u] for u in units])
    assert [p.details["cycle"] for p in preds] == cycles.tolist()
    assert np.allclose([p.value for p in preds], want, atol=1e-3)
    n1 = int((test.unit == units[0]).sum())
    assert preds[n1].input_start > preds[n1 - 1].time - timedelta(seconds=1)  # the new life's own start
    assert preds[0].input_start == T0 and all(p.time > p.input_start for p in preds)
    assert preds[0].details["cycle_tag"] == "ENG.cycles"  # the age's tag, traced with the model's inputs


def test_cycle_s_or_cycle_tag():
    with pytest.raises(ValueError, match=r"either cycle_s .* or cycle_tag"):
        RulAssetConfig(model_dir="m", sensors=("a",))
    with pytest.raises(ValueError, match=r"either cycle_s .* or cycle_tag"):
        RulAssetConfig(model_dir="m", sensors=("a",), cycle_s=60.0, cycle_tag="n")


async def test_registry_reads_run_off_the_event_loop(fitted, tmp_path, monkeypatch):
    """A slow registry (its database far away) must not stall the gateway: the champion lookup runs in a worker
    thread while the event loop goes on (collectors, ingest)."""
    import asyncio
    import time

    from maintenance.rul_export import register
    from models.registry import Registry

    r, _ = fitted
    out = register(r, tmp_path / "reg")
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    asset = rul_asset(u, None, registry=str(tmp_path / "reg"), model_id=out["model_id"], refresh_s=0.0)
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(asset,)))
    fast = Registry.champion

    def slow(self, model_id):
        time.sleep(0.5)
        return fast(self, model_id)

    monkeypatch.setattr(Registry, "champion", slow)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    _, preds, _ = await live.process(next(replay(test.select(test.unit == u))))
    elapsed = time.monotonic() - t0
    task.cancel()
    assert elapsed >= 0.5 and len(preds) == 1
    assert ticks >= 0.5 * elapsed / 0.01  # the loop kept running while the registry was read


def test_a_missing_or_damaged_model_directory_is_a_configuration_error(fitted, tmp_path):
    import shutil

    _, d = fitted
    with pytest.raises(ValueError, match=r"model_dir .*none: no model.onnx or card.json there"):
        RulAssetConfig(model_dir=str(tmp_path / "none"), sensors=("a",), cycle_s=60.0)
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ConfigError, match=r"asset 'E1': rul.model_dir .*broken: cannot load the model"):
        MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(1, broken),)))


def _restarted(config: MaintenanceConfig, state_dir: Path, first: list, rest: list) -> tuple[list, MaintenanceLive]:
    """Process ``first`` (each closed cycle saved), save as the gateway does at shutdown (what changed since), start
    afresh on the same state folder, process ``rest``: the predictions of ``rest`` and the new instance."""
    live = MaintenanceLive(config, state_dir=state_dir)
    _process(live, first)
    data = live.rul.snapshot()
    assert data is None or live.rul.write(data)
    again = MaintenanceLive(config, state_dir=state_dir)
    return _process(again, rest), again


def test_a_restart_goes_on_with_the_assets_age_and_history(fitted, tmp_path, caplog):
    """The kept cycles are saved in the state folder: after a restart (cycles by time, and by a counter) the
    predictions are those of an uninterrupted run: same age, same features, same values and intervals."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    batches = list(replay(one))
    at = len(batches) // 2
    config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d),))
    whole = _process(MaintenanceLive(config), batches)
    with caplog.at_level(logging.INFO, logger="maintenance.rul_live"):
        after, again = _restarted(config, tmp_path / "a", batches[:at], batches[at:])
    assert again.rul.restored == {f"E{u}": at}
    assert any(getattr(r, "event", None) == "rul_state_restored" for r in caplog.records)
    tail = whole[-len(after):]
    assert [p.details["cycle"] for p in after] == [p.details["cycle"] for p in tail] == list(range(at + 1, at + 1 +
                                                                                                     len(after)))
    assert np.allclose([p.value for p in after], [p.value for p in tail], atol=1e-9)
    assert [(p.lower, p.upper, p.input_start) for p in after] == [(p.lower, p.upper, p.input_start) for p in tail]
    # Without the saved state (the old behaviour) the restarted asset would start a new life at cycle 1.
    fresh = _process(MaintenanceLive(config), batches[at:])
    assert fresh[0].details["cycle"] == 1 and not np.allclose([p.value for p in fresh], [p.value for p in tail])

    # Counter mode, the restart in the middle of a cycle (its readings so far are kept).
    asset = _engine_asset(d)
    cconfig = MaintenanceConfig(period_s=1.0, assets=(asset,))
    readings, t = [], T0
    for i in range(len(one.unit)):
        readings.append(Reading("ENG.cycles", t, float(one.cycle[i]), t))
        tk = t + timedelta(seconds=30)
        readings += [Reading(f"ENG.set{j + 1}", tk, float(one.settings[i, j]), tk) for j in range(3)]
        readings += [Reading(f"ENG.s{j + 1}", tk, float(one.sensors[i, j]), tk) for j in range(21)]
        t += timedelta(seconds=60)
    readings.append(Reading("ENG.cycles", t, float(one.cycle[-1]) + 1, t))
    cut = 25 * at + 10  # inside cycle at + 1: its counter and 9 of its 24 tags before the restart
    whole = _process(MaintenanceLive(cconfig), [[r] for r in readings])
    after, _ = _restarted(cconfig, tmp_path / "c", [[r] for r in readings[:cut]], [[r] for r in readings[cut:]])
    tail = whole[-len(after):]
    assert [p.details["cycle"] for p in after] == [p.details["cycle"] for p in tail]
    assert after[0].details["cycle"] == at + 1
    assert np.allclose([p.value for p in after], [p.value for p in tail], atol=1e-9)
    assert [p.input_start for p in after] == [p.input_start for p in tail]


def test_saved_history_of_another_configuration_or_damaged_is_not_restored(fitted, tmp_path, caplog):
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    batches = list(replay(test.select(test.unit == u)))
    config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d),))
    live = MaintenanceLive(config, state_dir=tmp_path)
    _process(live, batches[:20])
    live.rul.mark_unsaved()  # (each closed cycle was saved already: snapshots taken by hand)
    first = live.rul.snapshot()
    _process(live, batches[20:30])
    live.rul.mark_unsaved()
    second = live.rul.snapshot()
    assert live.rul.write(second) and not live.rul.write(first)  # an older snapshot never replaces a newer one
    assert MaintenanceLive(config, state_dir=tmp_path).rul.restored == {f"E{u}": 30}
    assert live.rul.snapshot() is None  # nothing closed since: nothing to save

    other = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d, cycle_s=30.0),))
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        moved = MaintenanceLive(other, state_dir=tmp_path)
    assert moved.rul.restored == {}
    assert [r for r in caplog.records if getattr(r, "event", None) == "rul_state_mismatch"]
    preds = _process(moved, batches[30:32])
    assert preds[0].details["cycle"] == 1  # starts afresh

    live.rul.mark_unsaved()  # `moved` saved its own cycles over the file: the first configuration's again
    assert live.rul.write(live.rul.snapshot())
    state = tmp_path / "rul_state.npz"
    meta, arrays = read_state(state, 1)
    arrays["0.rows"] = arrays["0.rows"][:, :2]  # rows of the wrong width
    state.write_bytes(pack_state(meta, arrays, 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        damaged = MaintenanceLive(config, state_dir=tmp_path)
    assert damaged.rul.restored == {}
    assert [r for r in caplog.records if getattr(r, "event", None) == "rul_state_unreadable"]
    assert _process(damaged, batches[30:32])[0].details["cycle"] == 1
    state.write_bytes(b"not a state file")
    assert MaintenanceLive(config, state_dir=tmp_path).rul.restored == {}


GATEWAY_SITE = """
[[collectors.subscriptions]]
topic = "rul/@RUN@/cycle"
tag = "{field}"
json = { samples = "s", tag = "tag", value = "v", time = "t", time_format = "epoch_s" }

[validation]
max_age_s = 864000

[maintenance]
period_s = 60
state_save_s = @SAVE@

[[maintenance.assets]]
name = "E@U@"
rul = { model_dir = "@MODEL@", sensors = [@SENSORS@], settings = [@SETTINGS@], cycle_s = 60.0 }
"""


class _EngineOverMqtt:
    """One C-MAPSS test engine's cycles published to `valvoja run` over MQTT, one message per 60 s cycle (one reading
    per tag: each message closes its cycle), and the engine's predictions read back from the database."""

    def __init__(self, model_dir: Path, pg_dsn: str, mosquitto, gateway_id: str) -> None:
        import paho.mqtt.client as mqtt
        from ops_support import new_run

        test = cmapss.load(SAMPLE / "test_FD001.txt")
        self.u = int(test.units()[0])
        self.one = test.select(test.unit == self.u)
        self.n = len(self.one.unit)
        self.run, self.model_dir, self.pg_dsn, self.port = new_run(), model_dir, pg_dsn, mosquitto.port
        self.gateway_id = gateway_id
        self.t0 = time.time() - 60 * (self.n + 10)
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{self.run}")
        self.pub.connect("127.0.0.1", mosquitto.port)
        self.pub.loop_start()

    def site(self, save_s: float) -> str:
        from ops_support import site_config

        u = self.u
        sensors = ", ".join(f'"E{u}.s{j}"' for j in range(1, 22))
        settings = ", ".join(f'"E{u}.set{k}"' for k in range(1, 4))
        return site_config(self.pg_dsn, self.port, run=self.run, gateway_id=self.gateway_id) + (
            GATEWAY_SITE.replace("@RUN@", self.run).replace("@U@", str(u)).replace("@MODEL@", str(self.model_dir))
            .replace("@SAVE@", str(save_s)).replace("@SENSORS@", sensors).replace("@SETTINGS@", settings))

    def predictions(self) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            try:
                return conn.execute("SELECT (details->>'cycle')::int, value FROM predictions WHERE asset = %s "
                                    "ORDER BY time", (f"E{self.u}",)).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def send(self, cycles: range) -> None:
        import orjson

        u, one, infos = self.u, self.one, []
        for i in cycles:
            t = self.t0 + 60 * i
            samples = ([{"tag": f"E{u}.set{k + 1}", "t": t, "v": float(one.settings[i, k])} for k in range(3)] +
                       [{"tag": f"E{u}.s{j + 1}", "t": t, "v": float(one.sensors[i, j])} for j in range(21)])
            infos.append(self.pub.publish(f"rul/{self.run}/cycle", orjson.dumps({"s": samples}), qos=1))
        for info in infos:
            info.wait_for_publish(10)

    def saved(self, state_dir: Path) -> int:
        """The cycles a gateway started on ``state_dir`` would restore (snapshot + journal; read only)."""
        config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(self.u, self.model_dir),))
        return MaintenanceLive(config, state_dir=state_dir).rul.restored.get(f"E{self.u}", 0)

    def offline(self, r) -> np.ndarray:
        one = self.one
        return r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)

    def close(self) -> None:
        self.pub.loop_stop()
        self.pub.disconnect()


@pytest.mark.slow
def test_the_gateway_goes_on_with_an_engines_age_after_a_stop_and_a_kill(fitted, tmp_path, pg_dsn, mosquitto):
    """MQTT -> `valvoja run` -> predictions table, one engine's cycles in three parts: a stop (SIGTERM; the
    periodic save an hour away), a SIGKILL (every closed cycle journalled): every cycle has exactly one
    prediction, with its own age, equal to the offline model's (an uninterrupted run's)."""
    from gateway_proc import GatewayProcess
    from ops_support import wait_for

    r, d = fitted
    eng = _EngineOverMqtt(d, pg_dsn, mosquitto, "gw-rul")
    n = eng.n
    # The last reading of a cycle closes it only when a later cycle's reading arrives, or when every tag has its
    # reading: here the latter (one reading per tag per 60 s cycle), so each message closes its cycle.
    a, b = n // 3, 2 * n // 3
    gw = GatewayProcess(tmp_path / "gw", eng.site(3600)).start()

    def saved_cycles() -> int:
        return eng.saved(tmp_path / "gw" / "var")

    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector up")
        eng.send(range(0, a))
        wait_for(lambda: len(eng.predictions()) == a, timeout_s=60, what=f"{a} predictions")
        assert saved_cycles() == a  # the periodic save is an hour away: saved as each cycle closed
        assert gw.terminate() == 0
        assert saved_cycles() == a

        gw.config.write_text(eng.site(0.5).replace("{HTTP_PORT}", str(gw.port)))
        gw.start()
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector up again")
        eng.send(range(a, b))
        wait_for(lambda: len(eng.predictions()) == b, timeout_s=60, what=f"{b} predictions")
        assert saved_cycles() == b  # journalled as each cycle closed
        gw.kill()

        gw.start()
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector up after the kill")
        eng.send(range(b, n))
        got = wait_for(lambda: len(p := eng.predictions()) >= n and p, timeout_s=60, what=f"{n} predictions")
        assert [c for c, _ in got] == list(range(1, n + 1))  # one per cycle, each with its own age
        assert np.allclose([v for _, v in got], eng.offline(r), atol=1e-3)
        assert gw.health()["analytics"]["errors"] == 0
    finally:
        eng.close()
        gw.kill()


@pytest.mark.slow
def test_a_killed_gateway_keeps_every_cycle_that_closed(fitted, tmp_path, pg_dsn, mosquitto):
    """SIGKILL of `valvoja run` between two periodic saves (an hour apart): the cycles that closed since the last
    one are in the journal, because a closed cycle is appended before its prediction is handed on. They were
    missing from the restored history, and every later prediction of the engine differed from the offline one."""
    from gateway_proc import GatewayProcess
    from ops_support import wait_for

    r, d = fitted
    eng = _EngineOverMqtt(d, pg_dsn, mosquitto, "gw-rul-kill")
    n, a = eng.n, eng.n // 2
    gw = GatewayProcess(tmp_path / "gw", eng.site(3600)).start()
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector up")
        eng.send(range(0, a))
        wait_for(lambda: len(eng.predictions()) == a, timeout_s=60, what=f"{a} predictions")
        gw.kill()  # the periodic save is an hour away
        assert not (tmp_path / "gw" / "var" / "rul_state.npz").exists()  # every close went to the journal
        assert eng.saved(tmp_path / "gw" / "var") == a

        gw.start()
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector up after the kill")
        eng.send(range(a, n))
        got = wait_for(lambda: len(p := eng.predictions()) >= n and p, timeout_s=60, what=f"{n} predictions")
        assert [c for c, _ in got] == list(range(1, n + 1))
        assert np.allclose([v for _, v in got], eng.offline(r), atol=1e-3)
    finally:
        eng.close()
        gw.kill()


async def test_the_gateways_save_loop_goes_on_after_a_failed_save(fitted, tmp_path, caplog):
    """A save that fails for a reason the file writer does not handle (a bug) is logged, counted and retried at
    the next interval; saving goes on."""
    import asyncio

    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    rul = {"model_dir": str(d), "sensors": [f"E{u}.s{j}" for j in range(1, 22)],
           "settings": [f"E{u}.set{k}" for k in range(1, 4)], "cycle_s": 60.0}
    site = SiteConfig(site={"state_dir": str(tmp_path)},
                      maintenance={"period_s": 60, "state_save_s": 0.05, "assets": [{"name": f"E{u}", "rul": rul}]})

    emit = spool_emit()

    an = Analytics(site, Metrics(), emit, None)
    live = an.maintenance
    for batch in list(replay(test.select(test.unit == u)))[:10]:
        await live.process(batch)
    assert not (tmp_path / "rul_state.npz").exists()  # closed cycles went to the journal; the snapshot is tested here
    live.rul.mark_unsaved()
    seq = live.rul._snapshots
    write, calls = live.rul.write, []

    def failing_once(snapshot):
        calls.append(snapshot["seq"])
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return write(snapshot)

    live.rul.write = failing_once
    with caplog.at_level(logging.ERROR, logger="edge.analytics"):
        task = asyncio.create_task(an._save_loop())
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if (tmp_path / "rul_state.npz").exists():
                    break
        finally:
            task.cancel()
    assert calls[:2] == [seq + 1, seq + 2] and an.errors == 1
    assert [r for r in caplog.records if getattr(r, "event", None) == "rul_state_not_saved"]
    assert len(read_state(tmp_path / "rul_state.npz", 1)[1]["0.ages"]) == 10


async def test_a_reading_the_float32_graph_cannot_hold_gives_no_prediction_not_a_lost_group(fitted, caplog):
    """A sensor without a configured range sends its device's 1e39 "no value" (finite, so the reading is good). The
    model's input row then holds a value beyond float32, which the runtime refuses (`models.runtime`): the asset gets
    no prediction for that cycle (logged), instead of a RUL computed from an infinite input, and the other engines'
    predictions of the same group go on (an exception would have dropped the whole analytics group)."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    units = [int(u) for u in test.units()[:3]]
    fleet = test.select(np.isin(test.unit, units))
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=tuple(rul_asset(u, d) for u in units)))
    glitch = 10
    preds = []
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        for c, batch in enumerate(replay(fleet), start=1):
            if c == glitch:
                batch = [Reading(r.tag, r.time, 1e39, r.time) if r.tag == f"E{units[0]}.s2" else r for r in batch]
            _, p, _ = await live.process(batch)
            preds += p
    at = {(p.asset, p.details["cycle"]) for p in preds}
    assert (f"E{units[0]}", glitch) not in at
    assert all((f"E{u}", glitch) in at for u in units[1:])
    assert (f"E{units[0]}", glitch - 1) in at
    assert all(np.isfinite(p.value) and np.isfinite(p.lower) for p in preds)
    assert any("no RUL prediction" in r.getMessage() for r in caplog.records)


async def test_flagged_readings_are_left_out_of_the_cycle_means(fitted):
    """An out-of-range spike and a frozen value of two sensors were averaged into their cycle's means: the RUL moved
    with a sensor fault. Left out (maintenance.quality), every prediction is the offline one, and each states the
    quality of the cycle's readings; an alert carries it as evidence."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d, alert_below=1000.0),)))
    preds, changes = [], []
    for c, batch in enumerate(replay(one), start=1):
        if c % 3 == 0:  # before the cycle's good readings, so they are in its mean (a late one would be left out)
            t = batch[0].time
            batch = [Reading(f"E{u}.s2", t, 1e4, t, Quality.UNCERTAIN, int(Flag.OUT_OF_RANGE)),
                     Reading(f"E{u}.s7", t, 0.0, t, Quality.UNCERTAIN, int(Flag.FROZEN)), *batch]
        _, p, ch = await live.process(batch)
        preds += p
        changes += ch
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert np.allclose([p.value for p in preds], offline, atol=1e-3)
    q = {p.details["cycle"]: p.details["data_quality"] for p in preds}
    n = len(live.rul.assets[0].sel)  # the model's input tags, s2 and s7 among them
    assert q[1] == {"readings": n, "good": 1.0, "flagged": 0.0, "tags_with_good_readings": 1.0}
    assert q[3]["good"] == pytest.approx(n / (n + 2), abs=1e-3) and q[3]["tags_with_good_readings"] == 1.0
    (raised,) = [c for c in changes if c.event == "raised"]
    assert raised.alert.evidence["data_quality"]["tags_with_good_readings"] == 1.0


async def test_cycles_of_out_of_range_sensors_raise_no_rul_alert(fitted):
    """Every sensor of the engine out of range (1e4, flagged) from cycle 10: their means gave a RUL of 37 cycles,
    lower end 0, and a 'RUL below 20 cycles' alert for an engine with 120 left. Left out, the cycles carry the last
    good means; the predictions say no tag had a good reading, and they move no alert."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d, alert_below=20.0),)))
    preds, changes = [], []
    for c, batch in enumerate(replay(test.select(test.unit == u)), start=1):
        if c >= 10:
            batch = [Reading(r.tag, r.time, 1e4, r.time, Quality.UNCERTAIN, int(Flag.OUT_OF_RANGE))
                     if ".s" in r.tag else r for r in batch]
        _, p, ch = await live.process(batch)
        preds += p
        changes += ch
    assert changes == []
    late = [p for p in preds if p.details["cycle"] >= 10]
    assert late and all(p.details["data_quality"]["tags_with_good_readings"] == 0.0 and p.value > 100 for p in late)


def test_a_late_or_repeated_counter_reading_is_not_a_new_life(fitted):
    """Counter mode: a counter reading older than the current cycle's start (an MQTT redelivery after a reconnect,
    a device's buffered backlog) is late, not the counter going back: it used to close the cycle early and start
    a new life, wiping the asset's history and age. A genuine reset comes with a newer time. A sensor reading
    older than the current cycle's start belongs to a cycle already closed and is not counted in the current one."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    one = test.select(test.unit == int(test.units()[0]))
    asset = _engine_asset(d)
    config = MaintenanceConfig(period_s=1.0, assets=(asset,))
    n = len(one.unit)
    batches, t = [], T0
    for i in range(n):
        tk = t + timedelta(seconds=30)
        batches.append([Reading("ENG.cycles", t, float(one.cycle[i]), t)]
                       + [Reading(f"ENG.set{j + 1}", tk, float(one.settings[i, j]), tk) for j in range(3)]
                       + [Reading(f"ENG.s{j + 1}", tk, float(one.sensors[i, j]), tk) for j in range(21)])
        t += timedelta(seconds=60)
    batches.append([Reading("ENG.cycles", t, float(one.cycle[-1]) + 1, t)])
    whole = _process(MaintenanceLive(config), batches)
    h = n // 2  # cycle h's counter and readings again, after cycle h + 1 began
    late = [*batches[:h + 1], batches[h - 1][:1], batches[h - 1][1:], *batches[h + 1:]]
    got = _process(MaintenanceLive(config), late)
    assert [p.details["cycle"] for p in got] == [p.details["cycle"] for p in whole] == list(range(1, n + 1))
    assert np.allclose([p.value for p in got], [p.value for p in whole], atol=1e-12)


def test_the_cycle_in_progress_is_saved_at_shutdown(fitted, tmp_path):
    """The gateway saves at shutdown what changed since its last save. The readings of the cycle in progress are
    part of it: they were not (only a closed cycle counted as a change), so a stop after a periodic save lost
    them and the cycle's mean was made of the readings after the restart alone."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    batches = []  # three readings per tag per 60 s cycle, spread around the cycle's row
    for c, batch in enumerate(replay(one)):
        for k in range(3):
            tk = T0 + timedelta(seconds=60 * c + 20 * k)
            batches.append([Reading(r.tag, tk, float(r.value) + (k - 1) * 1e-3, tk) for r in batch])
    config = MaintenanceConfig(period_s=20.0, assets=(rul_asset(u, d),))
    whole = _process(MaintenanceLive(config), batches)
    at = 3 * (len(one.unit) // 2)
    live = MaintenanceLive(config, state_dir=tmp_path)
    _process(live, batches[:at])
    data = live.rul.snapshot()  # the last save: just after a cycle closed (a periodic save, or the close's own)
    if data is not None:
        live.rul.write(data)
    _process(live, batches[at:at + 2])  # two thirds of the next cycle, then a stop
    # The periodic save does not rewrite every asset's whole history for a partial cycle (flash wear); it saves
    # only a closed cycle whose own save failed.
    assert live.rul.snapshot(progress=False) is None
    data = live.rul.snapshot()  # what `Analytics.run` writes at shutdown
    assert data is not None and live.rul.write(data)
    after = _process(MaintenanceLive(config, state_dir=tmp_path), batches[at + 2:])
    tail = whole[-len(after):]
    assert [p.details["cycle"] for p in after] == [p.details["cycle"] for p in tail]
    assert np.allclose([p.value for p in after], [p.value for p in tail], atol=1e-12)


def test_tags_sampled_faster_than_period_s_close_their_cycle_at_its_end(fitted):
    """Cycles by time: a cycle closed early once every tag had ``cycle_s / period_s`` readings, which assumed one
    reading per tag per ``period_s``. Tags sampled faster (here 1 Hz with period_s 10: 60 readings a 60 s cycle)
    reached that count after 6 s: the cycle closed with the first tenth of its readings, the other 54 were dropped as
    late, and the means (of a drifting signal) were not the cycle's. The cycle now closes when every tag's latest
    reading is the last its sampling leaves room for before the cycle's end."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    batches = []
    for c, batch in enumerate(replay(one)):
        for k in range(60):  # 1 Hz, a ramp across the cycle whose mean is the cycle's value
            tk = T0 + timedelta(seconds=60 * c + k)
            batches.append([Reading(x.tag, tk, float(x.value) * (1 + (k - 29.5) * 1e-4), tk) for x in batch])
    live = MaintenanceLive(MaintenanceConfig(period_s=10.0, assets=(rul_asset(u, d),)))
    preds = _process(live, batches)
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert [p.details["cycle"] for p in preds] == list(range(1, len(one.unit) + 1))
    assert all(p.details["data_quality"]["readings"] == 60 * len(live.rul.assets[0].sel) for p in preds)
    assert np.allclose([p.value for p in preds], offline, atol=1e-3)
    # The cycle closes with its last readings, not one cycle later: its prediction is in the same call.
    live = MaintenanceLive(MaintenanceConfig(period_s=10.0, assets=(rul_asset(u, d),)))
    assert _process(live, batches[:60]) and live.rul.assets[0].closed


def _write_bytes() -> int:
    """Bytes this process has passed to write() so far (Linux ``/proc/self/io``, every thread of the process)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_a_closed_cycle_appends_a_line_not_every_assets_history(fitted, tmp_path):
    """Each closed cycle was saved by rewriting the whole state file: every RUL asset's kept history (up to 2,000
    cycles of 24 tags, 400 KB an asset) per close, whatever the cycle's length; at cycles of seconds that is
    gigabytes a day of flash. A close now appends one fsync'd line (the cycles closed since the last one) to a
    journal, folded into the snapshot file at the periodic save once the journal is as large as the snapshot,
    and at shutdown."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    units = [int(u) for u in test.units()[2:]]  # the engines with 98 to 126 cycles
    fleet = test.select(np.isin(test.unit, units))
    batches = list(replay(fleet))
    config = MaintenanceConfig(period_s=60.0, assets=tuple(rul_asset(u, d) for u in units))
    live = MaintenanceLive(config, state_dir=tmp_path)
    _process(live, batches[:80])
    before = _write_bytes()
    _process(live, batches[80:90])  # 10 groups, each closing a cycle of 4 assets with 80 cycles of history
    per_close = (_write_bytes() - before) / 10
    history = 80 * 24 * 8 * len(units)  # what one rewrite of the histories alone weighs
    assert per_close < 8192 < history, f"{per_close:.0f} bytes written per group of closes"
    after = _process(MaintenanceLive(config, state_dir=tmp_path), batches[90:])
    whole = _process(MaintenanceLive(config), batches)
    tail = whole[-len(after):]
    assert [(p.asset, p.details["cycle"]) for p in after] == [(p.asset, p.details["cycle"]) for p in tail]
    assert np.allclose([p.value for p in after], [p.value for p in tail], atol=1e-12)


KILLED_RUN = """
import asyncio, os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_maintenance_rul_live import *
from test_maintenance_rul_live import _process
test = cmapss.load(SAMPLE / "test_FD001.txt")
u = int(test.units()[2])
batches = list(replay(test.select(test.unit == u)))
config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, Path({model!r})),))
live = MaintenanceLive(config, state_dir=Path({state!r}))
for i in range({start}, {stop}):
    for p in _process(live, [batches[i]]):
        print(p.details["cycle"], repr(p.value), flush=True)
    if i == {compact}:  # the periodic save folds the journal into the snapshot
        live.rul.compact_bytes = 0
        assert live.rul.write(live.rul.snapshot(progress=False))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_sigkill_after_a_close_loses_no_cycle_and_repeats_none(fitted, tmp_path):
    """SIGKILL right after closes (the journal's fsync'd appends), twice, once after a compaction, once with a
    torn last line and once between a compaction's snapshot and its journal truncation: the restored history is
    every closed cycle once, and the predictions go on as an uninterrupted run's."""
    import subprocess
    import sys

    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[2])  # 126 cycles
    batches = list(replay(test.select(test.unit == u)))
    config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d),))
    whole = {p.details["cycle"]: p.value for p in _process(MaintenanceLive(config), batches)}
    state, got = tmp_path / "state", {}

    def killed(start: int, stop: int, compact: int = -1) -> None:
        code = KILLED_RUN.format(tests=str(Path(__file__).parent), model=str(d), state=str(state), start=start,
                                 stop=stop, compact=compact)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == -9, out.stderr
        for line in out.stdout.split("\n"):
            if line:
                c, v = line.split()
                assert int(c) not in got
                got[int(c)] = float(v)

    a, b, c = 10, 25, 40
    killed(0, a)
    assert MaintenanceLive(config, state_dir=state).rul.restored == {f"E{u}": a}
    killed(a, b, compact=a + 5)
    assert MaintenanceLive(config, state_dir=state).rul.restored == {f"E{u}": b}
    journal = state / "rul_state.journal"
    kept = journal.read_bytes()
    live = MaintenanceLive(config, state_dir=state)
    live.rul.compact_bytes = 0
    assert live.rul.write(live.rul.snapshot())
    journal.write_bytes(kept)  # killed after the snapshot's rename, before the journal was truncated
    killed(b, c)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines) + lines[-1][: len(lines[-1]) // 2])  # a torn append: half a line
    live = MaintenanceLive(config, state_dir=state)
    assert live.rul.restored == {f"E{u}": c}
    ages = [age for age, _ in live.rul.assets[0].history]
    assert ages == list(range(1, c + 1))
    for p in _process(live, batches[c:]):
        got[p.details["cycle"]] = p.value
    assert sorted(got) == sorted(whole)
    assert np.allclose([got[k] for k in sorted(got)], [whole[k] for k in sorted(whole)], atol=1e-9)
    again = MaintenanceLive(config, state_dir=state)  # the torn half line was cut off before the next append
    assert again.rul.restored == {f"E{u}": len(batches)}


def test_the_journal_restores_counter_cycles_and_a_new_life(fitted, tmp_path):
    """Counter mode through the journal alone (crashes, no snapshot at shutdown): restarts in the first life, just
    after the counter went back (a new life: the history emptied) and in the second life give the predictions of an
    uninterrupted run, cycle for cycle."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    units = [int(u) for u in test.units()[:2]]
    batches = _two_lives(test, units, np.random.default_rng(3))
    asset = _engine_asset(d)
    config = MaintenanceConfig(period_s=1.0, assets=(asset,))
    whole = _process(MaintenanceLive(config), batches)
    n1 = int((test.unit == units[0]).sum())
    got, start = [], 0
    for stop in (n1 // 2, n1 + 1, n1 + 10, len(batches)):
        live = MaintenanceLive(config, state_dir=tmp_path)  # restarted after a crash: what the journal holds
        if start:
            assert live.rul.restored["ENG"] == (start - 1 if start <= n1 else start - n1 - 1)  # closed cycles
        got += _process(live, batches[start:stop])
        start = stop
    assert not (tmp_path / "rul_state.npz").exists()
    assert [p.details["cycle"] for p in got] == [p.details["cycle"] for p in whole]
    assert np.allclose([p.value for p in got], [p.value for p in whole], atol=1e-12)
    assert [p.input_start for p in got] == [p.input_start for p in whole]


def test_after_a_failed_append_the_cycles_go_to_a_snapshot_until_one_holds_them(fitted, tmp_path, monkeypatch, caplog):
    """A journal append that fails (disk full) loses its line; a later line would build on it, so nothing is appended
    until a snapshot holding the lost cycles is written (the next close writes one), then lines go on. A restart
    restores every cycle once."""
    import errno

    from maintenance import rul_state

    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[2])
    batches = list(replay(test.select(test.unit == u)))
    config = MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d),))
    whole = _process(MaintenanceLive(config), batches)
    live = MaintenanceLive(config, state_dir=tmp_path)
    _process(live, batches[:10])
    append, calls = rul_state.append, []

    def full_once(path, line):
        calls.append(line)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(path, line)

    monkeypatch.setattr(rul_state, "append", full_once)
    with caplog.at_level(logging.ERROR, logger="maintenance.rul_live"):
        _process(live, batches[10:11])  # its line is lost
    assert [r for r in caplog.records if getattr(r, "event", None) == "rul_state_not_saved"]
    assert not (tmp_path / "rul_state.npz").exists()
    _process(live, batches[11:12])  # written as a snapshot, not a line
    assert len(calls) == 1 and (tmp_path / "rul_state.npz").exists()
    _process(live, batches[12:20])  # lines again
    assert len(calls) == 9
    # A fold of the journal into the snapshot that fails holds no cycle of its own: lines go on meanwhile.
    import maintenance.rul_live as rul_live

    monkeypatch.setattr(rul_live, "write_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    live.rul.compact_bytes = 0
    assert not live.rul.write(live.rul.snapshot(progress=False))
    monkeypatch.undo()
    monkeypatch.setattr(rul_state, "append", full_once)
    _process(live, batches[20:22])
    assert len(calls) == 11
    monkeypatch.undo()
    _process(live, batches[22:25])
    again = MaintenanceLive(config, state_dir=tmp_path)
    assert again.rul.restored == {f"E{u}": 25}
    after = _process(again, batches[25:])
    assert np.allclose([p.value for p in after], [p.value for p in whole[25:]], atol=1e-12)


def test_a_counter_that_jumps_ahead_keeps_the_life_and_ages_by_the_jump(fitted):
    """Counter mode: the counter skipping 10 cycles (updates the gateway never saw) is the same life, older by the
    jump: the history is kept, the age is the counter, and each prediction is the offline model's for that age,
    with its interval around it (lower <= value <= upper, or open-ended) at the card's coverage."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    one = test.select(test.unit == int(test.units()[0]))
    asset = _engine_asset(d)
    live = MaintenanceLive(MaintenanceConfig(period_s=1.0, assets=(asset,)))
    n, h = len(one.unit), len(one.unit) // 2
    cycles = np.where(np.arange(n) >= h, one.cycle + 10, one.cycle)
    batches, t = [], T0
    for i in range(n):
        tk = t + timedelta(seconds=30)
        batches.append([Reading("ENG.cycles", t, float(cycles[i]), t)]
                       + [Reading(f"ENG.set{j + 1}", tk, float(one.settings[i, j]), tk) for j in range(3)]
                       + [Reading(f"ENG.s{j + 1}", tk, float(one.sensors[i, j]), tk) for j in range(21)])
        t += timedelta(seconds=60)
    batches.append([Reading("ENG.cycles", t, float(cycles[-1]) + 1, t)])
    preds = _process(live, batches)
    assert [p.details["cycle"] for p in preds] == cycles.tolist()
    assert len(live.rul.assets[0].history) == n  # no new life
    want = r["model"].predict(one.unit, cycles, one.settings, one.sensors)
    assert np.allclose([p.value for p in preds], want, atol=1e-3)
    for p in preds:
        assert p.coverage == pytest.approx(0.9) and p.lower <= p.value
        assert (p.upper is None) == p.details["open_ended"] and (p.upper is None or p.value <= p.upper)


# One cycle of C-MAPSS FD002 (engine 1, cycle 4 of test_FD002): 42,000 ft, Mach 0.84, an operating condition the
# FD001 model never saw (FD001 flies at sea level only).
FD002_SETTINGS = (42.0066, 0.8410, 100.0)
FD002_SENSORS = (445.00, 550.17, 1349.69, 1127.89, 3.91, 5.71, 138.74, 2211.58, 8313.85, 1.02, 42.21, 130.40,
                 2387.72, 8066.90, 9.3961, 0.02, 332, 2212, 100.00, 10.35, 6.4181)


async def test_cycles_in_an_operating_condition_the_model_never_saw_get_no_rul(fitted, caplog):
    """An FD001 engine flown at FD002's 42,000 ft for cycles 20-39: its sensors, normalised, are hundreds of standard
    deviations from anything in training (within 5.5), yet each cycle got a RUL with a 90 % interval, and the cycles
    stayed in the EWM history and moved every prediction after them. Now they are refused (said once, counted) and
    left out of the history: the cycles after are predicted as the offline model predicts the engine without them."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = 3  # 126 cycles
    one = test.select(test.unit == u)
    away = (one.cycle >= 20) & (one.cycle < 40)
    one.settings[away] = FD002_SETTINGS
    one.sensors[away] = FD002_SENSORS
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(rul_asset(u, d, alert_below=1000.0),)))
    caplog.set_level(logging.INFO, logger="maintenance.rul_live")
    preds, changes = [], []
    for batch in replay(one):
        _, p, c = await live.process(batch)
        preds += p
        changes += c
    cycles = [p.details["cycle"] for p in preds]
    assert cycles == [int(c) for c in one.cycle[~away]]  # no prediction at 42,000 ft
    keep = ~away
    offline = r["model"].predict(one.unit[keep], one.cycle[keep], one.settings[keep], one.sensors[keep])
    assert np.allclose([p.value for p in preds], offline, atol=1e-3)
    assert live.rul.refused_cycles == {"out_of_domain": 20}
    events = [rec.event for rec in caplog.records if getattr(rec, "event", "").startswith("rul_")]
    assert events.count("rul_out_of_domain") == 1 and events.count("rul_back_in_domain") == 1
    said = next(rec.getMessage() for rec in caplog.records if getattr(rec, "event", "") == "rul_out_of_domain")
    assert "from cycle 20 on" in said and f"E{u}.s" in said and "standard deviations" in said
    # the alert (lower end below 1000: raised at the first cycle) stays open, once
    assert [c.event for c in changes].count("raised") == 1 and "cleared" not in [c.event for c in changes]
    assert live.rul.status()[0]["out_of_domain_cycles"] == 0
    card = json.loads((d / "card.json").read_text())
    assert len(card["preprocessing"]["conditions"]["z_min"]) == sum(card["preprocessing"]["conditions"]["keep"])


async def test_the_fd001_test_engines_are_within_the_training_domain(fitted):
    """The check refuses no cycle of engines the model was made for (the sample's FD001 test engines)."""
    _, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=tuple(rul_asset(u, d) for u in test.units())))
    preds, _ = await run(live, test)
    assert len(preds) == len(test.unit) and live.rul.refused_cycles == {}


def test_a_live_rul_assets_counters_are_there_at_0_from_the_start(fitted, tmp_path):
    """`valvoja_rul_cycles_refused_total{asset,reason}` and `valvoja_model_swaps_total{model_id,outcome}` appeared
    with their first event, a rise no increase() saw: the first refused champion or out-of-domain cycle alerted no
    one. They are there at 0 for each RUL asset (the swaps: of a model served from a registry)."""
    from edge.metrics import Metrics
    from maintenance.rul_export import register
    from models.registry import Registry

    r, model = fitted
    out = register(r, tmp_path / "reg")
    Registry(tmp_path / "reg").promote(out["model_id"], out["version"])
    metrics = Metrics()
    MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=(
        rul_asset(1, None, registry=str(tmp_path / "reg"), model_id=out["model_id"]), rul_asset(2, model))),
        metrics=metrics)
    text = metrics.render().decode()
    for asset in ("E1", "E2"):
        for reason in ("out_of_domain", "input"):
            assert f'valvoja_rul_cycles_refused_total{{asset="{asset}",reason="{reason}"}} 0.0' in text
    for outcome in ("swapped", "refused", "error"):
        assert f'valvoja_model_swaps_total{{model_id="{out["model_id"]}",outcome="{outcome}"}} 0.0' in text


@pytest.mark.parametrize("lag_s", [5, 30])
def test_a_source_lagging_behind_the_others_has_its_readings_in_their_cycle(fitted, lag_s, caplog):
    """Cycles by time, 1 Hz readings; the sensors s1-s7 come from a source ``lag_s`` behind the others (a second
    collector, a gateway's spool draining): each group holds the others' readings of second k and theirs of k - lag.
    The first reading of the next cycle closed the cycle: the lagging tags' last ``lag_s`` readings of every cycle
    were dropped (5 s: the RUL 1.15 cycles off the offline model's; 30 s: 1 prediction in 31 cycles). The cycle now
    waits until every model tag has passed its end; a reading for a closed cycle is counted and said once."""
    r, d = fitted
    test = cmapss.load(SAMPLE / "test_FD001.txt")
    u = int(test.units()[0])
    one = test.select(test.unit == u)
    lagging = {f"E{u}.s{j}" for j in range(1, 8)}
    arrival: dict[int, list[Reading]] = {}
    for c, batch in enumerate(replay(one)):
        for k in range(60):  # a ramp across the cycle whose mean is the cycle's value
            s = 60 * c + k
            tk = T0 + timedelta(seconds=s)
            for x in batch:
                arrival.setdefault(s + (lag_s if x.tag in lagging else 0), []).append(
                    Reading(x.tag, tk, float(x.value) * (1 + (k - 29.5) * 1e-3), tk))
    groups = [sorted(arrival[s], key=lambda x: x.time) for s in sorted(arrival)]
    late = groups[-1][-1]
    groups.append([replace(late, time=late.time - timedelta(seconds=120))])  # a redelivery two cycles back
    live = MaintenanceLive(MaintenanceConfig(period_s=10.0, assets=(rul_asset(u, d),)))
    with caplog.at_level(logging.WARNING, logger="maintenance.rul_live"):
        preds = _process(live, groups)
    offline = r["model"].predict(one.unit, one.cycle, one.settings, one.sensors)
    assert [p.details["cycle"] for p in preds] == list(range(1, len(one.unit) + 1))
    assert all(p.details["data_quality"]["readings"] == 60 * len(live.rul.assets[0].sel) for p in preds)
    assert np.allclose([p.value for p in preds], offline, atol=1e-3)
    assert live.rul.status()[0]["late_readings"] == 1
    said = [x.event for x in caplog.records if getattr(x, "event", "").startswith("rul_reading")]
    assert said == ["rul_reading_late"]
