"""Late data through the gateway's live analytics (`edge.analytics.Analytics`): a backlog after an outage (an OPC UA
history read, a Sparkplug node's historical values, a device's spool) reaching the analyses behind live readings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from analytics_support import spool_emit

from edge.analytics import Analytics
from edge.metrics import Metrics
from edge.records import Reading
from edge.settings import SiteConfig

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def _pumps(batches: list, metrics: Metrics, *names: str, escalate_after_s: float = 3600.0) -> Analytics:
    """Live analytics on pumps ``names``, each with a vibration tag ``<name>.vib`` rated in ISO 20816 zones (zone C
    from 1.4 mm/s), windows of 60 s every 10 s."""
    assets = [{"name": n, "vibration_tags": [f"{n}.vib"], "iso20816": {"boundaries_mm_s": [0.8, 1.4, 3.0]}}
              for n in names]
    site = SiteConfig(maintenance={"window_s": 60, "hop_s": 10, "assets": assets,
                                   "alerts": {"escalate_after_s": escalate_after_s}})
    return Analytics(site, metrics, spool_emit(batches), None)


def _changes(batches) -> list[tuple[str, str, datetime]]:
    """(asset, event, the alert's raised_at) of every alert change sent to the spool."""
    return [(c["alert"]["asset"], c["event"], c["alert"]["raised_at"]) for b in batches for kind, c in b.records
            if kind == "alert_change"]


async def _feed(an: Analytics, readings: list[Reading], clock: datetime, size: int = 100) -> None:
    """``readings`` in groups of ``size``, analytics' clock at ``clock`` (the data's: the newest reading received)."""
    for i in range(0, len(readings), size):
        an.latest = clock
        await an.process(readings[i:i + size])


def _vib(tag: str, seconds: range, value, received: datetime | None = None) -> list[Reading]:
    return [Reading(tag, T0 + timedelta(seconds=s), float(value(s)), received or T0 + timedelta(seconds=s))
            for s in seconds]


async def test_a_backlog_behind_the_indicator_windows_is_counted_and_said_once(caplog):
    """Pump A live, pump B's source down for 20 minutes; its backlog (zone C for 5 minutes) comes after A's readings
    have moved the windows on. The windows close for every series at once, so the backlog is left out of B's
    indicators and zones: it used to be dropped without a count or a word (no zone alert, nothing said)."""
    batches: list = []
    metrics = Metrics()
    an = _pumps(batches, metrics, "A", "B")
    now = T0 + timedelta(seconds=1200)
    await _feed(an, _vib("A.vib", range(1200), lambda s: 0.5), now, size=1)
    backlog = _vib("B.vib", range(1200), lambda s: 2.0 if 600 <= s < 900 else 0.5, received=now)
    with caplog.at_level(logging.INFO, logger="maintenance.live"):
        await _feed(an, backlog, now)
        await _feed(an, _vib("A.vib", range(1200, 1260), lambda s: 0.5), T0 + timedelta(seconds=1260), size=1)
    behind = [r for r in caplog.records if getattr(r, "event", None) == "readings_behind_windows"]
    over = [r for r in caplog.records if getattr(r, "event", None) == "readings_behind_windows_over"]
    # The open window at the backlog's arrival spans 00:19:00-00:20:00: the 60 readings in it are taken.
    assert metrics.registry.get_sample_value("valvoja_analytics_late_total", {"analysis": "indicators"}) == 1140
    assert an.status()["behind_windows"] == 1140
    assert len(behind) == 1 and behind[0].tags == ["B.vib"]
    assert behind[0].oldest == T0.isoformat() and "indicators, ISO zones" in behind[0].getMessage()
    assert len(over) == 1 and over[0].count == 1140
    assert [c for c in _changes(batches) if c[1] != "raised" or c[0] != "B"] == []  # B's sensor (silence) alert only


async def test_an_alert_from_an_hours_old_backlog_is_not_escalated_for_the_hour_nobody_knew_of_it():
    """Pump A's source down for two hours; its backlog holds zone C from 00:30 to 00:40 and comes with the clock at
    02:00. The zone alert is raised and cleared at the readings' times, once; it used to be escalated at once too
    ("unacknowledged" for 5370 s: it was raised from readings, nobody could have seen it), a page for a condition
    the same backlog clears."""
    batches: list = []
    an = _pumps(batches, Metrics(), "A", escalate_after_s=600)
    await _feed(an, _vib("A.vib", range(600), lambda s: 0.5), T0 + timedelta(seconds=600), size=1)
    now = T0 + timedelta(seconds=7200)
    await _feed(an, _vib("A.vib", range(600, 7200), lambda s: 2.0 if 1800 <= s < 2400 else 0.5, received=now), now)
    zone = T0 + timedelta(seconds=1830)
    assert _changes(batches) == [("A", "raised", zone), ("A", "cleared", zone)]


async def test_a_still_active_backlog_alert_escalates_from_when_the_gateway_learned_of_it():
    """The backlog ends in zone C (the fault goes on): its alert is raised at the readings' time, 01:30, and escalates
    600 s after the gateway learned of it at 02:00, not at once."""
    batches: list = []
    an = _pumps(batches, Metrics(), "A", escalate_after_s=600)
    await _feed(an, _vib("A.vib", range(600), lambda s: 0.5), T0 + timedelta(seconds=600), size=1)
    now = T0 + timedelta(seconds=7200)
    await _feed(an, _vib("A.vib", range(600, 7200), lambda s: 2.0 if s >= 5400 else 0.5, received=now), now)
    assert _changes(batches) == [("A", "raised", T0 + timedelta(seconds=5430))]
    for s in range(7200, 7900):  # live, still in zone C; the clock is the data's
        t = T0 + timedelta(seconds=s)
        an.latest = t
        await an.process([Reading("A.vib", t, 2.0, t)])
        if len(_changes(batches)) > 1:
            break
    assert _changes(batches)[1][1] == "escalated"
    assert an.latest == now + timedelta(seconds=600)


async def test_a_backlog_inside_a_maintenance_window_is_judged_by_its_readings_time_not_the_clock():
    """A window 00:20-00:50 (a bearing swap) covered pump A's zone C from 00:30 to 00:40; the readings come as a
    backlog with the clock at 02:00. By the clock the window was over, so the held condition was raised at 02:00 after
    the backlog's first group, and the same backlog's later readings cleared it at 00:41:40, before its raise: a page
    for a condition the window covered from start to end. A fault that outlasts the window is raised at its first
    reading after the window, the readings' time."""
    from maintenance.alerts import Window

    for fault_until, expected in ((2400, []), (3600, [("raised", 3000), ("cleared", 3000)])):
        batches: list = []
        an = _pumps(batches, Metrics(), "A")
        an.manager.windows = [Window("A", T0 + timedelta(seconds=1200), T0 + timedelta(seconds=3000), "bearing swap")]
        await _feed(an, _vib("A.vib", range(600), lambda s: 0.5), T0 + timedelta(seconds=600), size=1)
        now = T0 + timedelta(seconds=7200)
        readings = _vib("A.vib", range(600, 7200), lambda s, u=fault_until: 2.0 if 1800 <= s < u else 0.5, received=now)
        await _feed(an, readings, now)
        changes = _changes(batches)
        assert changes[0][1] == "suppressed", changes
        assert [(e, int((t - T0).total_seconds())) for _, e, t in changes[1:]] == expected


async def test_a_redelivered_reading_does_not_replace_the_anomaly_signals_newer_value():
    """The simulator's pump, its bearing temperature read every 10 s, the others every second; after 00:11:41 the
    group of 00:11:30 comes again (a redelivery: an MQTT message sent again behind newer ones). Its bearing temperature
    replaced the one of 00:11:40 as the signal's latest value: the score of 00:11:43 was of the older value (2.47
    instead of 0.93) and the one of 00:11:42 was lost. The scores must be those of a run without the redelivery."""
    from test_maintenance_live import config, pump_readings

    from maintenance.live import MaintenanceLive

    cfg = config()
    a = cfg.assets[0]
    cfg = cfg.model_copy(update={"assets": (a.model_copy(
        update={"anomaly": a.anomaly.model_copy(update={"predict_every_s": 1})}),)})
    groups = [[r for r in g if r.tag != "P-101.bearing_temp" or r.time.second % 10 == 0]
              for g in pump_readings(760, fault_from=10**9)]

    async def scores(redeliver: bool) -> dict:
        live = MaintenanceLive(cfg)
        out = {}
        for i, g in enumerate(groups):
            for again in ([g, groups[690]] if redeliver and i == 701 else [g]):
                _, preds, _ = await live.process(again)
                out.update({p.time: p.value for p in preds if p.kind == "anomaly"})
        return out

    plain, redelivered = await scores(False), await scores(True)
    assert len(plain) > 300 and T0 + timedelta(seconds=703) in plain
    assert redelivered == plain


async def test_a_stack_backlog_behind_the_live_view_is_counted_and_said_once(caplog):
    """The NOx analyser's collector down for 20 minutes while the O2 one stays live; its backlog comes after the live
    view's minutes have closed. Left to the stored averages (the job takes them at its next run), it used to vanish
    from the live view without a count or a word: the live running half-hour lacked 20 minutes of NOx and nothing
    said why the live page and the stored averages differed."""
    stack = {"name": "W", "regime": "waste_incineration", "o2": {"tag": "W.O2"}, "reference_o2_percent": 11.0,
             "pollutants": [{"name": "NOx", "tag": "W.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}]}
    metrics = Metrics()
    an = Analytics(SiteConfig(stacks=[stack]), metrics, spool_emit(), None)
    now = T0 + timedelta(seconds=1200)
    for s in range(0, 1200, 10):
        t = T0 + timedelta(seconds=s)
        an.latest = t
        await an.process([Reading("W.O2", t, 11.0, t)])
    backlog = [Reading("W.NOx", T0 + timedelta(seconds=s), 150.0, now) for s in range(0, 1200, 10)]
    with caplog.at_level(logging.WARNING, logger="emissions.live"):
        await _feed(an, backlog, now, size=30)
        await _feed(an, [Reading("W.NOx", now, 150.0, now), Reading("W.O2", now, 11.0, now)], now)
    said = [r for r in caplog.records if getattr(r, "event", None) == "emissions_live_late"]
    late = an.emissions.late
    # Minutes 00:00-00:18 had closed (the live view holds `reorder_s` for the other collector): 19 x 6 readings.
    assert late == 114
    assert metrics.registry.get_sample_value("valvoja_analytics_late_total", {"analysis": "emissions"}) == late
    assert len(said) == 1 and said[0].tag == "W.NOx" and "stored averages" in said[0].getMessage()
