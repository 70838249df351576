"""The plant model: deterministic with a seed, and each fault changes the signals it should (no I/O)."""

from __future__ import annotations

import math
from statistics import mean

import pytest

from collectors.simulator import faults as faultlib
from collectors.simulator.faults import Fault
from collectors.simulator.plant import Plant, PlantConfig


def run(plant: Plant, steps: int, dt_s: float = 1.0) -> list[dict]:
    """Per step: tag -> (value, status)."""
    return [{s.tag: (s.value, s.status) for s in plant.step(dt_s)} for _ in range(steps)]


def series(rows: list[dict], tag: str) -> list:
    return [r[tag][0] for r in rows if tag in r]


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_same_seed_same_plant_other_seed_other_plant():
    spec = ["P-101:bearing@60", "K1.NOx:nan,p=0.2", "P-102.flow:freeze@30+60"]
    a = run(Plant(PlantConfig(seed=11), faults=spec), 300)
    b = run(Plant(PlantConfig(seed=11), faults=spec), 300)
    c = run(Plant(PlantConfig(seed=12), faults=spec), 300)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys() and all(same(ra[k][0], rb[k][0]) for k in ra)
    assert series(a, "P-101.vib_de") != series(c, "P-101.vib_de")
    assert series(a, "K1.NOx") != series(c, "K1.NOx")


def test_a_fault_on_one_pump_leaves_the_others_untouched():
    base = run(Plant(PlantConfig(seed=3)), 200)
    faulty = run(Plant(PlantConfig(seed=3), faults=["P-101:bearing"]), 200)
    for tag in ("P-102.vib_de", "P-103.flow", "K1.NOx", "P-102.bearing_temp"):
        assert series(base, tag) == series(faulty, tag), tag
    assert series(base, "P-101.vib_de_kurtosis") != series(faulty, "P-101.vib_de_kurtosis")


def test_bearing_fault_raises_kurtosis_crest_rms_and_temperature():
    base = run(Plant(PlantConfig(seed=4)), 1200)
    faulty = run(Plant(PlantConfig(seed=4), faults=["P-101:bearing@600"]), 1200)
    before, after = slice(0, 600), slice(900, 1200)
    k = series(faulty, "P-101.vib_de_kurtosis")
    assert mean(k[before]) < 3.0 < 4.0 < mean(k[after])
    assert mean(series(faulty, "P-101.vib_de_crest")[after]) > mean(series(base, "P-101.vib_de_crest")[after]) + 1.0
    assert mean(series(faulty, "P-101.vib_de")[after]) > 1.3 * mean(series(base, "P-101.vib_de")[after])
    assert series(faulty, "P-101.bearing_temp")[-1] > series(base, "P-101.bearing_temp")[-1] + 4.0
    assert mean(series(faulty, "P-102.vib_de_kurtosis")) < 3.0


def test_cavitation_lowers_flow_and_pressure_and_shakes_the_pump():
    base = run(Plant(PlantConfig(seed=5)), 600)
    cav = run(Plant(PlantConfig(seed=5), faults=["P-102:cavitation@300"]), 600)
    after = slice(300, 600)
    for tag, factor in (("P-102.flow", 0.92), ("P-102.discharge_pressure", 0.95)):
        assert mean(series(cav, tag)[after]) < factor * mean(series(base, tag)[after]), tag
    assert mean(series(cav, "P-102.vib_de")[after]) > 1.5 * mean(series(base, "P-102.vib_de")[after])
    assert series(cav, "P-102.flow")[:299] == series(base, "P-102.flow")[:299]  # step 300 is t = 300 s


def test_stopped_pump_and_boiler_shutdown_sequence():
    rows = run(Plant(PlantConfig(seed=6), faults=["P-103:stop@60", "K1:shutdown@600+3600"]), 480, dt_s=10.0)
    assert series(rows, "P-103.running")[5:] == [False] * (480 - 5) and series(rows, "P-103.running")[4]
    assert max(series(rows, "P-103.flow")[5:]) == 0.0 and max(series(rows, "P-103.motor_current")[5:]) == 0.0
    states = series(rows, "K1.state")
    order = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert order == [2, 3, 0, 1, 2]
    off = [i for i, s in enumerate(states) if s == 0]
    assert max(series(rows, "K1.NOx")[i] for i in off) < 3.0
    assert min(series(rows, "K1.O2")[i] for i in off) > 20.5
    assert max(series(rows, "K1.fuel")[i] for i in off) == 0.0


def test_sensor_faults_hit_only_their_tags():
    rows = run(Plant(PlantConfig(seed=7), faults=[
        "P-103.vib_de:sensor_failure@10+20", "P-101.bearing_temp:freeze@10+20", "K1.CO:nan,p=0.3",
        "P-102:uncertain@5+5", "SITE.ambient_temp:drift,rate=3600"]), 60)
    bad = [(i, tag) for i, r in enumerate(rows) for tag, (v, st) in r.items() if st == faultlib.BAD_SENSOR_FAILURE]
    assert {tag for _, tag in bad} == {"P-103.vib_de"} and {i for i, _ in bad} == set(range(9, 29))
    assert all(rows[i]["P-103.vib_de"][0] is None for i, _ in bad)
    frozen = series(rows, "P-101.bearing_temp")
    assert len(set(frozen[9:29])) == 1 and frozen[29] != frozen[28] and len(set(frozen[:10])) == 10
    unc = {tag for r in rows for tag, (v, st) in r.items() if st == faultlib.UNCERTAIN_SENSOR_NOT_ACCURATE}
    assert unc == {f"P-102.{sig}" for sig in ("vib_de", "vib_de_peak", "vib_de_crest", "vib_de_kurtosis",
                                              "bearing_temp", "motor_current", "flow", "discharge_pressure", "speed",
                                              "running")}
    nans = sum(math.isnan(v) for v in series(rows, "K1.CO"))
    assert 5 <= nans <= 35
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for t, (v, _) in r.items() if t != "K1.CO")
    base = run(Plant(PlantConfig(seed=7)), 60)
    drift = [a - b for a, b in zip(series(rows, "SITE.ambient_temp"), series(base, "SITE.ambient_temp"), strict=True)]
    assert drift[-1] == pytest.approx(60.0, abs=0.01)  # 3600 units/h for 60 s


def test_analyser_drift_shows_in_measurements_and_qal3_checks():
    cfg = PlantConfig(seed=8, qal3_interval_s=3600.0)
    base = run(Plant(cfg), 48, dt_s=900.0)
    drift = run(Plant(cfg, faults=["K1.NOx:drift,rate=0.5"]), 48, dt_s=900.0)  # 12 h
    zeros = series(drift, "K1.NOx.zero")
    assert len(zeros) == 12 and zeros[-1] > zeros[0] + 4.0
    assert series(drift, "K1.NOx.span")[-1] > 80.0 + 4.0
    assert series(drift, "K1.NOx")[-1] - series(base, "K1.NOx")[-1] == pytest.approx(0.5 * 12, abs=0.01)
    assert len(series(base, "K1.NOx.zero")) == 12 and abs(series(base, "K1.NOx.zero")[-1]) < 2.0


def test_a_drift_on_the_whole_stack_drifts_its_nox_and_qal3_checks_too():
    # K1:drift moved every K1 tag but NOx (its drift is applied by the analyser model, which heard only K1.NOx:drift).
    cfg = PlantConfig(seed=8, qal3_interval_s=3600.0)
    base = run(Plant(cfg), 12, dt_s=600.0)
    drift = run(Plant(cfg, faults=["K1:drift,rate=10"]), 12, dt_s=600.0)  # 2 h
    for tag in ("K1.NOx", "K1.O2"):
        assert series(drift, tag)[-1] - series(base, tag)[-1] == pytest.approx(20.0, abs=0.01), tag
    # The last check, at 4,200 s: the analyser's drift once (not once more as a K1 tag).
    assert series(drift, "K1.NOx.span")[-1] - series(base, "K1.NOx.span")[-1] == pytest.approx(10 * 4200 / 3600,
                                                                                               abs=0.01)


def test_bearing_wear_progresses_to_end_of_life():
    # The README's figures: P-103 in zone D after about 55 simulated hours, wear 1.0 (5.5 mm/s) after about 65 (it
    # said 90, a third longer than the model takes).
    plant = Plant(PlantConfig(seed=9))
    hours, zone_d = 0.0, None
    while plant.pumps[2].wear < 1.0:
        vib = next(s.value for s in plant.step(60.0) if s.tag == "P-103.vib_de")
        hours += 1 / 60
        zone_d = zone_d or (hours if vib > 4.5 else None)
    assert 50 < zone_d < 60 and 60 < hours < 70 and vib == pytest.approx(5.5, abs=0.3)
    plant = Plant(PlantConfig(seed=9))
    start = plant.pumps[2].wear
    early = mean(series(run(plant, 24, dt_s=60.0), "P-103.vib_de"))
    run(plant, 100, dt_s=3600.0)  # 100 simulated hours
    late = mean(series(run(plant, 24, dt_s=60.0), "P-103.vib_de"))
    assert plant.pumps[2].wear > 1.0 > start and plant.pumps[0].wear < 0.2
    assert late > 4.5 > 2.0 > early  # ISO 20816-3 zone D (rigid, group 2) reached


def test_fault_forms_and_refusals():
    f = faultlib.parse("P-102:cavitation@10m+2h,severity=0.5")
    assert (f.target, f.kind, f.start_s, f.duration_s, f.severity) == ("P-102", "cavitation", 600.0, 7200.0, 0.5)
    f = faultlib.parse("K1.NOx:nan,p=0.05")
    assert (f.start_s, f.duration_s, f.probability) == (0.0, None, 0.05)
    assert faultlib.parse("K1.NOx:drift,rate=2").rate_per_h == 2.0
    for bad, msg in [("P-101", "expected TARGET:KIND"), ("P-101:melt", "unknown fault kind"),
                     ("P-101:bearing@soon", "not a duration"), ("P-101:bearing,x=1", "unknown option"),
                     ("P-101:nan,p=3", "within 0..1")]:
        with pytest.raises(ValueError, match=msg):
            faultlib.parse(bad)
    plant = Plant()
    for bad, msg in [("K1:bearing", "must be a pump"), ("P-101:shutdown", "boiler stack"),
                     ("P-999.vib_de:freeze", "no tag or asset")]:
        with pytest.raises(ValueError, match=msg):
            plant.inject(bad)
    f = plant.inject(Fault("P-101", "bearing"))
    assert plant.clear(kind="bearing") == 1 and plant.faults == []
    plant.step(100.0)
    assert plant.inject("P-101:stop+10", from_now=True).start_s == 100.0
