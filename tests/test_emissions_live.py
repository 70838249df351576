"""Real-time warnings: running averages projected to the end of the period raise alerts before it ends."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from edge.records import Alert, Flag, Quality, Reading
from emissions.config import StackConfig
from emissions.live import LiveMonitor

T0 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


def stack(**live) -> StackConfig:
    return StackConfig.model_validate({
        "name": "W", "regime": "waste_incineration", "operating_state_tag": "W.state", "excluded_states": [1],
        "pollutants": [{"name": "NOx", "tag": "W.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}],
        "live": live})


def feed(mon: LiveMonitor, values, t0: int = T0, operating=True):
    for i, v in enumerate(values):
        mon.push(t0 + 60 * i, {"NOx": np.array([v])}, None, operating)


def test_half_hour_heading_over_its_limit_warns_before_the_end():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)
    feed(mon, [300.0] * 10 + [600.0] * 5)
    warn = [a for a in alerts if a.severity == "warning" and a.evidence["rule"] == "wi_half_hour_a"]
    assert len(warn) == 1  # raised once, not every minute
    a = warn[0]
    assert a.raised_at < datetime.fromtimestamp(T0 + 1800, UTC)
    ev = a.evidence
    assert ev["projected"] > 400.0 and ev["limit"] == 400.0 and ev["elapsed_share"] < 1
    assert a.id == f"emis:W:NOx:wi_half_hour_a:{T0}:warning" and a.kind == "emission_projection"
    # Hand check: raised at the end of minute m, after 10 minutes at 300 and m - 10 at 600; the rest of the
    # period is projected at the mean of the last 10 minutes.
    m = a.raised_at.minute
    assert ev["running_average"] == pytest.approx((3000 + 600 * (m - 10)) / m)
    level = (300 * (20 - m) + 600 * (m - 10)) / 10
    assert ev["projected"] == pytest.approx((3000 + 600 * (m - 10) + level * (30 - m)) / 30)
    assert m == 14  # projection at m = 13: (4800 + 390 × 17) / 30 = 381; at 14: (5400 + 420 × 16) / 30 = 404


def test_period_end_clears_the_alert():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)
    feed(mon, [300.0] * 10 + [600.0] * 20 + [100.0])
    cleared = [a for a in alerts if a.cleared_at is not None and a.evidence["rule"] == "wi_half_hour_a"]
    assert cleared and cleared[0].cleared_at == datetime.fromtimestamp(T0 + 1800, UTC)


def test_projection_falling_back_clears_with_hysteresis():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(recent_s=120), alerts.append)
    feed(mon, [300.0] * 5 + [900.0] * 3 + [100.0] * 10)
    hh = [a for a in alerts if a.evidence["rule"] == "wi_half_hour_a" and a.severity == "warning"]
    assert len(hh) == 2 and hh[0].cleared_at is None and hh[1].cleared_at is not None


def test_zero_projection_is_critical_when_certain():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)
    feed(mon, [1000.0] * 13)  # 13 × 1000 / 30 = 433 > 400 even if emissions stopped now
    crit = [a for a in alerts if a.severity == "critical" and a.evidence["rule"] == "wi_half_hour_a"]
    assert len(crit) == 1 and crit[0].raised_at == datetime.fromtimestamp(T0 + 13 * 60, UTC)


def test_no_warning_while_under_the_limit_or_too_early():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(min_elapsed_share=0.5), alerts.append)
    feed(mon, [390.0] * 30 + [150.0] * 30)
    feed(mon, [5000.0] * 2, t0=T0 + 3600)  # only 2 of 30 minutes: too early to project
    assert not [a for a in alerts if a.evidence["rule"] == "wi_half_hour_a"]


def test_day_projection_over_the_daily_limit():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)
    feed(mon, [150.0] * 600 + [350.0] * 120)  # 12 h: 10 h at 150, 2 h at 350
    day = [a for a in alerts if a.evidence["rule"] == "wi_daily" and a.severity == "warning"]
    assert day and day[0].evidence["period"] == "day" and day[0].evidence["projected"] > 200.0
    assert day[0].raised_at < datetime.fromtimestamp(T0 + 86400, UTC)


def test_excluded_operating_state_is_not_averaged():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)
    feed(mon, [5000.0] * 30, operating=False)
    assert not alerts


def test_observe_bins_readings_into_primary_values():
    alerts: list[Alert] = []
    mon = LiveMonitor(stack(), alerts.append)

    def r(tag: str, t: int, v: float, q: Quality = Quality.GOOD) -> Reading:
        ts = datetime.fromtimestamp(t, UTC)
        return Reading(tag, ts, v, ts, q)

    readings = []
    for i in range(20):
        for s in (0, 20, 40):
            readings.append(r("W.NOx", T0 + 60 * i + s, 1000.0))
        readings.append(r("W.NOx", T0 + 60 * i + 50, 1e9, Quality.BAD))  # bad readings are left out
    readings.append(r("other.tag", T0, 1.0))
    mon.observe(readings)
    mon.flush()
    assert mon.last["NOx"]["wi_half_hour_a"]["running"] == pytest.approx(1000.0)
    assert any(a.severity == "critical" for a in alerts)
    mon2 = LiveMonitor(stack(), alerts.append)
    mon2.observe([r("W.state", T0, 1.0), *readings])  # start-up state: excluded
    mon2.flush()
    assert np.isnan(mon2.last["NOx"]["wi_half_hour_a"]["running"])


def test_live_emissions_routes_readings_to_their_stack():
    from emissions.live import LiveEmissions

    alerts: list[Alert] = []
    other = StackConfig.model_validate({"name": "V", "regime": "waste_incineration", "pollutants": [
        {"name": "NOx", "tag": "V.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}]})
    live = LiveEmissions([stack(), other], alerts.append)
    ts = [datetime.fromtimestamp(T0 + 60 * i, UTC) for i in range(16)]
    live.observe([Reading("W.NOx", t, 1000.0, t) for t in ts] + [Reading("V.NOx", t, 10.0, t) for t in ts])
    live.flush()
    assert {a.asset for a in alerts} == {"W"}
    assert live.status()["V"]["NOx"]["wi_half_hour_a"]["running"] == pytest.approx(10.0)


def test_conditions_drive_the_maintenance_alert_lifecycle():
    alerts_mod = pytest.importorskip("maintenance.alerts", reason="maintenance/ alert lifecycle not in this build")
    manager = alerts_mod.AlertManager(alerts_mod.AlertPolicy(raise_after_s=0, clear_after_s=120,
                                                             escalate_after_s=None))
    changes = []
    mon = LiveMonitor(stack(), on_condition=lambda **kw: changes.extend(manager.observe(**kw)))
    feed(mon, [300.0] * 10 + [600.0] * 20 + [100.0] * 10)
    hh = [c for c in changes if c.alert.kind == "emission:wi_half_hour_a"]
    assert [c.event for c in hh][:1] == ["raised"] and "cleared" in [c.event for c in hh]
    raised = hh[0]
    assert raised.alert.asset == "W" and raised.alert.tag == "W.NOx" and raised.alert.evidence["limit"] == 400.0
    assert len([c for c in hh if c.event == "raised"]) == 1  # one alert for the whole episode


def two_collectors() -> StackConfig:
    """NOx from one collector, O2 (needed to normalise it) from another."""
    return StackConfig.model_validate({
        "name": "W", "regime": "waste_incineration", "o2": {"tag": "W.O2"}, "reference_o2_percent": 11.0,
        "pollutants": [{"name": "NOx", "tag": "W.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}]})


def at(tag: str, t: float, v: float) -> Reading:
    ts = datetime.fromtimestamp(t, UTC)
    return Reading(tag, ts, v, ts)


def test_readings_of_two_collectors_committed_apart_are_binned_together():
    """The gateway hands analytics each spool commit as it comes: the O2 analyser's reading of 00:00:58 came in the
    commit after the NOx reading of 00:01:00. That closed minute 00:00 without O2, so every NOx minute was invalid
    (no reference-O2 correction): a half-hour at 1,000 mg/Nm³ had no running average and raised no alert."""
    alerts: list[Alert] = []
    mon = LiveMonitor(two_collectors(), alerts.append)
    for i in range(30):
        mon.observe([at("W.NOx", T0 + 60 * i, 1000.0)])  # collector A, second 0
        mon.observe([at("W.O2", T0 + 60 * i - 2, 11.0)])  # collector B, second 58 of the minute before, 3 s later
    mon.observe([at("W.O2", T0 + 60 * 30 - 2, 11.0), at("W.NOx", T0 + 60 * 30 + 30, 1000.0)])
    half = mon.last["NOx"]["wi_half_hour_a"]
    assert half["running"] == pytest.approx(1000.0)  # O2 at the reference (11 %): the value as measured
    assert mon.state[("NOx", "wi_half_hour_a")].count == 29  # minutes 00:01-00:29 (00:00 had no O2 before it)
    assert any(a.severity == "critical" for a in alerts)


def test_a_flushed_interval_is_not_counted_again():
    """flush() closes the running minute; readings of that minute coming after it opened it again and pushed it a
    second time: one minute counted twice in the running average (60 s of 1,000 and 60 s of 10 averaged to 670)."""
    mon = LiveMonitor(stack())
    mon.observe([at("W.NOx", T0, 1000.0)])
    mon.flush()
    mon.observe([at("W.NOx", T0 + 30, 1000.0), at("W.NOx", T0 + 60, 10.0)])
    mon.flush()
    st = mon.state[("NOx", "wi_half_hour_a")]
    assert (st.count, st.sum) == (2, pytest.approx(1010.0))


def test_a_reading_uncertain_for_its_age_only_is_valid_live_where_uncertain_is_not():
    """``accept_uncertain = false``: a backfill older than validation.max_age_s (STALE_TIME, UNCERTAIN for its age
    only) is valid data in the live view as in the stored averages; the device's own doubt (SOURCE_STATUS) is not.
    The live view used to leave the backfill out: a half-hour of 1,000 mg/Nm³ had no running average."""
    cfg = stack().model_copy(update={"regulatory": stack().regulatory.model_copy(update={"accept_uncertain": False})})
    for flags, expected in ((Flag.STALE_TIME, 29), (Flag.STALE_TIME | Flag.SOURCE_STATUS, 0)):
        mon = LiveMonitor(cfg)
        for i in range(29):
            ts = datetime.fromtimestamp(T0 + 60 * i, UTC)
            mon.observe([Reading("W.NOx", ts, 1000.0, ts, quality=Quality.UNCERTAIN, flags=flags)])
        mon.flush()
        assert mon.state[("NOx", "wi_half_hour_a")].count == expected
