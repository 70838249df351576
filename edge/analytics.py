"""Live analytics inside the gateway: maintenance (indicators, ISO zones, rules, anomaly) and emissions.

Validated readings are offered here after they are durable in the spool (`Ingest.on_spooled`), only
those of the tags analytics uses (`tags`; making `Reading` objects of every reading would cost more than
ingesting them), so analytics never holds up collection: the queue is bounded and, when analytics falls behind, input is
dropped and counted (the raw data is safe; only derived values for that stretch are missing).

What analytics produces goes back through the spool like everything else (DESIGN.md §1):
- derived readings (``<tag>.mean``, ``<tag>.iso_zone`` ...) as ordinary readings;
- predictions and alert changes as *records* ``(kind, dict)``, written by the forwarder in the same
  transaction as the readings (`write_records`), so an outage delays them but loses none.
Notifications (MQTT, webhooks) are sent once the change is in the spool (its batch's ack, `edge.notifications`): a
crash between the two then pages nothing the database will not get. A spool that has not taken the change within
NOTIFY_STORE_WAIT_S (full, a failing disk) does not hold the page back longer: it is sent anyway and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from datetime import UTC, datetime, timedelta

import psycopg

from edge.metrics import Metrics
from edge.notifications import ACK_RECHECK_S, Notifications, notify_secrets
from edge.records import Alert, Batch, Prediction, Reading, settles, utcnow
from edge.settings import SiteConfig
from edge.timeouts import within

log = logging.getLogger(__name__)

QUEUE_GROUPS = 1024
SYNC_INTERVAL_S = 15.0
SYNC_TIMEOUT_S = 30.0  # a sync with the database that takes longer is given up (tried again next period)
# The alert manager's open alerts and windows on disk (maintenance.alert_state), for a start without the database:
# checked this often, written when changed (and at least this often while nothing changes).
ALERT_STATE_SAVE_S = 5.0
ALERT_STATE_REFRESH_S = 3600.0
# Nothing offered for this long (every collector cut off) while alerts are open: the escalation clock goes on by the
# gateway's own clock from the last reading time, so the alerts nobody can see the machine behind still escalate.
IDLE_TICK_S = 15.0
SOURCE = "analytics"
# Alert changes wait this long for the spool to hold them before they are notified anyway: a page is not held back
# behind a stuck spool for longer than this (ack of a normal group commit: milliseconds).
NOTIFY_STORE_WAIT_S = 10.0


# -- records: (kind, dict) through the spool --------------------------------------------------


def prediction_record(p: Prediction) -> tuple[str, dict]:
    return "prediction", dataclasses.asdict(p)


def alert_change_record(ch) -> tuple[str, dict]:
    return "alert_change", dataclasses.asdict(ch)


def _alert_change(d: dict):
    from maintenance.alerts import AlertChange

    d = dict(d)
    d["alert"] = Alert(**d["alert"])
    return AlertChange(**d)


async def write_records(conn: psycopg.AsyncConnection, records: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """Write records inside the caller's transaction; returns (kind, error) of records refused as data errors.

    Each kind goes in its own savepoint: a record the database refuses (a constraint, bad data)
    is reported for the dead-letter table instead of blocking every reading behind it.
    Connection errors propagate (the forwarder retries the whole batch).
    """
    from maintenance import store

    by_kind: dict[str, list[dict]] = {}
    for kind, body in records:
        by_kind.setdefault(kind, []).append(body)
    refused: list[tuple[str, str]] = []
    for kind, bodies in by_kind.items():
        try:
            async with conn.transaction():
                if kind == "prediction":
                    await store.write_predictions(conn, [Prediction(**b) for b in bodies])
                elif kind == "alert_change":
                    await store.apply_changes(conn, [_alert_change(b) for b in bodies])
                elif kind == "detector_version":
                    await store.write_detector_versions(conn, bodies)
                else:
                    raise ValueError(f"unknown record kind {kind!r}")
        except (psycopg.OperationalError, psycopg.errors.ConnectionTimeout):
            raise
        except (psycopg.Error, ValueError, TypeError) as exc:
            log.error("database refused %d %s record(s): %s", len(bodies), kind, exc,
                      extra={"event": "record_refused", "kind": kind})
            refused.append((kind, f"{type(exc).__name__}: {exc}"))
    return refused


# -- the live analytics task -------------------------------------------------------------------
def maintenance_config(cfg: SiteConfig):
    """The ``[maintenance]`` section with the top-level ``[[rules]]`` added, or None when nothing is configured."""
    from maintenance.config import MaintenanceConfig

    data = dict(cfg.maintenance)
    if cfg.rules:
        data["rules"] = [*data.get("rules", []), *cfg.rules]
    mcfg = MaintenanceConfig.model_validate(data)
    return mcfg if (mcfg.assets or mcfg.rules) else None


class Analytics:
    def __init__(self, cfg: SiteConfig, metrics: Metrics, emit, conninfo: str | None):
        from emissions.config import load_stacks
        from emissions.live import LiveEmissions
        from maintenance.alerts import AlertManager
        from maintenance.live import MaintenanceLive

        self.metrics = metrics
        self.emit = emit
        self.conninfo = conninfo
        mcfg = maintenance_config(cfg)
        self.mcfg = mcfg
        self.state_dir = cfg.site.state_dir
        # Secrets read by each new gateway: a reload rotates them.
        self.notifications = Notifications(mcfg, notify_secrets(mcfg), metrics, conninfo, cfg.site.state_dir)
        self.maintenance = (MaintenanceLive(mcfg, dsn=conninfo, metrics=metrics, state_dir=cfg.site.state_dir)
                            if mcfg else None)
        if self.maintenance is not None:
            self.manager = self.maintenance.manager
        else:
            from maintenance.config import MaintenanceConfig

            self.manager = AlertManager(MaintenanceConfig.model_validate(cfg.maintenance).alerts)
        self._conditions: list = []
        stacks = load_stacks(cfg.stacks)
        self._stack_names = {st.name for st in stacks}
        self._pems_steps: list = []  # live PEMS outputs (emissions.pems_live.PemsStep) of the current group
        self.emissions = (LiveEmissions(stacks, on_condition=self._condition, on_pems=self._pems_steps.append,
                                        pems_dsn=conninfo, tag_units={t.name: t.unit for t in cfg.tags if t.unit})
                          if stacks else None)
        self.queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=QUEUE_GROUPS)
        self.dropped = 0
        self.errors = 0
        self._dropping = False
        self.processed = 0
        self.alert_changes = 0
        self.predictions = 0
        self.latest = None  # latest reading time seen (datetime): analytics' clock
        self._clock_mono = time.monotonic()  # when ``latest`` last moved
        self._offered_mono = time.monotonic()  # when the ingest task last offered a group
        self._synced = False
        self._tags: frozenset[str] | None = None
        # Batches waiting in the spool (the gateway sets it): tells "not written yet" from "never will be".
        self.spool_pending = None
        self._missing_drained: set[str] = set()
        self._state_saved: bytes | None = None  # the alert state last written (maintenance.alert_state.content)
        self._state_saved_at = 0.0
        # (stored, changes, deadline) of the group whose notifications wait for its spool commit: a stop while it
        # waits queues them at the end of `run` (to the outbox), since the drain commits the batch after.
        self._awaiting_store: tuple[asyncio.Future, list, float] | None = None
        self._unstored_logged = False

    @property
    def enabled(self) -> bool:
        return self.maintenance is not None or self.emissions is not None

    def _condition(self, **kw) -> None:
        self._conditions.extend(self.manager.observe(**kw))

    def qal3_check(self, cfg, analyser: str, kind: str, check) -> None:
        """The latest QAL3 check of an analyser's zero or span chart (`emissions.job.run_periodic`): an alert of kind
        ``emission_qal3:<kind>`` on the analyser's tag while the check has alarms, cleared by later checks in control
        (two, ``clear_after_s`` apart). EN 14181 asks for the analyser to be seen to when its chart leaves control; the
        alarms were only logged and stored, for the next report. Severity: warning for an action (drift beyond the
        action limit, CUSUM, precision), info for a drift warning alone."""
        action = any(a != "drift_warning" for a in check.alarms)
        evidence = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in dataclasses.asdict(check).items()}
        evidence["alarms"] = list(check.alarms)
        self._condition(asset=cfg.name, tag=cfg.pollutant(analyser).tag, kind=f"emission_qal3:{kind}",
                        active=bool(check.alarms), t=datetime.fromtimestamp(check.time, UTC),
                        severity="warning" if action else "info",
                        message=f"QAL3 {kind} check of {analyser} out of control: {', '.join(check.alarms)} "
                                f"(deviation {check.deviation:.4g}, {check.z:.2f} s_AMS)" if check.alarms else "",
                        evidence=evidence)

    def tags(self) -> frozenset[str]:
        """The raw tags the analyses read: what the ingest task hands over (fixed by the configuration)."""
        if self._tags is None:
            out: set[str] = set()
            if self.maintenance is not None:
                out |= self.maintenance.tags()
            if self.emissions is not None:
                out |= self.emissions.tags()
            self._tags = frozenset(out)
        return self._tags

    def offer(self, readings: list[Reading], latest=None) -> None:
        """Called by the ingest task after a spool commit with the group's readings of `tags` and its latest
        reading time (the clock of escalations, also when none of the tags is in the group); never blocks."""
        self._offered_mono = time.monotonic()
        if latest is not None and (self.latest is None or latest > self.latest):
            self.latest = latest
            self._clock_mono = time.monotonic()
        if not readings and not ((self.manager.open or self.manager.held) and self.queue.empty()):
            # nothing to analyse, no open alert whose escalation waits for the clock and no suppressed condition
            # waiting for its window's end
            return
        try:
            self.queue.put_nowait(readings)
            if self._dropping:
                self._dropping = False
                log.warning("analytics caught up; %d readings skipped in all", self.dropped,
                            extra={"event": "analytics_resumed"})
        except asyncio.QueueFull:
            self.dropped += len(readings)
            self.metrics.analytics_dropped.inc(len(readings))
            if not self._dropping:
                self._dropping = True
                log.error("analytics is behind; skipping input until it catches up (raw data is stored)",
                          extra={"event": "analytics_behind"})

    async def run(self) -> None:
        self.notifications.open()
        # A misconfigured receiver (CA, password) is found at commissioning, not at the first night-time alarm.
        probe = asyncio.create_task(self.notifications.probe(), name="notify:probe")
        sync = asyncio.create_task(self._sync_loop())
        notify = self.notifications.tasks()
        save = asyncio.create_task(self._save_loop())
        state: asyncio.Task | None = None
        idle: asyncio.Task | None = None
        try:
            # The open alerts before the first group: readings the collectors queued while the gateway started
            # were analysed before the first sync, and every condition still active was raised again (a new id,
            # "raised" notified again, an acknowledged alert paged and escalating again). With the database down
            # at start they come from the state file until the sync loop loads them (maintenance.alert_state).
            await self._sync()
            await self._seed_emissions()
            if self.conninfo and not self._synced:
                self._restore_alert_state()
            state = asyncio.create_task(self._alert_state_loop()) if self.conninfo else None
            idle = asyncio.create_task(self._idle_clock_loop())
            while True:
                group = await self.queue.get()
                while not self.queue.empty() and len(group) < 50_000:
                    group = group + self.queue.get_nowait()
                try:
                    await self.process(group)
                except Exception:
                    # One bad group must not end live analytics; the raw readings are already stored.
                    self.errors += 1
                    self.metrics.analytics_errors.inc()
                    log.exception("analytics failed on a group of %d readings; going on", len(group),
                                  extra={"event": "analytics_error"})
        finally:
            probe.cancel()
            sync.cancel()
            save.cancel()
            if idle is not None:
                idle.cancel()
                await asyncio.gather(idle, return_exceptions=True)
            if state is not None:
                state.cancel()
                await asyncio.gather(state, return_exceptions=True)
                self._save_alert_state()  # what this run knew last, for a start without the database
            for t in notify:
                t.cancel()
            await asyncio.gather(probe, sync, save, *notify, return_exceptions=True)
            rul = self.maintenance.rul if self.maintenance is not None else None
            data = rul.snapshot() if rul is not None else None
            if data is not None:  # the cycles since the last save, so a restart goes on from here
                rul.write(data)
            if self._awaiting_store is not None:
                # Stopped while a group's changes waited for their commit, which the gateway's drain makes after
                # this task is cancelled: queued now (to the outbox, sent at the next start), or never sent at all
                # while the next start's state file holds the alert as notified.
                stored, changes, deadline = self._awaiting_store
                self._awaiting_store = None
                await self._until_stored(stored, changes, deadline)
                await self.notifications.queue(changes)
            await self.notifications.close()

    async def process(self, readings: list[Reading]) -> None:
        """Run every analysis on one group of readings and send what it produced to the spool."""
        readings.sort(key=lambda r: r.time)  # analyses are per-tag time-ordered; groups may interleave sources
        if self.latest is not None:
            self.manager.advance(self.latest)  # the clock an alert from a backlog escalates from (emissions' too)
        derived: list[Reading] = []
        preds: list[Prediction] = []
        changes: list = []
        if self.maintenance is not None:
            derived, preds, changes = await self.maintenance.process(readings, now=self.latest)
        if self.emissions is not None:
            if self.emissions.pems_due():
                # Registry reads (files, the database) off the event loop; groups are processed in turn, so
                # nothing observes meanwhile.
                await asyncio.to_thread(self.emissions.refresh_pems)
            late = self.emissions.late
            self.emissions.observe(readings)
            if self.emissions.late > late:
                self.metrics.analytics_late.labels("emissions").inc(self.emissions.late - late)
            changes.extend(self._conditions)
            self._conditions.clear()
            if self.maintenance is None and self.latest is not None:
                # Emission alerts escalate too when no maintenance analysis runs (it calls the manager's tick): a
                # site that monitors only its stacks never escalated an unacknowledged "NOx heading over its limit".
                changes.extend(self.manager.tick(self.latest))
            if self._pems_steps:  # PEMS predictions (with interval and model version) and the pems tags' readings
                derived = derived + [r for st in self._pems_steps for r in st.readings]
                preds = preds + [st.prediction for st in self._pems_steps]
                self._pems_steps.clear()
        self.processed += len(readings)
        # Detector versions that came into service (trained, adopted, restored at start): recorded once each.
        made = [("detector_version", r) for r in self.maintenance.detector_records()] if self.maintenance else []
        if not (derived or preds or changes or made):
            return
        records = made + [prediction_record(p) for p in preds] + [alert_change_record(c) for c in changes]
        self.predictions += len(preds)
        self.alert_changes += len(changes)
        stored = asyncio.get_running_loop().create_future() if changes else None
        ack, nack = settles(stored) if stored is not None else (None, None)
        await self.emit(Batch(SOURCE, derived, records=records, ack=ack, nack=nack))
        if stored is not None:
            # Notified only once the spool holds the changes: notified first, a crash before the commit paged an
            # alert the database never got, whose "cleared" never came (the receiver showed it open for good), and
            # the condition raised it again under a new id after the restart.
            self._awaiting_store = stored, changes, time.monotonic() + NOTIFY_STORE_WAIT_S
            await self._until_stored(stored, changes, self._awaiting_store[2])
            self._awaiting_store = None
            await self.notifications.queue(changes)

    async def _until_stored(self, stored: asyncio.Future, changes: list, deadline: float) -> None:
        """Wait until the spool holds ``changes`` (their batch's ack), at most until ``deadline``; past it, or when the
        batch was refused, they are notified all the same (a page must not wait on a stuck spool), logged and
        counted."""
        try:
            await within(asyncio.shield(stored), max(0.0, deadline - time.monotonic()))
            self._unstored_logged = False
            return
        except TimeoutError:
            why = f"not in the spool after {NOTIFY_STORE_WAIT_S:.0f} s (spool full or failing: see spool_full, " \
                  "spool_error)"
        except Exception as exc:  # the batch's nack: it was not spooled (a stop that could not wait, a bug)
            why = f"not spooled ({exc})"
        self.metrics.notified_unstored.inc(len(changes))
        if not self._unstored_logged:
            self._unstored_logged = True
            log.warning("%d alert change(s) %s; notifying the receivers anyway (the alert is missing from the "
                        "console until the spool takes it)", len(changes), why, extra={"event": "notify_unstored"})

    async def _idle_clock_loop(self) -> None:
        """Move the clock on by the gateway's own while nothing is offered and alerts are open (see IDLE_TICK_S)."""
        while True:
            await asyncio.sleep(IDLE_TICK_S)
            now = time.monotonic()
            if (now - self._offered_mono < IDLE_TICK_S or not (self.manager.open or self.manager.held)
                    or not self.queue.empty()):
                continue
            if self.latest is None:
                # No reading since the start (a power cut took the plant network down too) but open alerts, loaded or
                # restored: the clock starts at the gateway's own time; readings move it on from there.
                self.latest = utcnow()
            else:
                self.latest += timedelta(seconds=now - self._clock_mono)
            self._clock_mono = now
            self.queue.put_nowait([])

    def _restore_alert_state(self) -> None:
        """The database did not answer the first sync: go on from the open alerts and windows saved when this gateway
        last knew them (maintenance.alert_state), instead of raising every active condition again."""
        from maintenance import alert_state

        got = alert_state.restore(self.manager, self.state_dir / alert_state.STATE_FILE)
        if got is not None:
            log.warning("database not reachable at start: going on from %d open alert(s) and %d maintenance "
                        "window(s) saved before the restart until it answers", *got,
                        extra={"event": "alert_state_restored"})

    def _alert_state_changed(self) -> tuple[bytes, bytes] | None:
        """(what to write, what tells a change) when the alert state is to be written again, else None."""
        from maintenance import alert_state

        key = alert_state.content(self.manager, seen=False)
        if key == self._state_saved and time.monotonic() - self._state_saved_at < ALERT_STATE_REFRESH_S:
            return None
        return alert_state.content(self.manager), key

    def _save_alert_state(self) -> None:
        """At shutdown (no event loop to spare a thread)."""
        from maintenance import alert_state

        changed = self._alert_state_changed()
        if changed is not None:
            try:
                alert_state.write(self.state_dir / alert_state.STATE_FILE, changed[0])
            except OSError as exc:
                self.metrics.analytics_errors.inc()
                log.error("alert state not saved: %s", exc, extra={"event": "alert_state_not_saved"})

    async def _alert_state_loop(self) -> None:
        from maintenance import alert_state

        failed = False
        while True:
            changed = self._alert_state_changed()
            if changed is not None:
                try:
                    await asyncio.to_thread(alert_state.write, self.state_dir / alert_state.STATE_FILE, changed[0])
                    self._state_saved, self._state_saved_at, failed = changed[1], time.monotonic(), False
                except OSError as exc:
                    # Counted each time (as the RUL and anomaly state's failed writes are), logged once a stretch.
                    self.metrics.analytics_errors.inc()
                    if not failed:  # logged once per failing stretch, tried again every period
                        log.error("alert state not saved to %s (a start without the database would raise every "
                                  "active condition again): %s", self.state_dir, exc,
                                  extra={"event": "alert_state_not_saved"})
                    failed = True
            await asyncio.sleep(ALERT_STATE_SAVE_S)

    async def _save_loop(self) -> None:
        """Every ``state_save_s``, save the RUL assets' kept cycles when a closed cycle's own save failed (the
        snapshot on the loop, between two groups or inside one's awaits, never during a synchronous update; the file
        written in a worker thread)."""
        rul = self.maintenance.rul if self.maintenance is not None else None
        if rul is None or rul.state_path is None:
            return
        while True:
            await asyncio.sleep(self.mcfg.state_save_s)
            try:
                data = rul.snapshot(progress=False)
                if data is not None:
                    await asyncio.to_thread(rul.write, data)
            except Exception:
                # `write` handles the file system's errors; anything else is a bug, but saving must go on.
                self.errors += 1
                self.metrics.analytics_errors.inc()
                log.exception("saving the RUL history failed; retried in %.0f s", self.mcfg.state_save_s,
                              extra={"event": "rul_state_not_saved"})
                rul.mark_unsaved()

    async def _sync_loop(self) -> None:
        """Keep the alert manager in step with the database: open alerts, acknowledgements, windows (`run` makes
        the first sync before analysing anything)."""
        if not self.conninfo:
            return
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self._sync()
            except Exception:
                # A bug must not end the loop for good: acknowledgements would no longer stop escalations, clears in
                # the console would not be seen, windows would not refresh. Logged, tried again next period.
                self.errors += 1
                self.metrics.analytics_errors.inc()
                log.exception("analytics sync failed; tried again in %.0f s", SYNC_INTERVAL_S,
                              extra={"event": "analytics_sync_error"})

    async def _seed_emissions(self) -> None:
        """The stacks' running half-hours and days from the stored readings, before the first group: a gateway
        restarted inside them otherwise averaged (and alerted on) only what came after the restart."""
        if self.emissions is None or not self.conninfo:
            return

        def seed() -> None:
            with psycopg.connect(self.conninfo, connect_timeout=5, autocommit=True) as conn:
                self.emissions.seed(conn, time.time())

        try:
            await asyncio.to_thread(seed)
        except Exception:  # live warnings go on from now; the stored averages are the job's
            self.errors += 1
            self.metrics.analytics_errors.inc()
            log.exception("live emissions: running averages not started from the stored readings; they start now",
                          extra={"event": "emissions_seed_error"})

    async def _sync(self) -> None:
        if not self.conninfo:
            return
        async def sync() -> None:
            async with await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=5,
                                                             autocommit=True) as conn:
                await self.sync_once(conn)

        try:
            # Bounded: a lock on the alerts table (a session idle in a transaction, a long migration) held the first
            # sync, and with it every analysis, for as long as the lock lasted (psycopg cancels the query).
            await within(sync(), SYNC_TIMEOUT_S)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self.notifications.db_down_until = time.monotonic() + ACK_RECHECK_S  # escalations do not wait for it either
            log.debug("analytics sync skipped: %s", str(exc) or type(exc).__name__)

    async def sync_once(self, conn: psycopg.AsyncConnection) -> None:
        from maintenance import store
        from maintenance.alerts import AlertChange, dedup_key

        cur = await conn.execute("SELECT to_regclass('alerts') IS NOT NULL")
        if not (await cur.fetchone())[0]:
            return
        stored = await store.open_alerts(conn)
        first, known = not self._synced, {}
        if first:
            from maintenance import alert_state

            # What the receivers last heard of, before the database's state replaces the manager's.
            known = alert_state.last_known(self.state_dir / alert_state.STATE_FILE)
            # The open alerts as this gateway left them first, then the rows: `load` keeps a level this gateway
            # reached beyond the row's (an escalation still in the spool, paged already) and takes the row for the
            # rest. With the rows alone the first tick escalated (and paged) that alert again.
            stored_ids = {r[0].id for r in stored}
            self.manager.load([row for alert_id, row in known.items() if alert_id in stored_ids])
            self.manager.load(stored)
            self._report_unwatched(stored)
            # Alerts cleared just before the restart re-open, as they would have without it (reopen_within_s).
            self.manager.load_recent(await store.recently_cleared(conn, self.manager.policy.reopen_within_s,
                                                                  self.latest or utcnow()))
            # Conditions a maintenance window held are not in the database: the state file has them.
            self.manager.load_held(alert_state.held(self.state_dir / alert_state.STATE_FILE))
            self._synced = True
        by_id = {a.id: (a, level, escalated_at) for a, _, _, level, escalated_at in stored}
        # An open alert of the manager missing from the stored open ones is either cleared in the console or not
        # written yet (the spool forwards it later: database down, a backlog). Only the stored row can tell.
        missing = [o.alert.id for o in self.manager.open.values() if o.alert.id not in by_id]
        cleared = await store.cleared_ids(conn, missing) if missing else {}
        # A re-opened alert whose reopen is not written yet reads as cleared by the gateway's own earlier clear:
        # forgotten, the condition still active raised and paged a new alert.
        cleared = {i: c for i, c in cleared.items() if not (c[1] == "system" and self.manager.reopened_since(i, c[0]))}
        # What a person did in the console goes to the receivers too: the pager that got "raised" heard nothing of a
        # clear or an acknowledgement made in the console, kept the incident open and went on paging the on-call.
        by_person: list = []
        for alert_id, (cleared_at, who) in cleared.items():
            o = next((o for o in self.manager.open.values() if o.alert.id == alert_id), None)
            if o is not None and who != "system":  # "system": another gateway's clear, notified by that gateway
                by_person.append(AlertChange("cleared", dataclasses.replace(o.alert, cleared_at=cleared_at),
                                             dedup_key(o.alert.asset, o.alert.tag, o.alert.kind), o.occurrences,
                                             o.last_seen, o.escalation_level, detail={"by": who}))
            self.manager.cleared_by_hand(alert_id)
        # Missing with nothing left in the spool, twice running: its row was refused (dead-lettered), so it will
        # never be written; forgotten, an active condition raises it again (a row the board shows). A row that
        # arrived since and was cleared in the console is the case above, not this one.
        drained = self.spool_pending is not None and self.spool_pending() == 0
        unwritten = {i for i in missing if i in self._missing_drained and i not in cleared} if drained else set()
        stored_by_key = {dedup_key(r[0].asset, r[0].tag, r[0].kind): r for r in stored}
        key_of = {o.alert.id: k for k, o in self.manager.open.items()}
        for alert_id in unwritten:
            row = stored_by_key.get(key_of.get(alert_id))
            if row is not None:
                # Its raise met another open alert of the condition (another gateway's: a redundant pair) and became
                # an occurrence of it. Forgotten, the condition raised (and paged) again every two syncs while it
                # lasted, and escalated an alert the other's operators had acknowledged: take that alert instead.
                log.info("alert %s was stored as an occurrence of alert %s of the same condition; going on with "
                         "that one", alert_id, row[0].id, extra={"event": "alert_absorbed"})
                self.manager.load([row])
                continue
            log.warning("alert %s was never stored (its row was refused: see dead_letters); raising it again if "
                        "its condition lasts", alert_id, extra={"event": "alert_unstored"})
            self.manager.cleared_by_hand(alert_id)
        self._missing_drained = set(missing) if drained else set()
        for o in list(self.manager.open.values()):
            db, level, escalated_at = by_id.get(o.alert.id, (None, None, None))
            if db is not None and db.acknowledged_at and o.alert.acknowledged_at is None:
                self.manager.acknowledged(o.alert.id, db.acknowledged_by or "", db.acknowledged_at,
                                          severity=db.severity, level=level, escalated_at=escalated_at)
                by_person.append(AlertChange("acknowledged", o.alert, dedup_key(o.alert.asset, o.alert.tag,
                                                                                 o.alert.kind), o.occurrences,
                                             o.last_seen, o.escalation_level, detail={"by": db.acknowledged_by}))
        # Acknowledged in the console after this gateway's last sync and just before it cleared the alert: its copy
        # kept for a re-opening did not know, so a return of the condition re-opened it unacknowledged, paged the
        # receivers of "raised" again and escalated it. Not notified: the receivers had its clear already.
        unacked = [o.alert.id for o, _ in self.manager.recent.values() if o.alert.acknowledged_at is None]
        for alert_id, (at, who) in (await store.acknowledged_ids(conn, unacked) if unacked else {}).items():
            self.manager.acknowledged(alert_id, who, at)
        if known:
            by_person += await self._done_while_down(conn, known, by_id, set(missing))
        # Back as far as a re-opening looks (a window since an alert's clear makes its return a new alert): with
        # reopen_within_s above a day, a window between the clear and the return was not loaded and the old alert
        # re-opened.
        back = timedelta(seconds=max(86400.0, self.manager.policy.reopen_within_s))
        self.manager.windows = await store.windows(conn, utcnow() - back)
        await self.notifications.queue(by_person)

    def _watches(self, a: Alert) -> bool | None:
        """Whether this configuration still observes the condition of alert ``a`` (None: a kind it cannot tell)."""
        if a.kind.startswith("rule:"):
            rules = self.mcfg.rules if self.mcfg is not None else ()
            return any(f"rule:{r.name}" == a.kind and r.tag == a.tag for r in rules)
        if a.kind.startswith("emission"):
            return a.asset in self._stack_names
        if a.kind in ("iso20816", "anomaly", "rul", "sensor"):
            return self.mcfg is not None and any(x.name == a.asset for x in self.mcfg.assets)
        return None

    def _report_unwatched(self, stored: list) -> None:
        """At the first sync (a start, a reload): the open alerts whose condition the configuration no longer has
        (a rule renamed or removed, an asset taken out). Nothing observes them, so nothing clears them and an
        unacknowledged one escalates (and pages) every ``escalate_after_s`` like any other until a person
        acknowledges or clears it in the console; said once per alert, so the reload's author knows why."""
        for a, *_ in stored:
            if self._watches(a) is False:
                log.warning("open alert %s (%s, %s%s) is of a condition the configuration no longer has: it will not "
                            "clear by itself%s; clear it in the console", a.id, a.asset, a.kind,
                            f", {a.tag}" if a.tag else "",
                            "" if a.acknowledged_at else " and escalates until acknowledged",
                            extra={"event": "alert_unwatched", "asset": a.asset})

    async def _done_while_down(self, conn: psycopg.AsyncConnection, known: dict, by_id: dict,
                               handled: set[str]) -> list:
        """At the first sync: the acknowledgements and clears made in the console while this gateway was stopped,
        against the open alerts it last knew (``known``, `maintenance.alert_state.last_known`). The database's
        state was loaded as it is, so the comparison in `sync_once` never saw them: the pager that got "raised"
        kept the incident open for an alert acknowledged or cleared at 3 a.m. while the gateway was restarting.
        ``handled``: the alerts `sync_once` notified already (restored from the file into the manager)."""
        from maintenance import store
        from maintenance.alerts import AlertChange, dedup_key

        out: list = []
        gone = [i for i in known if i not in by_id and i not in handled]
        cleared = await store.cleared_ids(conn, gone) if gone else {}
        for alert_id, (a, n, seen, level, _) in known.items():
            key = dedup_key(a.asset, a.tag, a.kind)
            o = self.manager.open.get(key)
            if alert_id in by_id and a.acknowledged_at is None and o is not None and o.alert.id == alert_id \
                    and o.alert.acknowledged_at is not None:
                out.append(AlertChange("acknowledged", o.alert, key, o.occurrences, o.last_seen,
                                       o.escalation_level, detail={"by": o.alert.acknowledged_by}))
            elif alert_id in cleared and cleared[alert_id][1] != "system":  # "system": another gateway's clear
                cleared_at, who = cleared[alert_id]
                out.append(AlertChange("cleared", dataclasses.replace(a, cleared_at=cleared_at), key, n, seen,
                                       level, detail={"by": who}))
        if out:
            log.info("%d acknowledgement(s) and clear(s) made in the console while the gateway was stopped are "
                     "notified", len(out), extra={"event": "notify_missed_console"})
        return out

    def status(self) -> dict:
        # processed / dropped count readings of the analytics tags (``tags``), the only ones handed over.
        rul = self.maintenance.rul if self.maintenance is not None else None
        pems = ([lp.status() for mon in self.emissions.monitors.values() for lp in mon.pems.values()]
                if self.emissions is not None else [])
        return {"tags": len(self.tags()), "processed": self.processed, "dropped": self.dropped,
                "queue": self.queue.qsize(), "models": {"rul": rul.status() if rul else [], "pems": pems},
                "predictions": self.predictions, "errors": self.errors, "alert_changes": self.alert_changes,
                "open_alerts": len(self.manager.open),
                # Observations left out for being older than the newest of their condition (maintenance/README.md)
                "late_observations": self.manager.late + (self.maintenance.rules.late if self.maintenance else 0),
                # Readings left out of the indicator windows for arriving behind them (a backlog; maintenance/README.md)
                "behind_windows": self.maintenance.indicators.late if self.maintenance else 0,
                "at": time.time()}
