"""The OPC UA collector: one server, one subscription (and/or a poll loop), data changes out as `Batch`es.

Lifecycle (collectors/base.py): ``run(emit)`` connects (securely as configured: connection.py and
security.py), subscribes and polls, and emits until the connection is lost, then raises
`NotConnectedError`; the gateway backs off (capped at ``reconnect_max_delay_s``, which it reads
from this object) and calls ``run`` again. A lost connection keeps its session (`_Detached`): the next
``run`` re-activates it on a new channel and continues the same subscription, first republishing what the
server still holds (subscription.py), so a short network cut loses nothing. A stop keeps the session too, and
``session.json`` in the state folder (session_state.py) lets the next process do the same: a gateway restarted
(upgrade, crash, SIGKILL) within the session timeout resumes where the spool ends. When the server no longer has
the session or the subscription (expired, server restarted) or the configuration changed, it logs why and
connects afresh, re-creating every monitored item. asyncua's own auto-reconnect is off on purpose: one reconnect
loop (the gateway's) owns back-off and logging.

Every await on the network has a limit: the connect sequence (asyncua's ``connect()`` can wait
for ever on a peer that accepts TCP but never answers) has ``connect_timeout_s``; each request
has ``request_timeout_s``; a silent connection is found by asyncua's watchdog, which reads the
server state every ``watchdog_interval_s`` and gives up after at most that long; a subscription
the server stops serving is re-created by asyncua's stale-subscription watchdog (subscription.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from collectors.base import CollectorContext, Emit
from collectors.opcua.config import Config, NodeConfig
from collectors.opcua.connection import (
    ClientOpener,
    Secrets,
    SessionGone,
    describe,
    namespace_array,
    operation_limits,
    server_time,
    too_large,
)
from collectors.opcua.convert import OVERFLOW, OVERFLOW_MASK, to_reading, to_readings
from collectors.opcua.history import (
    DUE_KEY,
    MARK_KEY,
    OVERLAP_S,
    BackfillPlan,
    Windows,
    due_text,
    parse_due,
    parse_time,
    plan,
    read_window,
    release,
)
from collectors.opcua.security import SecurityError
from collectors.opcua.session_state import SavedSession, SessionFile, config_key
from collectors.opcua.subscription import (
    BatchSubscription,
    ItemFailure,
    ItemRevision,
    eu_ranges,
    item_request,
    subscription_parameters,
)
from edge.errors import NotConnectedError
from edge.records import Batch, Flag, Reading, settles, utcnow
from edge.timeouts import within

log = logging.getLogger(__name__)


class _QuietLostConnection(logging.Filter):
    """asyncua's publish loop logs a traceback at ERROR when the connection drops under it; the
    collector reports the loss itself (and the gateway logs it once per outage), so drop that one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ConnectionError) and str(record.msg).startswith("Publish iteration crashed"))


logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_QuietLostConnection())


# Redundancy (README: Redundant servers): the ServiceLevel sub-ranges of OPC UA Part 4 §6.6.2.4.2 (0 Maintenance,
# 1 NoData, 2-199 Degraded, 200-255 Healthy). A switch needs a better band, never a higher level within one: two
# healthy servers (or a primary back after a failover) do not make it flap.
HEALTHY, DEGRADED = 200, 2
# While the active server reports less than healthy, the others are asked again at most this often (each time a
# session is opened on each, then closed).
REPROBE_S = 10.0
# Once one server has answered usable (healthy or degraded), the others are waited for this much longer, not
# connect_timeout_s: a server that hangs (the one just lost, often) must not hold the failover. A better one that
# answers later is switched to while the chosen one is degraded (`REPROBE_S`). At least as long as
# that answer took, though: under load a secure handshake takes seconds, and a preferred server 1 s slower than its
# backup at the start was passed over for good (no switch back while the backup is healthy; seen in CI).
PROBE_GRACE_S = 1.0
# Nodes the server refused (BadNodeIdUnknown: a server restarted with its address space not complete yet) are asked
# for again this often while connected, in one request.
REFUSED_RETRY_S = 30.0


def band(level: int) -> int:
    """0 failed (0 maintenance, 1 no data: not to be used), 1 degraded (2-199), 2 healthy (200-255)."""
    return 2 if level >= HEALTHY else 1 if level >= DEGRADED else 0


class _Late(Exception):
    """A server of a redundant set that had not answered when another had answered healthy (`PROBE_GRACE_S`)."""


class _Failover(Exception):
    """Raised inside `run` to leave the active server for ``to`` (a connected client there) without dropping the
    collector's run."""

    def __init__(self, to: int, level: int, client: Client, reason: str) -> None:
        super().__init__(reason)
        self.to, self.level, self.client, self.reason = to, level, client, reason


_STALE_MARGIN = 1.5  # asyncua 2.1.0's Client._stale_check_margin (keep-alive periods without a publish: stale)
# Read results that mean "this node cannot be polled" (reported once as a failed item, not as readings).
_POLL_REFUSED = ("BadNodeIdUnknown", "BadNodeIdInvalid", "BadAttributeIdInvalid", "BadNotReadable",
                 "BadUserAccessDenied")


def _names(tags: list[str]) -> str:
    """The first ten of ``tags`` for a log line, and how many more."""
    return ", ".join(tags[:10]) + (f" and {len(tags) - 10} more" if len(tags) > 10 else "")


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t is not None else "at an unknown time"


@dataclass(slots=True)
class _Detached:
    """A session whose connection was lost (or stopped, or that an earlier process saved), kept for the next
    ``run`` to re-activate."""

    client: Client
    sub: BatchSubscription
    lost_at: float  # time.monotonic()
    started: datetime | None  # the server's start time when the session was created
    restarted: bool = False  # from session.json: made by an earlier process


class _Gate:
    """Holds the new subscription's (and polls') values while a backfill hands on the older ones before them:
    `wait` is True once the backfill is done, False when it was cut short (the values are then not acknowledged)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.ok = False
        # Made before the new subscription: its values (and the polls') are from about now on, less what a device's
        # clock may lag (OVERLAP_S), or its initial values, of any age.
        self.since = utcnow() - timedelta(seconds=OVERLAP_S)

    def open(self, ok: bool) -> None:
        if not self._event.is_set():
            self.ok = ok
            self._event.set()

    async def wait(self) -> bool:
        await self._event.wait()
        return self.ok


class _Repeats:
    """What a new session's backfill handed on that the live subscription (and polls) waiting behind it may deliver
    again, by tag: every source time from ``since`` on (values made while the history was read), the newest before it
    (the initial value, when the server historized it), and anything up to ``floor`` (handed on before the gap). Only
    these are repeats: the live values the history does not hold (a historian that keeps every 5th value, or
    compresses) are values of their own: dropped up to the tag's last backfilled time, 92 of 194 were lost behind a
    4 s backfill (tests/test_opcua_backfill.py)."""

    def __init__(self, since: datetime, floor: dict[str, datetime]) -> None:
        self.since, self.floor = since, floor
        self.before: dict[str, datetime] = {}
        self.after: dict[str, set[datetime]] = {}

    def add(self, r: Reading) -> None:
        if r.time >= self.since:
            self.after.setdefault(r.tag, set()).add(r.time)
        else:
            prev = self.before.get(r.tag)
            if prev is None or r.time > prev:
                self.before[r.tag] = r.time

    def repeats(self, r: Reading) -> bool:
        floor = self.floor.get(r.tag)
        return (floor is not None and r.time <= floor) or r.time == self.before.get(r.tag) \
            or r.time in self.after.get(r.tag, ())


class _Hole:
    """An earlier backfill's span still due (``span``): none of it was handed on, though newer values may have been
    (a resumed session's live values, beside the backfill that left it); its values are taken whatever a tag's last
    value taken is, each time once (`takes`; `note` what was taken otherwise)."""

    def __init__(self, span: tuple[datetime, datetime]) -> None:
        self.start, self.end = span
        self.taken: dict[str, datetime] = {}  # tag -> the newest of its values in the span handed on

    def note(self, r: Reading) -> None:
        if self.start <= r.time <= self.end:
            prev = self.taken.get(r.tag)
            if prev is None or r.time > prev:
                self.taken[r.tag] = r.time

    def takes(self, r: Reading) -> bool:
        prev = self.taken.get(r.tag)
        if not self.start <= r.time <= self.end or (prev is not None and r.time <= prev):
            return False
        self.taken[r.tag] = r.time
        return True


BACKFILL_BATCH = 10_000  # readings per batch a backfill hands on (each awaited until the spool holds it)
# A backfill in a new session goes on from its end to the server's time then while a round takes this long or longer:
# the live values of that time wait in the server's queues, which hold queue_size values per item (25 s at the
# defaults), and a round this short leaves them far less to hold. At most CATCH_UP_ROUNDS more rounds.
CATCH_UP_S = 1.0
CATCH_UP_ROUNDS = 10
# How old a server's ServerStatus.CurrentTime may be when read (asyncua's server writes it once a second).
SERVER_TIME_SLACK_S = 1.0
_NO_SOURCE_TIME = int(Flag.NO_SOURCE_TIME)
_TYPE_MISMATCH = int(Flag.TYPE_MISMATCH)  # set by convert.py on a value of a type no reading can hold


class OpcUaCollector:
    """Subscribes to ``config.nodes`` on ``config.endpoint`` (or the best of ``config.endpoints``); see the module
    docstring."""

    def __init__(self, config: Config, context: CollectorContext, *, secrets: Secrets | None = None) -> None:
        self.name = context.name
        self.ctx = context
        self.reconnect_max_delay_s = config.reconnect_max_delay_s  # read by the gateway's reconnect loop
        # One configuration and opener per server (its pins, thumbprint and messages are its own); `cfg` and `opener`
        # are the active server's.
        self._servers = config.servers()
        self._openers = [ClientOpener(c, name=context.name, state_dir=context.state_dir, secrets=secrets)
                         for c in self._servers]
        self._active = 0
        self.cfg = self._servers[0]
        self.opener = self._openers[0]
        self._was_connected = False  # a server was used: the next choice prefers it (no flapping)
        self.failovers = 0
        self.service_level: int | None = None  # the active server's, last read (redundant sets only)
        self.last_failover: dict | None = None
        self._probed_at = 0.0  # time.monotonic() of the last probe of the other servers while degraded
        self._switched_at = float("-inf")  # time.monotonic() of the last failover for a ServiceLevel
        self._servers_seen: dict[int, int | str] = {}  # server -> its ServiceLevel or why not, at its last probe
        self._handover: set[str] = set()  # tags whose first value after a failover may repeat the last one
        self._set_active(0)
        # Client handle i + 1 <-> config.nodes[i]: fixed, so they survive asyncua's recreate().
        self._tags = [n.tag for n in config.nodes]
        self._flatten = [(n.arrays or config.arrays) == "flatten" for n in config.nodes]
        # Node i as the current session's server numbers it (None: a namespace it does not have, with why): nsu= ids
        # resolved with the NamespaceArray read at every session (`_learn_namespaces`), ns= ids as written while the
        # index names the namespace it named at the first session of this process, else following that namespace.
        ids = [ua.NodeId.from_string(n.node_id) for n in config.nodes]
        self._by_uri = {i for i, nid in enumerate(ids) if getattr(nid, "NamespaceUri", None)}
        self._namespaced = bool(self._by_uri) or any(nid.NamespaceIndex > 0 for nid in ids)
        self._first_namespaces: list[str] | None = None
        self._moved: dict[int, tuple[str, int | None]] = {}  # ns= index -> (its first URI, where that is now), logged
        self._node_ids: list[ua.NodeId | None] = []
        self._unresolved: dict[int, str] = {}
        self._resolve(None)
        self._poll_task: asyncio.Task | None = None
        self._poll_nodes: list[tuple[int, NodeConfig]] = []  # the poll-mode nodes the server reads
        self._polled: dict[int, tuple] = {}  # node -> its last polled (source time, status, value)
        self._refused_at = 0.0  # time.monotonic() of the last `_retry_refused`
        self._retry_error: str | None = None  # why the last one failed, logged
        self._sub: BatchSubscription | None = None
        self._client: Client | None = None
        self._emit: Emit | None = None
        self._lost: asyncio.Event | None = None
        self._lost_reason = ""
        self._lost_error: BaseException | None = None
        self._detached: _Detached | None = None
        self._sub_failures: list[ItemFailure] = []  # refused when the subscription's items were created
        self._eu_ranges: dict[int, tuple[float, float]] = {}  # client handle -> EURange of percent-deadband items
        self._started: datetime | None = None  # the server's start time when the current session was created
        self._limits: dict[str, int] = {}  # the server's operation limits (per request), read at every connect
        # What a restarted gateway resumes (session_state.py); read at the first run.
        self._state = SessionFile(Path(context.state_dir) / "session.json") if context.state_dir is not None \
            else None
        self._restore_pending = self._state is not None
        self._state_failing = False
        # For status() / health.
        self.connected = False
        self.connected_since: datetime | None = None
        self.last_data: datetime | None = None
        self.connects = 0
        self.publishes = 0
        self.notifications = 0
        self.unknown_handles = 0
        self.item_failures: list[ItemFailure] = []  # refused when the items were first created
        self.recreate_failures: list[ItemFailure] = []  # refused when the subscription was last re-created
        self.last_error: str | None = None
        self.polls = 0
        self.recreated = 0
        self.session: str | None = None  # "new" or "resumed": how the current (last) session was opened
        self.sessions_resumed = 0
        self.messages_lost = 0  # of earlier subscriptions (sequence-number gaps)
        # Values with the Overflow info bit: the server discarded values of that item from its full queue (with
        # discard_oldest no sequence-number gap shows it). Each tag is logged the first time in a run.
        self.queue_overflows = 0
        self._overflowed: set[str] = set()
        # Changes (another value or status) with the source time of the tag's previous reading: the database keeps
        # one reading per (tag, time), so they are lost there. Counted, each tag logged once a run.
        self.same_source_time = 0
        self._last: dict[str, Reading] = {}
        self._same_logged: set[str] = set()
        # Values of a type a reading cannot hold (an array without arrays = "flatten", a structure, a ByteString):
        # stored as a Bad reading with no value (convert.py). Counted, each tag logged once a run.
        self.unsupported_values = 0
        self._unsupported_logged: set[str] = set()
        self.republished = 0  # notification messages the server republished after a resume
        self.resume_fallback: str | None = None  # why the last resume attempt opened a new session instead
        # Backfill from the server's history (history.py): the newest source time the spool holds for this collector
        # and an unfinished backfill (both kept in the spool with the readings), read at the first run.
        self._history_max_s = config.history_backfill_max_s
        self._mark: datetime | None = None
        self._due: tuple[datetime, datetime] | None = None
        self._history_loaded = False
        self._gate: _Gate | None = None
        self._backfill_task: asyncio.Task | None = None  # the backfill of the current session, while it runs
        self._until: dict[str, datetime] = {}  # tag -> its last backfilled source time: live values to it may repeat
        self._repeats: _Repeats | None = None  # which of those do
        # Continuation points the session holds for an abandoned history read (node index -> (node id, point)): a
        # server has few, and keeps them until the session closes unless given back (history.release).
        self._held: dict[int, tuple[ua.NodeId, bytes]] = {}
        self._release_logged = False  # the current points' failed release was logged (once)
        self.backfills = 0
        self.backfilled = 0  # readings read back from the server's history and stored
        self.last_backfill: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        """Connect, subscribe every configured node, emit until the connection is lost (then raise)."""
        self._emit = emit
        self._lost = asyncio.Event()
        self._lost_reason, self._lost_error = "", None
        self._overflowed.clear()  # log each tag's first overflow again in this run
        self._same_logged.clear()
        self._unsupported_logged.clear()
        try:
            self.connects += 1
            if self._restore_pending:
                self._restore_pending = False
                self._detached = self._restore()
            await self._load_history_state()
            opened = await self._select() if len(self._servers) > 1 else None
            while True:
                try:
                    await self._serve(opened)
                except _Failover as failover:
                    # Leaving a server that still answers: its session is closed, not kept for a resume.
                    await self._teardown(leave=True)
                    self._lost = asyncio.Event()  # the old server's connection is no loss of the new one
                    self._lost_reason, self._lost_error = "", None
                    self._fail_over(failover.to, "service_level", failover.reason)
                    self._switched_at = time.monotonic()
                    self.service_level, opened = failover.level, failover.client
        except NotConnectedError as exc:
            self.last_error = str(exc)
            if too_large(exc):  # the gateway counts the lost connection; this says why
                self.ctx.metrics.collector_errors.labels(self.name, "message_too_large").inc()
            raise
        finally:
            await self._teardown()

    async def _serve(self, opened: Client | None) -> None:
        """Resume the kept session, or open a new one (on ``opened``, a client already connected to the active
        server, when given); subscribe, poll, backfill a gap from the server's history, and watch until the
        connection is lost."""
        client = await self._resume() if self._detached is not None and opened is None else None
        backfill: BackfillPlan | None = None
        try:
            if client is None:
                backfill = plan(self._mark, self._due, utcnow(), self._history_max_s)
                if backfill is not None:  # the gap's values go first: the new subscription's wait behind them
                    self._gate = _Gate()
                self._held.clear()  # held by the old session, which the server frees with it
                client = await self._connect(opened)
                self._started = await self._start_time(client)
                await self._learn_namespaces(client)
                await self._learn_limits(client)
                self._sub_failures = await self._subscribe(client)
                self.session = "new"
                self._save(client, self._sub)
            else:
                await self._learn_limits(client)  # for a later re-creation and the polls
                if self._due is not None and self._history_max_s > 0:
                    # An earlier session's unfinished backfill: read on beside the live values (the database takes
                    # readings in any order).
                    backfill = BackfillPlan(*self._due)
            # Before the polls start: their first values wait behind the backfill's.
            task = self._backfill_task = asyncio.create_task(self._backfill(client, backfill)) \
                if backfill is not None else None
            try:
                failures = self._sub_failures + await self._start_polling(client)
                self._report_failures(failures)
                self._refused_at = time.monotonic()
                self._set_connected(True)
                self._was_connected = True
                await self._watch(client)
            finally:
                task, self._backfill_task = self._backfill_task, None  # this one, or one a re-creation started
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            if self._gate is not None:  # cut short: what waited behind it is not acknowledged (the server keeps it)
                self._gate.open(False)
                self._gate = None

    async def aclose(self) -> None:
        """Drop the connection, keeping a subscribed session for the next run or process (README: Session resume);
        safe to call more than once and on a dead connection."""
        await self._teardown()

    def status(self) -> dict:
        failed = self.item_failures + self.recreate_failures
        granted = self._sub.revised if self._sub is not None else None
        revised = self._sub.revisions if self._sub is not None else []
        redundant = {} if len(self._servers) == 1 else {
            "endpoints": [c.endpoint for c in self._servers],
            "service_level": self.service_level,
            # What each server answered when last asked (at a connect, or while the active one was degraded).
            "servers": [{"endpoint": c.endpoint, "service_level": seen if isinstance(seen, int) else None,
                         "error": seen if isinstance(seen, str) else None}
                        for c, seen in zip(self._servers, map(self._servers_seen.get, range(len(self._servers))),
                                           strict=True)],
            "failovers": self.failovers,
            "last_failover": self.last_failover,
        }
        return {
            "kind": "opcua",
            "endpoint": self.cfg.endpoint,  # the active server's
            **redundant,
            "connected": self.connected,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "last_data": self.last_data.isoformat() if self.last_data else None,
            "connects": self.connects,
            "publishes": self.publishes,
            "notifications": self.notifications,
            "items": len(self._tags) - len(failed),
            "items_failed": len(failed),
            "security": f"{self.cfg.security_policy}/{self.cfg.security_mode}",
            "server_certificate": self.opener.server_thumbprint,
            "polls": self.polls,
            "subscriptions_recreated": self.recreated + (self._sub.recreated if self._sub else 0),
            "session": self.session,
            "sessions_resumed": self.sessions_resumed,
            "republished": self.republished,
            "messages_lost": self.messages_lost + (self._sub.missed if self._sub else 0),
            "queue_overflows": self.queue_overflows,
            "same_source_time": self.same_source_time,
            "unsupported_values": self.unsupported_values,
            "resume_fallback": self.resume_fallback,
            # Backfill from the server's history (history_backfill_max_s): readings stored that way, the last run.
            "backfilled": self.backfilled,
            "backfill_due": None if self._due is None else {"from": _iso(self._due[0]), "to": _iso(self._due[1])},
            "last_backfill": self.last_backfill,
            "failed": [{"tag": f.tag, "node_id": f.node_id, "status": f.status} for f in failed[:20]],
            # Items the server granted a slower sampling interval or a smaller queue than asked (first 20, granted
            # values): what a cut or a restart can lose is queue_size x sampling interval of each.
            "items_revised": len(revised),
            "revised": [{"tag": r.tag, "node_id": r.node_id, "sampling_interval_ms": r.sampling_interval_ms[1],
                         "queue_size": r.queue_size[1]} for r in revised[:20]],
            # What the server granted (it publishes and sends keep-alives at these) and the resulting limit
            # after which a silent subscription is re-created.
            "subscription": None if granted is None else {
                "publishing_interval_ms": granted.RevisedPublishingInterval,
                "keepalive_count": granted.RevisedMaxKeepAliveCount,
                "lifetime_count": granted.RevisedLifetimeCount,
                "stale_after_s": round(self._sub.stale_after_s(getattr(self._client, "_stale_check_margin",
                                                                       _STALE_MARGIN)), 3),
            },
            "last_error": self.last_error,
        }

    # -- steps -----------------------------------------------------------------------------------------

    async def _connect(self, opened: Client | None = None) -> Client:
        if opened is not None:  # connected by `_select` or a failover's probe
            self._client = opened
            opened.connection_lost_callback = self._connection_lost
            return opened
        client = self._client = self.opener.new_client()
        client.connection_lost_callback = self._connection_lost
        await self._open(self.opener.connect(client))
        return client

    # -- redundant servers (OPC UA Part 4 §6.6.2, non-transparent, cold failover) ----------------------------

    def _set_active(self, i: int) -> None:
        self._active, self.cfg, self.opener = i, self._servers[i], self._openers[i]
        if len(self._servers) > 1:
            for j, c in enumerate(self._servers):
                self.ctx.metrics.active_server.labels(self.name, c.endpoint).set(1 if j == i else 0)

    async def _probe(self, which: list[int]) -> tuple[dict[int, tuple[int, Client]], dict[int, BaseException]]:
        """Connect to the servers ``which`` at once (each within connect_timeout_s, as a connect) and read their
        ServiceLevel: {server: (level, connected client)} and {server: why not}."""

        async def one(i: int) -> tuple[int, Client]:
            opener, cfg = self._openers[i], self._servers[i]
            client = opener.new_client()
            try:
                await opener.connect(client)
                return await within(opener.service_level(client), cfg.request_timeout_s), client
            except BaseException:
                client.disconnect_socket()
                raise

        loop = asyncio.get_running_loop()
        tasks = {asyncio.create_task(one(i), name=f"opcua-probe:{self.name}"): i for i in which}
        pending, deadline, began, grace = set(tasks), None, loop.time(), PROBE_GRACE_S
        try:
            while pending:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                # Any usable answer (degraded too) starts the grace: a backup that lost its partner often reports
                # itself degraded, and the wait for the hung partner held the failover 6 s (request_timeout_s).
                if deadline is None and any(t.exception() is None and band(t.result()[0]) >= 1 for t in done):
                    grace = max(PROBE_GRACE_S, loop.time() - began)
                    deadline = loop.time() + grace
        except BaseException:
            # Cancelled (the active connection lost while the others were asked, a stop): the sessions opened on the
            # servers that answered are closed, else asyncua's background tasks keep them alive for ever.
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is None:
                    await self._close(task.result()[1])
            raise
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        up: dict[int, tuple[int, Client]] = {}
        down: dict[int, BaseException] = {}
        for task, i in tasks.items():
            if task in pending:
                down[i] = _Late(f"no answer within {grace:.1f} s of another server's healthy one (not waited "
                                f"for longer)")
            elif task.exception() is not None:
                down[i] = task.exception()
            else:
                up[i] = task.result()
        for i, exc in down.items():
            if isinstance(exc, SecurityError):
                self.ctx.metrics.collector_errors.labels(self.name, "security").inc()
            why = self._unreachable(i, exc)
            if self._servers_seen.get(i) != why:  # once per server and reason, not at every probe
                log.warning("%s: redundant server %s does not answer: %s", self.name, self._servers[i].endpoint, why,
                            extra={"event": "opcua_server_unavailable", "collector": self.name})
            self._servers_seen[i] = why
        for i, (level, _) in up.items():
            self._servers_seen[i] = level
        return up, down

    def _unreachable(self, i: int, exc: BaseException) -> str:
        """Why a connect to server ``i`` failed with ``exc``, in one line naming the server."""
        cfg = self._servers[i]
        if isinstance(exc, SecurityError):
            return str(exc)
        if isinstance(exc, _Late):
            return f"{cfg.endpoint}: {exc}"
        if isinstance(exc, TimeoutError):
            return f"{cfg.endpoint}: no OPC UA session within {cfg.connect_timeout_s:g} s (server not answering)"
        return f"{cfg.endpoint}: cannot connect: {describe(exc)}"

    async def _close(self, client: Client) -> None:
        """Close a probe's session (one not used)."""
        try:
            await within(client.disconnect(), self.cfg.request_timeout_s)
        except Exception as exc:
            log.debug("%s: close: %s", self.name, describe(exc))
        finally:
            client.disconnect_socket()

    async def _select(self) -> Client | None:
        """Choose the server of the redundant set to use: the highest ServiceLevel (ties: the configured order), but
        the one used before while it is reachable and in the best band (healthy, degraded, no data), so a server
        merely back is not switched to. Returns a client connected to the chosen server, or None when the kept
        session on it is to be resumed; raises NotConnectedError when no server answers."""
        up, down = await self._probe(list(range(len(self._servers))))
        if not up:
            raise NotConnectedError("no server of the redundant set answers: "
                                    + "; ".join(self._unreachable(i, e) for i, e in down.items()))
        levels = ", ".join(f"{self._servers[i].endpoint} {up[i][0]}" if i in up else
                           f"{self._servers[i].endpoint} unreachable" for i in range(len(self._servers)))
        best = max(level for level, _ in up.values())
        if band(best) == 0:  # Part 4: Clients shall not connect to a server in maintenance; one with no data has none
            for _, client in up.values():
                await self._close(client)
            raise NotConnectedError(f"no server of the redundant set can serve: ServiceLevel {levels} (0 maintenance, "
                                    "1 no data)")
        used = self._was_connected or self._detached is not None  # in this process, or by the one before
        if used and self._active in up and band(up[self._active][0]) == band(best):
            chosen = self._active
        else:
            chosen = min(i for i, (level, _) in up.items() if level == best)
        for i, (_, client) in up.items():
            if i != chosen or (chosen == self._active and self._detached is not None):
                await self._close(client)
        self.service_level = up[chosen][0]
        if chosen != self._active:
            old = self._detached
            if old is not None:  # its server is gone or worse: the session is not resumed there
                self._detached = None
                if self._was_connected:
                    self._forget()  # the failover's log says why
                else:
                    self._not_resumed(f"{self._servers[chosen].endpoint} of the redundant set is better ({levels})")
                old.client.disconnect_socket()
            if self._was_connected:
                self._fail_over(chosen, "connection_lost",
                                f"the connection to it was lost ({self.last_error}); ServiceLevels: {levels}")
            else:
                self._set_active(chosen)
        if chosen == self._active and self._detached is not None:
            return None
        return up[chosen][1]

    def _fail_over(self, to: int, reason: str, why: str) -> None:
        """Make server ``to`` the active one; counted and logged once, naming both servers and why."""
        old = self.cfg.endpoint
        self._set_active(to)
        self.failovers += 1
        self._handover = set(self._last)
        self.ctx.metrics.failovers.labels(self.name, reason).inc()
        self.last_failover = {"from": old, "to": self.cfg.endpoint, "reason": reason, "why": why,
                              "at": utcnow().isoformat()}
        log.warning("%s: failing over from %s to %s: %s", self.name, old, self.cfg.endpoint, why,
                    extra={"event": "opcua_failover", "collector": self.name, "reason": reason})

    async def _until_lost(self, step) -> None:
        """Await ``step``, given up when the connection is lost meanwhile: a read of a server that hangs waits
        request_timeout_s, which must not delay the loss that asyncua's watchdog found sooner."""
        assert self._lost is not None
        task, lost = asyncio.ensure_future(step), asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, lost):
                t.cancel()
            await asyncio.gather(lost, return_exceptions=True)
        if task.done() and not task.cancelled():
            task.result()  # a _Failover
        else:
            await asyncio.gather(task, return_exceptions=True)

    async def _check_level(self, client: Client) -> None:
        """Read the active server's ServiceLevel; when it is below healthy, ask the others (at most every
        `REPROBE_S`) and raise `_Failover` to one in a better band. A failed read is left to asyncua's watchdog."""
        try:
            level = await within(self.opener.service_level(client), self.cfg.request_timeout_s)
        except Exception as exc:
            log.debug("%s: reading ServiceLevel failed: %s", self.name, describe(exc))
            return
        dropped = self.service_level is not None and band(level) < band(self.service_level)
        self.service_level = self._servers_seen[self._active] = level
        if band(level) == 2 or not (dropped or time.monotonic() - self._probed_at >= REPROBE_S):
            return
        if band(level) > 0 and time.monotonic() - self._switched_at < REPROBE_S:
            # Switched to for its ServiceLevel less than REPROBE_S ago and not failed: kept. Two servers hovering
            # about 200 in turn switched at every crossing (10 failovers in 20 s, each a new session and subscription).
            return
        self._probed_at = time.monotonic()
        up, _ = await self._probe([i for i in range(len(self._servers)) if i != self._active])
        better = [i for i, (lvl, _) in up.items() if band(lvl) > band(level)]
        to = max(better, key=lambda i: (up[i][0], -i)) if better else None
        try:
            for i, (_, other) in up.items():
                if i != to:
                    await self._close(other)
        except asyncio.CancelledError:  # the connection was lost meanwhile (`_until_lost`): nothing to switch to
            if to is not None:
                up[to][1].disconnect_socket()
            raise
        if to is None and band(level) == 0:  # Part 4: connected Clients shall disconnect (maintenance, no data)
            self._mark_lost(f"ServiceLevel {level} (0 maintenance, 1 no data) and no other server serves")
        if to is not None:
            raise _Failover(to, up[to][0], up[to][1],
                            f"its ServiceLevel is {level}, {self._servers[to].endpoint} reports {up[to][0]}")

    async def _open(self, step) -> None:
        """Await ``step`` (connect or re-activate); its failures as `NotConnectedError`."""
        try:
            await step
        except TimeoutError as exc:
            raise NotConnectedError(self._unreachable(self._active, exc)) from None
        except SecurityError as exc:  # untrusted certificate, no such endpoint: logged in full, retried
            self.ctx.metrics.collector_errors.labels(self.name, "security").inc()
            raise NotConnectedError(str(exc)) from exc
        except Exception as exc:  # refused, unreachable, rejected identity ...
            raise NotConnectedError(self._unreachable(self._active, exc)) from exc

    async def _resume(self) -> Client | None:
        """Re-activate the kept session (of a lost connection, a stop, or an earlier process: `_restore`) on a new
        channel and continue its subscription; None when the server no longer has them (logged once with the
        reason; the caller opens a new session)."""
        detached = self._detached
        assert detached is not None
        client, sub = detached.client, detached.sub
        age, limit = time.monotonic() - detached.lost_at, client.session_timeout / 1000.0  # as the server revised it
        if age >= limit:
            return await self._fall_back(client, f"the connection was lost {age:.0f} s ago, longer than the "
                                                 f"session timeout ({limit:g} s)")
        try:
            try:
                await self._open(self.opener.reactivate(client))
            except NotConnectedError as exc:
                if isinstance(exc.__cause__, SessionGone):
                    return await self._fall_back(client, f"the server no longer has the session ({exc.__cause__})")
                raise  # unreachable, refused ...: the session may still be there at the next attempt
            started = await self._start_time(client)
            if started != detached.started:
                # Another client's session under a re-used token: left alone (never closed), nothing transferred.
                return await self._fall_back(client, f"the server restarted (started {_iso(started)}; the session "
                                                     f"was made on the server started {_iso(detached.started)})",
                                             close=False)
            self._started = started
            await self._learn_namespaces(client)  # a restarted gateway has not read them yet
            self._rebind(sub)
            self._save(client, sub)  # the new server nonce: the next ActivateSession's signature covers it
            try:
                republished = await sub.resume()
            except ua.UaStatusCodeError as exc:
                what = "what the server held could not be taken" if too_large(exc) else \
                    "the server no longer has the subscription"
                return await self._fall_back(client, f"{what} ({describe(exc)})")
            except Exception as exc:
                raise NotConnectedError(f"{self.cfg.endpoint}: resuming the session failed: {describe(exc)}") \
                    from exc
        except BaseException:
            if self._detached is detached:  # still resumable: what was made durable is remembered
                await self.opener.detach(client, self.cfg.request_timeout_s)
            raise
        self._client = client
        self.opener.restart_tasks(client)
        self._detached = None
        self.session = "resumed"
        self.sessions_resumed += 1
        self.republished += republished
        log.info("%s: resumed the session and subscription %s on %s after %s (%d notification messages "
                 "republished)", self.name, sub.subscription_id, self.cfg.endpoint,
                 "a gateway restart" if detached.restarted else f"{age:.1f} s", republished,
                 extra={"event": "opcua_session_resumed", "collector": self.name})
        return client

    async def _fall_back(self, client: Client, reason: str, *, close: bool = True) -> None:
        """Give up the lost session (closed if the server still has it and ``close``) and say why a new one is
        opened."""
        self._detached, self._client = None, None
        self._not_resumed(reason)
        try:
            if close and client.uaclient.state is UaClientState.CONNECTED:
                await within(client.disconnect(), self.cfg.request_timeout_s)
        except Exception as exc:
            log.debug("%s: close: %s", self.name, describe(exc))
        finally:
            client.disconnect_socket()

    def _not_resumed(self, reason: str) -> None:
        self.resume_fallback = reason
        self._forget()
        log.warning("%s: cannot resume the session on %s: %s; opening a new session and subscription (what the "
                    "server held for the old subscription is lost)", self.name, self.cfg.endpoint, reason,
                    extra={"event": "opcua_session_not_resumed", "collector": self.name})

    async def _learn_limits(self, client: Client) -> None:
        """Read the server's operation limits: batched requests (items_per_call) are made no bigger, since a server
        refuses a whole request past them (BadTooManyOperations) and the connection would fail at every attempt.
        Never raises: a link that fails here fails the next request with its own message, and a resumed session must
        not be given up for this read (the limits known before are kept)."""
        try:
            limits = await operation_limits(client)
        except Exception as exc:
            log.debug("%s: reading the server's operation limits failed: %s", self.name, describe(exc))
            return
        lower = {k: v for k, v in limits.items() if v < self.cfg.items_per_call}
        if lower and limits != self._limits:
            log.info("%s: the server takes at most %s per request: requests are made no bigger (items_per_call %d)",
                     self.name, ", ".join(f"{v} ({k.replace('_', ' ')})" for k, v in sorted(lower.items())),
                     self.cfg.items_per_call, extra={"event": "opcua_operation_limits", "collector": self.name})
        self._limits = limits
        if self._sub is not None:
            self._sub.per_call = self._per_call("monitored_items")

    async def _learn_namespaces(self, client: Client) -> None:
        """Resolve the node ids with the server's NamespaceArray of this session: a server may number its namespaces
        anew when it restarts (another namespace registered first), and an ``ns=`` index kept from before would then
        name another namespace's node (numeric ids: one that exists, its values stored under the tag). ``nsu=`` ids
        are resolved by their URI; an ``ns=`` id whose index now names another namespace than at the first session
        of this process follows the namespace it named then (logged). Read only when a node is outside namespace 0;
        an unreadable array leaves ``nsu=`` nodes refused (BadNodeIdUnknown, saying why), ``ns=`` ones as written."""
        if not self._namespaced:
            return
        try:
            namespaces = await within(namespace_array(client), self.cfg.request_timeout_s)
        except Exception as exc:
            log.warning("%s: reading the server's NamespaceArray failed (%s): the nodes given by namespace URI (nsu=) "
                        "are not read in this session, those given by index (ns=) are read unchecked", self.name,
                        describe(exc), extra={"event": "opcua_namespaces_unreadable", "collector": self.name})
            namespaces = None
        self._resolve(namespaces)

    def _resolve(self, namespaces: list[str] | None) -> None:
        if namespaces is not None and self._first_namespaces is None:
            self._first_namespaces = list(namespaces)
        first = self._first_namespaces or []
        self._node_ids, self._unresolved = [], {}
        moved: dict[int, tuple[str, int | None]] = {}
        for i, node in enumerate(self.cfg.nodes):
            try:
                nid = node.resolve(namespaces)
            except LookupError as exc:
                self._node_ids.append(None)
                self._unresolved[i] = str(exc)
                continue
            index = nid.NamespaceIndex
            if i not in self._by_uri and namespaces is not None and 0 < index < len(first) \
                    and first[index] != (namespaces[index] if index < len(namespaces) else None):
                uri = first[index]
                now = namespaces.index(uri) if uri in namespaces else None
                moved[index] = (uri, now)
                if now is None:
                    self._node_ids.append(None)
                    self._unresolved[i] = f"namespace {uri}, ns={index} at the first session, is gone from the server"
                    continue
                nid = ua.NodeId(nid.Identifier, now, nid.NodeIdType)
            self._node_ids.append(nid)
        if moved and moved != self._moved:
            log.warning("%s: the server numbers its namespaces anew (restarted or updated): %s; the nodes given by "
                        "those indexes are read from the namespaces they named at the first session. Give them by URI "
                        "(nsu=URI;...) so that a restarted gateway does the same", self.name,
                        "; ".join(f"ns={k} was {uri}, now " + (f"ns={now}" if now is not None else "gone")
                                  for k, (uri, now) in sorted(moved.items())),
                        extra={"event": "opcua_namespaces_moved", "collector": self.name})
        self._moved = moved

    def _rebind(self, sub: BatchSubscription) -> None:
        """Give the kept item requests (re-sent if the subscription is re-created) this session's node ids."""
        if not self._namespaced:
            return
        for _, request in sub.items:
            nid = self._node_ids[request.RequestedParameters.ClientHandle - 1]
            request.ItemToMonitor.NodeId = nid if nid is not None else ua.NodeId()

    def _per_call(self, *operations: str) -> int:
        """items_per_call, or less where the server limits any of ``operations`` (`OPERATION_LIMITS` keys)."""
        return min([self.cfg.items_per_call, *(self._limits[op] for op in operations if op in self._limits)])

    async def _start_time(self, client: Client) -> datetime | None:
        try:
            return await self.opener.server_started(client)
        except Exception as exc:
            raise NotConnectedError(f"{self.cfg.endpoint}: reading the server's start time failed: "
                                    f"{describe(exc)}") from exc

    # -- what a restarted gateway resumes (session_state.py) -------------------------------------------

    def _restore(self) -> _Detached | None:
        """The session an earlier process saved, ready for `_resume`; None if there is none, or if it cannot be
        read or belongs to other settings (then logged with the reason and deleted)."""
        assert self._state is not None
        try:
            saved = self._state.load()
        except (OSError, ValueError) as exc:
            self._not_resumed(f"the saved session {self._state.path} cannot be read ({exc})")
            return None
        if saved is None:
            return None
        for i, c in enumerate(self._servers):  # a redundant set: the session is on the server it was made on
            if len(self._servers) > 1 and c.endpoint == saved.config.get("endpoint"):
                self._set_active(i)
        changed = [part for part, value in config_key(self.cfg).items() if saved.config.get(part) != value]
        nodes = self.cfg.nodes
        if not changed and any(not 0 < h <= len(nodes) or nodes[h - 1].tag != tag for h, tag in saved.items.items()):
            changed = ["client handles"]  # the hash agrees but the handle -> tag list does not: not ours to trust
        if changed:
            self._not_resumed(f"the configuration changed since the session was saved ({', '.join(changed)})")
            return None
        client = self.opener.restore(saved.ticket)
        client.connection_lost_callback = self._connection_lost
        granted = ua.CreateSubscriptionResult(SubscriptionId=saved.subscription_id,
                                              RevisedPublishingInterval=saved.publishing_interval_ms,
                                              RevisedLifetimeCount=saved.lifetime_count,
                                              RevisedMaxKeepAliveCount=saved.keepalive_count)
        sub = BatchSubscription.restored(client, subscription_parameters(self.cfg), granted,
                                         saved.last_sequence_number or None, **self._sub_callbacks())
        # nsu= nodes get their ids once the re-activated session's NamespaceArray is read (`_rebind`)
        sub.items = [(nodes[h - 1], item_request(nodes[h - 1], self.cfg, h, saved.eu_ranges.get(h),
                                                 node_id=self._node_ids[h - 1] or ua.NodeId()))
                     for h in sorted(saved.items)]
        sub.per_call = self.cfg.items_per_call
        self.opener.watch(client, sub)
        self._sub = sub
        self._sub_failures = [ItemFailure(*f) for f in saved.failed]
        self._eu_ranges = dict(saved.eu_ranges)
        started = datetime.fromisoformat(saved.server_started) if saved.server_started else None
        return _Detached(client, sub, time.monotonic(), started, restarted=True)

    def _save(self, client: Client | None, sub: BatchSubscription | None) -> None:
        if self._state is None or client is None or sub is None or sub.subscription_id is None \
                or sub.revised is None:
            return
        granted = sub.revised
        saved = SavedSession(
            config_key(self.cfg), self.opener.ticket(client), self._started.isoformat() if self._started else None,
            sub.subscription_id, granted.RevisedPublishingInterval, granted.RevisedMaxKeepAliveCount,
            granted.RevisedLifetimeCount, {req.RequestedParameters.ClientHandle: node.tag for node, req in sub.items},
            dict(self._eu_ranges), [(f.tag, f.node_id, f.status) for f in self._sub_failures],
            sub.last_sequence_number or 0)
        self._state_io("save", self._state.save, saved)

    def _durable(self, seq: int) -> None:
        """The spool holds notification message ``seq`` (called before asyncua acknowledges it)."""
        if self._state is not None:
            self._state_io("update", self._state.advance, seq)

    def _forget(self) -> None:
        if self._state is not None:
            self._state_io("delete", self._state.delete)

    def _state_io(self, what: str, step: Callable, *args) -> None:
        """Run a `SessionFile` step; a failure costs only the resume after a restart: counted, logged once a run of
        failures, never raised into the data path."""
        try:
            step(*args)
        except OSError as exc:
            self.ctx.metrics.collector_errors.labels(self.name, "session_state").inc()
            if not self._state_failing:
                self._state_failing = True
                log.warning("%s: cannot %s %s (%s); a restarted gateway may not resume this session", self.name,
                            what, getattr(self._state, "path", "session.json"), exc,
                            extra={"event": "opcua_session_state_error", "collector": self.name})
            return
        self._state_failing = False

    async def _subscribe(self, client: Client) -> list[ItemFailure]:
        cfg = self.cfg
        nodes = [(i, n) for i, n in enumerate(cfg.nodes) if cfg.node_mode(n) == "subscribe"]
        if not nodes:
            return []
        if self._sub is not None:
            self.recreated += self._sub.recreated
            self.messages_lost += self._sub.missed
        self.recreate_failures = []
        sub = self._sub = BatchSubscription(client, subscription_parameters(cfg), **self._sub_callbacks())
        self._eu_ranges = {}
        try:
            requests, failures = await self._requests(client, nodes)
            await sub.init()
            self.opener.watch(client, sub)
            sub.per_call = self._per_call("monitored_items")
            sub.items, refused = await sub.create_items(requests, sub.per_call)
            failures += refused
        except Exception as exc:
            raise NotConnectedError(f"{cfg.endpoint}: subscription failed: {describe(exc)}") from exc
        self._report_revisions(sub.revisions)
        return failures

    async def _requests(self, client: Client, nodes: list[tuple[int, NodeConfig]]) -> tuple[list, list[ItemFailure]]:
        """The monitored-item requests of ``nodes`` ((index, node) pairs), and the nodes refused before asking the
        server: an nsu= namespace it does not have, a percent deadband without an EURange (read here)."""
        failures: list[ItemFailure] = []
        for i, node in nodes:
            if self._node_ids[i] is None:
                failures.append(ItemFailure(node.tag, node.node_id, f"BadNodeIdUnknown ({self._unresolved[i]})"))
        nodes = [(i, n) for i, n in nodes if self._node_ids[i] is not None]
        percent = [(i, n) for i, n in nodes if n.deadband is not None and n.deadband_type == "percent"]
        ranges = {}
        if percent:
            found = await eu_ranges(client, [self._node_ids[i] for i, _ in percent],
                                    self._per_call("translate", "read"))
            ranges = {i: r for (i, _), r in zip(percent, found, strict=True)}
        self._eu_ranges.update({i + 1: r for i, r in ranges.items() if r is not None})
        requests = []
        for i, node in nodes:
            if i in ranges and ranges[i] is None:
                failures.append(ItemFailure(node.tag, node.node_id, "BadFilterNotAllowed (percent deadband needs an "
                                                                    "EURange; the node has none)"))
                continue
            requests.append((node, item_request(node, self.cfg, i + 1, ranges.get(i), node_id=self._node_ids[i])))
        return requests, failures

    async def _retry_refused(self, client: Client) -> None:
        """Ask the server again, every `REFUSED_RETRY_S`, for the nodes it refused when the session was opened (or
        resumed from session.json): a server that restarted often accepts connections before its address space is
        complete (a PLC's tags loaded after its OPC UA stack; nodes added by a program download), and a node
        refused then was never read again until the connection was lost, for weeks. Accepted nodes join the
        subscription (or the polls) and are logged; the others stay in ``status()["failed"]``, not logged again."""
        if not self.item_failures or time.monotonic() - self._refused_at < REFUSED_RETRY_S:
            return
        self._refused_at = time.monotonic()
        index = {t: i for i, t in enumerate(self._tags)}
        refused = [(index[f.tag], self.cfg.nodes[index[f.tag]]) for f in self.item_failures if f.tag in index]
        sub = self._sub
        subscribe = [(i, n) for i, n in refused if self.cfg.node_mode(n) == "subscribe"] \
            if sub is not None and sub.subscription_id is not None else []
        poll = [(i, n) for i, n in refused if self.cfg.node_mode(n) == "poll"]
        still: list[ItemFailure] = []
        accepted: list[str] = []
        try:
            if self._unresolved:
                await self._learn_namespaces(client)  # a namespace registered late
            if subscribe:
                requests, failures = await self._requests(client, subscribe)
                kept = sub.revisions
                created, no = await sub.create_items(requests, sub.per_call)
                sub.revisions = kept + sub.revisions
                sub.items = sorted(sub.items + created, key=lambda item: item[1].RequestedParameters.ClientHandle)
                still += failures + no
                accepted += [node.tag for node, _ in created]
            if poll:
                readable, failures = await self._readable(client, poll)
                still += failures
                accepted += [node.tag for _, node in readable]
                self._poll_nodes.extend(readable)
        except Exception as exc:  # a lost connection is found by the watchdog; a refusal is asked again later
            if describe(exc) != self._retry_error:  # once per cause, not every REFUSED_RETRY_S
                self._retry_error = describe(exc)
                log.warning("%s: asking the server again for the %d nodes it refused failed: %s", self.name,
                            len(refused), describe(exc), extra={"event": "opcua_items_refused", "collector": self.name})
            return
        self._retry_error = None
        asked = {n.tag for _, n in subscribe + poll}
        self.item_failures = [f for f in self.item_failures if f.tag not in asked] + still
        self._sub_failures = [f for f in self.item_failures if self.cfg.node_mode(self.cfg.nodes[index[f.tag]])
                              == "subscribe"]
        if not accepted:
            return
        log.info("%s: the server now accepts %d of the %d nodes it refused: %s", self.name, len(accepted),
                 len(refused), _names(accepted), extra={"event": "opcua_items_accepted", "collector": self.name})
        self._save(client, sub)  # the new items' handles, for a restarted gateway

    def _sub_callbacks(self) -> dict:
        return {"on_data": self._on_data, "on_status": self._on_status, "on_failures": self._on_recreated,
                "on_durable": self._durable, "name": self.name}

    async def _start_polling(self, client: Client) -> list[ItemFailure]:
        """Read the poll-mode nodes once (which also finds the unreadable ones) and start the poll loop."""
        cfg = self.cfg
        nodes = [(i, n) for i, n in enumerate(cfg.nodes) if cfg.node_mode(n) == "poll"]
        if not nodes:
            return []
        unknown = [ItemFailure(n.tag, n.node_id, f"BadNodeIdUnknown ({self._unresolved[i]})") for i, n in nodes
                   if self._node_ids[i] is None]
        nodes = [(i, n) for i, n in nodes if self._node_ids[i] is not None]
        self._polled = {}
        try:
            readable, failures = await self._readable(client, nodes)
        except Exception as exc:
            raise NotConnectedError(f"{cfg.endpoint}: read failed: {describe(exc)}") from exc
        self._poll_nodes = readable
        self._poll_task = asyncio.create_task(self._poll_loop(client, readable, self._polled),
                                              name=f"opcua-poll:{self.name}")
        return unknown + failures

    async def _readable(self, client: Client, nodes: list[tuple[int, NodeConfig]]) -> tuple[list, list[ItemFailure]]:
        """Read ``nodes`` once: those the server reads (their first values emitted) and those it refuses."""
        values = await self._read(client, nodes)
        failures, readable, first = [], [], []
        for (i, node), dv in zip(nodes, values, strict=True):
            name = dv.StatusCode.name if dv.StatusCode is not None else "Good"
            if name.startswith(_POLL_REFUSED):
                failures.append(ItemFailure(node.tag, node.node_id, name))
            else:
                readable.append((i, node))
                first.append(dv)
        await self._emit_polled(readable, first, self._polled)
        return readable, failures

    async def _read(self, client: Client, nodes: list[tuple[int, NodeConfig]]) -> list[ua.DataValue]:
        out: list[ua.DataValue] = []
        per_call = self._per_call("read")
        for start in range(0, len(nodes), per_call):
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for i, _ in nodes[start:start + per_call]:
                rv = ua.ReadValueId()
                rv.NodeId = self._node_ids[i]
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            out.extend(await client.uaclient.read(params))
        return out

    async def _poll_loop(self, client: Client, nodes: list[tuple[int, NodeConfig]], last: dict[int, tuple]) -> None:
        period = self.cfg.polling_interval_ms / 1000.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while True:
                due += period
                now = loop.time()
                if due < now:  # a slow read: skip the missed slots instead of reading back to back
                    due = now + period - (now - due) % period
                await asyncio.sleep(due - now)
                reading = list(nodes)  # `_retry_refused` may add to ``nodes`` while this read waits
                if reading:
                    values = await self._read(client, reading)
                    await self._emit_polled(reading, values, last)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._mark_lost(f"poll failed: {describe(exc)}", exc)

    async def _emit_polled(self, nodes: list[tuple[int, NodeConfig]], values: list[ua.DataValue],
                           last: dict[int, tuple]) -> None:
        """Emit the values that changed since the last read (same source time, value and status: skipped)."""
        now = utcnow()
        readings: list[Reading] = []
        for (i, node), dv in zip(nodes, values, strict=True):
            key = (dv.SourceTimestamp, dv.StatusCode.value if dv.StatusCode is not None else 0,
                   repr(dv.Value.Value) if dv.Value is not None else None)
            if last.get(i) == key:
                continue
            last[i] = key
            readings.extend(to_readings(node.tag, dv, now, flatten=self._flatten[i]))
        self.polls += 1
        if readings:
            await self._deliver(readings, now)

    def _report_failures(self, failures: list[ItemFailure], when: str = "") -> None:
        """Count refused items and log them once per cause (status), naming the tags."""
        if when:
            self.recreate_failures = failures
        else:
            self.item_failures = failures
        if not failures:
            return
        self.ctx.metrics.collector_errors.labels(self.name, "monitored_item").inc(len(failures))
        causes: dict[str, list[ItemFailure]] = {}
        for f in failures:
            causes.setdefault(f.status, []).append(f)
        for status, group in causes.items():
            shown = ", ".join(f"{f.tag} ({f.node_id})" for f in group[:10])
            log.warning("%s: %d of %d nodes refused by the server%s: %s: %s%s", self.name, len(group),
                        len(self.cfg.nodes), when, status, shown, f" and {len(group) - 10} more" if len(group) > 10
                        else "", extra={"event": "opcua_items_refused", "collector": self.name, "status": status})

    def _report_revisions(self, revisions: list[ItemRevision], when: str = "") -> None:
        """Log the items the server granted less than asked, once per (asked, granted) pair, naming the tags: a
        smaller queue as a warning (it is what survives a cut or a restart), a slower sampling as information."""
        queues: dict[tuple[int, int], list[str]] = {}
        rates: dict[tuple[float, float], list[str]] = {}
        for r in revisions:
            if 0 < r.queue_size[1] < r.queue_size[0]:
                queues.setdefault(r.queue_size, []).append(r.tag)
            if 0 < r.sampling_interval_ms[0] < r.sampling_interval_ms[1]:
                rates.setdefault(r.sampling_interval_ms, []).append(r.tag)
        extra = {"event": "opcua_items_revised", "collector": self.name}
        for (asked, granted), tags in queues.items():
            log.warning("%s: the server granted a queue of %d instead of %d values to %d items%s: %s; each holds "
                        "only that many changes while the gateway is away or slow", self.name, granted, asked,
                        len(tags), when, _names(tags), extra=extra)
        for (asked, granted), tags in rates.items():
            log.info("%s: the server samples %d items%s every %g ms instead of %g ms: %s", self.name, len(tags), when,
                     granted, asked, _names(tags), extra=extra)

    def _on_recreated(self, failures: list[ItemFailure]) -> None:
        self._report_failures(failures, " when the subscription was re-created")
        if self._sub is not None:
            self._report_revisions(self._sub.revisions, " when the subscription was re-created")
        self._save(self._client, self._sub)  # a new subscription id
        # The old subscription stopped serving a while before it was re-created (1.5 keep-alive periods at least;
        # the server may have deleted it long before, behind a stalled pipeline): what changed meanwhile is read
        # back from the server's history beside the new values, unless a backfill is under way (it re-creates the
        # subscription itself, `_renew_waiting_subscription`, and reads on to after that).
        running = self._backfill_task is not None and not self._backfill_task.done()
        if self._history_max_s > 0 and self._client is not None and not running:
            span = plan(self._mark, self._due, utcnow(), self._history_max_s)
            if span is not None:
                log.info("%s: the subscription was re-created: the values it missed are read back from the server's "
                         "history", self.name, extra={"event": "opcua_backfill_started", "collector": self.name})
                # What was handed on before the gap, taken now: the new subscription's values may come first.
                handed = {tag: r.time for tag, r in self._last.items()}
                self._backfill_task = asyncio.get_running_loop().create_task(
                    self._backfill(self._client, span, handed))

    async def _watch(self, client: Client) -> None:
        """Return never; raise NotConnectedError once the connection or subscription is gone."""
        assert self._lost is not None
        while True:
            try:
                await within(self._lost.wait(), self.cfg.watchdog_interval_s)
            except TimeoutError:
                # Belt and braces: asyncua's supervisor normally reports the loss through the callback.
                state = client.uaclient.state
                if state is UaClientState.CONNECTED:
                    if len(self._servers) > 1:
                        await self._until_lost(self._check_level(client))
                    await self._until_lost(self._retry_refused(client))
                    continue
                self._mark_lost(f"client state {state.value}")
            raise NotConnectedError(f"{self.cfg.endpoint}: connection lost: {self._lost_reason}") \
                from self._lost_error

    async def _teardown(self, *, leave: bool = False) -> None:
        """Drop the connection; keep a subscribed session for a resume unless ``leave`` (a failover: closed)."""
        client, self._client = self._client, None
        subscribed = self.connected  # every item was created: the subscription is worth resuming
        backfill, self._backfill_task = self._backfill_task, None  # one a late re-creation started
        if backfill is not None:
            backfill.cancel()
            await asyncio.gather(backfill, return_exceptions=True)
        self._set_connected(False)
        poll, self._poll_task = self._poll_task, None
        if poll is not None:
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
        if client is None:
            return
        lost = self._lost is not None and self._lost.is_set()
        sub = self._sub
        if subscribed and not leave and sub is not None and sub.subscription_id is not None \
                and client.uaclient.has_session:
            # Keep the session, lost or stopped: the server keeps it (and the subscription's queues) for the session
            # timeout, for the next run or, through session.json, the next process (an upgrade then loses nothing).
            if not lost and client.uaclient.state is UaClientState.CONNECTED:
                # A stop with a history read under way: the kept session would hold its continuation points (a
                # lost connection's are given back when the session is resumed).
                await self._release_held(client)
            self._detached = _Detached(client, sub, time.monotonic(), self._started)
            await self.opener.detach(client, self.cfg.request_timeout_s)
            return
        self._forget()  # the session is closed (or was never subscribed): nothing to resume
        self._held.clear()  # the server frees a closed session's continuation points
        if leave:
            client.connection_lost_callback = None
        try:
            if client.uaclient.state is UaClientState.CONNECTED and not lost:
                await within(client.disconnect(), self.cfg.request_timeout_s)
            else:
                # The peer is gone or not answering: drop the socket first, so that stopping
                # asyncua's background tasks sends nothing and waits for nobody.
                publish = client.uaclient._publish_task  # asyncua 2.1.0; stopped first, it has nothing to log
                if publish is not None:
                    publish.cancel()
                client.disconnect_socket()
                protocol = client.uaclient.protocol  # left open when asyncua only marked the client lost
                if protocol is not None:
                    protocol.disconnect_socket()
                await within(client.close_session(), self.cfg.request_timeout_s)
        except Exception as exc:  # the connection is being replaced; nothing to save
            log.debug("%s: close: %s", self.name, describe(exc))
        finally:
            client.disconnect_socket()

    # -- callbacks (run on asyncua's tasks) ------------------------------------------------------------

    async def _on_data(self, items: list[ua.MonitoredItemNotification]) -> bool:
        now = utcnow()
        tags = self._tags
        flatten = self._flatten
        n = len(tags)
        readings: list[Reading] = []
        overflows: list[str] = []
        for item in items:
            i = item.ClientHandle - 1
            if 0 <= i < n:
                if flatten[i]:
                    readings.extend(to_readings(tags[i], item.Value, now, flatten=True))
                else:
                    readings.append(to_reading(tags[i], item.Value, now))
                code = item.Value.StatusCode
                if code is not None and code.value & OVERFLOW_MASK == OVERFLOW:
                    overflows.append(tags[i])
            else:
                self.unknown_handles += 1
        self.publishes += 1
        if overflows:
            self._note_overflows(overflows)
        return await self._deliver(readings, now)

    def _handed_over(self, readings: list[Reading]) -> list[Reading]:
        """After a failover, the new server's first value of a tag that is the sample the old server gave last
        (same source time: a redundant pair serves the same controllers) is dropped: it is stored already, and is
        no change without a new source time."""
        out = []
        for r in readings:
            if r.tag in self._handover:
                self._handover.discard(r.tag)
                prev = self._last.get(r.tag)
                if prev is not None and prev.time == r.time:
                    continue
            out.append(r)
        return out

    def _note_same_time(self, tags: list[str]) -> None:
        """Count changes that carry their tag's previous source time (the database keeps the first reading of a
        (tag, time), so these are dropped there) and log the tags not logged yet in this run."""
        self.same_source_time += len(tags)
        new = self._count_lost("same_source_time", tags, self._same_logged)
        if new:
            log.warning("%s: %d tags changed without a new source time (same source time as their previous value, "
                        "another value or status): %s; the database keeps one reading per tag and time, the first, so "
                        "these changes are not stored: the server's source timestamps are coarser than its changes",
                        self.name, len(new), _names(new),
                        extra={"event": "opcua_same_source_time", "collector": self.name})

    def _note_overflows(self, tags: list[str]) -> None:
        """Count values the server flagged with the Overflow bit (values before them were discarded from the item's
        full queue) and log the tags not logged yet in this run: the only trace of that loss."""
        self.queue_overflows += len(tags)
        new = self._count_lost("queue_overflow", tags, self._overflowed)
        if new:
            log.warning("%s: the server discarded values of %d items from their full queues (Overflow bit): %s; the "
                        "gateway did not take them in time (a cut or restart longer than queue_size x sampling "
                        "interval, or a slow pipeline): raise queue_size to keep them", self.name, len(new),
                        _names(new), extra={"event": "opcua_queue_overflow", "collector": self.name})

    def _note_unsupported(self, readings: list[Reading]) -> None:
        """Count values whose type a reading cannot hold and log the tags not logged yet in this run: stored as Bad
        readings without a value, flagged type_mismatch, they had no counter or log line, and their type (the status
        name, `UnsupportedArray`) is not stored."""
        self.unsupported_values += len(readings)
        new = set(self._count_lost("unsupported_value", [r.tag for r in readings], self._unsupported_logged))
        if new:
            kinds = sorted({f"{r.tag} ({r.status_name})" for r in readings if r.tag in new})
            log.warning("%s: %d tags deliver values a reading cannot hold, stored as Bad readings without a value: "
                        "%s; an array: set arrays = \"flatten\" (a reading per element); a structure: read its fields' "
                        "nodes instead", self.name, len(new), _names(kinds),
                        extra={"event": "opcua_value_unsupported", "collector": self.name})

    def _count_lost(self, kind: str, tags: list[str], logged: set[str]) -> list[str]:
        """Count ``tags`` in collector_errors{kind}; return those not in ``logged`` yet (and add them)."""
        self.ctx.metrics.collector_errors.labels(self.name, kind).inc(len(tags))
        new = sorted({t for t in tags if t not in logged})
        logged.update(new)
        return new

    async def _deliver(self, readings: list[Reading], now) -> bool:
        """Hand ``readings`` to the pipeline; True once the spool holds them."""
        self.notifications += len(readings)
        self.last_data = now
        self.ctx.metrics.messages_in.labels(self.name).inc()
        if not readings or self._emit is None:
            return True
        gate = self._gate
        if gate is not None and not await gate.wait():
            return False
        if self._until:
            readings = self._after_backfill(readings)
            if not readings:
                return True
        if self._handover:
            readings = self._handed_over(readings)
            if not readings:
                return True
        last, same = self._last, None
        for r in readings:
            prev = last.get(r.tag)
            # Same time, another status or value (NaN, never equal to itself, is not "another value" of a NaN).
            if prev is not None and prev.time == r.time and (prev.status != r.status or (
                    prev.value != r.value and prev.value == prev.value)):
                same = same or []
                same.append(r.tag)
            last[r.tag] = r
        if same:
            self._note_same_time(same)
        unsupported = [r for r in readings if r.flags & _TYPE_MISMATCH and r.value is None]
        if unsupported:
            self._note_unsupported(unsupported)
        try:
            # asyncua acknowledges this notification once the callback returns (subscription.py): wait until
            # the spool holds it, so the server's retransmission queue keeps whatever is not durable yet.
            await self._store(readings)
        except Exception as exc:
            # asyncua would log this and acknowledge the message anyway; stop instead (the subscription then
            # holds the message unacknowledged) so the gateway sees the failure and the resumed session
            # republishes it.
            self._mark_lost(f"emit failed: {describe(exc)}", exc)
            return False
        return True

    async def _store(self, readings: list[Reading], state: list[tuple[bytes, bytes | None]] | None = None) -> None:
        """Hand ``readings`` (and spool ``state``) to the pipeline and return once the spool holds them; raises what
        refused them. With backfill on, the newest source time goes with them (`history.MARK_KEY`)."""
        assert self._emit is not None
        state = list(state or ())
        mark = None
        if self._history_max_s > 0:
            # int.__and__: the IntFlag operator costs more than the rest of this loop (profiled on a backfill).
            # A source time counts no later than its receipt: one device with its clock an hour ahead put the mark an
            # hour in the future, and the next backfill (from the mark) read nothing of a gap.
            mark = max((min(r.time, r.receive_time) for r in readings if not int.__and__(r.flags, _NO_SOURCE_TIME)),
                       default=None)
            if mark is not None and (self._mark is None or mark > self._mark):
                state.append((MARK_KEY, mark.isoformat().encode()))
            else:
                mark = None
        stored = asyncio.get_running_loop().create_future()
        ack, nack = settles(stored)
        await self._emit(Batch(source=self.name, readings=readings, ack=ack, nack=nack, state=state))
        await stored
        if mark is not None and (self._mark is None or mark > self._mark):
            self._mark = mark

    def _after_backfill(self, readings: list[Reading]) -> list[Reading]:
        """Drop the new subscription's values a backfill has handed on already (its initial values, and changes
        while the history was read): up to the tag's last backfilled source time, those `_Repeats` knows."""
        until, repeats, out = self._until, self._repeats, []
        for r in readings:
            last = until.get(r.tag)
            if last is not None:
                if r.time <= last:
                    if repeats is None or repeats.repeats(r):
                        continue
                else:
                    del until[r.tag]
            out.append(r)
        if not until:
            self._repeats = None
        return out

    # -- backfill from the server's history (history.py) ----------------------------------------------------

    async def _load_history_state(self) -> None:
        """The newest stored source time and an unfinished backfill, from the spool (once)."""
        if self._history_loaded or self._history_max_s <= 0 or self.ctx.state is None:
            return
        self._history_loaded = True
        try:
            saved = await self.ctx.state.load()
        except Exception as exc:
            self.ctx.metrics.collector_errors.labels(self.name, "history_read").inc()
            log.warning("%s: cannot read the newest stored time from the spool (%s); no backfill of a gap before "
                        "this start", self.name, describe(exc),
                        extra={"event": "opcua_backfill_failed", "collector": self.name})
            return
        self._mark = parse_time(saved.get(MARK_KEY))
        self._due = parse_due(saved.get(DUE_KEY))

    async def _backfill(self, client: Client, span: BackfillPlan, handed: dict[str, datetime] | None = None) -> None:
        """Read ``span`` back from the server's history and store it, window by window in time order; then let the
        live values through. A failure is logged and counted; the span stays due for the next connect. ``handed``:
        tag -> the newest time handed on before the gap (default: the last live values now).

        In a new session the live values wait behind the backfill in the server (queue_size per item, and only as
        long as the subscription lives without a Publish request: lifetime_count x publishing interval). A long
        backfill outlasts both: so it goes on in catch-up rounds from its end to the server's time then, until a
        round takes less than `CATCH_UP_S`, and when the wait has come near the subscription's lifetime the
        subscription is re-created before the last round (its queues then hold only what changed since)."""
        gate, new_session = self._gate, span.end is None
        started, before, refused = time.monotonic(), self.backfilled, {}
        hole = _Hole(self._due) if self._due is not None else None
        try:
            await self._release_held(client)  # left by a read the resumed session's connection lost
            end = span.end or await self._span_end(client)
            start = first = span.start
            self._due = (start, end)
            if self.ctx.state is not None:
                await self.ctx.state.save([(DUE_KEY, due_text(start, end))])
            log.info("%s: reading the gap %s to %s back from the server's history%s", self.name, _iso(start),
                     _iso(end), f" ({span.clipped.total_seconds():.0f} s before it not read: "
                                f"history_backfill_max_s)" if span.clipped else "",
                     extra={"event": "opcua_backfill_started", "collector": self.name})
            nodes = [(i, nid) for i, nid in enumerate(self._node_ids) if nid is not None]
            # Values already handed on (this process, before the gap) are not handed on again; a resumed session's
            # live values are newer than the gap and say nothing about it.
            last = dict(handed) if handed is not None else \
                {tag: r.time for tag, r in self._last.items()} if new_session else {}
            repeats = _Repeats(gate.since, dict(last)) if new_session and gate is not None else None
            waiting = started  # since when the live subscription's values wait (in its queues) behind the backfill
            for rounds in range(CATCH_UP_ROUNDS + 1):
                began = time.monotonic()
                nodes = await self._backfill_span(client, nodes, start, end, last, refused, repeats, hole)
                if not nodes or gate is None or rounds == CATCH_UP_ROUNDS:
                    break
                if self._sub_near_expiry(waiting):
                    await self._renew_waiting_subscription(time.monotonic() - waiting)
                    waiting = time.monotonic()
                elif time.monotonic() - began < CATCH_UP_S:
                    break
                # From a little before the last end: values a round's read of a node missed (made later, stamped
                # before its end) are read; those read already are not handed on twice (``last``).
                start, end = end - timedelta(seconds=OVERLAP_S), max(end, await self._span_end(client))
            if self.ctx.state is not None:
                await self.ctx.state.save([(DUE_KEY, None)])
            self._due = None
            self.backfills += 1
            count = self.backfilled - before
            if new_session:
                self._until = {tag: t for tag, t in last.items()}
                self._repeats = repeats
            self.last_backfill = {"from": _iso(first), "to": _iso(end), "readings": count, "refused": len(refused),
                                  "seconds": round(time.monotonic() - started, 3), "error": None}
            log.info("%s: %d values of the gap %s to %s read back from the server's history and stored in %.1f s%s",
                     self.name, count, _iso(first), _iso(end), time.monotonic() - started,
                     f"; the server gave no history of {len(refused)} nodes: {_names(sorted(refused))} "
                     f"({', '.join(sorted(set(refused.values())))})" if refused else "",
                     extra={"event": "opcua_backfill_done", "collector": self.name})
        except asyncio.CancelledError:
            # The connection was lost (or the gateway stops) meanwhile: the span from the unfinished window on stays
            # due, and is read on at the next connect.
            due, count = self._due, self.backfilled - before
            self.last_backfill = {"from": _iso(span.start), "to": _iso(due[1]) if due else None, "readings": count,
                                  "refused": len(refused), "seconds": round(time.monotonic() - started, 3),
                                  "error": "cut short (connection lost or stopping)"}
            log.info("%s: backfill from the server's history cut short after %d values; the rest (from %s) is read "
                     "at the next connect", self.name, count, _iso(due[0]) if due else "its start",
                     extra={"event": "opcua_backfill_failed", "collector": self.name})
            raise
        except Exception as exc:
            self.ctx.metrics.collector_errors.labels(self.name, "history_read").inc()
            due, count = self._due, self.backfilled - before
            self.last_backfill = {"from": _iso(span.start), "to": _iso(due[1]) if due else None, "readings": count,
                                  "refused": len(refused), "seconds": round(time.monotonic() - started, 3),
                                  "error": describe(exc)}
            log.warning("%s: backfill from the server's history stopped after %d values: %s; the rest (from %s) is "
                        "read at the next new session or reconnect", self.name, count, describe(exc),
                        _iso(due[0]) if due else "its start",
                        extra={"event": "opcua_backfill_failed", "collector": self.name})
            await self._release_held(client)  # the session goes on: the failed read's points are given back
        finally:
            if gate is not None and self._gate is gate and not asyncio.current_task().cancelling():
                gate.open(True)  # done, or failed with the rest due: the live values go on
                self._gate = None

    async def _backfill_span(self, client: Client, nodes: list[tuple[int, ua.NodeId]], start: datetime,
                             end: datetime, last: dict[str, datetime], refused: dict[str, str],
                             repeats: _Repeats | None = None,
                             hole: _Hole | None = None) -> list[tuple[int, ua.NodeId]]:
        """Read ``[start, end]`` of ``nodes`` window by window and store each window's values in time order, those
        newer than ``last`` (tag -> newest time handed on; updated) and those of ``hole`` (a span never handed on),
        noted in ``repeats``; the nodes the server refuses go to ``refused``. Returns the nodes still read."""
        spans = Windows(start, end)
        for w0, w1 in spans:
            values, no = await read_window(client, nodes, w0, w1, per_call=self._per_call("history_read"),
                                           timeout_s=self.cfg.request_timeout_s, held=self._held,
                                           settle=lambda: not (self._lost is not None and self._lost.is_set()))
            await self._release_held(client)  # a node given up after MAX_ROUNDS leaves its point
            spans.held(len(values))
            if no:
                refused.update({self._tags[i]: code for i, code in no.items()})
                nodes = [(i, n) for i, n in nodes if i not in no]
            now = utcnow()
            # A value without a timestamp (none, or an encoding's end: convert.py) would be stored at the time it
            # was read back: not taken from history.
            readings = [r for i, dv in values for r in to_readings(self._tags[i], dv, now, flatten=self._flatten[i])
                        if not int.__and__(r.flags, _NO_SOURCE_TIME)]
            readings.sort(key=lambda r: r.time)
            fresh = []
            for r in readings:
                prev = last.get(r.tag)
                if prev is None or r.time > prev:
                    last[r.tag] = r.time
                    if hole is not None:
                        hole.note(r)
                elif hole is None or not hole.takes(r):
                    # Handed on already. Not so the hole's values, older than the live values a resumed session
                    # handed on beside the backfill that left it: the whole hole was dropped (300 of 300 values).
                    continue
                fresh.append(r)
                if repeats is not None:
                    repeats.add(r)
            for k in range(0, len(fresh), BACKFILL_BATCH):
                chunk = fresh[k:k + BACKFILL_BATCH]
                # What is left goes with the batch: from the window's end, or within it from this batch's last
                # time (read again from there, at most one time's values come twice: kept once by the database).
                rest = w1 if k + BACKFILL_BATCH >= len(fresh) else chunk[-1].time
                await self._store(chunk, [(DUE_KEY, due_text(rest, end))])
                self._due = (rest, end)
                self.backfilled += len(chunk)
                self.ctx.metrics.backfilled.labels(self.name).inc(len(chunk))
            self._due = (w1, end)
            if not nodes:
                break
        return nodes

    async def _release_held(self, client: Client) -> None:
        """Give back the continuation points an abandoned history read left (`_held`). A release the server
        refuses (other than for points it no longer holds) is final; one that fails (a lost connection, no answer) is
        tried again at the next backfill of this session, if it is resumed. Each failed attempt is counted
        (``history_release``), and logged once until a release goes through: the server holds those points until the
        session closes, and answers later reads Bad_NoContinuationPoints when it has no more."""
        if not self._held:
            return
        held = list(self._held.values())
        try:
            refused = await release(client, held, self.cfg.request_timeout_s)
        except Exception as exc:
            why = f"{describe(exc)}; tried again before the next history read of this session"
        else:
            self._held.clear()
            if not refused:
                self._release_logged = False
                log.debug("%s: %d continuation points given back", self.name, len(held))
                return
            why = "refused: " + ", ".join(f"{n} x {name}" for name, n in sorted(refused.items()))
        self.ctx.metrics.collector_errors.labels(self.name, "history_release").inc()
        if self._release_logged:  # every failed attempt is counted; logged once until a release goes through
            return
        self._release_logged = True
        log.warning("%s: %d continuation points of an abandoned history read not given back to %s (%s); the server "
                    "holds them until the session closes, and may answer history reads Bad_NoContinuationPoints",
                    self.name, len(held), self.cfg.endpoint, why,
                    extra={"event": "opcua_history_release_failed", "collector": self.name})

    async def _span_end(self, client: Client) -> datetime:
        """Where a backfill (round) of a new session ends: after everything the server produced before the live
        subscription began. The server's ServerStatus.CurrentTime may be up to `SERVER_TIME_SLACK_S` old (asyncua's
        server writes it once a second: the values between it and the subscription's start were lost), so a little
        later than it, or the gateway's time if later still; reading past the present costs nothing (each tag's
        values are taken once, by time)."""
        end = await within(server_time(client), self.cfg.request_timeout_s) or utcnow()
        end = end if end.tzinfo is not None else end.replace(tzinfo=UTC)
        return max(end + timedelta(seconds=SERVER_TIME_SLACK_S), utcnow())

    def _sub_near_expiry(self, since: float) -> bool:
        """Whether the live subscription has waited behind the backfill (no Publish request at the server since
        ``since``, time.monotonic()) for half its lifetime or more: the server may delete it soon, or has."""
        sub = self._sub
        if sub is None or sub.subscription_id is None or sub.revised is None:
            return False
        lifetime_s = sub.revised.RevisedLifetimeCount * sub.revised.RevisedPublishingInterval / 1000.0
        return time.monotonic() - since >= lifetime_s / 2

    async def _renew_waiting_subscription(self, waited_s: float) -> None:
        """Re-create the live subscription that waited behind the backfill for ``waited_s``: the server deletes a
        subscription left without a Publish request for its lifetime, and its queues dropped values meanwhile; the
        next catch-up round reads what changed until after the new one began."""
        sub = self._sub
        assert sub is not None
        log.info("%s: the live subscription waited %.1f s behind the backfill, near its lifetime (%d x %g ms): "
                 "re-created, and the history read on to after that", self.name, waited_s,
                 sub.revised.RevisedLifetimeCount, sub.revised.RevisedPublishingInterval,
                 extra={"event": "opcua_backfill_resubscribed", "collector": self.name})
        await sub.recreate()

    def _on_status(self, status: ua.StatusCode) -> None:
        if not status.is_good():
            self._mark_lost(f"subscription status {status.name}")

    async def _connection_lost(self, exc: Exception) -> None:
        exc = getattr(self._client, "refused_message", None) or exc  # why, not only "transport lost"
        self._mark_lost(describe(exc), exc)

    def _mark_lost(self, reason: str, exc: BaseException | None = None) -> None:
        if self._lost is not None and not self._lost.is_set():
            self._lost_reason, self._lost_error = reason, exc
            self._lost.set()

    def _set_connected(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        self.connected_since = utcnow() if up else None
        self.ctx.metrics.connected.labels(self.name).set(1 if up else 0)
        if up:
            log.info("%s: subscribed to %d nodes on %s", self.name, len(self._tags) - len(self.item_failures),
                     self.cfg.endpoint, extra={"event": "opcua_connected", "collector": self.name})
