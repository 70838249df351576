"""Live monitoring on the simulator's pump: a bearing fault raises an ISO 20816 zone alert and an anomaly
alert that names the contributing signals, with p-values and model version as evidence."""

import asyncio
import copy
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from collectors.simulator.pump import Pump, PumpFaults
from edge.files import pack_state, read_state
from edge.records import Flag, Quality, Reading
from maintenance.config import AnomalyAssetConfig, AssetConfig, MaintenanceConfig
from maintenance.iso20816 import ZoneConfig
from maintenance.live import MaintenanceLive, detector_version
from maintenance.rules import RuleConfig

SIGNALS = ("vib_de", "vib_de_kurtosis", "bearing_temp", "motor_current", "flow")
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def pump_readings(seconds: int, fault_from: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    pump = Pump("P-101", rng, nominal_flow_m3h=150, wear=0.1, wear_rate_per_h=0.01)
    for s in range(seconds):
        sig = pump.step(1.0, load_pct=80, ambient_c=10,
                        faults=PumpFaults(bearing=0.6 if s >= fault_from else 0.0))
        t = T0 + timedelta(seconds=s)
        yield [Reading(f"P-101.{k}", t, float(sig[k]), t) for k in SIGNALS]


def config() -> MaintenanceConfig:
    asset = AssetConfig(
        name="P-101", vibration_tags=("P-101.vib_de",), process_tags=("P-101.bearing_temp", "P-101.motor_current"),
        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)),  # this pump's own limits: 1.5 mm/s is zone C
        # window 2: 400 samples leave 120 disjoint calibration windows, enough for alpha 0.01 (99; window 10: 24)
        anomaly=AnomalyAssetConfig(signals=tuple(f"P-101.{s}" for s in SIGNALS), train_samples=400, alpha=0.01,
                                   window=2, predict_every_s=30))
    rule = RuleConfig(name="P-101 current high", tag="P-101.motor_current", kind="threshold", high=500)
    return MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,), rules=(rule,))


async def test_bearing_fault_gives_zone_and_anomaly_alerts():
    live = MaintenanceLive(config())
    derived, preds, changes = [], [], []
    for batch in pump_readings(1000, fault_from=700):
        d, p, c = await live.process(batch)
        derived += d
        preds += p
        changes += c
    tags = {r.tag for r in derived}
    assert {"P-101.vib_de.mean", "P-101.vib_de.kurtosis", "P-101.vib_de.iso_zone", "P-101.bearing_temp.slope"} <= tags
    raised = [c for c in changes if c.event == "raised"]
    kinds = {c.alert.kind: c.alert for c in raised}
    # Nothing before the fault: the anomaly detector's false alarms stay below the alert threshold.
    assert all(a.raised_at >= T0 + timedelta(seconds=700) for a in kinds.values()), raised
    zone = kinds["iso20816"]
    assert zone.severity == "warning" and zone.evidence["zone"] == "C" and zone.tag == "P-101.vib_de"
    an = kinds["anomaly"]
    assert an.raised_at <= T0 + timedelta(seconds=720)
    ev = an.evidence["prediction"]
    assert ev["p_value"] <= 0.01 and len(ev["model_version"]) == 64
    assert an.evidence["top_signals"][0]["signal"] in ("P-101.vib_de", "P-101.vib_de_kurtosis")
    assert "top signals" in an.message
    assert len([c for c in raised if c.alert.kind == "anomaly"]) == 1  # one alert for the whole fault
    # Predictions carry p-values and the input span; healthy ones are thinned to one per 30 s.
    anomaly_preds = [p for p in preds if p.kind == "anomaly"]
    assert all(p.p_value is not None and p.input_start < p.input_end for p in anomaly_preds)
    healthy = [p for p in anomaly_preds if p.time < T0 + timedelta(seconds=700)]
    assert 9 <= len(healthy) <= 20  # 300 s / 30 s, plus the few flagged samples (p <= alpha happens on healthy data)
    flagged = [p for p in anomaly_preds if p.p_value <= 0.01 and p.time >= T0 + timedelta(seconds=720)]
    assert len(flagged) > 200


def _vibration_only() -> MaintenanceConfig:
    asset = AssetConfig(name="F-1", vibration_tags=("F-1.vib",), iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))
    return MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,))


async def test_zone_alert_clears_once_the_vibration_is_calm_again():
    """Going back to zone B is one zone change; the alert's clear delay runs past it, so the calm readings after
    it must still reach the alert manager (they did not: the alert stayed open for good)."""
    live = MaintenanceLive(_vibration_only())
    changes = []
    for s in range(900):
        v = 2.0 if 200 <= s < 400 else 1.0  # zone C for 200 s, else zone B
        t = T0 + timedelta(seconds=s)
        changes += (await live.process([Reading("F-1.vib", t, v, t)]))[2]
    events = [(c.event, c.alert.kind) for c in changes]
    assert events == [("raised", "iso20816"), ("cleared", "iso20816")]
    cleared = changes[-1].alert.cleared_at
    assert T0 + timedelta(seconds=460) <= cleared <= T0 + timedelta(seconds=560)  # calm window + 60 s clear delay


async def test_a_waveforms_block_rms_is_rated_in_iso_zones():
    """``iso20816 = true`` on a waveform: each block's velocity RMS is rated like the window RMS of a 1 Hz RMS tag. The
    block indicators never reached the zone trackers, so a 14 mm/s block (zone D) raised nothing."""
    from maintenance.config import WaveformConfig

    fs, block = 1000.0, 1000
    asset = AssetConfig(name="F-2", waveforms=(WaveformConfig(tag="F-2.vel", fs_hz=fs, block=block),),
                        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))
    live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)))
    changes, derived = [], []
    for b, amplitude in enumerate((1.0, 1.0, 14.0 * np.sqrt(2), 14.0 * np.sqrt(2), 1.0)):  # RMS 0.71 or 14 mm/s
        t0 = T0 + timedelta(seconds=b)
        batch = [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * k / fs)),
                         float(amplitude * np.sin(2 * np.pi * 50 * k / fs)), t0) for k in range(block)]
        d, _, c = await live.process(batch)
        derived += d
        changes += c
    zones = [int(d.value) for d in derived if d.tag == "F-2.vel.iso_zone"]
    assert zones[:3] == [0, 0, 3]  # A, A, then D from the first 14 mm/s block
    raised = [c for c in changes if c.event == "raised"]
    assert [(c.alert.kind, c.alert.severity, c.alert.evidence["zone"]) for c in raised] == [
        ("iso20816", "critical", "D")]

    # A block with out-of-range samples (flagged by the validator: quality UNCERTAIN) may raise, one severity lower
    # and marked unverified; it never lowers the zone.
    live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)))
    changes = []
    for b, amplitude in enumerate((1.0, 14.0 * np.sqrt(2), 1.0)):
        t0 = T0 + timedelta(seconds=b)
        q, f = (Quality.GOOD, 0) if b != 1 else (Quality.UNCERTAIN, int(Flag.OUT_OF_RANGE))
        batch = [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * k / fs)),
                         float(amplitude * np.sin(2 * np.pi * 50 * k / fs)), t0, quality=q, flags=f)
                 for k in range(block)]
        changes += (await live.process(batch))[2]
    raised = [c for c in changes if c.event == "raised" and c.alert.kind == "iso20816"]
    assert [(c.alert.severity, c.alert.evidence["zone"]) for c in raised] == [("warning", "D")]
    assert "unverified" in raised[0].alert.message
    assert raised[0].alert.evidence["data_quality"]["out_of_range"] == 1.0
    # A whole block out of range is also the waveform tag's sensor alert (as a window of such readings is).
    assert [c.alert.evidence["problem"] for c in changes if c.alert.kind == "sensor"] == ["out_of_range"]


async def test_a_waveforms_zone_rates_the_iso_band_not_the_broadband_rms():
    """ISO 20816-3 rates the velocity RMS over 10-1000 Hz (2-1000 Hz at or below 600 r/min). The zones rated the
    block's broadband RMS (DC to Nyquist): a healthy pump with 1 mm/s at running speed plus 3 mm/s of gear mesh at
    1,200 Hz (a 2,560 Hz waveform) read 3.16 mm/s, zone C and a warning; so did 3 mm/s of 3 Hz drift from an
    integrated accelerometer. Both lie outside the band: zone A, and ``iso_rms`` is stored beside ``rms``."""
    from maintenance.config import WaveformConfig

    fs, block = 2560.0, 2560
    k = np.arange(block)
    ok = np.sqrt(2) * np.sin(2 * np.pi * 25 * k / fs)  # 1 mm/s RMS at 25 Hz
    outside = {"gear mesh": 3 * np.sqrt(2) * np.sin(2 * np.pi * 1200 * k / fs),
               "drift": 3 * np.sqrt(2) * np.sin(2 * np.pi * 3 * k / fs)}
    asset = AssetConfig(name="F-2", waveforms=(WaveformConfig(tag="F-2.vel", fs_hz=fs, block=block),),
                        iso20816=ZoneConfig(boundaries_mm_s=(1.4, 2.8, 4.5)))
    for name, extra in outside.items():
        live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)))
        derived, changes = [], []
        for b in range(3):
            t0 = T0 + timedelta(seconds=b)
            batch = [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * i / fs)), float(v), t0)
                     for i, v in enumerate(ok + extra)]
            d, _, c = await live.process(batch)
            derived += d
            changes += c
        by = {x.tag: x.value for x in derived if x.time == T0}
        assert by["F-2.vel.rms"] == pytest.approx(np.sqrt(10), rel=1e-3), name
        assert by["F-2.vel.iso_rms"] == pytest.approx(1.0, rel=1e-3), name
        assert [int(x.value) for x in derived if x.tag == "F-2.vel.iso_zone"] == [0, 0, 0], name
        assert [c for c in changes if c.alert.kind == "iso20816"] == [], name

    # In-band vibration is rated as before, and the alert says which band it rated.
    live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)))
    batch = [Reading("F-2.vel", T0 + timedelta(microseconds=int(1e6 * i / fs)), float(6 * v), T0)
             for i, v in enumerate(ok)]
    (raised,) = [c for c in (await live.process(batch))[2] if c.alert.kind == "iso20816"]
    assert raised.alert.evidence["zone"] == "D" and raised.alert.evidence["band_hz"] == [10.0, 1000.0]
    assert "(10-1000 Hz)" in raised.alert.message

    # Sampled under 2 kHz, the band is measured up to Nyquist (an anti-aliasing filter takes out what lies above).
    slow = WaveformConfig(tag="F-2.vel", fs_hz=1000.0, block=1000)
    assert slow.iso_band == (10.0, 500.0)


async def test_a_waveform_block_of_mostly_flagged_samples_is_not_rated_as_vibration():
    """A block whose samples are mostly sensor problems (the device's own Uncertain status, frozen, or out of range
    with ``out_of_range = "sensor"``) says nothing about the machine, as a window of such scalar readings does not
    (maintenance.quality). It was rated like any block with a flagged sample: a device glitching at 14 mm/s for 80 %
    of a block raised a zone D 'warning'. The share of flagged samples is now counted: below ``min_share`` of usable
    samples the zone holds, and the waveform tag gets its 'sensor' alert; a block with a few flagged samples is still
    rated, unverified."""
    from maintenance.config import WaveformConfig

    fs, block = 1000.0, 1000
    asset = AssetConfig(name="F-2", waveforms=(WaveformConfig(tag="F-2.vel", fs_hz=fs, block=block),),
                        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))

    async def blocks(live, *shares):
        changes = []
        for b, share in enumerate(shares):  # share of the block's samples the device marks Uncertain
            t0 = T0 + timedelta(seconds=b)
            amplitude = 1.0 if share == 0 else 14.0 * np.sqrt(2)
            batch = [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * k / fs)),
                             float(amplitude * np.sin(2 * np.pi * 50 * k / fs)), t0,
                             quality=Quality.UNCERTAIN if k < share * block else Quality.GOOD,
                             flags=int(Flag.SOURCE_STATUS) if k < share * block else 0) for k in range(block)]
            changes += (await live.process(batch))[2]
        return changes

    changes = await blocks(MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,))), 0, 0.8, 0)
    assert [c for c in changes if c.alert.kind == "iso20816"] == []
    (sensor,) = [c for c in changes if c.alert.kind == "sensor"]
    assert (sensor.event, sensor.alert.tag, sensor.alert.evidence["problem"]) == ("raised", "F-2.vel",
                                                                                  "source_uncertain")
    assert sensor.alert.evidence["data_quality"]["source_uncertain"] == 0.8
    # A few flagged samples: rated, unverified (the RMS holds them too).
    changes = await blocks(MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,))), 0, 0.2, 0)
    raised = [c for c in changes if c.event == "raised"]
    assert [(c.alert.kind, c.alert.severity, c.alert.evidence["zone"]) for c in raised] == [
        ("iso20816", "warning", "D")]


async def test_a_waveform_sensor_sending_bad_samples_raises_its_sensor_alert():
    """A bad sample starts a new block (the samples must stay evenly spaced), so a waveform sensor whose device
    reports Bad for every sample made no block at all: no zone, and no sensor alert either; the sensor had died in
    silence, where a scalar tag's bad readings raise its 'sensor' alert. The samples a block never used are now
    counted per class, and a block's worth of them is judged as a block (here: bad)."""
    from maintenance.config import WaveformConfig

    fs, block = 1000.0, 1000
    asset = AssetConfig(name="F-2", waveforms=(WaveformConfig(tag="F-2.vel", fs_hz=fs, block=block),),
                        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))
    live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)))
    changes = []
    for b in range(6):
        t0 = T0 + timedelta(seconds=b)
        q = Quality.GOOD if b < 2 or b == 5 else Quality.BAD
        batch = [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * k / fs)),
                         float(np.sin(2 * np.pi * 50 * k / fs)), t0, quality=q) for k in range(block)]
        changes += (await live.process(batch))[2]
    sensor = [c for c in changes if c.alert.kind == "sensor"]
    assert [(c.event, c.alert.tag, c.alert.evidence["problem"]) for c in sensor][:1] == [("raised", "F-2.vel", "bad")]
    assert sensor[0].alert.evidence["data_quality"]["bad"] == 1.0
    assert not [c for c in changes if c.alert.kind == "iso20816"]


async def test_a_waveform_sensor_gone_silent_raises_a_no_data_alert():
    """A waveform sensor that stops sending (its cable, its DAQ) made no block and raised nothing, while a scalar
    tag silent for ``no_data_after_s`` raises its 'no data' sensor alert. A waveform tag is now judged the same way
    at each indicator window (its own limit if a ``silence`` group names it; 0: never)."""
    from maintenance.config import WaveformConfig

    fs, block = 1000.0, 1000
    asset = AssetConfig(name="F-2", process_tags=("F-2.temp",),
                        waveforms=(WaveformConfig(tag="F-2.vel", fs_hz=fs, block=block),),
                        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))

    async def run(quality: dict) -> list:
        cfg = MaintenanceConfig.model_validate({"window_s": 60, "hop_s": 10, "assets": [asset.model_dump()],
                                                "quality": quality})
        live, changes = MaintenanceLive(cfg), []
        for b in range(500):
            t0 = T0 + timedelta(seconds=b)
            batch = [Reading("F-2.temp", t0, 40.0 + 0.01 * (b % 7), t0)]
            if b < 3:
                batch += [Reading("F-2.vel", t0 + timedelta(microseconds=int(1e6 * k / fs)),
                                  float(np.sin(2 * np.pi * 50 * k / fs)), t0) for k in range(block)]
            changes += (await live.process(batch))[2]
        return [c for c in changes if c.alert.kind == "sensor"]

    (raised,) = await run({})
    assert (raised.event, raised.alert.tag, raised.alert.evidence["problem"]) == ("raised", "F-2.vel", "no_data")
    assert T0 + timedelta(seconds=300) <= raised.alert.raised_at <= T0 + timedelta(seconds=320)
    assert await run({"silence": [{"tags": ["F-2.vel"], "no_data_after_s": 0}]}) == []


async def test_silent_signals_give_no_anomaly_scores_and_keep_the_alert_open():
    """Signals that stop sending are missing, not healthy: no prediction is made from an empty window, and an open
    anomaly alert is not cleared because its sensors went offline."""
    live = MaintenanceLive(config())
    preds, changes = [], []
    for batch in pump_readings(800, fault_from=600):
        _, p, c = await live.process(batch)
        preds += p
        changes += c
    assert any(c.event == "raised" and c.alert.kind == "anomaly" for c in changes)
    silent_from = T0 + timedelta(seconds=800)
    for s in range(800, 1400):  # only another asset's tag arrives: the pump's signals are silent
        t = T0 + timedelta(seconds=s)
        _, p, c = await live.process([Reading("Q-1.flow", t, 1.0, t)])
        preds += p
        changes += c
    late = [p for p in preds if p.kind == "anomaly" and p.time > silent_from + timedelta(seconds=20)]
    assert late == []  # stale after 5 periods, window of 10 empty after that: nothing to score
    assert not [c for c in changes if c.event == "cleared" and c.alert.kind == "anomaly"]


async def test_a_day_long_gap_is_jumped_not_walked():
    live = MaintenanceLive(config())
    for batch in pump_readings(500, fault_from=10_000):
        await live.process(batch)
    scored, emitted = [], []
    score, emit = live._score, live.indicators._emit
    live._score = lambda slot, *a: (scored.append(slot), score(slot, *a))[1]
    live.indicators._emit = lambda end, now: (emitted.append(end), emit(end, now))[1]
    t = T0 + timedelta(days=1)
    _, preds, _ = await live.process([Reading(f"P-101.{k}", t, 1.0, t) for k in SIGNALS])
    # A period is scored per second and a window closed per hop only while they can hold data (the window and the
    # staleness horizon), not for each of the 86,400 seconds in between.
    assert len(scored) <= live.anomaly.horizon + 1 and len(emitted) <= 60 // 10 + 1
    # Predictions only where there was data: the periods just after the last readings, and the new one.
    assert all(p.time <= T0 + timedelta(seconds=600) or p.time == t + timedelta(seconds=1) for p in preds), \
        [p.time for p in preds]


async def _run(live: MaintenanceLive, batches) -> tuple[list, list]:
    preds, changes = [], []
    for batch in batches:
        _, p, c = await live.process(batch)
        preds += p
        changes += c
    return preds, changes


async def test_a_restart_during_a_fault_keeps_the_healthy_model(tmp_path, caplog):
    """The detector trained on the healthy start is saved when it is fitted and restored at the next start: a
    gateway restarted while the bearing fault lasts goes on scoring with the same model version at once (it used
    to train again on the faulty machine, calling the fault healthy and scoring nothing for the training time).
    Changed anomaly settings or a damaged file train again."""
    readings = list(pump_readings(1000, fault_from=600))
    live = MaintenanceLive(config(), state_dir=tmp_path)
    preds, _ = await _run(live, readings[:700])
    version = next(p.model_version for p in preds if p.kind == "anomaly")
    assert (tmp_path / "anomaly_models.npz").exists()

    with caplog.at_level(logging.INFO, logger="maintenance.live"):
        again = MaintenanceLive(config(), state_dir=tmp_path)  # the gateway restarted at second 700
    assert [r for r in caplog.records if getattr(r, "event", None) == "anomaly_state_restored"]
    preds, changes = await _run(again, readings[700:])
    scored = [p for p in preds if p.kind == "anomaly"]
    assert scored and {p.model_version for p in scored} == {version}
    assert scored[0].time <= T0 + timedelta(seconds=720)  # from the first full window, not after 400 s of training
    assert sum(p.p_value <= 0.01 for p in scored) > 200
    assert [c for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    # Without the saved model (the old behaviour) it trains on the faulty machine and sees nothing.
    fresh, _ = await _run(MaintenanceLive(config()), readings[700:])
    assert not [p for p in fresh if p.kind == "anomaly" and p.time < T0 + timedelta(seconds=1100)]

    other = config().model_copy(update={"assets": (config().assets[0].model_copy(update={
        "anomaly": config().assets[0].anomaly.model_copy(update={"alpha": 0.02})}),)})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maintenance.live"):
        retrained = MaintenanceLive(other, state_dir=tmp_path)
    assert retrained.anomaly.detectors == {}
    assert [r for r in caplog.records if getattr(r, "event", None) == "anomaly_state_mismatch"]
    path = tmp_path / "anomaly_models.npz"
    meta, arrays = read_state(path, 1)
    arrays["0.mean"] = arrays["0.mean"] + 1.0  # no longer the parameters of its version
    path.write_bytes(pack_state(meta, arrays, 1))
    assert MaintenanceLive(config(), state_dir=tmp_path).anomaly.detectors == {}
    path.write_bytes(b"PK\x03\x04 not a whole file")
    assert MaintenanceLive(config(), state_dir=tmp_path).anomaly.detectors == {}


def _store(dsn: str, batches) -> None:
    import psycopg

    from edge.db.migrate import migrate

    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        ids = {}
        for name in (f"P-101.{s}" for s in SIGNALS):
            ids[name] = conn.execute("INSERT INTO tags (name, asset) VALUES (%s, 'P-101') ON CONFLICT (name) DO "
                                     "UPDATE SET asset = EXCLUDED.asset RETURNING id", (name,)).fetchone()[0]
        with conn.cursor().copy("COPY readings (time, tag_id, value, quality, receive_time) FROM STDIN") as cp:
            for batch in batches:
                for r in batch:
                    cp.write_row((r.time, ids[r.tag], r.value, int(r.quality), r.receive_time))


def test_train_anomaly_again_on_a_healthy_period_from_the_database(tmp_path, pg_dsn):
    """Monitoring started on a faulty pump: the detector the gateway trained calls the fault healthy. After the
    overhaul, `valvoja maintenance train-anomaly --from` fits it on the stored healthy readings, exactly as the
    gateway would have from there; the gateway's next start serves it, and a new fault is flagged. Other assets'
    saved models are kept; too short a period is a clear error."""
    import subprocess
    import sys

    from ops_support import db_url

    faulty = [[Reading(r.tag, r.time, r.value, r.receive_time) for r in b] for b in pump_readings(500, fault_from=0)]
    overhauled = [[Reading(r.tag, r.time + timedelta(seconds=500), r.value, r.receive_time + timedelta(seconds=500))
                   for r in b] for b in pump_readings(500, fault_from=10_000, seed=4)]
    _store(pg_dsn, faulty + overhauled)
    cfg = config()
    other = AssetConfig(name="Q-1", anomaly=AnomalyAssetConfig(signals=("Q-1.a", "Q-1.b"), train_samples=100,
                                                               window=3, alpha=0.05))
    cfg = cfg.model_copy(update={"assets": (*cfg.assets, other)})
    state = tmp_path / "var"
    gw = MaintenanceLive(cfg, state_dir=state)  # the gateway's first start, on the faulty pump, and Q-1 healthy
    rng = np.random.default_rng(5)
    q1 = [[Reading(t, T0 + timedelta(seconds=s), float(rng.normal()), T0) for t in ("Q-1.a", "Q-1.b")]
          for s in range(150)]
    asyncio.run(_run(gw, [b + q for b, q in zip(faulty, q1, strict=False)] + faulty[150:]))
    learnt_fault = gw.anomaly.versions[0]
    q1_version = gw.anomaly.versions[1]

    site = tmp_path / "site.toml"
    signals = ", ".join(f'"P-101.{s}"' for s in SIGNALS)
    site.write_text(f"""
[site]
gateway_id = "gw-retrain"
state_dir = "var"

[database]
url = "{db_url(pg_dsn)}"

[maintenance]

[[maintenance.assets]]
name = "P-101"
anomaly = {{ signals = [{signals}], train_samples = 400, alpha = 0.01, window = 2, predict_every_s = 30 }}

[[maintenance.assets]]
name = "Q-1"
anomaly = {{ signals = ["Q-1.a", "Q-1.b"], train_samples = 100, window = 3, alpha = 0.05 }}
""")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge.cli", "maintenance", "train-anomaly", "-c", str(site),
                               "--asset", "P-101", *args], capture_output=True, text=True)

    short = cli("--from", (T0 + timedelta(seconds=500)).isoformat(), "--to", (T0 + timedelta(seconds=700)).isoformat())
    assert short.returncode == 1 and "training needs train_samples = 400" in short.stderr, short.stderr
    naive = cli("--from", "2026-02-01T00:08:20")
    assert naive.returncode == 2 and "no time zone" in naive.stderr
    done = cli("--from", (T0 + timedelta(seconds=500)).isoformat())
    assert done.returncode == 0, done.stderr

    # What the gateway would have trained, had it started at the overhaul.
    fresh = MaintenanceLive(config())
    asyncio.run(_run(fresh, overhauled))
    assert fresh.anomaly.versions[0] != learnt_fault
    assert fresh.anomaly.versions[0][:12] in done.stdout
    again = MaintenanceLive(cfg, state_dir=state)  # the gateway's next start
    assert again.anomaly.versions == {0: fresh.anomaly.versions[0], 1: q1_version}
    # Its record says the command made it, on the overhauled period (the gateway's own notes of the live path).
    made = {r["asset"]: r for r in again.detector_records()}
    assert made["P-101"]["version"] == fresh.anomaly.versions[0]
    assert (made["P-101"]["origin"], made["P-101"]["training_origin"]) == ("restored", "retrained")
    assert made["P-101"]["training_start"] >= T0 + timedelta(seconds=500) and made["P-101"]["training_samples"] == 400
    new_fault = [[Reading(r.tag, r.time + timedelta(seconds=1000), r.value, r.receive_time)
                  for r in b] for b in pump_readings(300, fault_from=0, seed=6)]
    _, changes = asyncio.run(_run(again, new_fault))
    assert [c for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]


def _noise(assets: dict[str, int], seconds: int, seed: int = 7, step: dict[str, tuple[int, float]] | None = None):
    """One batch per second: ``assets`` name -> signal count, N(0, 1) values; ``step`` name -> (from second, +x)."""
    rng = np.random.default_rng(seed)
    for s in range(seconds):
        t = T0 + timedelta(seconds=s)
        batch = []
        for name, k in assets.items():
            jump = step[name][1] if step and name in step and s >= step[name][0] else 0.0
            batch += [Reading(f"{name}.s{j}", t, float(rng.normal()) + jump, t) for j in range(k)]
        yield batch


def _asset(name: str, k: int, *, train: int = 100, window: int = 3, alpha: float = 0.05) -> AssetConfig:
    # window 3: 100 samples leave 20 disjoint calibration windows, enough for alpha 0.05 (19)
    return AssetConfig(name=name, anomaly=AnomalyAssetConfig(
        signals=tuple(f"{name}.s{j}" for j in range(k)), train_samples=train, window=window, alpha=alpha,
        predict_every_s=1, confirm=1))


async def test_an_asset_finishing_training_leaves_the_others_scores_alone():
    """A's scores are the same whether or not B (scored in the same bank) finishes training meanwhile: rebuilding
    the banks used to empty A's window of samples, so A's next scores were means of one or two samples."""
    alone = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 3),)))
    both = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 3), _asset("B", 3, train=160))))
    a_only, _ = await _run(alone, [[r for r in b if r.tag.startswith("A.")]
                                   for b in _noise({"A": 3, "B": 3}, 220)])
    mixed, _ = await _run(both, list(_noise({"A": 3, "B": 3}, 220)))
    assert both.anomaly.detectors.keys() == {0, 1} and len(both.anomaly.banks) == 1
    a_mixed = [(p.time, p.value, p.p_value) for p in mixed if p.asset == "A"]
    assert [(p.time, p.value, p.p_value) for p in a_only] == a_mixed and len(a_mixed) > 100


async def test_each_asset_is_scored_over_its_own_window():
    """Two assets with as many signals but different windows: each score is the mean over its own window (a bank
    used to take the longest, so a window-1 asset's step was diluted over 30 samples and went unseen). B's alpha 0.4:
    its 100 training samples leave two calibration windows of 30."""
    live = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 2, window=1), _asset("B", 2, window=30, alpha=0.4))))
    preds, _ = await _run(live, list(_noise({"A": 2, "B": 2}, 200, step={"A": (150, 8.0)})))
    first = next(p for p in preds if p.asset == "A" and p.time == T0 + timedelta(seconds=151))
    assert first.p_value <= 0.05
    assert sorted(bank.window for _, bank in live.anomaly.banks) == [1, 30]


def test_a_running_gateway_adopts_train_anomaly_and_never_writes_over_it(tmp_path, caplog):
    """`replace_detector` (what `valvoja maintenance train-anomaly` runs) changes one asset's entry while the
    gateway runs: the gateway scores with it from its next group of readings, and when it later saves a detector
    of its own the file keeps the replaced one. The file is never written over a version its writer has not
    read (edge.files.replace_if_unchanged)."""
    from edge.files import file_id, replace_if_unchanged
    from maintenance.live import replace_detector

    cfg = MaintenanceConfig(assets=(_asset("A", 3), _asset("B", 3, train=300)))
    gw = MaintenanceLive(cfg, state_dir=tmp_path)
    asyncio.run(_run(gw, list(_noise({"A": 3, "B": 3}, 150))))  # A trained and saved, B still training
    path = tmp_path / "anomaly_models.npz"
    before = gw.anomaly.versions[0]
    assert [(r["asset"], r["origin"]) for r in gw.detector_records()] == [("A", "self_trained")]

    other = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 3),)))  # "train-anomaly": A on other data
    asyncio.run(_run(other, list(_noise({"A": 3}, 150, seed=11))))
    new = other.anomaly.versions[0]
    assert new != before
    replace_detector(cfg, tmp_path, "A", other.anomaly.detectors[0], new,
                     dict(other.anomaly.made[0], origin="retrained"))

    with caplog.at_level(logging.WARNING, logger="maintenance.live"):
        preds, _ = asyncio.run(_run(gw, list(_noise({"A": 3, "B": 3}, 400, seed=12))[150:]))
    assert [r for r in caplog.records if getattr(r, "event", None) == "anomaly_model_replaced"]
    assert {p.model_version for p in preds if p.asset == "A"} == {new}
    # Each version that came into service is recorded: A's adopted one as made by the command, with its window.
    made = {(r["asset"], r["origin"]): r for r in gw.detector_records()}
    assert set(made) == {("A", "retrained"), ("B", "self_trained")}
    assert made["A", "retrained"]["version"] == new and made["A", "retrained"]["training_origin"] == "retrained"
    assert made["A", "retrained"]["training_end"] == datetime.fromisoformat(other.anomaly.made[0]["end"])
    assert 1 in gw.anomaly.detectors  # B finished training meanwhile and was saved, with A's replaced model
    saved = read_state(path, 1)[0]["assets"]
    assert saved["A"]["version"] == new and saved["B"]["version"] == gw.anomaly.versions[1]
    assert MaintenanceLive(cfg, state_dir=tmp_path).anomaly.versions == gw.anomaly.versions

    # The check behind it: a write expecting a version someone else has replaced since is refused.
    seen = file_id(path)
    replace_detector(cfg, tmp_path, "A", other.anomaly.detectors[0], new)  # another writer, same content
    assert file_id(path) != seen
    assert replace_if_unchanged(path, b"stale", seen) is None and path.read_bytes() != b"stale"
    assert replace_if_unchanged(path, b"fresh", file_id(path)) is not None and path.read_bytes() == b"fresh"


async def test_tags_sampled_every_tenth_of_a_second_fill_every_slot_of_their_windows():
    """`process` computes the slots of a batch itself: on a 0.1 s grid each reading has its own (in floating point
    40 % fell one slot early, overwriting their neighbours: the window's minimum here was 21, not 20)."""
    asset = AssetConfig(name="F", process_tags=("F.x",), process_stats=("min", "max", "mean"))
    live = MaintenanceLive(MaintenanceConfig(window_s=1, hop_s=1, period_s=0.1, assets=(asset,)))
    derived = []
    for k in range(40):
        t = T0 + timedelta(microseconds=100_000 * k)
        derived += (await live.process([Reading("F.x", t, float(k), t)]))[0]
    at3 = {r.tag: r.value for r in derived if r.time == T0 + timedelta(seconds=3)}
    assert (at3["F.x.min"], at3["F.x.max"], at3["F.x.mean"]) == (20.0, 29.0, 24.5)


async def test_a_restart_keeps_the_zone_hysteresis_of_an_open_zone_alert():
    """A vibration hovering just under the B/C boundary (inside the hysteresis band) keeps zone C and its alert
    open. After a restart or a configuration reload the zone tracker started without a zone: the first value
    read as zone B and the alert cleared, to be raised again (a new alert, notified again) at the next value
    above the boundary. Like a threshold rule's deadband, the zone of the open alert (loaded from the store
    before the first readings) is where the tracker starts."""
    def vib(live, seconds, value, start):
        async def go():
            out = []
            for s in range(start, start + seconds):
                t = T0 + timedelta(seconds=s)
                out.append(await live.process([Reading("F-1.vib", t, value, t)]))
            return out
        return go()

    live = MaintenanceLive(_vibration_only())
    first = await vib(live, 100, 1.0, 0) + await vib(live, 200, 1.5, 100)  # zone B, then C (boundary 1.4)
    raised = [c for _, _, ch in first for c in ch if c.event == "raised"]
    assert len(raised) == 1 and raised[0].alert.evidence["zone"] == "C"
    hover = await vib(live, 300, 1.35, 300)  # under 1.4 by less than 5 %: still C
    assert not [c for _, _, ch in hover for c in ch if c.event == "cleared"]

    again = MaintenanceLive(_vibration_only())  # restarted at 300 s
    a = raised[0]
    again.manager.load([(a.alert, a.occurrences, a.last_seen, 0, None)])
    after = await vib(again, 300, 1.35, 300)
    assert not [c for _, _, ch in after for c in ch if c.event == "cleared"]
    zones = [r.value for d, _, _ in after for r in d if r.tag == "F-1.vib.iso_zone"]
    assert zones and set(zones) == {2}  # zone C, as without the restart
    calm = await vib(again, 200, 1.0, 600)  # clearly below: down to B, and the alert clears
    assert [c.event for _, _, ch in calm for c in ch] == ["cleared"]


async def test_a_model_saved_before_disjoint_calibration_windows_trains_again(tmp_path, caplog):
    """A detector saved by a version that calibrated on overlapping windows (its key has no ``calibration``) held a
    false alarm rate above alpha: it is not restored but trained again, with a log that says why; no crash."""
    cfg = MaintenanceConfig(assets=(_asset("A", 2),))
    live = MaintenanceLive(cfg, state_dir=tmp_path)
    await _run(live, list(_noise({"A": 2}, 120)))
    path = tmp_path / "anomaly_models.npz"
    meta, arrays = read_state(path, 1)
    assert MaintenanceLive(cfg, state_dir=tmp_path).anomaly.detectors.keys() == {0}  # as saved: restored
    for key in ("calibration", "fit_fraction"):
        del meta["assets"]["A"]["key"][key]  # as the older version wrote it
    path.write_bytes(pack_state(meta, arrays, 1))
    with caplog.at_level(logging.WARNING, logger="maintenance.live"):
        again = MaintenanceLive(cfg, state_dir=tmp_path)
    assert again.anomaly.detectors == {} and 0 in again.anomaly.training
    (rec,) = [r for r in caplog.records if getattr(r, "event", None) == "anomaly_state_mismatch"]
    assert "overlapping windows" in rec.getMessage() and "training again" in rec.getMessage()
    preds, _ = await _run(again, list(_noise({"A": 2}, 120)))
    assert again.anomaly.detectors.keys() == {0} and preds


def _records(dsn: str, records: list[dict]) -> list[dict]:
    """Write detector records as the forwarder does (`edge.analytics.write_records`); the table's rows."""
    import psycopg
    from psycopg.rows import dict_row

    from edge.analytics import write_records
    from edge.db.migrate import migrate

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.transaction():
                assert await write_records(conn, [("detector_version", r) for r in records]) == []

    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    asyncio.run(go())
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM anomaly_detector_versions ORDER BY recorded_at").fetchall()


def test_a_detector_trained_live_is_recorded_once_with_its_training_window(tmp_path, pg_dsn):
    """A detector version that comes into service is recorded with what it was trained on: its samples' first and
    last time, how many, those left out as flagged, signals, alpha, calibration size and the settings' hash. A
    restart restoring it (or a replay of the record) adds no second row."""
    readings = list(pump_readings(500, fault_from=10_000))
    t = readings[50][0].time  # one flagged reading during training: that sample is left out, not trained on
    readings[50][0] = Reading(readings[50][0].tag, t, 99.0, t, Quality.UNCERTAIN, int(Flag.OUT_OF_RANGE))
    live = MaintenanceLive(config(), state_dir=tmp_path)
    asyncio.run(_run(live, readings))
    (rec,) = live.detector_records()
    assert live.detector_records() == []  # handed over once
    assert rec["version"] == live.anomaly.versions[0] and rec["origin"] == "self_trained"
    assert rec["training_start"] == T0 + timedelta(seconds=1)  # a sample's time is its 1 s slot's end
    assert rec["training_samples"] == 400 and rec["left_out_flagged"] == 1 and rec["left_out_incomplete"] == 0
    assert rec["training_end"] == T0 + timedelta(seconds=401)  # 400 samples and the flagged one
    assert rec["signals"] == live.anomaly.detectors[0].signals_ and rec["alpha"] == 0.01
    assert rec["calibration_size"] == len(live.anomaly.detectors[0].calibration_) > 99
    rows = _records(pg_dsn, [rec])
    assert len(rows) == 1 and rows[0]["origin"] == "self_trained" and rows[0]["training_end"] == rec["training_end"]
    assert len(rows[0]["config_sha256"]) == 64 and rows[0]["config"]["train_samples"] == 400

    again = MaintenanceLive(config(), state_dir=tmp_path)  # the restart restores it, with what it was trained on
    (restored,) = again.detector_records()
    assert restored["origin"] == "restored" and restored["training_origin"] == "self_trained"
    assert (restored["version"], restored["training_start"], restored["training_end"]) == \
        (rec["version"], rec["training_start"], rec["training_end"])
    assert _records(pg_dsn, [restored, rec]) == rows  # no second row: the first record of a version stays


async def test_a_gap_in_readings_raises_no_anomaly_alert():
    """A machine that stops sending (stopped, its gateway off) and comes back is scored on full windows of real
    samples only. The last values used to be carried forward for 5 periods and the window then emptied, so the
    scores at the gap's start and right after it were means of one or two samples: measured with 100 assets of
    i.i.d. healthy signals (window 5, alpha 0.05), 43 % of the scores at the gap's start and 49 % of the first ones
    after it were p <= alpha (0.04 elsewhere), and a 60 s gap raised 49 false anomaly alerts (confirm 5)."""
    n = 40
    live = MaintenanceLive(MaintenanceConfig(assets=tuple(_asset(f"A{i}", 3) for i in range(n))))
    batches = [b for s, b in enumerate(_noise({f"A{i}": 3 for i in range(n)}, 260)) if not 200 <= s < 230]
    preds, changes = await _run(live, batches)
    gap = [p for p in preds if T0 + timedelta(seconds=201) < p.time <= T0 + timedelta(seconds=230)]
    assert gap == []  # no sample, no score: nothing was measured
    after = [p.p_value <= 0.05 for p in preds if T0 + timedelta(seconds=230) < p.time <= T0 + timedelta(seconds=233)]
    steady = [p.p_value <= 0.05 for p in preds if T0 + timedelta(seconds=110) < p.time <= T0 + timedelta(seconds=200)]
    assert len(after) == 3 * n and np.mean(after) <= 0.12, np.mean(after)  # scored at once, as flagged as steady
    assert np.mean(steady) <= 0.08
    # The gap's start and the resume raise no more alerts than as many calm seconds do (confirm 1 here).
    raised = [c.alert.raised_at for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    around = sum(T0 + timedelta(seconds=200) <= r <= T0 + timedelta(seconds=234) for r in raised)
    assert around <= 0.12 * 4 * n, (around, len(raised))


async def test_scores_start_on_a_full_window_after_training():
    """The first score after the detector is fitted is the mean of a full window of samples, like every calibration
    score: it used to be the mean of the first sample alone (window 3: three times the variance)."""
    live = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 3),)))
    preds, _ = await _run(live, list(_noise({"A": 3}, 110)))
    # 100 training samples (the periods ending at 1..100 s); the bank made with the last of them takes it as its
    # first sample, and its window of 3 is full two periods later.
    assert min(p.time for p in preds) == T0 + timedelta(seconds=102)


def _slow_vibration(step_s: int, value, flags: int = 0):
    """One reading of P-101.vib_de every ``step_s`` seconds for 400 s: 1.0 mm/s (zone B here), then ``value`` from
    200 s on."""
    for s in range(0, 400, step_s):
        t = T0 + timedelta(seconds=s)
        yield [Reading("P-101.vib_de", t, 1.0 if s < 200 else value, t, flags=flags if s >= 200 else 0)]


async def test_a_vibration_tag_sampled_slower_than_period_s_is_rated_in_zones():
    """A vibration tag read every 3 s (an OPC UA sampling interval, `period_s` 1) filled a third of each 60 s window,
    below `min_share` (0.5): no zone, no `iso_zone` reading and no alert, ever, for 5 mm/s (zone D here); its
    indicators were all UNCERTAIN. The share is now of the readings its own step leaves room for."""
    for step in (3, 7):
        live = MaintenanceLive(config())
        derived, changes = [], []
        for batch in _slow_vibration(step, 5.0):
            d, _, c = await live.process(batch)
            derived += d
            changes += c
        zone = [c.alert for c in changes if c.alert.kind == "iso20816"]
        assert zone and zone[-1].severity == "critical" and zone[-1].evidence["zone"] == "D", step
        assert zone[0].raised_at <= T0 + timedelta(seconds=240)
        assert zone[-1].evidence["data_quality"]["good"] >= 0.5
        means = [r for r in derived if r.tag == "P-101.vib_de.mean" and r.time > T0 + timedelta(seconds=60)]
        assert means and all(r.quality == Quality.GOOD for r in means)


async def test_a_sensor_sampled_slower_than_period_s_raises_its_sensor_alert():
    """Out of range in every reading, one every 3 s: a third of the window's slots, below `sensor_share`, so its
    sensor alert never came; its evidence now gives the shares of its own readings."""
    live = MaintenanceLive(config())
    _, changes = await _run(live, _slow_vibration(3, 25.0, int(Flag.OUT_OF_RANGE)))
    sensor = [c.alert for c in changes if c.alert.kind == "sensor" and c.event == "raised"]
    assert sensor and sensor[0].tag == "P-101.vib_de" and sensor[0].evidence["problem"] == "out_of_range"
    dq = sensor[0].evidence["data_quality"]
    assert dq["out_of_range"] >= 0.5 and 0 <= dq["missing"] <= 0.5


async def test_a_sparse_first_window_of_a_fast_tag_still_holds_the_zone():
    """The share is of the tag's own step: 10 readings a second apart at the end of a window (after a start) are a
    sixth of it, not a full window of a tag sampled every 6 s."""
    live = MaintenanceLive(config())
    batches = [[Reading("P-101.vib_de", t, 5.0, t)] for t in (T0 + timedelta(seconds=50 + s) for s in range(10))]
    derived, changes = [], []
    for b in [*batches, [Reading("P-101.vib_de", T0 + timedelta(seconds=61), 5.0, T0)]]:
        d, _, c = await live.process(b)
        derived += d
        changes += c
    assert not [r for r in derived if r.tag.endswith("iso_zone")] and not changes


async def test_the_live_false_alarm_rate_is_at_most_alpha_with_the_defaults():
    """The claim of the conformal p-values, measured through the live path (sample assembly, banks, calibration on
    disjoint windows) with `AnomalyAssetConfig`'s defaults (1,800 training samples, window 10, alpha 0.01) on healthy
    i.i.d. signals: 20 assets x 2,000 scored seconds. Measured 2026-12-07: 0.0087 (100 assets x 3,000 s), 0.0097
    with every signal every 2 s, 0.0098 with one signal every 3 s."""
    n, k = 20, 3
    live = MaintenanceLive(MaintenanceConfig(assets=tuple(
        AssetConfig(name=f"A{i}", anomaly=AnomalyAssetConfig(signals=tuple(f"A{i}.s{j}" for j in range(k)),
                                                             predict_every_s=1)) for i in range(n))))
    preds, changes = await _run(live, _noise({f"A{i}": k for i in range(n)}, 3800, seed=11))
    p = np.array([x.p_value for x in preds])
    assert len(p) >= n * 1950
    assert np.mean(p <= 0.01) <= 0.0125, np.mean(p <= 0.01)  # sd of the estimate ~0.0015 (window-10 correlation)
    assert np.mean(p <= 0.05) <= 0.06
    # Per alert: the default confirm (2 x window) outlasts a chance flag's run over overlapping windows. At confirm
    # 5 this data (11 asset-hours) raised 5 false anomaly alerts, at 10 none.
    false_alerts = [c for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    assert not false_alerts, [(c.alert.asset, c.alert.raised_at) for c in false_alerts]


async def test_the_anomaly_alert_names_the_faulty_signal_among_correlated_ones():
    """Mahalanobis score on three strongly correlated signals: one drifts 4 sd away from the others (a sensor or the
    part it measures), the others as before. The alert's first top signal is that one, with most of the share."""
    rng = np.random.default_rng(5)
    asset = AssetConfig(name="C", anomaly=AnomalyAssetConfig(
        signals=("C.a", "C.b", "C.c"), train_samples=300, window=3, alpha=0.05, score="mahalanobis",
        predict_every_s=1))
    live = MaintenanceLive(MaintenanceConfig(assets=(asset,)))
    batches = []
    for s in range(400):
        t = T0 + timedelta(seconds=s)
        common = rng.normal()
        v = common + 0.2 * rng.normal(size=3)
        v[1] += 4.0 if s >= 350 else 0.0  # 4 sd of the common signal: b leaves a and c
        batches.append([Reading(f"C.{n}", t, float(x), t) for n, x in zip("abc", v, strict=True)])
    _, changes = await _run(live, batches)
    raised = [c.alert for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    assert raised and raised[0].raised_at > T0 + timedelta(seconds=350)
    top = raised[0].evidence["top_signals"]
    assert top[0]["signal"] == "C.b" and top[0]["share"] >= 0.5, top


async def test_an_asset_whose_windows_are_never_full_says_so(caplog):
    """A sensor whose device marks every fourth reading Uncertain (a sensor problem: left out) leaves a gap in every
    window of 10, so the asset is never scored (a score needs every signal in each sample of its window): logged
    once, naming that signal, instead of a detector gone quiet without a word."""
    live = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 2, train=320, window=10),)))  # 19 windows for 0.05
    batches = []
    for s, b in enumerate(_noise({"A": 2}, 900)):
        doubt = s >= 400 and s % 4 == 0
        batches.append([replace(r, quality=Quality.UNCERTAIN) if doubt and r.tag == "A.s1" else r for r in b])
    with caplog.at_level(logging.WARNING, logger="maintenance.live"):
        preds, _ = await _run(live, batches)
    said = [r for r in caplog.records if getattr(r, "event", None) == "anomaly_unscored"]
    assert live.anomaly.detectors and not [p for p in preds if p.time > T0 + timedelta(seconds=410)]
    assert len(said) == 1 and "A.s1" in said[0].getMessage() and "A.s0" not in said[0].getMessage()


async def test_a_signal_sampled_slower_than_the_period_is_carried_to_its_next_reading():
    """A signal read every 10 s (`period_s` 1) is carried forward to its next reading, in training and in scoring
    alike. Carried 5 periods only, it left a gap in every window of 10: scored on what was left (the mean of one
    value where calibration had two), measured with 50 assets x 6,000 s at the defaults, 0.029 of the healthy scores
    were p <= 0.01 and 49 false alerts came; now 0.0128 (the calibration windows, aligned with the signal's step,
    are not quite exchangeable with the live ones) and 31."""
    live = MaintenanceLive(MaintenanceConfig(assets=(_asset("A", 2, train=320, window=10),)))
    batches = [[r for r in b if r.tag == "A.s0" or s % 10 == 0] for s, b in enumerate(_noise({"A": 2}, 900))]
    preds, _ = await _run(live, batches)
    assert len(preds) >= 250  # scored every second after training (about 330 s)
    assert live.anomaly.step[0, 1] == 10 and live.anomaly.step[0, 0] == 1


def _stops(seconds: int, stops: list[tuple[int, int]], seed: int = 9):
    """A running machine (speed ~1000, two signals ~N(0, 1)) stopped during each (from, to): speed 0, the signals 5 sd
    below their running level (no load, no flow)."""
    rng = np.random.default_rng(seed)
    for s in range(seconds):
        t = T0 + timedelta(seconds=s)
        down = any(a <= s < b for a, b in stops)
        v = rng.normal(size=2) - (5.0 if down else 0.0)
        speed = 0.0 if down else 1000.0 + rng.normal()
        yield [Reading("M.s0", t, float(v[0]), t), Reading("M.s1", t, float(v[1]), t), Reading("M.speed", t, speed, t)]


async def test_a_stopped_machine_is_neither_trained_on_nor_scored_with_running_tag():
    """Without `running_tag` a stop is anomalous operation: an alert at every stop (here: a 60 s stop after
    training), and a stop during training is learnt as healthy (a 20 s stop among the 40 samples the means are fit
    on: speed's mean 474, its scale so wide that a later stop raised nothing). With it, the stopped periods are no
    samples: no alert, nothing stored for them, and the detector trained on the running samples only."""
    def asset(**kw):
        return AssetConfig(name="M", anomaly=AnomalyAssetConfig(
            signals=("M.s0", "M.s1", "M.speed"), train_samples=100, window=3, alpha=0.05, predict_every_s=1,
            max_drift=None, **kw))
    stops = [(10, 30), (300, 360)]  # one during training, one after
    plain, learnt, gated = (MaintenanceLive(MaintenanceConfig(assets=(a,)))
                            for a in (asset(), asset(), asset(running_tag="M.speed", running_above=100)))
    _, changes = await _run(plain, _stops(500, stops[1:]))
    assert [c for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    await _run(learnt, _stops(200, stops[:1]))
    assert learnt.anomaly.detectors[0].mean_[2] < 900  # the stop's speed 0 went into "healthy"
    preds, changes = await _run(gated, _stops(500, stops))
    assert not [c for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    det = gated.anomaly.detectors[0]
    assert abs(det.mean_[2] - 1000) < 1 and abs(det.mean_[0]) < 0.5
    assert not [p for p in preds if T0 + timedelta(seconds=301) <= p.time <= T0 + timedelta(seconds=360)]
    assert [p for p in preds if p.time > T0 + timedelta(seconds=365)]  # scored again once it runs
    made = gated.detector_records()[0]
    assert made["config"]["running_tag"] == "M.speed" and made["training_samples"] == 100


def test_running_tag_must_be_one_of_the_signals():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"running_tag 'M\.x' must be one of signals"):
        AnomalyAssetConfig(signals=("M.s0",), train_samples=400, window=1, running_tag="M.x")


async def test_a_vibration_steady_on_a_boundary_is_rated_in_the_upper_zone():
    """A pump (group 2 rigid: 1.4/2.8/4.5 mm/s) read every 3 s, steady at 2.8 mm/s: each window's mean of its 20
    readings was 2.7999999999999994, zone B, and no warning ever came, though a value on a boundary is documented
    to be in the upper zone (C). Likewise a group 1 machine at 7.1 mm/s as a float32 value (7.0999999046): zone C
    (warning) for good instead of D (critical)."""
    for group, value, zone_index, severity in ((2, 2.8, 2, "warning"), (1, float(np.float32(7.1)), 3, "critical")):
        asset = AssetConfig(name="P-1", vibration_tags=("P-1.vib",), iso20816=ZoneConfig(group=group))
        live = MaintenanceLive(MaintenanceConfig(assets=(asset,)))
        derived, changes = [], []
        for s in range(0, 300, 3):
            t = T0 + timedelta(seconds=s)
            d, _, c = await live.process([Reading("P-1.vib", t, value, t)])
            derived += d
            changes += c
        zones = [r.value for r in derived if r.tag == "P-1.vib.iso_zone"]
        assert zones and set(zones) == {zone_index}, (group, zones)
        raised = [c.alert for c in changes if c.event == "raised"]
        assert [a.severity for a in raised] == [severity], raised


async def test_zones_rate_the_velocity_rms_over_the_window_not_the_mean_of_readings():
    """Each reading of a velocity RMS tag is the RMS over its second; the velocity RMS over the window, the quantity
    ISO 20816 rates, is their quadratic mean. A group 2 rigid pump (1.4/2.8/4.5 mm/s) alternating 6.4 and 1.0 mm/s
    (a load cycle, intermittent impacts) was rated on the plain mean, 3.7 mm/s: zone C, a warning, for a velocity
    RMS of 4.58 mm/s, zone D (critical)."""
    asset = AssetConfig(name="P-1", vibration_tags=("P-1.vib",), iso20816=ZoneConfig(group=2))
    live = MaintenanceLive(MaintenanceConfig(assets=(asset,)))
    derived, changes = [], []
    for s in range(300):
        t = T0 + timedelta(seconds=s)
        d, _, c = await live.process([Reading("P-1.vib", t, 6.4 if s % 2 else 1.0, t)])
        derived += d
        changes += c
    means = {r.value for r in derived if r.tag == "P-1.vib.mean" and r.time >= T0 + timedelta(seconds=60)}
    assert means == {3.7}  # the plain mean, as the indicator still says
    raised = [c.alert for c in changes if c.event == "raised"]
    assert [(a.severity, a.evidence["zone"]) for a in raised] == [("critical", "D")], raised
    assert raised[0].evidence["velocity_rms_mm_s"] == pytest.approx(np.sqrt((6.4**2 + 1.0) / 2))
    assert "vibration 4.58 mm/s in ISO 20816-3 zone D" in raised[0].message


def _wander(assets: dict[str, float | tuple[float, float, float]], seconds: int, seed: int,
            step: tuple[str, int, float] | None = None):
    """One batch per second: 3 healthy signals per asset, each an AR(1) process of coefficient ``assets[name]`` (one
    for all three, or one each; unit variance: a signal that wanders over (1 + phi) / (1 - phi) seconds); ``step``
    (asset, from second, +x) on its s0."""
    rng = np.random.default_rng(seed)
    phi = np.concatenate([np.broadcast_to(np.asarray(assets[n], float), 3) for n in assets])
    x = rng.standard_normal(phi.size)
    for s in range(seconds):
        x = phi * x + rng.standard_normal(phi.size) * np.sqrt(1 - phi**2)
        t = T0 + timedelta(seconds=s)
        batch = []
        for i, name in enumerate(assets):
            jump = step[2] if step and step[0] == name and s >= step[1] else 0.0
            batch += [Reading(f"{name}.s{j}", t, float(x[3 * i + j]) + (jump if j == 0 else 0.0), t) for j in range(3)]
        yield batch


async def test_slowly_wandering_healthy_signals_raise_no_false_anomaly_alerts_with_the_default_confirm():
    """Healthy signals that wander over ~30 s (AR(1), phi 0.97), the defaults (1,800 training samples, window 10, alpha
    0.01, confirm unset): flags come in runs as long as the wander, and with the old default confirm of 2 x window (20)
    these 8 assets x 3,300 scored seconds raised false anomaly alerts (17 per asset-day in bench/bench_false_alarms.py).
    The default confirm is now also twice the correlation time measured in training (60-300 here), stated in each
    prediction; none is raised, and a step of 4 SD on asset F is still alerted."""
    healthy = {f"A{i}": 0.97 for i in range(8)}
    assets = tuple(AssetConfig(name=n, anomaly=AnomalyAssetConfig(signals=tuple(f"{n}.s{j}" for j in range(3))))
                   for n in (*healthy, "F"))
    live = MaintenanceLive(MaintenanceConfig(assets=assets))
    preds, changes = await _run(live, _wander(healthy | {"F": 0.97}, 5100, seed=3, step=("F", 4200, 4.0)))
    raised = [(c.alert.asset, c.alert.raised_at) for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    assert [a for a, _ in raised] == ["F"], raised
    assert T0 + timedelta(seconds=4200) < raised[0][1] <= T0 + timedelta(seconds=4200 + 900)
    confirms = {p.asset: p.details["confirm"] for p in preds if p.kind == "anomaly"}
    assert all(60 <= c <= 300 for c in confirms.values()) and len(confirms) == 9, confirms


async def test_a_model_saved_before_the_correlation_time_was_measured_is_restored_as_it_was(tmp_path, caplog):
    """A state file written before detectors measured their signals' correlation time has no ``decorrelation`` array
    and versions hashed without it: it is restored under its own version (no training again), and alerts are confirmed
    after 2 x window flagged samples as they were then (unless confirm is set); the log says so. A new fit saves it."""
    cfg = MaintenanceConfig(assets=(AssetConfig(name="A", anomaly=AnomalyAssetConfig(
        signals=("A.s0", "A.s1"), train_samples=100, window=3, alpha=0.05, predict_every_s=1)),))
    live = MaintenanceLive(cfg, state_dir=tmp_path)
    await _run(live, list(_noise({"A": 2}, 120)))
    path = tmp_path / "anomaly_models.npz"
    meta, arrays = read_state(path, 1)
    assert "0.decorrelation" in arrays and live.anomaly.detectors[0].decorrelation_ is not None
    old = copy.copy(live.anomaly.detectors[0])
    old.decorrelation_ = None
    del arrays["0.decorrelation"]
    meta["assets"]["A"]["version"] = detector_version(old)  # as the older version hashed it
    path.write_bytes(pack_state(meta, arrays, 1))
    with caplog.at_level(logging.INFO, logger="maintenance.live"):
        again = MaintenanceLive(cfg, state_dir=tmp_path)
    assert again.anomaly.versions == {0: detector_version(old)} and again.anomaly.detectors[0].decorrelation_ is None
    (rec,) = [r for r in caplog.records if getattr(r, "event", None) == "anomaly_state_restored"]
    assert "2 x window" in rec.getMessage()
    preds, _ = await _run(again, list(_noise({"A": 2}, 40, seed=8)))
    assert preds and {p.details["confirm"] for p in preds} == {6} and {p.model_version for p in preds} == {
        detector_version(old)}


async def test_a_training_too_short_for_its_signals_time_scale_says_so(caplog):
    """400 training samples of signals that wander over ~30 s hold about 8 independent stretches: the p-values' alpha
    is not held on such data (maintenance/README.md), so the fit says so once, with the confirmation it chose; the
    same training on signals independent from second to second says nothing."""
    def asset(name):
        return AssetConfig(name=name, anomaly=AnomalyAssetConfig(signals=tuple(f"{name}.s{j}" for j in range(3)),
                                                                 train_samples=400, window=3, alpha=0.05))

    with caplog.at_level(logging.WARNING, logger="maintenance.live"):
        await _run(MaintenanceLive(MaintenanceConfig(assets=(asset("S"),))), _wander({"S": 0.97}, 420, seed=4))
        await _run(MaintenanceLive(MaintenanceConfig(assets=(asset("Q"),))), _noise({"Q": 3}, 420))
    said = [r for r in caplog.records if getattr(r, "event", None) == "anomaly_slow_signals"]
    assert [r.asset for r in said] == ["S"] and "train on more" in said[0].getMessage(), said


async def test_a_fault_on_a_fast_signal_is_not_held_back_by_a_slow_one_on_the_same_asset():
    """Assets with two signals independent from second to second and one wandering over ~100 s (a temperature beside
    vibrations; `max_drift` unset so the slow one stays): the asset's default confirmation is the slow signal's
    (hundreds of samples), and a 4 SD step of a fast signal used to wait for it. A run of the fast signal's own flags
    now confirms at its own length, 20, stated per signal in each prediction (``confirm_by_signal``; 0: the asset's);
    the healthy ones raise nothing in 4 x 3,300 s."""
    mixed = (0.0, 0.0, 0.99)
    assets = tuple(AssetConfig(name=n, anomaly=AnomalyAssetConfig(signals=tuple(f"{n}.s{j}" for j in range(3)),
                                                                  max_drift=None))
                   for n in ("M0", "M1", "M2", "M3", "G"))
    live = MaintenanceLive(MaintenanceConfig(assets=assets))
    preds, changes = await _run(live, _wander({a.name: mixed for a in assets}, 5100, seed=6, step=("G", 4200, 4.0)))
    raised = [(c.alert.asset, c.alert.raised_at) for c in changes if c.event == "raised" and c.alert.kind == "anomaly"]
    assert [a for a, _ in raised] == ["G"], raised
    assert T0 + timedelta(seconds=4200) < raised[0][1] <= T0 + timedelta(seconds=4200 + 40)
    g = [p for p in preds if p.asset == "G"][-1].details
    assert g["confirm"] > 100 and g["confirm_by_signal"] == [20, 20, 0], g
