"""Escalation in the gateway's live analytics: its clock, and the alerts it escalates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from analytics_support import spool_emit

from edge import analytics
from edge.analytics import Analytics
from edge.metrics import Metrics
from edge.records import Reading
from edge.settings import SiteConfig

STACK = {"name": "W", "regime": "waste_incineration", "operating_state_tag": "W.state",
         "pollutants": [{"name": "NOx", "tag": "W.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}]}


def _hot_bearing(state_dir, batches: list, conninfo: str | None) -> Analytics:
    """Live analytics with the rule "P1.t above 90" escalating after 1 s, its batches collected in ``batches``."""

    emit = spool_emit(batches)

    site = SiteConfig(site={"state_dir": state_dir},
                      rules=[{"name": "hot", "tag": "P1.t", "kind": "threshold", "high": 90.0}],
                      maintenance={"alerts": {"escalate_after_s": 1.0}})
    return Analytics(site, Metrics(), emit, conninfo)


def _changes(batches) -> list[tuple[str, str]]:
    return [(c["alert"]["asset"], c["event"]) for b in batches for kind, c in b.records if kind == "alert_change"]


def _migrated(pg_dsn: str) -> None:
    import psycopg

    from edge.db.migrate import migrate

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)


def _gateway_with_rule(state_dir, pg_dsn: str, name: str) -> Analytics:
    """Live analytics (a new gateway: a start or a reload), its one rule ``name`` on P1.t escalating after 600 s."""

    emit = spool_emit()

    site = SiteConfig(site={"state_dir": state_dir},
                      rules=[{"name": name, "tag": "P1.t", "kind": "threshold", "high": 90.0}],
                      maintenance={"alerts": {"escalate_after_s": 600}})
    return Analytics(site, Metrics(), emit, pg_dsn)


async def test_emission_alerts_escalate_in_a_gateway_without_maintenance_assets():
    """A site that monitors only its stacks (no [maintenance] assets or rules): the projection alerts of the
    emissions ("NOx half-hour heading over its limit") went through the alert lifecycle but were never escalated,
    however long nobody acknowledged them: only the maintenance analysis advanced the escalation clock."""
    batches = []

    emit = spool_emit(batches)

    an = Analytics(SiteConfig(stacks=[STACK], maintenance={"alerts": {"escalate_after_s": 600}}), Metrics(), emit,
                   None)
    assert an.maintenance is None and an.emissions is not None
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    an._condition(asset="W", tag="W.NOx", kind="emission:wi_half_hour_a", active=True, t=t0, severity="warning",
                  message="NOx projected over its limit")
    await an.process([])
    an.latest = t0 + timedelta(seconds=601)
    await an.process([])
    assert _changes(batches) == [("W", "raised"), ("W", "escalated")]


async def test_open_alerts_escalate_while_no_reading_arrives_at_all(tmp_path, monkeypatch):
    """The escalation clock is the readings' time, and it moved only when readings arrived. When every collector
    is cut off (the plant network down, the OPC UA server hung), an alert raised just before (a bearing running
    hot) was never escalated for as long as nothing came: the moment nobody could see the machine was the moment
    its alert stopped going up. Without readings the clock now goes on with the gateway's own."""
    monkeypatch.setattr(analytics, "IDLE_TICK_S", 0.1, raising=False)
    batches = []
    an = _hot_bearing(tmp_path, batches, None)
    task = asyncio.create_task(an.run())
    try:
        t0 = datetime.now(UTC)
        an.offer([Reading("P1.t", t0, 95.0, t0)], t0)  # the last reading before the cut
        for _ in range(60):
            if len(_changes(batches)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert _changes(batches)[:2] == [("P1", "raised"), ("P1", "escalated")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_analysis_starts_while_a_lock_holds_the_alerts_table(tmp_path, pg_dsn, monkeypatch):
    """The gateway loads the open alerts before it analyses anything. With the alerts table locked at that moment
    (a session left idle in a transaction that holds a lock, a long migration) that load waited without a bound:
    no reading was analysed, no alert raised or escalated, for as long as the lock lasted. The sync is bounded;
    a start without it goes on from the saved alert state, like a start without the database."""
    import psycopg

    from edge.db.migrate import migrate

    monkeypatch.setattr(analytics, "SYNC_TIMEOUT_S", 1.0, raising=False)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)

    emit = spool_emit()

    site = SiteConfig(site={"state_dir": tmp_path}, rules=[{"name": "hot", "tag": "P1.t", "kind": "threshold",
                                                             "high": 90.0}])
    an = Analytics(site, Metrics(), emit, pg_dsn)
    with psycopg.connect(pg_dsn) as locker:
        locker.execute("LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE")
        t0 = datetime.now(UTC)
        an.offer([Reading("P1.t", t0, 95.0, t0)], t0)
        task = asyncio.create_task(an.run())
        try:
            for _ in range(200):
                if an.processed:
                    break
                await asyncio.sleep(0.05)
            assert an.processed == 1 and len(an.manager.open) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            locker.rollback()


async def test_a_gateway_started_without_database_and_readings_escalates_the_alerts_it_restored(tmp_path, monkeypatch):
    """A power cut took the gateway, the database and the plant network down; the gateway comes back first and
    goes on from its saved alert state, but no reading has arrived yet to give its clock a time: the restored
    alerts nobody had acknowledged never escalated until the first reading. Without any, the clock starts at the
    gateway's own time."""
    from servers import free_port

    from maintenance import alert_state
    from maintenance.alerts import AlertManager

    monkeypatch.setattr(analytics, "IDLE_TICK_S", 0.1)
    before = AlertManager()
    (raised,) = before.observe(asset="P1", tag="P1.t", kind="rule:hot", active=True,
                               t=datetime.now(UTC) - timedelta(seconds=5))
    alert_state.write(tmp_path / alert_state.STATE_FILE, alert_state.content(before))
    batches = []
    an = _hot_bearing(tmp_path, batches, f"host=127.0.0.1 port={free_port()} user=postgres dbname=x")
    task = asyncio.create_task(an.run())
    try:
        for _ in range(100):
            if _changes(batches):
                break
            await asyncio.sleep(0.05)
        assert _changes(batches)[:1] == [("P1", "escalated")]
        assert batches[0].records[0][1]["alert"]["id"] == raised.alert.id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restart_with_the_escalation_still_in_the_spool_does_not_escalate_and_page_again(tmp_path, pg_dsn):
    """The gateway escalated an alert (and paged: notifications do not wait for the database) while the database
    was away; the change waits in the spool. It restarts with the database back: its first sync loaded the row as
    stored (level 0, escalated never) before the forwarder had written the spool's backlog, and the first tick
    escalated the alert again, a second page with another notification_id (its escalation time differs), so the
    receiver's de-duplication did not drop it. The state file knew the escalation; the first sync takes it now."""
    import psycopg

    from maintenance import alert_state, store
    from maintenance.alerts import AlertManager, AlertPolicy

    _migrated(pg_dsn)
    t0 = datetime.now(UTC) - timedelta(seconds=1000)
    before = AlertManager(AlertPolicy(escalate_after_s=600))
    (raised,) = before.observe(asset="P1", tag="P1.t", kind="rule:hot", active=True, t=t0, severity="info")
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await store.apply_changes(conn, [raised])  # the raise reached the database
        (esc,) = before.tick(t0 + timedelta(seconds=600))  # the escalation did not (the database went away)
        alert_state.write(tmp_path / alert_state.STATE_FILE, alert_state.content(before))  # saved at the stop
        an = _gateway_with_rule(tmp_path, pg_dsn, "hot")
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as sync:
            await an.sync_once(sync)  # the first sync after the restart, the spool not yet forwarded
        (o,) = an.manager.open.values()
        assert o.alert.id == raised.alert.id
        assert (o.escalation_level, o.escalated_at, o.alert.severity) == (1, esc.escalated_at, "warning")
        assert an.manager.tick(t0 + timedelta(seconds=700)) == []  # no second page for the same period
        (e2,) = an.manager.tick(t0 + timedelta(seconds=1200))
        assert e2.escalation_level == 2 and e2.alert.severity == "critical"
        # Acknowledged in the console meanwhile: the row wins, nothing escalates.
        await store.acknowledge(conn, raised.alert.id, "anna")
        an2 = _gateway_with_rule(tmp_path, pg_dsn, "hot")
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as sync:
            await an2.sync_once(sync)
        (o2,) = an2.manager.open.values()
        assert o2.alert.acknowledged_by == "anna" and an2.manager.tick(t0 + timedelta(seconds=5000)) == []


async def test_a_condition_held_through_a_window_is_raised_at_its_end_while_no_reading_arrives(tmp_path, monkeypatch):
    """A bearing temperature reported by exception stays at 95 through a maintenance window and after it: no reading
    arrives at all, and no alert was open, so the gateway's clock did not move and nothing raised the condition at
    the window's end. The clock now goes on while a suppressed condition waits for its window's end too."""
    from maintenance.alerts import Window

    monkeypatch.setattr(analytics, "IDLE_TICK_S", 0.1)
    batches = []
    an = _hot_bearing(tmp_path, batches, None)
    t0 = datetime.now(UTC)
    an.manager.windows = [Window("P1", t0 - timedelta(seconds=10), t0 + timedelta(seconds=0.5), "valve overhaul")]
    an.manager.release_after_s = 0.2  # the detectors' grace after the window's end (window + hop: 70 s)
    task = asyncio.create_task(an.run())
    try:
        an.offer([Reading("P1.t", t0, 95.0, t0)], t0)  # the last reading: inside the window
        for _ in range(100):
            if len(_changes(batches)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert _changes(batches)[:2] == [("P1", "suppressed"), ("P1", "raised")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_open_alert_of_a_rule_removed_by_a_reload_is_named_and_goes_on_escalating(tmp_path, pg_dsn, caplog):
    """A reload renamed the rule "hot" to "hot2" (or removed it): the open alert of "hot" is observed by nothing, so it
    never clears by itself and, unacknowledged, escalates and pages every period until a person acknowledges or
    clears it (the rule for every unacknowledged alert, kept). The gateway says so once at its first sync, naming
    the alert, so the reload's author knows why the old alert stays."""
    import logging

    import psycopg

    from maintenance import store
    from maintenance.alerts import AlertManager, AlertPolicy

    _migrated(pg_dsn)
    t0 = datetime.now(UTC) - timedelta(seconds=1000)
    before = AlertManager(AlertPolicy(escalate_after_s=600))
    (old,) = before.observe(asset="P1", tag="P1.t", kind="rule:hot", active=True, t=t0)
    (zone,) = before.observe(asset="P9", tag="P9.v", kind="iso20816", active=True, t=t0)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, [old, zone])
        an = _gateway_with_rule(tmp_path, pg_dsn, "hot2")  # the reload renamed the rule
        with caplog.at_level(logging.WARNING, logger="edge.analytics"):
            await an.sync_once(conn)
            await an.sync_once(conn)  # once, not at every sync
        said = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "alert_unwatched"]
        assert len(said) == 2 and old.alert.id in said[0] + said[1] and zone.alert.id in said[0] + said[1]
        assert "escalates until acknowledged" in said[0]
        assert {c.alert.id for c in an.manager.tick(t0 + timedelta(seconds=600))} == {old.alert.id, zone.alert.id}


async def test_the_sync_loads_the_windows_a_reopening_looks_back_on(tmp_path, pg_dsn):
    """With reopen_within_s of three days, an alert cleared 2.5 days ago, a maintenance window after the clear that
    ended 2 days ago, and the condition back now: the sync read windows ending within a day only, so the manager did
    not know of the window and re-opened the old alert instead of raising a new one."""
    import psycopg

    from maintenance import store
    from maintenance.alerts import Window

    _migrated(pg_dsn)
    now = datetime.now(UTC)
    day = timedelta(days=1)
    an = _gateway_with_rule(tmp_path, pg_dsn, "hot")
    an.manager.policy = an.manager.policy.model_copy(update={"reopen_within_s": 3 * 86400.0, "clear_after_s": 0})
    kw = {"asset": "P1", "tag": "P1.t", "kind": "rule:hot"}
    an.manager.observe(**kw, active=True, t=now - 3 * day)
    assert [c.event for c in an.manager.observe(**kw, active=False, t=now - 2.5 * day)] == ["cleared"]
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.add_window(conn, Window("P1", now - 2.4 * day, now - 2 * day, "coupling alignment"))
        await an.sync_once(conn)
    assert [w.reason for w in an.manager.windows] == ["coupling alignment"]
    assert [c.event for c in an.manager.observe(**kw, active=True, t=now)] == ["raised"]


async def test_an_alert_acknowledged_just_before_the_gateway_cleared_it_reopens_acknowledged(tmp_path, pg_dsn):
    """Anna acknowledges the alert in the console; before the gateway's next sync (15 s) its condition clears. The
    copy the manager keeps for a re-opening did not know of the acknowledgement: the condition's return re-opened it
    unacknowledged, paged the receivers of "raised" (webhooks by default) and escalated it."""
    import psycopg

    from maintenance import store
    from maintenance.notify import wanted

    _migrated(pg_dsn)
    now = datetime.now(UTC)
    an = _gateway_with_rule(tmp_path, pg_dsn, "hot")
    an.manager.policy = an.manager.policy.model_copy(update={"clear_after_s": 0})
    kw = {"asset": "P1", "tag": "P1.t", "kind": "rule:hot"}
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await an.sync_once(conn)
        (raised,) = an.manager.observe(**kw, active=True, t=now - timedelta(seconds=100))
        await store.apply_changes(conn, [raised])
        assert await store.acknowledge(conn, raised.alert.id, "anna", "on it")
        (cleared,) = an.manager.observe(**kw, active=False, t=now - timedelta(seconds=90))
        await store.apply_changes(conn, [cleared])
        await an.sync_once(conn)
    (back,) = an.manager.observe(**kw, active=True, t=now)
    assert back.event == "reopened" and back.alert.acknowledged_by == "anna"
    assert not wanted(("raised", "acknowledged", "escalated", "cleared"), back)  # no new page
    assert an.manager.tick(now + timedelta(seconds=4000)) == []  # nor escalations


async def test_a_redelivered_reading_in_the_gateway_changes_no_alert_and_is_counted(tmp_path):
    """The gateway's path (`Analytics.process`): a reading offered again after newer ones (the broker redelivering a
    message whose PUBACK was lost) neither counts a flap nor delays the clear; /healthz `analytics` counts it."""
    batches = []
    an = _hot_bearing(tmp_path, batches, None)
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    for s, v in [(0, 95.0), (10, 80.0), (0, 95.0), (70, 80.0)]:
        t = t0 + timedelta(seconds=s)
        await an.process([Reading("P1.t", t, v, t)])
    assert [e for _, e in _changes(batches) if e != "escalated"] == ["raised", "cleared"]
    assert an.status()["late_observations"] == 1


async def test_a_condition_held_by_a_window_is_raised_at_its_end_after_a_restart_inside_it(tmp_path, pg_dsn):
    """A bearing temperature reported by exception at 95 inside a maintenance window; the gateway restarts inside the
    window and no new reading comes (the value holds). Held conditions lived in memory only: after the restart the
    condition was forgotten and the window's end raised nothing. The state file keeps them now; the first sync loads
    them and the window's end raises the alert."""
    import psycopg

    from maintenance import alert_state
    from maintenance.alerts import AlertManager, AlertPolicy, Window

    _migrated(pg_dsn)
    t0 = datetime.now(UTC) - timedelta(seconds=100)
    window = Window("P1", t0 - timedelta(seconds=10), t0 + timedelta(seconds=50), "valve overhaul")
    before = AlertManager(AlertPolicy(escalate_after_s=600), [window])
    (held,) = before.observe(asset="P1", tag="P1.t", kind="rule:hot", active=True, t=t0, severity="warning",
                             evidence={"value": 95.0})
    assert held.event == "suppressed" and before.held
    alert_state.write(tmp_path / alert_state.STATE_FILE, alert_state.content(before))  # saved at the stop
    an = _gateway_with_rule(tmp_path, pg_dsn, "hot")
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as sync:
        await an.sync_once(sync)  # the first sync after the restart
    an.manager.windows = [window]  # as the sync would load it from the database
    an.manager.release_after_s = 5.0
    assert an.manager.tick(t0 + timedelta(seconds=40)) == []  # still inside the window
    (raised,) = an.manager.tick(t0 + timedelta(seconds=60))  # after its end and the detectors' grace
    assert raised.event == "raised" and raised.alert.tag == "P1.t" and raised.alert.evidence == {"value": 95.0}


async def test_a_failing_alert_state_write_is_counted_each_time_not_only_logged(tmp_path, caplog, monkeypatch):
    """`alert_state_not_saved` was logged once per failing stretch and counted nowhere (the RUL and anomaly state's
    failed writes are counted in valvoja_analytics_errors_total): an alert on that counter never saw a state folder
    that could not be written. Each failed write counts; the line is still said once."""
    import logging

    from maintenance import alert_state

    (tmp_path / alert_state.STATE_FILE).mkdir()  # the file's place taken: every write fails (also as root)
    monkeypatch.setattr(analytics, "ALERT_STATE_SAVE_S", 0.01)
    an = _hot_bearing(tmp_path, [], "host=127.0.0.1 port=1 dbname=x")
    task = asyncio.create_task(an._alert_state_loop())
    try:
        with caplog.at_level(logging.ERROR, logger="edge.analytics"):
            for _ in range(500):
                if an.metrics.analytics_errors._value.get() >= 3:
                    break
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert an.metrics.analytics_errors._value.get() >= 3
    assert [r.event for r in caplog.records if getattr(r, "event", "") == "alert_state_not_saved"] \
        == ["alert_state_not_saved"]
