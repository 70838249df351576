"""Alert changes to the configured receivers (``[maintenance.notify]``: MQTT, webhooks), in order, each once.

One bounded queue and one task per receiver, so a receiver that is down delays only itself and a "cleared" never
overtakes its "raised"; a change a receiver did not take is sent again with back-off. Every queued change is on
disk first (``<state_dir>/notify_outbox.db``, `maintenance.outbox`), so a stop of the gateway (reload, upgrade,
crash) with a receiver down loses nothing: the next start sends what was left first, with the same
``notification_id``. Before an escalation is paged, the database is asked whether the console has acknowledged the
alert since the last sync (one bounded question per group; unanswered: sent, marked unverified).

`edge.analytics` owns one `Notifications` and hands it the alert changes it stores (`queue`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from edge.metrics import Metrics
from edge.timeouts import within

log = logging.getLogger(__name__)

NOTIFY_QUEUE_GROUPS = 1000  # groups of alert changes waiting for a receiver, beyond which "updated" ones are dropped
# Beyond this many groups even an alert's raise, acknowledgement, escalation and clear are dropped (memory): with
# de-duplication these come once per alert, not per flap, so it takes thousands of distinct alerts to reach it.
NOTIFY_QUEUE_GROUPS_MAX = 10 * NOTIFY_QUEUE_GROUPS
NOTIFY_RETRY_MIN_S = 1.0  # a change a receiver did not take is sent again after this, doubling up to the max
NOTIFY_RETRY_MAX_S = 60.0
# Is an escalated alert acknowledged in the console already? One bounded question per group of changes; after the
# database failed to answer it is not asked again for a while (escalations are then sent, marked unverified).
ACK_CHECK_TIMEOUT_S = 3.0
ACK_RECHECK_S = 15.0
ACK_CHECK_FRESH_S = 5.0
PROBE_SLACK_S = 5.0  # a receiver's start-up probe gets its timeout_s plus this, at most


@dataclass(slots=True)
class _Outbox:
    """One notifier's queue of alert-change groups ``(changes, seqs)``, and how many changes it dropped while full.
    ``seqs``: the changes' rows in the outbox file (`maintenance.outbox`), or None where it could not be written."""

    notifier: object
    queue: asyncio.Queue
    dropped: int = 0
    key: str = ""  # the receiver's name in the outbox file
    # The group being sent, without the changes already taken: kept over a watchdog restart of analytics, which
    # cancels the sender mid-group (taken off the queue, the group's rest was lost until the next process start,
    # then sent after the changes that came later: a "raised" after its "cleared").
    current: tuple[list, list[int] | None] | None = None


@dataclass(frozen=True, slots=True)
class NotifySecrets:
    """What the notifiers need from outside the configuration file, read at start-up (`notify_secrets`)."""

    mqtt_password: str | None = dataclasses.field(default=None, repr=False)
    mqtt_tls: object = None  # ssl.SSLContext of [maintenance.notify.mqtt.tls] (edge.tls), or None
    webhooks: tuple = ()  # maintenance.notify.WebhookTarget of each webhook, in order


def notify_secrets(mcfg) -> NotifySecrets:
    """The alert notifiers' secrets resolved (``maintenance.notify``): the MQTT password, the MQTT TLS context (its
    CA, certificate and key files read, the key's password resolved) and each webhook's
    `maintenance.notify.WebhookTarget`; `ConfigError` listing every reference and file that cannot be read, by its
    key. Called when the gateway is built and by `edge.service.preflight`: resolved only inside the running task, an
    unset one passed check-config and a reload, then killed live analytics at every watchdog restart."""
    if mcfg is None:
        return NotifySecrets()
    from edge.errors import ConfigError
    from edge.secrets import resolve_secret
    from edge.tls import tls_context
    from maintenance.notify_mqtt import TLS_KEY

    n = mcfg.notify
    problems: list[str] = []
    password, tls, targets = None, None, []
    if n.mqtt is not None and n.mqtt.password:
        try:
            password = resolve_secret(n.mqtt.password, where="maintenance.notify.mqtt.password")
        except ConfigError as exc:
            problems += exc.problems
    if n.mqtt is not None:
        try:
            tls = tls_context(n.mqtt.tls, TLS_KEY)
        except ConfigError as exc:
            problems += exc.problems
    for i, w in enumerate(n.webhooks):
        try:
            targets.append(w.target(f"maintenance.notify.webhooks[{i}]"))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return NotifySecrets(password, tls, tuple(targets))


class Notifications:
    """The receivers of one gateway's alert changes; `open` builds them (again after a watchdog restart, keeping
    the queues), `tasks` starts their senders, `queue` hands changes over, `close` ends them."""

    def __init__(self, mcfg, secrets: NotifySecrets, metrics: Metrics, conninfo: str | None,
                 state_dir: Path) -> None:
        self.mcfg = mcfg
        self._secrets = secrets  # notify_secrets(mcfg): read by each new gateway, so a reload rotates them
        self.metrics = metrics
        self.conninfo = conninfo
        self.state_dir = Path(state_dir)
        self.notifiers: list = []
        self._outboxes: list[_Outbox] = []
        self.db_down_until = 0.0  # time.monotonic(): the database did not answer; not asked again before
        self._outbox_file = None  # maintenance.outbox.Outbox: the changes not taken yet, kept across restarts
        self._outbox_restored = False
        self._outbox_error: str | None = None
        # The gateway's /healthz problems (edge/gateway.py sets it): a receiver failing its probe is one until it
        # takes a notification.
        self.problems: dict[str, str] | None = None
        self._probed = False

    def tasks(self) -> list[asyncio.Task]:
        """One sending task per receiver (`open` first)."""
        return [asyncio.create_task(self._loop(box), name=f"notify:{box.key}") for box in self._outboxes]

    async def close(self) -> None:
        """Close the receivers and the outbox file (the senders are cancelled by the caller first)."""
        for n in self.notifiers:
            await n.aclose()
        if self._outbox_file is not None:
            self._outbox_file.close()
            self._outbox_file = None

    async def queue(self, changes: list) -> None:
        """Hand ``changes`` to each receiver's queue (the events it takes), on disk first."""
        from maintenance.notify import wanted

        for box in self._outboxes if changes else ():
            events = getattr(getattr(box.notifier, "cfg", None), "events", None)
            mine = [c for c in changes if c.event != "suppressed" and (events is None or wanted(events, c))]
            if not mine:
                continue
            waiting = box.queue.qsize()
            keep = mine
            if waiting >= NOTIFY_QUEUE_GROUPS_MAX:
                keep = []
            elif waiting >= NOTIFY_QUEUE_GROUPS:
                # Behind: one more occurrence of an alert the receiver knows ("updated") is dropped, but never what
                # changes an alert's state. All were dropped alike, and a receiver back after a long outage never
                # got the clears of the alerts it had been sent: they stayed open there for good.
                keep = [c for c in mine if c.event != "updated"]
            if keep:
                # On disk before it is queued: a stop of the gateway (reload, upgrade, crash) with the receiver down
                # lost every change waiting for it; the next start sends them first (`open`).
                seqs = await self._outbox_add(box.key, keep)
                box.queue.put_nowait((keep, seqs))  # unbounded: the bounds are the counts above
                self._waiting(box)
            if len(keep) == len(mine):
                continue
            if not box.dropped:
                log.error("alert notifications to %s are %d groups behind (the receiver is down or slow); "
                          "dropping %s until it catches up (the alerts themselves are stored)",
                          box.notifier.name, waiting, "every new change" if waiting >= NOTIFY_QUEUE_GROUPS_MAX else
                          "new \"updated\" changes (raised, acknowledged, escalated and cleared still wait)",
                          extra={"event": "notify_behind"})
            box.dropped += len(mine) - len(keep)
            self.metrics.notifications.labels("dropped").inc(len(mine) - len(keep))

    async def probe(self) -> None:
        """Once per gateway, at its start (`edge.analytics.Analytics.run`, in its own task: collection and analysis
        do not wait): try each receiver that has a harmless probe (MQTT: connect and log in; a webhook only with
        ``probe = true``: a HEAD request). A failure is logged (``notify_probe_failed``), counted in
        ``valvoja_alert_receiver_up`` and listed in /healthz ``problems``: a wrong CA or password used to show only
        at the first alert, at night."""
        if self._probed:
            return
        self._probed = True

        async def one(n) -> None:
            if not getattr(n, "probes", False):  # no harmless probe (a webhook without probe = true): unknown
                return
            try:
                error = await within(n.probe(), n.cfg.timeout_s + PROBE_SLACK_S)
            except TimeoutError:
                error = f"no answer within {n.cfg.timeout_s + PROBE_SLACK_S:g} s"
            except Exception as exc:  # a probe must never take analytics down
                error = f"{type(exc).__name__}: {exc}"
            self._receiver(n, error)

        await asyncio.gather(*(one(n) for n in self.notifiers))

    def _receiver(self, n, error: str | None, *, probe: bool = True) -> None:
        """Report what ``n``'s probe or last notification showed (None: it got through). A failed notification
        (``probe`` False) is logged by the sender (``notify_failed``)."""
        key = f"notify {n.name}"
        self.metrics.notify_receiver_up.labels(n.name).set(0 if error else 1)
        if error:
            if self.problems is not None:
                self.problems[key] = f"alert receiver failing: {error}"
            if not probe:
                return
            log.error("alert receiver %s failed its start-up check: %s (alerts will not reach it until this is "
                      "fixed; they wait in the outbox)", n.name, error, extra={"event": "notify_probe_failed"})
        elif self.problems is not None and self.problems.pop(key, None) is not None:
            log.info("alert receiver %s works again", n.name, extra={"event": "notify_probe_recovered"})

    def open(self) -> None:
        if self.mcfg is None:
            return
        from maintenance.notify import WebhookNotifier
        from maintenance.notify_mqtt import MqttNotifier

        n = self.mcfg.notify
        # Called at every start of `run`: the watchdog restarts a failed task on this object, and the notifiers of
        # the run before were closed by it (they were kept, next to the new ones: a closed receiver's outbox failed
        # for good). The outboxes' queues are kept: changes waiting in them are still sent.
        kept = [(box.queue, box.current) for box in self._outboxes]
        self.notifiers = []
        secrets: NotifySecrets = self._secrets
        if n.mqtt is not None:
            self.notifiers.append(MqttNotifier(n.mqtt, secrets.mqtt_password, secrets.mqtt_tls))
        self.notifiers += [WebhookNotifier(w, t) for w, t in zip(n.webhooks, secrets.webhooks, strict=True)]
        self._outboxes = [_Outbox(n, kept[i][0], current=kept[i][1]) if i < len(kept) else
                          _Outbox(n, asyncio.Queue()) for i, n in enumerate(self.notifiers)]
        names: dict[str, int] = {}
        for box in self._outboxes:  # two receivers of one name (the same URL twice) keep their rows apart
            names[box.notifier.name] = names.get(box.notifier.name, 0) + 1
            box.key = box.notifier.name + (f" #{names[box.notifier.name]}" if names[box.notifier.name] > 1 else "")
        self._open_outbox_file()

    def _open_outbox_file(self) -> None:
        """Open ``<state_dir>/notify_outbox.db`` and, at the first start only (a watchdog restart keeps its queues),
        queue what each receiver had not taken when the gateway stopped, before anything new."""
        from maintenance.outbox import OUTBOX_FILE, Outbox

        if not self._outboxes or self._outbox_file is not None:
            return
        try:
            self._outbox_file = Outbox(self.state_dir / OUTBOX_FILE)
            if self._outbox_restored:
                return
            self._outbox_restored = True
            gone = self._outbox_file.forget_others({box.key for box in self._outboxes})
            if gone:
                log.warning("%d alert notifications for receivers no longer configured were dropped", gone,
                            extra={"event": "notify_receiver_gone"})
            for box in self._outboxes:
                rows = self._outbox_file.pending(box.key)
                if rows:
                    box.queue.put_nowait(([ch for _, ch in rows], [seq for seq, _ in rows]))
                    self._waiting(box)
                    log.info("%d alert notifications to %s left from before the restart are sent first", len(rows),
                             box.notifier.name, extra={"event": "notify_restored"})
        except Exception as exc:  # notifications still go out, from memory only
            self._outbox_failed(exc)

    def _waiting(self, box: _Outbox) -> None:
        """``valvoja_alert_notifications_waiting``: how far behind a receiver is, before its queue's bounds drop
        anything (`NOTIFY_QUEUE_GROUPS`)."""
        self.metrics.notify_waiting.labels(box.notifier.name).set(box.queue.qsize() + (box.current is not None))

    def _outbox_failed(self, exc: BaseException) -> None:
        # Counted at each failure, logged once per kind: the log alone left a /metrics-based watch blind to
        # notifications that were no longer kept across a restart.
        self.metrics.analytics_errors.inc()
        if self._outbox_error != type(exc).__name__:
            self._outbox_error = type(exc).__name__
            log.error("alert notification outbox %s not usable; notifications waiting for a receiver are lost if "
                      "the gateway stops: %s", self.state_dir, exc, extra={"event": "notify_outbox_error"})

    async def _outbox_add(self, key: str, changes: list) -> list[int] | None:
        if self._outbox_file is None:
            return None
        try:
            seqs = await asyncio.to_thread(self._outbox_file.add, [(key, ch) for ch in changes])
        except Exception as exc:
            self._outbox_failed(exc)
            return None
        self._outbox_error = None
        return seqs

    async def _outbox_done(self, seqs: list[int | None]) -> None:
        seqs = [s for s in seqs if s is not None]
        if not seqs or self._outbox_file is None:
            return
        try:
            await asyncio.to_thread(self._outbox_file.done, seqs)
        except Exception as exc:
            self._outbox_failed(exc)

    async def _loop(self, box: _Outbox) -> None:
        while True:
            if box.current is None:
                box.current = await box.queue.get()
            changes, seqs = box.current
            await self.send(box.notifier, changes, seqs, box)
            box.current = None
            self._waiting(box)
            if box.dropped and box.queue.empty():
                log.warning("alert notifications to %s caught up; %d changes were not notified", box.notifier.name,
                            box.dropped, extra={"event": "notify_resumed"})
                box.dropped = 0

    async def _taken_in_store(self, alert_ids: list[str]) -> set[str] | None:
        """Which of ``alert_ids`` are acknowledged or cleared in the database (the console), which this gateway
        learns only at its next sync; None when it cannot tell (no database, not reachable, not answering).

        One query for all, bounded by `ACK_CHECK_TIMEOUT_S`; after a failure the database is not asked again for
        `ACK_RECHECK_S` (nor after a failed sync): a database that does not answer cost a 5 s connect timeout per
        escalation and per receiver, in the receiver's queue, so 100 alerts escalating in a network cut held every
        later notification (new critical alerts too) for over 8 minutes."""
        if not self.conninfo or not alert_ids:
            return set()
        if time.monotonic() < self.db_down_until:
            return None

        async def ask() -> set[str]:
            # No statement_timeout startup option (a pgbouncer in front refuses it): wait_for cancels the query.
            async with await psycopg.AsyncConnection.connect(
                    self.conninfo, connect_timeout=max(2, int(ACK_CHECK_TIMEOUT_S)), autocommit=True) as conn:
                cur = await conn.execute("SELECT id FROM alerts WHERE id = ANY(%s)"
                                         " AND (acknowledged_at IS NOT NULL OR cleared_at IS NOT NULL)",
                                         (list(alert_ids),))
                return {r[0] for r in await cur.fetchall()}

        try:
            taken = await within(ask(), ACK_CHECK_TIMEOUT_S)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self.db_down_until = time.monotonic() + ACK_RECHECK_S
            log.warning("acknowledgement of %d escalated alert(s) not checked (database: %s); notified anyway",
                        len(alert_ids), str(exc) or type(exc).__name__, extra={"event": "notify_unverified"})
            return None
        self.db_down_until = 0.0
        return taken

    def _skipped(self, n, ch) -> None:
        """An escalation not sent to ``n``: its alert was acknowledged (or cleared) in the console meanwhile."""
        self.metrics.notifications.labels("skipped").inc()
        log.info("escalation of alert %s not notified to %s: acknowledged in the console", ch.alert.id, n.name,
                 extra={"event": "notify_skipped", "asset": ch.alert.asset})

    async def send(self, n, changes: list, seqs: list[int] | None = None, box: _Outbox | None = None) -> None:
        """Send ``changes`` to ``n`` in order; each one taken, refused or skipped is forgotten from the outbox file
        (``seqs``: their rows), and from ``box.current`` (what a restarted sender goes on with)."""
        from maintenance.notify import Refused

        taken: set[str] | None = set()
        asked = -ACK_CHECK_FRESH_S
        done: list[int | None] = []  # rows of the changes taken, refused or skipped, still in the outbox file
        for i, ch in enumerate(changes):
            if box is not None:
                box.current = (changes[i:], seqs[i:] if seqs else seqs)
            if ch.event == "escalated":
                if time.monotonic() - asked >= ACK_CHECK_FRESH_S:
                    # The escalations of the rest of the group in one question (asked again when sending the group
                    # has taken a while: a receiver that was down).
                    taken = await self._taken_in_store([c.alert.id for c in changes[i:] if c.event == "escalated"])
                    asked = time.monotonic()
                if taken is not None and ch.alert.id in taken:
                    # Acknowledged (or cleared) in the console since the last sync: the store does not take this
                    # escalation (maintenance.store.apply_changes), and nobody should be paged for an alert someone
                    # has taken.
                    self._skipped(n, ch)
                    done.append(seqs[i] if seqs else None)
                    continue
                if taken is None:
                    # Cannot tell: sent (a page for an alert someone took is better than none for one nobody took),
                    # saying so to the receiver.
                    ch = dataclasses.replace(ch, detail={**ch.detail, "acknowledgement": "unverified"})
            # A change the receiver did not take (down, unreachable, 5xx) stays at the head of its queue and is sent
            # again with back-off until it is delivered: trying each change once lost everything that happened
            # while a receiver restarted. Later changes wait behind it (in order); the queue's bound drops new ones
            # when a receiver stays down that long. What the receiver refuses (`Refused`, a 4xx) or a notifier's
            # own error is not retried: it would block that receiver for good.
            delay, failed = NOTIFY_RETRY_MIN_S, False
            while True:
                try:
                    ok, detail = await n.send(ch)
                except Exception as exc:  # a notifier must never take analytics down
                    ok, detail = False, Refused(repr(exc))
                if ok:
                    self.metrics.notifications.labels("ok").inc()
                    if detail != "skipped":
                        self._receiver(n, None)
                    break
                refused = isinstance(detail, Refused)
                # Down until it takes one: set only by the start-up probe and a success, the gauge and /healthz
                # said "up" through a whole outage after the receiver's first delivery (docs/operations.md, "An
                # alert receiver is down", names them as the signs).
                self._receiver(n, str(detail), probe=False)
                if refused or not failed:  # logged and counted once per change, not per attempt
                    log.warning("notification of alert %s to %s failed: %s%s", ch.alert.id, n.name, detail,
                                "" if refused else "; sending it again until it is taken",
                                extra={"event": "notify_failed", "asset": ch.alert.asset})
                    if not failed:
                        self.metrics.notifications.labels("failed").inc()
                    failed = True
                if refused:
                    break
                # What was delivered before is forgotten now, not after this receiver comes back.
                await self._outbox_done(done)
                done.clear()
                await asyncio.sleep(max(delay, getattr(detail, "retry_after_s", 0.0)))
                delay = min(delay * 2, NOTIFY_RETRY_MAX_S)
                if ch.event == "escalated" and time.monotonic() - asked >= ACK_CHECK_FRESH_S:
                    # The receiver has been down a while: asked only before the first attempt, an escalation waiting
                    # for it paged, once it was back, an alert acknowledged in the console half an hour before.
                    taken = await self._taken_in_store([c.alert.id for c in changes[i:] if c.event == "escalated"])
                    asked = time.monotonic()
                    if taken is not None and ch.alert.id in taken:
                        self._skipped(n, ch)
                        break
            done.append(seqs[i] if seqs else None)
            if len(done) >= 100:
                await self._outbox_done(done)
                done.clear()
        # Forgotten a group at a time, not a change at a time (each delete is a synced commit); a stop before this
        # sends the group's delivered changes again at the next start, with the same notification_id.
        await self._outbox_done(done)
