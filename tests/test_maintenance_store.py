"""Alert lifecycle, predictions and feedback stored in TimescaleDB (and plain PostgreSQL)."""

import logging
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from analytics_support import spool_emit
from psycopg.rows import dict_row

from edge.db.migrate import migrate
from edge.records import Prediction
from maintenance import review, store
from maintenance.alerts import AlertManager, AlertPolicy, Window

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _migrate(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        features, _ = migrate(conn)
    return features.edition


def _events(dsn, alert_id):
    with psycopg.connect(dsn) as c, c.cursor() as cur:
        cur.execute("SELECT event, actor FROM alert_events WHERE alert_id = %s ORDER BY time, id", (alert_id,))
        return cur.fetchall()


async def _lifecycle(dsn: str) -> None:
    m = AlertManager(AlertPolicy(clear_after_s=30, escalate_after_s=600))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        changes = []
        for s in range(120):  # flapping every 3 s
            changes += m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=(s // 3) % 2 == 0,
                                 t=at(s), severity="warning", message="zone C",
                                 evidence={"readings": [{"tag": "P-101.vib_de", "time": at(s), "value": 3.1}]})
        await store.apply_changes(conn, changes)
        (alert,) = await _all(conn)
        assert alert["state"] == "raised" and alert["occurrences"] == 20
        assert alert["evidence"]["readings"][0]["value"] == 3.1
        # Escalated while unacknowledged, then acknowledged with a comment, then cleared by the manager.
        await store.apply_changes(conn, m.tick(at(700)))
        assert await store.acknowledge(conn, alert["id"], "anna", "checking the coupling", at(710))
        assert not await store.acknowledge(conn, alert["id"], "bob", "", at(711))  # only once
        m.acknowledged(alert["id"], "anna", at(710))
        await store.comment(conn, alert["id"], "anna", "coupling loose, tightened")
        # Inactive since 117 s (the last flap); the next observation after the 30 s hysteresis clears it.
        cleared = m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=False, t=at(830))
        await store.apply_changes(conn, cleared)
        row = await store.get_alert(conn, alert["id"])
        assert row["state"] == "cleared" and row["cleared_at"] == at(830)
        assert row["acknowledged_by"] == "anna" and row["ack_comment"] == "checking the coupling"
        assert row["severity"] == "critical" and row["escalation_level"] == 1
        assert await store.open_alerts(conn) == []
    events = _events(dsn, alert["id"])
    assert events == [("raised", "system"), ("escalated", "system"), ("acknowledged", "anna"), ("cleared", "system")]


async def _all(conn):
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM alerts ORDER BY raised_at")
        return await cur.fetchall()


@pytest.mark.parametrize("flavour", ["timescaledb", "plain"])
async def test_acknowledge_clear_flow_stored(flavour, request):
    dsn = request.getfixturevalue("pg_dsn" if flavour == "timescaledb" else "plain_pg_dsn")
    edition = _migrate(dsn)
    assert (edition != "plain") == (flavour == "timescaledb")
    await _lifecycle(dsn)


async def test_one_open_alert_per_condition_across_writers(pg_dsn):
    _migrate(pg_dsn)
    a, b = AlertManager(), AlertManager()  # two gateways (or a restart) that do not share memory
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, a.observe(asset="K1", tag=None, kind="anomaly", active=True, t=at(0)))
        await store.apply_changes(conn, b.observe(asset="K1", tag=None, kind="anomaly", active=True, t=at(5)))
        rows = await _all(conn)
        assert len(rows) == 1 and rows[0]["occurrences"] == 2
        # After a restart the manager resumes the open alert instead of raising a new one.
        c = AlertManager()
        c.load(await store.open_alerts(conn))
        assert c.observe(asset="K1", tag=None, kind="anomaly", active=True, t=at(10)) == []


async def test_suppressed_conditions_are_logged_not_raised(pg_dsn):
    _migrate(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        wid = await store.add_window(conn, Window("P-102", at(0), at(3600), "seal replacement"),
                                     created_by="planner")
        m = AlertManager(windows=await store.windows(conn, at(10)))
        await store.apply_changes(conn, m.observe(asset="P-102", tag=None, kind="anomaly", active=True, t=at(10)))
        assert await _all(conn) == []
        async with conn.cursor() as cur:
            # The event names the window by id: traceable to who planned it, whatever its free-text reason.
            await cur.execute("SELECT event, asset, detail->>'window', (detail->>'window_id')::int FROM alert_events")
            assert await cur.fetchall() == [("suppressed", "P-102", "seal replacement", wid)]


async def test_predictions_idempotent_and_feedback_used_for_precision(pg_dsn):
    _migrate(pg_dsn)
    p = Prediction("anomaly:P-101", "abc123", "P-101", at(0), 14.2, p_value=0.003, kind="anomaly",
                   input_start=at(-10), input_end=at(0), details={"alpha": 0.01})
    rul = Prediction("rul:P-101", "def456", "P-101", at(0), 80.0, lower=60.0, upper=101.0, coverage=0.9, kind="rul")
    m = AlertManager(AlertPolicy(clear_after_s=0, reopen_within_s=0))  # four alerts, none re-opened
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        ids = await store.write_predictions(conn, [p, rul])
        assert ids == await store.write_predictions(conn, [p, rul])  # a replay does not duplicate
        changes = []
        for k, (asset, s) in enumerate([("P-101", 0), ("P-101", 100), ("P-102", 0), ("P-103", 0)]):
            ev = {"prediction": {"id": ids[0], "model_id": "anomaly:P-101", "model_version": "abc123",
                                 "p_value": 0.003}} if k == 0 else {}
            changes += m.observe(asset=asset, tag=None, kind="anomaly", active=True, t=at(s), evidence=ev)
            changes += m.observe(asset=asset, tag=None, kind="anomaly", active=False, t=at(s + 1))
        await store.apply_changes(conn, changes)
        alerts = await _all(conn)
    assert len(alerts) == 4
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Review: the first alert through its prediction, two alerts directly (one reviewed twice), one not at all.
        review.review_prediction(conn, ids[0], "right", "bearing was pitted", "anna")
        review.review_alert(conn, alerts[1]["id"], "right", "", "anna")
        review.review_alert(conn, alerts[2]["id"], "right", "", "bob")
        review.review_alert(conn, alerts[2]["id"], "wrong", "it was the valve test", "anna")  # the newest counts
        with pytest.raises(LookupError):
            review.review_alert(conn, "no-such-alert", "right", "", "anna")
        with pytest.raises(ValueError):
            review.review_prediction(conn, ids[1], "maybe", "", "anna")
        rows = {r["model_id"]: r for r in review.alert_precision(conn)}
        assert (rows["anomaly:P-101"]["right"], rows["anomaly:P-101"]["precision"]) == (1, 1.0)
        other = rows[""]  # alerts without a model behind them
        assert (other["alerts"], other["right"], other["wrong"], other["unreviewed"]) == (3, 1, 1, 1)
        assert other["precision"] == pytest.approx(1 / 2)
        assert review.alert_precision(conn, model_id="anomaly:P-101")[0]["alerts"] == 1
        preds = review.list_predictions(conn, "P-101")
        assert {r["kind"] for r in preds} == {"anomaly", "rul"}
        assert next(r for r in preds if r["kind"] == "anomaly")["verdict"] == "right"
        rul_row = next(r for r in preds if r["kind"] == "rul")
        assert (rul_row["lower"], rul_row["upper"], rul_row["coverage"]) == (60.0, 101.0, 0.9)
        listed = review.list_alerts(conn, "P-101")
        assert listed[-1]["uncertainty"] == {"p_value": 0.003, "model_version": "abc123"}


async def test_review_commands(pg_dsn, capsys):
    from maintenance.cli import main

    _migrate(pg_dsn)
    m = AlertManager()
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        ids = await store.write_predictions(conn, [Prediction("anomaly:P-7", "v1" * 32, "P-7", at(0), 20.0,
                                                              p_value=0.004, kind="anomaly")])
        await store.apply_changes(conn, m.observe(asset="P-7", tag=None, kind="anomaly", active=True, t=at(0),
                                                  message="anomalous", evidence={"prediction": {
                                                      "model_id": "anomaly:P-7", "p_value": 0.004}}))
        (alert,) = await _all(conn)
    assert main(["review", "mark", "--alert", alert["id"], "--verdict", "wrong", "--comment", "pump test",
                 "--by", "anna", "--db", pg_dsn]) == 0
    assert main(["review", "mark", "--prediction", str(ids[0]), "--verdict", "right", "--by", "bob",
                 "--db", pg_dsn]) == 0
    assert main(["review", "list", "--asset", "P-7", "--db", pg_dsn]) == 0
    assert main(["review", "precision", "--db", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "review=wrong" in out and "p=0.004" in out and "review=right" in out
    # one wrong review: precision 0 with its exact 95 % interval, not a bare 0.00 (it could be anything to 0.975)
    assert "precision 0.00 [0.00, 0.97] 95%" in out


async def test_review_comment_is_limited_as_in_the_console_and_stored_as_given(pg_dsn, capsys):
    """The console takes a review comment of at most 2000 characters; `review mark --comment` stored any length (a
    pasted 5,000-character log went in). Within the limit the text is kept exactly (combining marks, emoji, spaces,
    line breaks), and a reviewer's name of blanks is no name."""
    from maintenance.cli import main

    _migrate(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, AlertManager().observe(asset="P-9", tag=None, kind="anomaly", active=True,
                                                               t=at(0), message="anomalous"))
        (alert,) = await _all(conn)
    mark = ["review", "mark", "--alert", alert["id"], "--verdict", "wrong", "--by", "anna", "--db", pg_dsn]
    assert main([*mark, "--comment", "x" * 5000]) == 1
    assert "at most 2000" in capsys.readouterr().err
    text = "  la\u0308ppa \U0001f6e0 ok\r\n\tend  " + "\u00e4" * 1970
    assert main([*mark, "--comment", text]) == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT comment FROM prediction_feedback").fetchall() == [(text,)]
        with pytest.raises(ValueError, match="reviewer"):
            review.review_alert(conn, alert["id"], "right", "", "  ")
        assert conn.execute("SELECT count(*) FROM prediction_feedback").fetchone()[0] == 1


async def test_review_list_says_a_rul_alerts_interval_is_open_ended(pg_dsn, capsys):
    """A RUL alert whose interval reaches the model's cap (upper None in its evidence: "12 cycles or more") was listed
    as "lower=12.0, coverage=0.9": the open upper end not said. Listed as its prediction is: [12.0, inf) @90%."""
    from maintenance.cli import main

    _migrate(pg_dsn)
    m = AlertManager()
    ev = {"prediction": {"model_id": "rul-x", "model_version": "ab" * 32, "value": 125.0, "lower": 12.0,
                         "upper": None, "coverage": 0.9, "cycle": 40}}
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, m.observe(asset="E-9", tag=None, kind="rul", active=True, t=at(0),
                                                  message="rul low", evidence=ev))
    assert main(["review", "list", "--asset", "E-9", "--db", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "rul low [[12.0, inf) @90% model_version=" + "ab" * 32 + "]" in out


async def test_review_list_times_say_their_zone(pg_dsn, capsys, monkeypatch):
    """The list printed the database session's wall clock without a zone: with the session in Europe/Helsinki (the
    server's zone, or PGTZ) an alert raised at 08:00 UTC read "2026-03-01 10:00:00". Times are UTC by default, or
    in ``--tz``, each with its offset."""
    from maintenance.cli import main

    _migrate(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.write_predictions(conn, [Prediction("anomaly:P-8", "v1" * 32, "P-8", at(0), 20.0, p_value=0.004,
                                                        kind="anomaly")])
        await store.apply_changes(conn, AlertManager().observe(asset="P-8", tag=None, kind="anomaly", active=True,
                                                               t=at(0), message="anomalous"))
    monkeypatch.setenv("PGTZ", "Europe/Helsinki")
    assert main(["review", "list", "--asset", "P-8", "--db", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "times in UTC" in out
    assert out.count("2026-03-01 08:00:00 +00:00 ") == 2 and "10:00:00" not in out  # the alert and the prediction
    assert main(["review", "list", "--asset", "P-8", "--tz", "Europe/Helsinki", "--db", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "times in Europe/Helsinki" in out and out.count("2026-03-01 10:00:00 +02:00 ") == 2
    with pytest.raises(SystemExit):
        main(["review", "list", "--asset", "P-8", "--tz", "Mars/Olympus", "--db", pg_dsn])


async def test_live_results_published_with_traceable_evidence(pg_dsn):
    """Simulated pump with a bearing fault -> live monitoring -> predictions and alerts in TimescaleDB,
    the alert's evidence pointing at its stored prediction, and a webhook notification logged."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from test_maintenance_live import config, pump_readings

    from maintenance.live import MaintenanceLive
    from maintenance.notify import WebhookConfig, WebhookNotifier
    from maintenance.publish import publish

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _migrate(pg_dsn)
    live = MaintenanceLive(config())
    hook = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/", events=("raised",)))
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            for batch in pump_readings(900, fault_from=700):
                _, preds, changes = await live.process(batch)
                await publish(conn, preds, changes, [hook])
            rows = {r["kind"]: r for r in await _all(conn)}
            assert set(rows) == {"anomaly", "iso20816"}
            pred = rows["anomaly"]["evidence"]["prediction"]
            async with conn.cursor() as cur:
                await cur.execute("SELECT p_value, model_version FROM predictions WHERE id = %s", (pred["id"],))
                assert await cur.fetchone() == (pred["p_value"], rows["anomaly"]["model_version"])
                await cur.execute("SELECT count(*) FROM alert_events WHERE event = 'notified'")
                assert (await cur.fetchone())[0] == 2
    finally:
        await hook.aclose()
        server.shutdown()
        server.server_close()


async def test_escalation_time_is_stored_and_a_restart_does_not_escalate_again(pg_dsn):
    _migrate(pg_dsn)
    m = AlertManager(AlertPolicy(escalate_after_s=600))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, m.observe(asset="K2", tag=None, kind="anomaly", active=True, t=at(0),
                                                  severity="info"))
        await store.apply_changes(conn, m.observe(asset="K2", tag=None, kind="anomaly", active=True, t=at(100)))
        await store.apply_changes(conn, m.tick(at(650)))
        (row,) = await _all(conn)
        assert row["escalated_at"] == at(650) and row["last_seen"] == at(100)  # when it escalated, not last seen
        again = AlertManager(AlertPolicy(escalate_after_s=600))  # the gateway restarted
        again.load(await store.open_alerts(conn))
        assert again.tick(at(700)) == []
        (e,) = again.tick(at(1250))
        assert e.escalation_level == 2 and e.alert.severity == "critical"


async def test_sync_forgets_only_alerts_cleared_in_the_console(pg_dsn, caplog):
    """An open alert missing from the stored open ones was either cleared by a person or not written yet (the
    spool holds it while the database is away); only a stored, cleared row means the former."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _migrate(pg_dsn)

    emit = spool_emit()

    site = SiteConfig(rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}])
    an = Analytics(site, Metrics(), emit, pg_dsn)
    written = an.manager.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(0))
    an.manager.observe(asset="P2", tag="P2.p", kind="rule:hi", active=True, t=at(0))  # raised days ago, unwritten
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, written)
        await an.sync_once(conn)
        assert {o.alert.asset for o in an.manager.open.values()} == {"P1", "P2"}
        assert await store.clear(conn, written[0].alert.id, "anna")
        await an.sync_once(conn)
        assert {o.alert.asset for o in an.manager.open.values()} == {"P2"}
        # P2's row is still on its way while the spool holds batches; missing with the spool drained at two
        # syncs running, it was refused (dead-lettered) and will never be written: forgotten, so it can be raised
        # again as a row the board shows.
        an.spool_pending = lambda: 3
        await an.sync_once(conn)
        await an.sync_once(conn)
        assert {o.alert.asset for o in an.manager.open.values()} == {"P2"}
        an.spool_pending = lambda: 0
        await an.sync_once(conn)
        assert {o.alert.asset for o in an.manager.open.values()} == {"P2"}
        await an.sync_once(conn)
        assert an.manager.open == {}
        # Missing at a drained sync, then written and cleared in the console before the next one: cleared by
        # hand, not reported as a row that was never stored.
        late = an.manager.observe(asset="P3", tag="P3.p", kind="rule:hi", active=True, t=at(0))
        await an.sync_once(conn)
        await store.apply_changes(conn, late)
        assert await store.clear(conn, late[0].alert.id, "anna")
        with caplog.at_level(logging.WARNING, logger="edge.analytics"):
            await an.sync_once(conn)
        assert an.manager.open == {}
        assert not [r for r in caplog.records if getattr(r, "event", None) == "alert_unstored"
                    and r.args == (late[0].alert.id,)]


async def test_changes_reach_the_open_alert_that_absorbed_another_writers_insert(pg_dsn):
    _migrate(pg_dsn)
    a, b = AlertManager(AlertPolicy(clear_after_s=0)), AlertManager(AlertPolicy(clear_after_s=0))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, a.observe(asset="K3", tag=None, kind="anomaly", active=True, t=at(0)))
        await store.apply_changes(conn, b.observe(asset="K3", tag=None, kind="anomaly", active=True, t=at(5)))
        # b's alert id was never stored (its insert became an occurrence of a's): its clear still closes the row.
        await store.apply_changes(conn, b.observe(asset="K3", tag=None, kind="anomaly", active=False, t=at(9)))
        (row,) = await _all(conn)
        assert row["state"] == "cleared" and row["cleared_at"] == at(9)


async def _before_the_restart(dsn):
    """What a gateway left in the database before its restart: P1's alert acknowledged by anna, P3's alert nobody
    acknowledged (both raised at 0 s), and a maintenance window on P2 (until an hour from now)."""
    _migrate(dsn)
    before = AlertManager()
    acked = before.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(0))
    waiting = before.observe(asset="P3", tag="P3.p", kind="rule:hi3", active=True, t=at(0))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await store.apply_changes(conn, acked + waiting)
        assert await store.acknowledge(conn, acked[0].alert.id, "anna", "valve being checked")
        await store.add_window(conn, Window("P2", at(0), datetime.now(UTC) + timedelta(hours=1), "overhaul"))
    return acked, waiting


async def test_a_restarted_gateway_resumes_open_alerts_before_analysing_readings(pg_dsn, tmp_path):
    """Readings the collectors queued while the gateway started were analysed before the first sync loaded the
    open alerts: every condition still active was raised again (a new id, "raised" notified again, and an
    alert already acknowledged paged again and escalating) until that sync."""
    import asyncio

    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    raised, _ = await _before_the_restart(pg_dsn)
    batches = []

    emit = spool_emit(batches)

    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0},
                             {"name": "hi2", "tag": "P2.p", "kind": "threshold", "high": 10.0}])
    an = Analytics(site, Metrics(), emit, pg_dsn)
    an.offer([Reading("P1.p", at(60), 20.0, at(60)), Reading("P2.p", at(60), 20.0, at(60))], at(60))  # queued
    task = asyncio.create_task(an.run())
    try:
        for _ in range(200):
            if an.processed:
                break
            await asyncio.sleep(0.02)
        assert an.processed == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    changes = [body for b in batches for kind, body in b.records if kind == "alert_change"]
    assert [(c["alert"]["asset"], c["event"]) for c in changes] == [("P2", "suppressed")]
    o = next(o for o in an.manager.open.values() if o.alert.asset == "P1")
    assert o.alert.id == raised[0].alert.id and o.alert.acknowledged_by == "anna"


async def test_an_escalation_after_an_acknowledgement_the_gateway_has_not_synced_is_not_stored(pg_dsn):
    """Acknowledged in the console, escalated by the gateway before its next sync (up to 15 s): the row keeps its
    severity and level (no "escalated" after "acknowledged"), later updates from the gateway do not raise it
    either, and the sync gives the gateway the row's severity and level back (no further escalation)."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _migrate(pg_dsn)

    emit = spool_emit()

    an = Analytics(SiteConfig(rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}]), Metrics(),
                   emit, pg_dsn)
    m = an.manager
    m.policy = AlertPolicy(escalate_after_s=600)
    raised = m.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(0), severity="warning")
    alert_id = raised[0].alert.id
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, raised)
        assert await store.acknowledge(conn, alert_id, "anna", "on it")
        escalated = m.tick(at(700))  # the gateway has not seen the acknowledgement yet
        assert [c.event for c in escalated] == ["escalated"] and escalated[0].alert.severity == "critical"
        await store.apply_changes(conn, escalated)
        await store.apply_changes(conn, m.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(710),
                                                  severity="warning"))
        row = await store.get_alert(conn, alert_id)
        assert (row["severity"], row["escalation_level"], row["escalated_at"]) == ("warning", 0, None)
        assert _events(pg_dsn, alert_id) == [("raised", "system"), ("acknowledged", "anna")]
        # Nobody is paged for it either; an escalation of an alert nobody took is sent.
        sent = []

        class Receiver:
            name = "pager"

            async def send(self, ch):
                sent.append((ch.alert.id, ch.event))
                return True, "HTTP 200"

        await an.notifications.send(Receiver(), escalated)
        assert sent == []
        other = m.observe(asset="P9", tag="P9.p", kind="rule:hi", active=True, t=at(0), severity="warning")
        await store.apply_changes(conn, other)
        # Raised from an observation behind the clock (700 s): its escalation clock starts at 700 (alerts.py).
        await an.notifications.send(Receiver(), [c for c in m.tick(at(1300)) if c.alert.asset == "P9"])
        assert sent == [(other[0].alert.id, "escalated")]
        # Cleared by hand in the console since the last sync: nobody is paged for it either.
        gone = m.observe(asset="P8", tag="P8.p", kind="rule:hi", active=True, t=at(0), severity="warning")
        await store.apply_changes(conn, gone)
        assert await store.clear(conn, gone[0].alert.id, "anna")
        await an.notifications.send(Receiver(), [c for c in m.tick(at(1400)) if c.alert.asset == "P8"])
        assert sent == [(other[0].alert.id, "escalated")]
        await an.sync_once(conn)
    o = next(o for o in m.open.values() if o.alert.id == alert_id)
    assert (o.alert.severity, o.escalation_level, o.alert.acknowledged_by) == ("warning", 0, "anna")
    assert [c for c in m.tick(at(2000)) if c.alert.id == alert_id] == []


async def test_a_gateway_started_while_the_database_is_away_goes_on_from_the_alerts_it_knew(pg_dsn, tmp_path):
    """After a power cut the gateway is up before PostgreSQL has finished its recovery (or the network path to it
    is cut). Its alert manager started empty until the database answered: every condition still active was raised
    again under a new id and paged again (the acknowledged one too, which then escalated), a condition inside a
    planned maintenance window paged the crew on the machine, and the open alerts nobody had acknowledged never
    escalated. Now it goes on from what it saved in its state directory (maintenance/alert_state.py)."""
    import asyncio

    from servers import free_port

    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    acked, waiting = await _before_the_restart(pg_dsn)
    batches = []

    emit = spool_emit(batches)

    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": n, "tag": f"{a}.p", "kind": "threshold", "high": 10.0}
                             for n, a in (("hi", "P1"), ("hi2", "P2"), ("hi3", "P3"))],
                      maintenance={"alerts": {"escalate_after_s": 600}})

    async def run(an, readings):
        an.offer(readings, readings[-1].time)
        task = asyncio.create_task(an.run())
        try:
            for _ in range(300):
                if an.processed >= len(readings):
                    break
                await asyncio.sleep(0.02)
            assert an.processed == len(readings)
        finally:
            task.cancel()  # a stop of the gateway
            await asyncio.gather(task, return_exceptions=True)

    await run(Analytics(site, Metrics(), emit, pg_dsn), [Reading("P1.p", at(60), 20.0, at(60))])
    batches.clear()
    down = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"  # nothing answers there
    after = Analytics(site, Metrics(), emit, down)
    await run(after, [Reading(f"{a}.p", at(700), 20.0, at(700)) for a in ("P1", "P2", "P3")])
    changes = sorted((c["alert"]["asset"], c["event"], c["alert"]["id"]) for b in batches
                     for kind, c in b.records if kind == "alert_change")
    assert [(a, e) for a, e, _ in changes] == [("P2", "suppressed"), ("P3", "escalated")]
    assert changes[1][2] == waiting[0].alert.id
    assert {o.alert.id: o.alert.acknowledged_by for o in after.manager.open.values()} == {
        acked[0].alert.id: "anna", waiting[0].alert.id: None}


def test_a_gateway_started_while_the_database_is_away_reopens_the_alert_it_cleared_lately(tmp_path):
    """The alerts a gateway cleared within ``reopen_within_s`` came only from the database at its start, so after a
    power cut with PostgreSQL still recovering, a slow flap's return paged as a new alert. They are in the alert
    state file now; a file of the earlier format (no such list) still restores."""
    import msgpack

    from maintenance import alert_state

    def flap(m: AlertManager) -> str:
        [raised] = m.observe(asset="P4", tag="P4.p", kind="rule:hi", active=True, t=at(0))
        assert m.observe(asset="P4", tag="P4.p", kind="rule:hi", active=False, t=at(10)) == []
        [cleared] = m.observe(asset="P4", tag="P4.p", kind="rule:hi", active=False, t=at(80))
        assert (raised.event, cleared.event) == ("raised", "cleared")
        return raised.alert.id

    before = AlertManager()
    first = flap(before)
    path = tmp_path / alert_state.STATE_FILE
    alert_state.write(path, alert_state.content(before))  # at its stop
    after = AlertManager()
    assert alert_state.restore(after, path) == (0, 0)
    [back] = after.observe(asset="P4", tag="P4.p", kind="rule:hi", active=True, t=at(600))
    assert (back.event, back.alert.id, back.occurrences) == ("reopened", first, 2)

    alerts, windows, *_ = msgpack.unpackb(alert_state.content(before), raw=False, timestamp=3)
    alert_state.write(path, msgpack.packb([alerts, windows], use_bin_type=True, datetime=True))  # earlier format
    older = AlertManager()
    assert alert_state.restore(older, path) == (0, 0) and older.recent == {}


async def test_a_gateway_whose_alert_another_writer_absorbed_takes_that_alert_instead_of_raising_again(pg_dsn):
    """Two gateways watch the same condition (a redundant pair). B's raise met A's open alert and became an
    occurrence of it, so B's own alert id was never stored: B's sync took it for a row the database had refused,
    forgot it, and raised the still active condition again (a "raised" page) every two syncs, for as long as the
    condition lasted; and B escalated (and paged) an alert A's operators had acknowledged. B now takes the stored
    alert of the condition, with its acknowledgement."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _migrate(pg_dsn)

    emit = spool_emit()

    site = SiteConfig(rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}])
    a = AlertManager()
    b = Analytics(site, Metrics(), emit, pg_dsn)
    b.spool_pending = lambda: 0  # B's spool is drained: its raise was written
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await b.sync_once(conn)
        theirs = a.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(0))
        await store.apply_changes(conn, theirs)
        ours = b.manager.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(1))
        await store.apply_changes(conn, ours)  # absorbed: an occurrence of A's alert
        assert await store.acknowledge(conn, theirs[0].alert.id, "anna", "on it")
        for _ in range(3):
            await b.sync_once(conn)
        again = b.manager.observe(asset="P1", tag="P1.p", kind="rule:hi", active=True, t=at(60))
        assert again == []
        (o,) = b.manager.open.values()
        assert (o.alert.id, o.alert.acknowledged_by) == (theirs[0].alert.id, "anna")
        assert b.manager.tick(at(10_000)) == []


@pytest.mark.parametrize("flavour", ["timescaledb", "plain"])
async def test_the_evidence_that_raised_an_alert_is_kept_when_later_observations_replace_it(flavour, request):
    """The row's evidence is the last observation's: after a flap and a rise to zone D the readings that raised the
    alert (zone C, 3.1 mm/s) were nowhere in the database. The history keeps each one that raised or worsened it."""
    dsn = request.getfixturevalue("pg_dsn" if flavour == "timescaledb" else "plain_pg_dsn")
    _migrate(dsn)
    m = AlertManager(AlertPolicy(clear_after_s=60))

    def obs(s, active, value=None, severity="warning"):
        ev = {"readings": [{"tag": "P-101.vib_de", "time": at(s), "value": value}]} if active else None
        return m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=active, t=at(s),
                         severity=severity, message=f"{value} mm/s", evidence=ev)

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        changes = obs(0, True, 3.1) + obs(5, False) + obs(10, True, 3.3) + obs(20, True, 7.5, "critical")
        await store.apply_changes(conn, changes)
        (row,) = await _all(conn)
        assert row["evidence"]["readings"][0]["value"] == 7.5
        async with conn.cursor() as cur:
            await cur.execute("SELECT event, detail->'evidence'->'readings'->0->>'value' FROM alert_events"
                              " WHERE alert_id = %s ORDER BY time, id", (row["id"],))
            assert await cur.fetchall() == [("raised", "3.1"), ("updated", "7.5")]


async def test_an_open_alert_never_falls_in_severity_or_level_through_another_alert_of_its_condition(pg_dsn):
    """A change of another in-memory alert of the same condition reaches the open row by its dedup_key (a
    redundant gateway's, or one raised again by a gateway started while the database was away): its lower severity
    and level were written over the row's, and an alert escalated to critical fell back to warning and level 0
    while still open and unacknowledged (the board showed it as a warning; it then escalated again from there)."""
    _migrate(pg_dsn)
    a = AlertManager(AlertPolicy(escalate_after_s=600, clear_after_s=60))
    b = AlertManager(AlertPolicy(escalate_after_s=600, clear_after_s=60))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, a.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(0)))
        await store.apply_changes(conn, a.tick(at(600)) + a.tick(at(1200)))  # warning -> critical, level 2
        changes = (b.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(1300))  # absorbed
                   + b.observe(asset="K4", tag=None, kind="anomaly", active=False, t=at(1301))
                   + b.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(1302)))  # a flap: "updated"
        assert [c.event for c in changes] == ["raised", "updated"]
        await store.apply_changes(conn, changes)
        (row,) = await _all(conn)
        assert (row["severity"], row["escalation_level"], row["escalated_at"]) == ("critical", 2, at(1200))


async def test_the_gateways_clear_never_lowers_the_occurrences_of_the_alert(pg_dsn):
    """The ``cleared`` of a gateway whose in-memory alert had absorbed fewer flaps than the row (another writer's
    occurrences, a gateway restarted without the database) wrote its own lower count over the row's: the history the
    crew and the review read said the bearing had come back twice when it had come back twenty times."""
    _migrate(pg_dsn)
    a = AlertManager(AlertPolicy(clear_after_s=5, escalate_after_s=None))
    b = AlertManager(AlertPolicy(clear_after_s=5, escalate_after_s=None))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        changes = []
        for s in range(40):  # 20 flaps on gateway a
            changes += a.observe(asset="K4", tag=None, kind="anomaly", active=s % 2 == 0, t=at(s))
        await store.apply_changes(conn, changes)
        (row,) = await _all(conn)
        assert row["occurrences"] == 20
        await store.apply_changes(conn, b.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(50))
                                  + b.observe(asset="K4", tag=None, kind="anomaly", active=False, t=at(51))
                                  + b.observe(asset="K4", tag=None, kind="anomaly", active=False, t=at(60)))
        (row,) = await _all(conn)
        assert row["cleared_at"] == at(60) and row["occurrences"] >= 20


async def test_a_condition_flapping_slower_than_the_hysteresis_reopens_its_alert_instead_of_paging_anew(pg_dsn):
    """A bearing temperature crossing its threshold every 20 minutes (slower than clear_after_s) raised a new alert,
    and paged, at every crossing all night. Now the alert cleared less than reopen_within_s before is re-opened:
    same id and history, one more occurrence, the acknowledgement kept, notified as "reopened" (which pages only
    while nobody has acknowledged it); an alert cleared by a person, or one cleared too long ago, is raised anew."""
    from maintenance.notify import wanted

    _migrate(pg_dsn)
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=3600, reopen_within_s=3600))
    events: list = []
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        async def step(s: float, active: bool, sev: str = "warning") -> None:
            changes = m.observe(asset="P-101", tag="P-101.bearing_temp", kind="rule:hot", active=active, t=at(s),
                                severity=sev, message=f"{s}", evidence={"value": s})
            events.extend(changes)
            await store.apply_changes(conn, changes + m.tick(at(s)))

        for flap in range(3):  # 5 minutes hot, 15 minutes back below the threshold, three times
            base = flap * 1200
            await step(base, True)
            await step(base + 300, False)
            await step(base + 400, False)  # cleared (hysteresis 60 s)
        assert [c.event for c in events] == ["raised", "cleared", "reopened", "cleared", "reopened", "cleared"]
        assert len({c.alert.id for c in events}) == 1
        (row,) = await _all(conn)
        assert (row["occurrences"], row["state"], row["reopened_at"]) == (3, "cleared", at(2400))
        assert row["evidence"] == {"value": 2400}
        # Notified to a pager (webhook defaults: raised, acknowledged, escalated, cleared) while unacknowledged.
        reopened = next(c for c in events if c.event == "reopened")
        assert wanted(("raised", "acknowledged", "escalated", "cleared"), reopened)
        # Acknowledged in the console: a return keeps the acknowledgement and pages nobody.
        await step(3600, True, "critical")
        assert await store.acknowledge(conn, row["id"], "anna", "on it", at(3610))
        m.acknowledged(row["id"], "anna", at(3610))
        await step(3700, False)
        await step(3800, False)
        await step(4000, True)
        last = events[-1]
        assert last.event == "reopened" and last.alert.acknowledged_by == "anna" and last.alert.severity == "critical"
        assert not wanted(("raised", "acknowledged", "escalated", "cleared"), last)
        assert wanted(("raised", "updated", "acknowledged", "escalated", "cleared"), last)  # MQTT defaults
        (row,) = await _all(conn)
        assert (row["state"], row["acknowledged_by"], row["occurrences"], row["cleared_at"]) == (
            "acknowledged", "anna", 5, None)
        assert m.tick(at(9000)) == []  # acknowledged: no escalation
        # A restarted gateway re-opens what it cleared lately, as it would have without the restart.
        await step(4100, False)
        await step(4200, False)
        m2 = AlertManager(m.policy)
        m2.load(await store.open_alerts(conn))
        m2.load_recent(await store.recently_cleared(conn, m.policy.reopen_within_s, at(4300)))
        (ch,) = m2.observe(asset="P-101", tag="P-101.bearing_temp", kind="rule:hot", active=True, t=at(4300))
        assert ch.event == "reopened" and ch.alert.id == row["id"] and ch.occurrences == 6
        await store.apply_changes(conn, [ch])
        # Cleared by a person: over; its return is a new alert.
        assert await store.clear(conn, row["id"], "anna", at(4400))
        m2.cleared_by_hand(row["id"])
        (ch,) = m2.observe(asset="P-101", tag="P-101.bearing_temp", kind="rule:hot", active=True, t=at(4500))
        assert ch.event == "raised" and ch.alert.id != row["id"]
        await store.apply_changes(conn, [ch])
        # Back after longer than reopen_within_s: a new alert too.
        for s in (4600, 4700):
            await store.apply_changes(conn, m2.observe(asset="P-101", tag="P-101.bearing_temp", kind="rule:hot",
                                                       active=False, t=at(s)))
        (ch,) = m2.observe(asset="P-101", tag="P-101.bearing_temp", kind="rule:hot", active=True, t=at(9000))
        assert ch.event == "raised"
    assert [e for e, _ in _events(pg_dsn, row["id"])].count("reopened") == 5


async def test_a_reopened_alert_escalates_from_its_return_not_from_when_it_was_first_raised(pg_dsn):
    """Unacknowledged and re-opened hours after it was raised, it escalated at once (the clock read raised_at);
    now the crew gets escalate_after_s from its return, also after a restart (reopened_at in the row)."""
    _migrate(pg_dsn)
    m = AlertManager(AlertPolicy(clear_after_s=10, escalate_after_s=600, reopen_within_s=3600))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, m.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(0))
                                  + m.observe(asset="K4", tag=None, kind="anomaly", active=False, t=at(100))
                                  + m.observe(asset="K4", tag=None, kind="anomaly", active=False, t=at(200)))
        (ch,) = m.observe(asset="K4", tag=None, kind="anomaly", active=True, t=at(3000))
        assert ch.event == "reopened"
        await store.apply_changes(conn, [ch])
        assert m.tick(at(3100)) == []
        m2 = AlertManager(m.policy)
        m2.load(await store.open_alerts(conn))
        assert m2.tick(at(3100)) == []
        assert [c.event for c in m2.tick(at(3600))] == ["escalated"]


async def test_alert_precision_reads_the_review_of_the_prediction_that_raised_the_alert(pg_dsn):
    """A flap replaces the row's evidence: precision matched the alert to the prediction of its latest return, so a
    reviewer's "right" on the prediction that raised it (the one the crew was paged for) counted as the verdict of
    another prediction, here "wrong". The raising evidence is in the ``raised`` event (m0201)."""
    _migrate(pg_dsn)
    preds = [Prediction("anomaly:P-101", "abc123", "P-101", at(s), 14.2, p_value=0.003, kind="anomaly") for s in (0, 5)]
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=None))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.write_predictions(conn, preds)
        changes = []
        for s, active in ((0, True), (3, False), (5, True)):  # raised by the first, a flap brings the second
            ev = {"prediction": {"model_id": "anomaly:P-101", "model_version": "abc123", "time": at(s)}}
            changes += m.observe(asset="P-101", tag=None, kind="anomaly", active=active, t=at(s), evidence=ev)
        assert [c.event for c in changes] == ["raised", "updated"]
        await store.apply_changes(conn, changes)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ids = {r["time"]: r["id"] for r in review.list_predictions(conn, "P-101")}
        review.review_prediction(conn, ids[at(0)], "right", "bearing pitted", "anna")
        review.review_prediction(conn, ids[at(5)], "wrong", "", "bob")
        (row,) = review.alert_precision(conn)
        assert (row["right"], row["wrong"]) == (1, 0)


async def test_acknowledgements_and_clears_made_while_the_gateway_was_stopped_are_notified_at_its_start(
        pg_dsn, tmp_path):
    """The console acknowledged one alert and cleared another while the gateway was stopped (an upgrade, a power cut
    of the gateway's cabinet): the restarted gateway loaded the database's state as it was, compared nothing, and the
    pager that got "raised" kept both incidents open. Now the first sync compares with the open alerts the gateway
    last knew (its alert state file) and notifies both, once."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _migrate(pg_dsn)

    emit = spool_emit()

    site = SiteConfig(site={"state_dir": tmp_path},
                      rules=[{"name": f"hi{i}", "tag": f"P{i}.p", "kind": "threshold", "high": 10.0}
                             for i in (1, 2, 3)])
    before = Analytics(site, Metrics(), emit, pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        changes = [c for i in (1, 2, 3) for c in before.manager.observe(asset=f"P{i}", tag=f"P{i}.p", kind="rule:hi",
                                                                         active=True, t=at(0))]
        await store.apply_changes(conn, changes)
        await before.sync_once(conn)
        before._save_alert_state()  # at its stop
        p1, p2, _ = (c.alert.id for c in changes)
        # The gateway is stopped: the night shift acknowledges P1 and clears P2 in the console.
        assert await store.acknowledge(conn, p1, "anna", "on my way", at(100))
        assert await store.clear(conn, p2, "anna", at(200))
        after = Analytics(site, Metrics(), emit, pg_dsn)
        queued: list = []

        async def queue(changes):
            queued.extend(changes)

        after.notifications.queue = queue
        await after.sync_once(conn)
        assert sorted((c.event, c.alert.asset, c.detail.get("by")) for c in queued) == [
            ("acknowledged", "P1", "anna"), ("cleared", "P2", "anna")]
        assert next(c for c in queued if c.event == "cleared").alert.cleared_at == at(200)
        await after.sync_once(conn)  # once
        assert len(queued) == 2


async def test_a_reopened_alert_still_on_its_way_to_the_database_is_not_forgotten_by_the_sync(pg_dsn):
    """The sync saw the re-opened alert's row still cleared (the reopen waits in the spool: a backlog, the database
    away) and forgot it as cleared; the condition, still active, then raised and paged a new alert."""
    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.settings import SiteConfig

    _migrate(pg_dsn)

    emit = spool_emit()

    site = SiteConfig(rules=[{"name": "hi", "tag": "P1.p", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 10, "reopen_within_s": 3600}})
    an = Analytics(site, Metrics(), emit, pg_dsn)
    kw = {"asset": "P1", "tag": "P1.p", "kind": "rule:hi"}
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await an.sync_once(conn)
        await store.apply_changes(conn, an.manager.observe(**kw, active=True, t=at(0))
                                  + an.manager.observe(**kw, active=False, t=at(5))
                                  + an.manager.observe(**kw, active=False, t=at(20)))
        (ch,) = an.manager.observe(**kw, active=True, t=at(600))
        assert ch.event == "reopened"
        an.spool_pending = lambda: 1
        await an.sync_once(conn)  # the reopen not written yet
        assert [o.alert.id for o in an.manager.open.values()] == [ch.alert.id]
        assert an.manager.observe(**kw, active=True, t=at(601)) == []
        await store.apply_changes(conn, [ch])
        await an.sync_once(conn)
        assert [o.alert.id for o in an.manager.open.values()] == [ch.alert.id]


async def test_review_list_shows_open_ended_rul_and_anomaly_level(pg_dsn, capsys):
    """An open-ended RUL interval (upper NULL: "lower or more", as rul_live stores it at the cap) is listed
    with its level, not a crash; an anomaly's p-value comes with the alpha it was judged against."""
    from maintenance.cli import main

    _migrate(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.write_predictions(conn, [
            Prediction("rul-x", "r1" * 32, "P-8", at(0), 118.0, lower=87.0, upper=None, coverage=0.9, kind="rul",
                       details={"open_ended": True, "unit": "cycles"}),
            Prediction("rul-x", "r1" * 32, "P-8", at(1), 40.0, lower=22.0, upper=61.0, coverage=0.9, kind="rul",
                       details={"open_ended": False, "unit": "cycles"}),
            Prediction("anomaly:P-8", "v1" * 32, "P-8", at(2), 20.0, p_value=0.004, kind="anomaly",
                       details={"alpha": 0.01})])
        await store.apply_changes(conn, AlertManager().observe(
            asset="P-8", tag=None, kind="anomaly", active=True, t=at(2), message="anomalous",
            evidence={"prediction": {"model_id": "anomaly:P-8", "p_value": 0.004, "alpha": 0.01}}))
    assert main(["review", "list", "--asset", "P-8", "--db", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "value=118 [87.0, inf) @90%" in out
    assert "value=40 [22.0, 61.0] @90%" in out
    assert "p=0.004 (alpha 0.01)" in out
    assert "[p=0.004 (alpha 0.01)]" in out


async def test_a_condition_worse_after_an_escalation_is_in_the_alerts_history(pg_dsn):
    """Zone C escalated to critical, then zone D: the severity did not change, so the history trigger wrote no
    `updated` event and the evidence of zone D lived only in the row until the next observation replaced it."""
    _migrate(pg_dsn)
    m = AlertManager(AlertPolicy(clear_after_s=60, escalate_after_s=600))

    def obs(s, value, severity):
        return m.observe(asset="P-101", tag="P-101.vib_de", kind="iso20816", active=True, t=at(s), severity=severity,
                         message=f"{value} mm/s", evidence={"readings": [{"tag": "P-101.vib_de", "value": value}]})

    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await store.apply_changes(conn, obs(0, 3.1, "warning") + m.tick(at(600)) + obs(620, 7.5, "critical"))
        (row,) = await _all(conn)
        assert row["severity"] == "critical" and row["message"] == "7.5 mm/s"
        async with conn.cursor() as cur:
            await cur.execute("SELECT event, detail->>'condition_was', detail->'evidence'->'readings'->0->>'value'"
                              " FROM alert_events WHERE alert_id = %s ORDER BY time, id", (row["id"],))
            assert await cur.fetchall() == [("raised", None, "3.1"), ("escalated", None, None),
                                            ("updated", "warning", "7.5")]
