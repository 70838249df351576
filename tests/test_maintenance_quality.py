"""What flagged readings do to the live maintenance alerts (maintenance/README.md, "Data quality").

Readings are made by hand and flagged by the gateway's own validator (`edge.validate.Validator`: out of range,
frozen), then go through `MaintenanceLive.process` as in the gateway. A sensor fault (a cable reading full scale
or below range, a stuck value) must not page a machine alert at full severity nor clear one, and gets its own
'sensor' alert; sparse windows do not move a zone."""

from datetime import UTC, datetime, timedelta

import numpy as np

from edge.records import Reading
from edge.settings import Tag, Validation
from edge.validate import Validator
from maintenance.config import AnomalyAssetConfig, AssetConfig, MaintenanceConfig
from maintenance.iso20816 import ZoneConfig
from maintenance.live import MaintenanceLive
from maintenance.rules import RuleConfig

T0 = datetime(2026, 2, 1, tzinfo=UTC)
VIB = Tag(name="F-1.vib", asset="F-1", unit="mm/s", range=(0.0, 20.0), frozen_after_s=30)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def vibration_only(**quality) -> MaintenanceConfig:
    asset = AssetConfig(name="F-1", vibration_tags=("F-1.vib",), iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))
    return MaintenanceConfig.model_validate({"window_s": 60, "hop_s": 10, "assets": [asset.model_dump()],
                                            **({"quality": quality} if quality else {})})


class Plant:
    """Readings of one or more tags per second, flagged by the gateway's validator, through `process`."""

    def __init__(self, live: MaintenanceLive, *tags: Tag, seed: int = 1) -> None:
        self.live = live
        self.validator = Validator({t.name: t for t in tags}, Validation())
        self.rng = np.random.default_rng(seed)
        self.derived: list[Reading] = []
        self.preds: list = []
        self.changes: list = []

    def noise(self, scale: float = 0.02) -> float:
        return float(scale * self.rng.standard_normal())

    async def run(self, start: int, stop: int, values) -> list:
        """``values(s)`` -> {tag: value} (a tag left out sends nothing that second); returns this run's changes."""
        before = len(self.changes)
        for s in range(start, stop):
            t = at(s)
            batch = [Reading(tag, t, v, t) for tag, v in values(s).items()]
            if batch:
                self.validator.apply_readings(batch, now=t)
            d, p, c = await self.live.process(batch, now=t)
            self.derived += d
            self.preds += p
            self.changes += c
        return self.changes[before:]


def of(changes, kind: str, event: str | None = None) -> list:
    return [c for c in changes if c.alert.kind == kind and (event is None or c.event == event)]


async def test_a_cable_fault_reading_full_scale_pages_no_critical_vibration_alert():
    """A broken cable reads full scale (25 mm/s on a 0-20 mm/s sensor): out of range, then frozen too. It used to
    raise 'critical, zone D' for a machine in zone B. Now the zone alert is one severity lower and marked
    unverified (the value could be real), and a 'sensor' alert names the sensor's problem; both clear once the
    readings are good again."""
    plant = Plant(MaintenanceLive(vibration_only()), VIB)
    await plant.run(0, 300, lambda s: {"F-1.vib": 1.0 + plant.noise()})
    fault = await plant.run(300, 600, lambda s: {"F-1.vib": 25.0})
    good = await plant.run(600, 900, lambda s: {"F-1.vib": 1.0 + plant.noise()})
    assert not [c for c in plant.changes if c.alert.severity == "critical"]
    zone = of(fault, "iso20816", "raised")
    assert zone, "a value above range could be real vibration: still raised, lower and marked"
    (z,) = zone
    assert z.alert.severity == "warning" and z.alert.evidence["zone"] == "D"
    assert z.alert.evidence["data_quality"]["unverified"] is True and "unverified" in z.alert.message
    assert z.alert.evidence["data_quality"]["out_of_range"] > 0
    (sensor,) = of(fault, "sensor", "raised")
    a = sensor.alert
    assert (a.asset, a.tag) == ("F-1", "F-1.vib") and a.evidence["problem"] == "out_of_range"
    assert "out of range" in a.message and a.raised_at <= at(340)
    assert a.evidence["data_quality"]["good"] <= 0.5 and a.evidence["data_quality"]["out_of_range"] >= 0.5
    assert [c.event for c in of(good, "sensor")] == ["cleared"]
    assert [c.event for c in of(good, "iso20816")] == ["cleared"]


async def test_a_frozen_vibration_value_raises_a_sensor_alert_not_a_zone_alert():
    """A velocity stuck at 2.0 mm/s (zone C here) is flagged FROZEN after frozen_after_s: it used to be averaged
    into the zone like a measurement (a 'zone C' warning for a machine in B). Frozen readings say nothing about the
    machine: left out, the zone holds, and the sensor alert says 'frozen'."""
    tag = VIB.model_copy(update={"frozen_after_s": 5})
    plant = Plant(MaintenanceLive(vibration_only()), tag)
    await plant.run(0, 300, lambda s: {"F-1.vib": 1.0 + plant.noise()})
    fault = await plant.run(300, 700, lambda s: {"F-1.vib": 2.0})
    assert of(fault, "iso20816") == []
    (sensor,) = of(fault, "sensor", "raised")
    assert sensor.alert.evidence["problem"] == "frozen" and "frozen" in sensor.alert.message
    assert sensor.alert.evidence["data_quality"]["frozen"] >= 0.5


async def test_a_reading_below_range_does_not_clear_an_open_zone_alert():
    """Zone C is real and its alert open; then the transmitter's loop breaks and reads -1 mm/s (below range). That
    read as zone A and cleared the alert of a machine still in zone C. Out-of-range readings never lower a zone."""
    plant = Plant(MaintenanceLive(vibration_only()), VIB)
    first = await plant.run(0, 400, lambda s: {"F-1.vib": 2.0 + plant.noise()})
    assert [c.event for c in of(first, "iso20816")] == ["raised"]
    broken = await plant.run(400, 1000, lambda s: {"F-1.vib": -1.0})
    assert of(broken, "iso20816") == []
    assert [c.event for c in of(broken, "sensor")] == ["raised"]
    zones = [r for r in plant.derived if r.tag == "F-1.vib.iso_zone" and r.time > at(420)]
    assert all(r.value == 2 for r in zones)  # no window said A or B


async def test_a_sparse_first_window_does_not_move_the_zone():
    """The first window after a start held 5 readings of 60: their mean (a start transient) read as zone C and
    paged, to clear a minute later. A zone moves only on windows with `quality.min_share` of usable readings."""
    plant = Plant(MaintenanceLive(vibration_only()), VIB)
    await plant.run(55, 400, lambda s: {"F-1.vib": (2.0 if s < 60 else 1.0) + plant.noise()})
    assert of(plant.changes, "iso20816") == []
    zones = [r for r in plant.derived if r.tag == "F-1.vib.iso_zone"]
    assert zones and min(r.time for r in zones) >= at(85)  # 30 of 60 slots filled
    sparse = vibration_only(min_share=0.0)  # the old behaviour, on request
    again = Plant(MaintenanceLive(sparse), VIB)
    await again.run(55, 120, lambda s: {"F-1.vib": (2.0 if s < 60 else 1.0) + again.noise()})
    assert [c.event for c in of(again.changes, "iso20816")][:1] == ["raised"]


TEMP = Tag(name="P.temp", asset="P", unit="degC", range=(-20.0, 150.0))


async def test_a_thermocouple_burnout_neither_pages_a_rule_at_full_severity_nor_clears_it():
    """An upscale burnout drives the reading far above range (1370 degC): a 'bearing hot' rule paged at its
    configured severity. Now it is raised one step lower, marked unverified, and goes to its own severity when good
    readings confirm it; a loop broken below range afterwards does not clear it."""
    hot = RuleConfig(name="bearing hot", tag="P.temp", kind="threshold", high=90.0, deadband=2.0, severity="critical")
    plant = Plant(MaintenanceLive(MaintenanceConfig(rules=(hot,))), TEMP)
    await plant.run(0, 100, lambda s: {"P.temp": 60.0 + plant.noise(0.2)})
    burnout = await plant.run(100, 200, lambda s: {"P.temp": 1370.0})
    (raised,) = of(burnout, "rule:bearing hot", "raised")
    assert raised.alert.severity == "warning" and "unverified" in raised.alert.message
    assert raised.alert.evidence["data_quality"]["unverified"] is True
    assert raised.alert.evidence["data_quality"]["out_of_range"] == 1.0
    assert raised.alert.evidence["data_quality"]["flags"] == ["out_of_range"]
    confirmed = await plant.run(200, 300, lambda s: {"P.temp": 95.0 + plant.noise(0.2)})
    assert [(c.event, c.alert.severity) for c in of(confirmed, "rule:bearing hot")] == [("updated", "critical")]
    assert of(confirmed, "rule:bearing hot")[0].alert.evidence["data_quality"]["unverified"] is False
    broken = await plant.run(300, 500, lambda s: {"P.temp": -40.0})
    assert of(broken, "rule:bearing hot") == []


async def test_a_rule_set_to_watch_raw_values_still_judges_flagged_readings():
    """`use_flagged = true`: a rule meant to catch any reading over a limit, flags or not, keeps its severity and
    is cleared by whatever the sensor reads (the behaviour of every rule before)."""
    raw = RuleConfig(name="over 120", tag="P.temp", kind="threshold", high=120.0, severity="critical",
                     use_flagged=True)
    plant = Plant(MaintenanceLive(MaintenanceConfig(rules=(raw,))), TEMP)
    await plant.run(0, 100, lambda s: {"P.temp": 60.0 + plant.noise(0.2)})
    burnout = await plant.run(100, 200, lambda s: {"P.temp": 1370.0})
    (raised,) = of(burnout, "rule:over 120", "raised")
    assert raised.alert.severity == "critical" and "unverified" not in raised.alert.message
    assert raised.alert.evidence["data_quality"]["out_of_range"] == 1.0
    broken = await plant.run(200, 400, lambda s: {"P.temp": -40.0})
    assert [c.event for c in of(broken, "rule:over 120")] == ["cleared"]


async def test_a_frozen_temperature_does_not_clear_a_rate_alert():
    """The bearing heats 6 degC/min, then the transmitter sticks: its readings, flagged FROZEN, made a rate of 0 and
    cleared the 'heating fast' alert while the bearing may still be heating. Frozen readings hold the rule."""
    tag = TEMP.model_copy(update={"frozen_after_s": 10})
    fast = RuleConfig(name="heating fast", tag="P.temp", kind="rate", max_rate_per_min=2.0, window_s=60)
    plant = Plant(MaintenanceLive(MaintenanceConfig(rules=(fast,))), tag)
    await plant.run(0, 100, lambda s: {"P.temp": 60.0 + plant.noise(0.05)})
    ramp = await plant.run(100, 200, lambda s: {"P.temp": 60.0 + 0.1 * (s - 100) + plant.noise(0.05)})
    assert [c.event for c in of(ramp, "rule:heating fast")] == ["raised"]
    stuck = await plant.run(200, 600, lambda s: {"P.temp": 70.0})
    assert of(stuck, "rule:heating fast") == []


async def test_a_rule_on_an_indicator_holds_on_a_window_of_frozen_readings():
    """A rule on a statistic (`F-1.press.mean` below 2 bar) saw the mean of a stuck transmitter's readings and paged
    'pressure low'. Frozen readings are left out of the window; without enough others the rule holds."""
    press = Tag(name="F-1.press", asset="F-1", unit="bar", range=(0.0, 10.0), frozen_after_s=5)
    low = RuleConfig(name="pressure low", tag="F-1.press.mean", kind="threshold", low=2.0, severity="critical")
    asset = AssetConfig(name="F-1", process_tags=("F-1.press",))
    plant = Plant(MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,), rules=(low,))), press)
    await plant.run(0, 300, lambda s: {"F-1.press": 5.0 + plant.noise()})
    stuck = await plant.run(300, 700, lambda s: {"F-1.press": 1.0})
    assert of(stuck, "rule:pressure low") == []
    (sensor,) = of(stuck, "sensor", "raised")
    assert sensor.alert.tag == "F-1.press" and sensor.alert.evidence["problem"] == "frozen"


def anomaly_asset() -> AssetConfig:
    return AssetConfig(name="A", anomaly=AnomalyAssetConfig(
        signals=("A.s0", "A.s1", "A.s2"), train_samples=400, window=2, alpha=0.01, predict_every_s=1, confirm=5))


SIGNALS = [Tag(name="A.s0", asset="A", range=(-10.0, 10.0), frozen_after_s=5),
           Tag(name="A.s1", asset="A", range=(-10.0, 10.0)), Tag(name="A.s2", asset="A", range=(-10.0, 10.0))]


def noise3(plant: Plant, s0=None) -> dict[str, float]:
    x = {f"A.s{j}": float(plant.rng.standard_normal()) for j in range(3)}
    if s0 is not None:
        x["A.s0"] = s0(x["A.s0"])
    return x


async def test_anomaly_training_does_not_learn_flagged_readings():
    """A transmitter out of range (40 on a -10..10 signal) for 70 s of the healthy period was learnt as healthy:
    the signal's scale (or the drift screen) then hid a real shift of it. Flagged samples are not trained on."""
    live = MaintenanceLive(MaintenanceConfig(assets=(anomaly_asset(),)))
    plant = Plant(live, *SIGNALS, seed=2)
    await plant.run(0, 600, lambda s: noise3(plant, (lambda v: 40.0 + v) if 50 <= s < 120 else None))
    det = live.anomaly.detectors[0]
    assert "A.s0" in det.signals_ and abs(det.mean_[det.signals_.index("A.s0")]) < 0.5
    shifted = await plant.run(600, 800, lambda s: noise3(plant, lambda v: v + 3.0))  # real, in range
    (raised,) = of(shifted, "anomaly", "raised")
    assert raised.alert.severity == "warning" and raised.alert.evidence["top_signals"][0]["signal"] == "A.s0"
    dq = raised.alert.evidence["data_quality"]
    assert dq["good"] == 1.0 and dq["unverified"] is False


async def test_a_broken_signal_is_not_scored_as_an_anomaly_of_the_machine():
    """After training, A.s0's cable breaks: it reads 40 (out of range), then stays there (frozen). It was scored as
    the machine's anomaly ('warning', top signal A.s0). Out-of-range values make an unverified anomaly one severity
    lower; frozen ones are left out (the asset is not scored on them); the sensor alert names A.s0."""
    live = MaintenanceLive(MaintenanceConfig(assets=(anomaly_asset(),)))
    plant = Plant(live, *SIGNALS, seed=2)
    await plant.run(0, 500, lambda s: noise3(plant))
    assert plant.changes == []
    broken = await plant.run(500, 700, lambda s: noise3(plant, lambda v: 40.0))
    anomaly = of(broken, "anomaly")
    assert anomaly and all(c.alert.severity == "info" for c in anomaly)
    assert all(c.alert.evidence["data_quality"]["unverified"] for c in anomaly if c.event == "raised")
    assert anomaly[0].alert.evidence["data_quality"]["signals_out_of_range"] == ["A.s0"]
    (sensor,) = of(broken, "sensor", "raised")
    assert sensor.alert.tag == "A.s0"
    # Frozen for good: no score of the machine on it after its window of out-of-range values has passed.
    assert not [p for p in plant.preds if p.time > at(530)]


async def test_out_of_range_as_a_sensor_fault_or_as_a_value():
    """`out_of_range = "sensor"` (4-20 mA loops, where beyond range is the transmitter's failure signal): the cable
    fault raises the sensor alert only. `"value"`: out-of-range readings are measurements (the old behaviour)."""
    def cable(cfg):
        plant = Plant(MaintenanceLive(cfg), VIB)
        return plant, plant.run(0, 300, lambda s: {"F-1.vib": 1.0 + plant.noise()})

    plant, warm = cable(vibration_only(out_of_range="sensor"))
    await warm
    fault = await plant.run(300, 600, lambda s: {"F-1.vib": 25.0})
    assert of(fault, "iso20816") == []
    (sensor,) = of(fault, "sensor", "raised")
    assert sensor.alert.evidence["problem"] == "out_of_range"
    plant, warm = cable(vibration_only(out_of_range="value"))
    await warm
    fault = await plant.run(300, 600, lambda s: {"F-1.vib": 25.0})
    assert [(c.event, c.alert.severity) for c in of(fault, "iso20816")] == [("raised", "critical")]


async def test_every_alert_states_the_quality_of_the_data_behind_it():
    """The bearing fault of the simulator's pump (good data): the zone, anomaly and rule alerts' evidence give the
    share of good readings in their window (all of them here) and that they are verified."""
    from test_maintenance_live import config, pump_readings

    cfg = config()
    rule = RuleConfig(name="P-101 vibration high", tag="P-101.vib_de", kind="threshold", high=1.5)
    live = MaintenanceLive(cfg.model_copy(update={"rules": (*cfg.rules, rule)}))
    changes = []
    for batch in pump_readings(900, fault_from=700):
        changes += (await live.process(batch))[2]
    raised = {c.alert.kind: c.alert for c in changes if c.event == "raised"}
    assert set(raised) == {"iso20816", "anomaly", "rule:P-101 vibration high"}
    for a in raised.values():
        dq = a.evidence["data_quality"]
        assert dq["good"] == 1.0 and dq["unverified"] is False, (a.kind, dq)
    assert raised["iso20816"].evidence["data_quality"]["window_s"] == 60


def test_what_each_flag_means_for_maintenance():
    """Sensor problems (bad, frozen, the device's own doubt, values not measured now), unusual values (out of range),
    and flags about time only (the value is a measurement); the vectorised and the one-reading forms agree."""
    import itertools

    from edge.records import Flag, Quality
    from maintenance.quality import BAD, FROZEN, GOOD, OUT_OF_RANGE, SOURCE, classify, classify_reading

    U, G = Quality.UNCERTAIN, Quality.GOOD
    cases = [(G, 0, GOOD), (U, Flag.STALE_TIME, GOOD), (G, Flag.NO_SOURCE_TIME | Flag.UNKNOWN_TAG, GOOD),
             (U, Flag.OUT_OF_RANGE, OUT_OF_RANGE), (U, Flag.FROZEN, FROZEN),
             (U, Flag.FROZEN | Flag.OUT_OF_RANGE, FROZEN), (U, Flag.SOURCE_STATUS, SOURCE), (U, 0, SOURCE),
             (G, Flag.RETAINED, SOURCE), (G, Flag.SUBSTITUTED, SOURCE), (Quality.BAD, Flag.SOURCE_STATUS, BAD),
             (Quality.BAD, Flag.NOT_FINITE, BAD)]
    for q, f, want in cases:
        assert classify(np.array([q]), np.array([int(f)]), np.array([1.0]))[0] == want, (q, f)
    assert classify(np.array([U]), np.array([int(Flag.OUT_OF_RANGE)]), np.array([1.0]), "value")[0] == GOOD
    bits = [int(b) for b in (Flag.OUT_OF_RANGE, Flag.FROZEN, Flag.STALE_TIME, Flag.SOURCE_STATUS, Flag.RETAINED,
                             Flag.SUBSTITUTED, Flag.NO_SOURCE_TIME)]
    for q, mode, v in itertools.product(Quality, ("unverified", "sensor", "value"), (1.0, float("nan"))):
        for on in itertools.product((0, 1), repeat=len(bits)):
            f = sum(b for b, o in zip(bits, on, strict=True) if o)
            one = classify_reading(Reading("x", T0, v, T0, q, f), v, mode)
            assert one == classify(np.array([q]), np.array([f]), np.array([v]), mode)[0], (q, f, v, mode)


async def test_sensor_alerts_stored_with_their_lifecycle(pg_dsn):
    """Against the database: a frozen vibration sensor is one 'sensor' alert (de-duplicated while it lasts) that
    clears once its readings are good again; a sensor gone silent is a 'no data' alert, suppressed while a
    maintenance window covers the asset (logged once), raised when the window ends, and still open."""
    import psycopg
    from psycopg.rows import dict_row

    from edge.db.migrate import migrate
    from maintenance.alerts import Window
    from maintenance.publish import publish

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
    asset = AssetConfig(name="F-1", vibration_tags=("F-1.vib",), process_tags=("F-1.temp",),
                        iso20816=ZoneConfig(boundaries_mm_s=(0.8, 1.4, 3.0)))
    live = MaintenanceLive(MaintenanceConfig(window_s=60, hop_s=10, assets=(asset,)),
                           windows=[Window("F-1", at(1150), at(1300), "bearing change")])
    plant = Plant(live, VIB, Tag(name="F-1.temp", asset="F-1", range=(-20.0, 150.0)))

    def values(s: int) -> dict[str, float]:
        x = {"F-1.temp": 40.0 + plant.noise()}
        if s < 900:  # stuck at 1.0 from 300 s to 600 s (frozen after 30 s); silent from 900 s
            x["F-1.vib"] = 1.0 if 300 <= s < 600 else 1.0 + plant.noise()
        return x

    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        for s in range(1400):
            await publish(conn, [], await plant.run(s, s + 1, values))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM alerts ORDER BY raised_at")
            rows = await cur.fetchall()
            await cur.execute("SELECT kind, time, detail FROM alert_events WHERE event = 'suppressed'")
            suppressed = await cur.fetchall()
    assert [(r["kind"], r["tag"]) for r in rows] == [("sensor", "F-1.vib"), ("sensor", "F-1.vib")]
    frozen, silent = rows
    assert frozen["evidence"]["problem"] == "frozen" and frozen["occurrences"] == 1
    # Raised at the first window after the detection (331 s): the run before it counts as frozen too.
    assert at(340) <= frozen["raised_at"] <= at(350) and at(640) <= frozen["cleared_at"] <= at(720)
    assert frozen["evidence"]["data_quality"]["frozen"] >= 0.5 and frozen["severity"] == "warning"
    assert silent["evidence"]["problem"] == "no_data" and "no data for" in silent["message"]
    assert silent["raised_at"] == at(1300) and silent["cleared_at"] is None
    assert [(e["kind"], e["time"]) for e in suppressed] == [("sensor", at(1200))]


async def test_the_readings_of_a_freeze_before_its_detection_leave_the_windows_too():
    """A velocity stuck at 1.6 mm/s (zone C) on a machine in zone B: the validator flags it FROZEN only after
    frozen_after_s (30 s), and the 31 readings before that were good ones. After the detection they alone filled
    half of the window (min_share): its mean was the stuck value, and the zone went to C ('warning') 50 s into the
    freeze. Once a freeze is flagged, the readings of its run before the detection (the same value) are frozen
    too: the zone holds, and the sensor alert comes at the first window after the detection, not 30 s later."""
    plant = Plant(MaintenanceLive(vibration_only()), VIB)
    await plant.run(0, 300, lambda s: {"F-1.vib": 1.0 + plant.noise()})
    fault = await plant.run(300, 700, lambda s: {"F-1.vib": 1.6})
    assert of(fault, "iso20816") == []
    (sensor,) = of(fault, "sensor", "raised")
    assert sensor.alert.evidence["problem"] == "frozen" and sensor.alert.raised_at <= at(340)
    zones = [r for r in plant.derived if r.tag == "F-1.vib.iso_zone" and r.time > at(300)]
    assert all(r.value == 1 for r in zones)  # B, and nothing from the stuck value
    means = [r for r in plant.derived if r.tag == "F-1.vib.mean" and at(330) < r.time <= at(400)]
    assert all(abs(r.value - 1.0) < 0.05 for r in means)  # the stuck value is in no window's mean


async def test_a_tag_reported_by_exception_is_not_a_dead_sensor_for_being_calm():
    """A valve position reported by exception (an OPC UA deadband, MQTT publish-on-change) sends a value only when it
    moves: every 15 min here. With the one ``no_data_after_s`` (300 s) of every watched tag it raised a 'no data'
    sensor alert in every calm spell. ``[[maintenance.quality.silence]]`` gives such tags their own limit (the
    longest a healthy one stays silent): calm spells raise nothing, a valve silent beyond it still does (a dead
    sensor). With a ``heartbeat`` tag of the same source, a silence while the heartbeat is silent too is the source
    being down (one alert: the heartbeat's, a watched tag), not one sensor alert per tag of that source."""
    asset = AssetConfig(name="F-1", process_tags=("F-1.temp", "F-1.valve", "PLC-1.alive"))

    def config(**quality) -> MaintenanceConfig:
        return MaintenanceConfig.model_validate({"window_s": 60, "hop_s": 10, "assets": [asset.model_dump()],
                                                 "quality": quality})

    tags = [Tag(name="F-1.temp", asset="F-1", range=(-20.0, 150.0)), Tag(name="F-1.valve", asset="F-1"),
            Tag(name="PLC-1.alive", asset="F-1")]

    def values(dead_from: int, plc_down_from: int = 10**9):
        def at_second(s: int) -> dict[str, float]:
            x = {"F-1.temp": 40.0 + plant.noise()}
            if s % 900 == 0 and s < min(dead_from, plc_down_from):  # moves every 15 min
                x["F-1.valve"] = float(s % 1800 == 0)
            if s % 10 == 0 and s < plc_down_from:
                x["PLC-1.alive"] = float(s)
            return x
        return at_second

    def sensor(changes) -> list[tuple[str, str, str]]:
        return [(c.event, c.alert.tag, c.alert.evidence.get("problem", "")) for c in of(changes, "sensor")
                if c.event in ("raised", "cleared")]

    plant = Plant(MaintenanceLive(config()), *tags)  # before: one limit for all
    await plant.run(0, 2000, values(dead_from=10**9))
    assert ("raised", "F-1.valve", "no_data") in sensor(plant.changes)

    silence = {"silence": [{"tags": ["F-1.val*"], "no_data_after_s": 2400.0, "heartbeat": "PLC-1.alive"}]}
    plant = Plant(MaintenanceLive(config(**silence)), *tags)
    calm = await plant.run(0, 3700, values(dead_from=3000))  # the valve's last report at 2700 s
    assert sensor(calm) == []
    dead = await plant.run(3700, 5400, values(dead_from=3000))
    (raised,) = of(dead, "sensor", "raised")
    assert (raised.alert.tag, raised.alert.evidence["problem"]) == ("F-1.valve", "no_data")
    assert at(2700 + 2400) <= raised.alert.raised_at <= at(2700 + 2420)
    assert raised.alert.evidence["no_data_after_s"] == 2400.0 and "2400 s" in raised.alert.message

    plant = Plant(MaintenanceLive(config(**silence)), *tags)  # the PLC goes down: valve and heartbeat silent
    await plant.run(0, 6000, values(dead_from=10**9, plc_down_from=2000))
    assert sensor(plant.changes) == [("raised", "PLC-1.alive", "no_data")]
