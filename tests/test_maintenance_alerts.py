"""Alert lifecycle without I/O: de-duplication of a flapping signal, hysteresis, suppression, escalation;
threshold and rate rules."""

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from edge.records import Quality, Reading
from maintenance.alerts import AlertManager, AlertPolicy, Window
from maintenance.rules import RuleConfig, RuleEngine

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def observe(m, s, active, **kw):
    return m.observe(asset="P-101", tag="P-101.vib", kind="test", active=active, t=at(s), **kw)


def test_flapping_signal_makes_one_alert():
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None))
    changes = []
    for s in range(600):  # on/off every 5 s for 10 minutes
        changes += observe(m, s, (s // 5) % 2 == 0)
    raised = [c for c in changes if c.event == "raised"]
    assert len(raised) == 1
    assert not [c for c in changes if c.event == "cleared"]
    assert changes[-1].occurrences == 60  # every flap counted on the one alert
    for s in range(600, 700):
        changes += observe(m, s, False)
    cleared = [c for c in changes if c.event == "cleared"]
    assert len(cleared) == 1 and cleared[0].alert.id == raised[0].alert.id
    assert cleared[0].alert.cleared_at == at(655)  # inactive since 595 + 60 s


def test_debounce_and_severity_only_rises():
    m = AlertManager(AlertPolicy(raise_after_s=10, clear_after_s=0, escalate_after_s=None))
    assert observe(m, 0, True) == [] and observe(m, 5, True) == []
    assert observe(m, 6, False) == []  # the pending condition went away: debounce restarts
    assert observe(m, 7, True) == []
    (ch,) = observe(m, 17, True)
    assert ch.event == "raised"
    (up,) = observe(m, 18, True, severity="critical")
    assert up.event == "updated" and up.alert.severity == "critical"
    assert observe(m, 19, True, severity="warning") == []  # no downgrade, no noise
    (cl,) = observe(m, 20, False)
    assert cl.event == "cleared"


def test_suppression_window_honoured():
    w = Window("P-101", at(100), at(200), "bearing change")
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None), [w])
    (ch,) = observe(m, 150, True)
    assert ch.event == "suppressed" and ch.detail["window"] == "bearing change"
    assert not m.open
    (ch,) = observe(m, 200, True)  # the window ended
    assert ch.event == "raised"
    other = m.observe(asset="P-102", tag=None, kind="test", active=True, t=at(150))
    assert other[0].event == "raised"  # other assets are not suppressed


def test_escalation_until_acknowledged():
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=600))
    (r,) = observe(m, 0, True, severity="info")
    assert m.tick(at(599)) == []
    (e,) = m.tick(at(600))
    assert e.event == "escalated" and e.alert.severity == "warning" and e.escalation_level == 1
    assert m.tick(at(900)) == []
    m.acknowledged(r.alert.id, "anna", at(1000))
    assert m.tick(at(5000)) == []


def test_threshold_rule_with_deadband():
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=0))
    rule = RuleConfig(name="hot", tag="P-101.bearing_temp", kind="threshold", high=90, deadband=2)
    eng = RuleEngine([rule], m)
    events = []
    for s, v in enumerate([85, 90.5, 89, 88.5, 87.9, 95]):
        events += [c.event for c in eng.update([Reading("P-101.bearing_temp", at(s), v, at(s))])]
    assert events == ["raised", "cleared", "raised"]  # 89 and 88.5 are within the deadband
    assert m.open[next(iter(m.open))].alert.asset == "P-101"


def test_a_threshold_rule_is_reached_by_a_float32_value_on_it():
    """A PLC's float32 2.8 arrives as 2.7999999523: a rule with high = 2.8 (or low = -2.8) never became active at
    the threshold the plant set. Within a relative millionth a value is on its limit (as ISO zones are); a value a
    measurable step below is not."""
    import numpy as np

    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=0))
    eng = RuleEngine([RuleConfig(name="hi", tag="P.a", kind="threshold", high=2.8),
                      RuleConfig(name="lo", tag="P.b", kind="threshold", low=-2.8)], m)
    on = float(np.float32(2.8))
    assert on < 2.8
    raised = eng.update([Reading("P.a", at(0), on, at(0)), Reading("P.b", at(0), -on, at(0)),
                         Reading("P.a", at(1), 2.7999, at(1))])
    assert sorted(c.alert.kind for c in raised if c.event == "raised") == ["rule:hi", "rule:lo"]
    assert [c.event for c in raised if c.alert.kind == "rule:hi"] == ["raised", "cleared"]  # 2.7999 is below it


def test_rate_rule_and_bad_quality_ignored():
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))
    rule = RuleConfig(name="heating", tag="P.t", kind="rate", max_rate_per_min=2.0, window_s=120)
    eng = RuleEngine([rule], m)
    out = []
    for s in range(0, 300, 10):
        v = 50 + 0.05 * max(0, s - 150)  # a ramp of 3 /min from 150 s on
        out += eng.update([Reading("P.t", at(s), v, at(s)), Reading("P.t", at(s + 1), 1e6, at(s), quality=Quality.BAD)])
    raised = [c for c in out if c.event == "raised"]
    assert len(raised) == 1 and "rate +" in raised[0].alert.message
    # over the 120 s window the rate passes 2 /min 80 s into the ramp
    assert raised[0].alert.raised_at == at(240)


def test_rule_config_errors():
    with pytest.raises(ValidationError, match="needs high and/or low"):
        RuleConfig(name="x", tag="a.b", kind="threshold")
    with pytest.raises(ValidationError, match="needs max_rate_per_min"):
        RuleConfig(name="x", tag="a.b", kind="rate")
    with pytest.raises(ValidationError, match="below high"):
        RuleConfig(name="x", tag="a.b", kind="threshold", high=1, low=2)


def test_escalation_waits_while_a_maintenance_window_covers_the_asset():
    w = Window("P-101", at(300), at(1500), "overhaul")
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=600), [w])
    observe(m, 0, True, severity="info")
    assert m.tick(at(600)) == [] and m.tick(at(1499)) == []  # the crew is on the machine
    (e,) = m.tick(at(1500))
    assert e.event == "escalated" and e.escalated_at == at(1500)


def test_a_condition_active_through_a_window_is_logged_once_not_per_sample():
    """Suppressed conditions are logged (alert_events rows through the spool), but one per sample flooded the
    history: a 1 Hz rule active through an 8-hour overhaul wrote 28,800 rows. Once per condition and window."""
    w = Window("P-101", at(100), at(200), "bearing change")
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None), [w])
    changes = []
    for s in range(100, 200):
        changes += observe(m, s, s % 30 != 0)  # active, with a few inactive samples (flaps) in between
    assert [c.event for c in changes] == ["suppressed"]
    assert changes[0].alert.raised_at == at(100)
    other = m.observe(asset="P-101", tag="P-101.temp", kind="test", active=True, t=at(150))
    assert [c.event for c in other] == ["suppressed"]  # another condition of the asset is logged too
    (ch,) = observe(m, 200, True)  # the window ended with the condition still active: raised
    assert ch.event == "raised"
    w2 = Window("P-101", at(300), at(400), "alignment")
    m.windows = [w, w2]
    assert observe(m, 310, True) == []  # the alert raised before the second window is open: absorbs the activity
    assert [c.event for c in observe(m, 320, False)] == ["cleared"]
    assert [c.event for c in observe(m, 330, True) + observe(m, 331, True)] == ["suppressed"]


def test_threshold_deadband_holds_for_an_alert_resumed_after_a_restart():
    """After a restart the rule's state is new but its alert is loaded open: a value inside the deadband must
    keep it open (it cleared, and the next value above `high` raised a second alert: a flap per restart)."""
    rule = RuleConfig(name="hot", tag="P-101.bearing_temp", kind="threshold", high=90, deadband=2)
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))
    eng = RuleEngine([rule], m)
    (raised,) = eng.update([Reading("P-101.bearing_temp", at(0), 95.0, at(0))])
    o = m.open[raised.key]
    again = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))  # the gateway restarted
    again.load([(o.alert, o.occurrences, o.last_seen, o.escalation_level, o.escalated_at)])
    eng2 = RuleEngine([rule], again)
    assert eng2.update([Reading("P-101.bearing_temp", at(10), 89.0, at(10))]) == []
    assert raised.key in again.open
    (cl,) = eng2.update([Reading("P-101.bearing_temp", at(20), 87.5, at(20))])
    assert cl.event == "cleared" and cl.alert.id == raised.alert.id


def test_loading_the_stored_row_keeps_an_escalation_still_on_its_way_to_the_database():
    """A gateway that escalated an alert while the database was away (the change waits in the spool) and then loads
    the stored open alerts (its first sync once the database is back) took the row's lower level and older
    escalation time, and escalated the alert again at once: a second page and two severity steps for one period."""
    m = AlertManager(AlertPolicy(escalate_after_s=600))
    (r,) = observe(m, 0, True, severity="info")
    o = m.open[r.key]
    stored = (o.alert, o.occurrences, o.last_seen, o.escalation_level, o.escalated_at)  # the row as written
    assert [c.event for c in m.tick(at(600))] == ["escalated"]  # the database is away: the change is in the spool
    m.load([stored])  # the database is back: the first sync
    assert m.tick(at(601)) == []
    assert m.open[r.key].escalation_level == 1 and m.open[r.key].alert.severity == "warning"
    (e2,) = m.tick(at(1200))
    assert e2.escalation_level == 2
    acked = (dataclasses.replace(o.alert, acknowledged_at=at(650), acknowledged_by="anna"), 1, at(0), 0, None)
    m.load([acked])  # acknowledged meanwhile: the row wins
    assert m.tick(at(5000)) == [] and m.open[r.key].alert.acknowledged_by == "anna"


def test_a_condition_back_after_a_maintenance_window_raises_a_new_alert_rather_than_reopening():
    """Re-opening joins the returns of one problem; after a planned window the crew worked on the machine (a bearing
    change), so the condition coming back is a new alert, paged as such."""
    from maintenance.alerts import Window

    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=3600),
                     windows=[Window("P-101", at(100), at(200), "bearing change")])
    kw = {"asset": "P-101", "tag": "P-101.t", "kind": "rule:hot"}
    assert [c.event for c in m.observe(**kw, active=True, t=at(0)) + m.observe(**kw, active=False, t=at(10))
            + m.observe(**kw, active=True, t=at(20)) + m.observe(**kw, active=False, t=at(30))] == [
        "raised", "cleared", "reopened", "cleared"]
    (ch,) = m.observe(**kw, active=True, t=at(300))
    assert ch.event == "raised"


def test_a_late_reading_neither_counts_a_flap_nor_raises_a_new_alert(caplog):
    """The MQTT broker sends again a message whose PUBACK was lost (after a reconnect, or a restart after a crash
    between the spool commit and the PUBACK): the reading reaches analytics a second time, after newer ones. It
    counted a flap (an `updated` notification) on an alert whose condition had gone, and once the alert had cleared
    it raised and paged a new alert for a moment the cleared one covered."""
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None, reopen_within_s=3600))
    rule = RuleConfig(name="hot", tag="P-101.bearing_temp", kind="threshold", high=90, deadband=2)
    eng = RuleEngine([rule], m)

    def feed(s, v):
        return [c.event for c in eng.update([Reading("P-101.bearing_temp", at(s), v, at(s))])]

    assert feed(0, 95) == ["raised"]
    assert feed(10, 80) == []  # inactive: clears 60 s later
    assert feed(0, 95) == [] and feed(1, 95) == []  # the readings at 0 and 1 again (redelivered): not a flap
    (o,) = m.open.values()
    assert o.occurrences == 1 and o.inactive_since == at(10)
    assert feed(70, 80) == ["cleared"]  # the clear is not delayed by the late reading either
    assert feed(5, 95) == []  # older than the clear: neither a new alert nor a re-opening
    assert not m.open and eng.late == 3
    said = [r for r in caplog.records if getattr(r, "event", "") == "rule_reading_late"]
    assert len(said) == 2  # once per stretch of late readings, not per reading
    assert feed(80, 95) == ["reopened"]  # the condition really back


def test_the_manager_leaves_out_late_observations_also_after_a_restart():
    """The manager's own guard (every detector, not only rules): and after a restart, where the broker redelivers
    what the stopped gateway had stored but not acknowledged, the loaded alerts' last activity and the lately
    cleared alerts' clear time say what is late."""
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None, reopen_within_s=3600))
    (r,) = observe(m, 0, True)
    assert observe(m, 10, False) == [] and observe(m, 5, True) == []  # late: no flap, no "updated"
    assert [c.event for c in observe(m, 70, False)] == ["cleared"]
    assert observe(m, 20, True) == [] and not m.open and m.late == 2  # late: no new alert
    cleared = m.recent[r.key][0]
    again = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None, reopen_within_s=3600))
    again.load_recent([(cleared.alert, cleared.occurrences, cleared.last_seen, 0, None)])  # the restart
    assert observe(again, 30, True) == [] and not again.open
    assert [c.event for c in observe(again, 80, True)] == ["reopened"]
    other = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))
    other.load([(dataclasses.replace(cleared.alert, cleared_at=None), 1, at(60), 0, None)])  # open, last active at 60
    assert observe(other, 50, False) == [] and r.key in other.open  # a late inactive reading does not clear it


def test_a_late_reading_does_not_corrupt_a_rules_deadband_or_rate_history():
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=0))
    rule = RuleConfig(name="hot", tag="P.t", kind="threshold", high=90, deadband=2)
    eng = RuleEngine([rule], m)
    events = []
    for s, v in [(0, 85), (1, 89), (0, 91), (2, 89.5)]:  # 91 at 0 comes late, after 89 at 1
        events += [c.event for c in eng.update([Reading("P.t", at(s), v, at(s))])]
    assert events == []  # 89.5 is below high: the late 91 must not have put the rule in its deadband

    rate = RuleConfig(name="heating", tag="P.r", kind="rate", max_rate_per_min=2.0, window_s=120)
    eng = RuleEngine([rate], AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None)))
    out = []
    for s in range(0, 200, 10):
        out += eng.update([Reading("P.r", at(s), 50.0, at(s))])
        if s == 150:
            out += eng.update([Reading("P.r", at(30), 40.0, at(30))])  # late, 10 below: would read as a rise
    assert out == []


def test_a_source_clock_set_back_an_hour_holds_rules_and_alerts_for_minutes_not_the_hour(caplog):
    """A device whose clock goes back an hour (a PLC at the autumn DST change, a corrected clock): every reading is
    older than the newest one judged. Taken for redeliveries, the rule held until the old time came again, an hour
    without an alert however hot the bearing ran. After CLOCK_STEP_S of late readings on their own clock, the new
    time is taken (logged once, clock_set_back); the same for a detector that observes the manager directly."""
    from maintenance.alerts import CLOCK_STEP_S

    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))
    eng = RuleEngine([RuleConfig(name="hot", tag="P.t", kind="threshold", high=90)], m)
    events = []
    for s in range(0, 600, 10):  # normal until 600 s, then the clock goes back an hour and the bearing heats up
        events += eng.update([Reading("P.t", at(s), 80.0, at(s))])
    back = [s - 3600 for s in range(600, 1200, 10)]
    raised_at = None
    for s in back:
        changes = eng.update([Reading("P.t", at(s), 95.0, at(s))])
        if changes and raised_at is None:
            raised_at = s
        events += changes
    assert [c.event for c in events] == ["raised"]
    assert raised_at - back[0] == CLOCK_STEP_S  # five minutes late, not an hour (or never, within this test)
    assert sum(getattr(r, "event", "") == "clock_set_back" for r in caplog.records) == 1

    d = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None))  # e.g. a zone tracker's observations
    assert [c.event for c in observe(d, 600, False)] == []
    got = [c.event for s in range(-3000, -2600, 10) for c in observe(d, s, True)]
    assert got == ["raised"] and d.guard.steps == 1 and d.late == CLOCK_STEP_S / 10
    # A short redelivery stretch (seconds) is still left out: no step.
    assert observe(d, -2500, True) == [] and observe(d, -2560, False) == [] and d.guard.steps == 1


def test_a_condition_back_after_a_window_that_was_running_at_its_clear_raises_a_new_alert():
    """An alert open when a maintenance window began, cleared inside it (the crew fixed something), its condition
    back after the window: the machine was worked on since the clear, so the return is news. Only windows starting
    after the clear counted: it re-opened the old alert, acknowledgement kept (no page to receivers of `raised` for
    an acknowledged re-opening)."""
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=3600),
                     windows=[Window("P-101", at(100), at(200), "bearing change")])
    kw = {"asset": "P-101", "tag": "P-101.t", "kind": "rule:hot"}
    (r,) = m.observe(**kw, active=True, t=at(0))
    m.acknowledged(r.alert.id, "anna", at(5))
    assert [c.event for c in m.observe(**kw, active=False, t=at(150))] == ["cleared"]  # inside the window
    assert [c.event for c in m.observe(**kw, active=True, t=at(190))] == ["suppressed"]
    (ch,) = m.observe(**kw, active=True, t=at(210))  # the window is over, the condition still there
    assert ch.event == "raised" and ch.alert.id != r.alert.id and ch.alert.acknowledged_at is None
    # A window that ended before the clear is not "since": the return re-opens as before.
    m2 = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, reopen_within_s=3600),
                      windows=[Window("P-101", at(100), at(200), "bearing change")])
    assert [c.event for c in m2.observe(**kw, active=True, t=at(210))] == ["raised"]
    assert [c.event for c in m2.observe(**kw, active=False, t=at(220)) + m2.observe(**kw, active=True, t=at(230))] \
        == ["cleared", "reopened"]


def test_a_condition_getting_worse_after_an_escalation_updates_the_alert_and_reaches_the_pager():
    """Zone C (warning), unacknowledged an hour: escalated to critical. Then zone D (critical): the alert's severity
    was critical already, so nothing changed: the board and the pager kept "zone C" for a machine in the zone that
    causes damage. The condition's own severity is tracked apart from the escalations."""
    from maintenance.notify import wanted

    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=600))
    (r,) = observe(m, 0, True, severity="warning", message="zone C", evidence={"zone": "C"})
    (e,) = m.tick(at(600))
    assert e.alert.severity == "critical"
    assert observe(m, 610, True, severity="warning", message="zone C", evidence={"zone": "C"}) == []
    (up,) = observe(m, 620, True, severity="critical", message="zone D", evidence={"zone": "D"})
    assert up.event == "updated" and up.detail == {"condition_was": "warning"}
    assert up.alert.message == "zone D" and up.alert.evidence == {"zone": "D"} and up.alert.severity == "critical"
    assert wanted(("raised", "acknowledged", "escalated", "cleared"), up)  # the webhooks' default events
    assert observe(m, 630, True, severity="critical", message="zone D", evidence={"zone": "D"}) == []  # once
    assert observe(m, 640, True, severity="warning", message="zone C") == []  # back to C: severity never falls
    # After a restart the condition's severity is not known: its first observation sets it, no change.
    again = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=600))
    o = m.open[r.key]
    again.load([(o.alert, o.occurrences, o.last_seen, o.escalation_level, o.escalated_at)])
    assert observe(again, 700, True, severity="warning") == []
    assert [c.detail for c in observe(again, 710, True, severity="critical")] == [{"condition_was": "warning"}]


def test_a_condition_still_active_when_its_window_ends_is_raised_without_a_new_reading():
    """A rule on a tag reported by exception (publish on change, an OPC UA deadband): 95 during the window, and the
    value stays there, so no reading comes after the window's end. The condition was only ever judged at a reading:
    nothing was raised until the value changed, hours later or never. The clock (`tick`) raises it now."""
    w = Window("P-101", at(100), at(200), "valve overhaul")
    m = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, raise_after_s=30), [w])
    eng = RuleEngine([RuleConfig(name="hot", tag="P-101.t", kind="threshold", high=90)], m)
    assert [c.event for c in eng.update([Reading("P-101.t", at(150), 95.0, at(150))])] == ["suppressed"]
    assert m.tick(at(199)) == [] and m.tick(at(259)) == []  # inside the window, then its detector's grace
    (ch,) = m.tick(at(260))  # no observation since the end: the condition as last seen (debounce ran in the window)
    assert ch.event == "raised" and ch.alert.raised_at == at(260) and ch.alert.message.startswith("hot: P-101.t = 95")
    assert ch.alert.evidence["readings"][0]["value"] == 95.0
    assert m.tick(at(300)) == []  # once
    assert eng.update([Reading("P-101.t", at(261), 80.0, at(261))])[0].event == "cleared"  # not late for the rule
    # Observed after the end, inactive, within the grace (a zone's window closing after the readings' clock): the
    # machine is fine after its overhaul, nothing is raised.
    m1 = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None), [w])
    kw = {"asset": "P-101", "tag": "P-101.v", "kind": "iso20816"}
    assert [c.event for c in m1.observe(**kw, active=True, t=at(190), severity="critical")] == ["suppressed"]
    assert m1.tick(at(230)) == [] and m1.observe(**kw, active=False, t=at(210)) == []
    assert m1.tick(at(400)) == [] and not m1.open
    # Gone inside the window: nothing to raise at its end.
    m2 = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None), [w])
    eng2 = RuleEngine([RuleConfig(name="hot", tag="P-101.t", kind="threshold", high=90)], m2)
    eng2.update([Reading("P-101.t", at(150), 95.0, at(150)), Reading("P-101.t", at(160), 80.0, at(160))])
    assert m2.tick(at(205)) == [] and not m2.open
    # A window ended early (its row shortened: the sync brings the new end) releases it at the new end; a window
    # following on covers it on.
    m3 = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None), [w, Window("P-101", at(200), at(400))])
    RuleEngine([RuleConfig(name="hot", tag="P-101.t", kind="threshold", high=90)], m3).update(
        [Reading("P-101.t", at(150), 95.0, at(150))])
    assert m3.tick(at(310)) == []
    m3.windows = [dataclasses.replace(w, end=at(120)), Window("P-101", at(200), at(240))]
    assert [c.event for c in m3.tick(at(310))] == ["raised"]
    # Debounce not yet over when released: raised by a later tick.
    m4 = AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None, raise_after_s=120), [w])
    m4.observe(asset="P-101", tag="P-101.t", kind="k", active=True, t=at(190))
    assert m4.tick(at(260)) == [] and [c.event for c in m4.tick(at(310))] == ["raised"]


def test_a_value_sitting_exactly_on_the_threshold_is_one_alert_and_no_flaps():
    """An integer transmitter reading exactly 90 under `high = 90` with the default deadband 0: it entered at `>=` and
    left at `<=` the next reading, a flap every two readings (299 "updated" changes in 10 minutes at 1 Hz, each an
    alert_events row and an MQTT notification). The exit is inclusive as the entry: the value must go past it."""
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None))
    eng = RuleEngine([RuleConfig(name="hot", tag="P.t", kind="threshold", high=90),
                      RuleConfig(name="cold", tag="P.t", kind="threshold", low=10, deadband=2)], m)
    events = []
    for s in range(600):
        events += [c.event for c in eng.update([Reading("P.t", at(s), 90.0, at(s))])]
    assert events == ["raised"] and next(iter(m.open.values())).occurrences == 1
    assert eng.update([Reading("P.t", at(600), 89.99, at(600))]) == []  # just below high: the condition left
    assert next(iter(m.open.values())).inactive_since == at(600)
    events = []
    for s, v in [(800, 10.0), (801, 12.0), (802, 12.0), (803, 12.01)]:  # low side: on low + deadband still active
        events += [c.event for c in eng.update([Reading("P.t", at(s), v, at(s))])]
    assert [e for e in events if e != "cleared"] == ["raised"]
    cold = m.open.get("P|P.t|rule:cold")
    assert cold is not None and cold.inactive_since == at(803)


def test_a_rate_rule_on_a_tag_read_less_often_than_its_window_says_so(caplog):
    """A rate rule judges the change within its window from readings at least half a window apart. A bearing
    temperature polled every 10 minutes under a rule of window_s 300 heated 5 /min (50 per reading) and the rule
    never judged a rate: no alert, no word. It now says so once (the rule still cannot judge: the fix is its
    window_s), and a tag read often enough is judged as before."""
    rule = RuleConfig(name="heating", tag="P.t", kind="rate", max_rate_per_min=2.0, window_s=300)
    eng = RuleEngine([rule], AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None)))
    with caplog.at_level("WARNING", logger="maintenance.rules"):
        out = [c for s in range(0, 6000, 600) for c in eng.update([Reading("P.t", at(s), 40 + s / 12, at(s))])]
    assert out == []  # 5 /min, never judged
    said = [r for r in caplog.records if getattr(r, "event", None) == "rule_rate_unjudged"]
    assert len(said) == 1 and "heating" in said[0].getMessage() and "window_s (300 s)" in said[0].getMessage()
    assert said[0].asset == "P"
    caplog.clear()
    eng = RuleEngine([rule], AlertManager(AlertPolicy(clear_after_s=0, escalate_after_s=None)))
    with caplog.at_level("WARNING", logger="maintenance.rules"):
        out = [c for s in range(0, 6000, 200) for c in eng.update([Reading("P.t", at(s), 40 + s / 12, at(s))])]
    assert [c.event for c in out] == ["raised"] and "rate +5/min" in out[0].alert.message
    assert not [r for r in caplog.records if getattr(r, "event", None) == "rule_rate_unjudged"]
