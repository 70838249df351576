"""The live alert feed behind the board's server-sent events.

One task per console process watches the ``alerts`` table and fans changed rows out to every
open board. Two ways in, so neither alone is trusted:

- ``LISTEN valvoja_alerts``: the trigger of migration m0401 (or any writer) sends the alert id
  on every insert or update, so a new alert reaches the boards within milliseconds;
- a poll every ``poll_s`` for rows changed after the last one seen, which catches whatever a
  notification missed (the listener reconnecting, a table created after the trigger migration).
  A row's change time is its transaction's start (``now()``), not its commit: the gateway's forwarder
  changes alerts at the end of a transaction that first copies a batch of readings, so a change can
  commit after a later-stamped one was polled. The poll therefore reads again the changes of the last
  `OVERLAP` (by the database's clock; none once it has been quiet that long) and sends only the rows not
  sent yet (id and change time).

Subscribers get bounded queues; a board that does not keep up is told to reload instead of
holding memory without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import psycopg

from console import alerts
from console.problems import Problem
from edge.timeouts import within

log = logging.getLogger(__name__)

CHANNEL = "valvoja_alerts"
QUEUE_MAX = 1000
# How far behind the newest change seen the poll reads again: a writing transaction that committed this long after
# it started (a forwarder's batch of readings, then its alert changes) is still found by the poll. Longer ones rely
# on their notification.
OVERLAP = timedelta(seconds=60)


class AlertFeed:
    def __init__(self, db, *, poll_s: float = 1.0):
        self.db = db
        self.poll_s = poll_s
        self.subscribers: set[asyncio.Queue] = set()
        self.watermark: datetime | None = None
        self.watermark_id = ""  # with watermark: the (change time, id) keyset of the last alert seen
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._pending_ids: set[str] = set()
        self._sent: dict[str, datetime] = {}  # id -> change time of the newest version sent, within OVERLAP

    async def start(self) -> None:
        # The watermark before the first request: every change from here on is after it. Set at the first poll
        # instead (up to poll_s later), an alert raised in between was before it and never reached the boards
        # already connected.
        with contextlib.suppress(Exception):  # no database yet: the first poll sets it
            await self._start_watermark()
        self._tasks = [asyncio.create_task(self._listen(), name="alert-listen"),
                       asyncio.create_task(self._poll(), name="alert-poll")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def wake(self) -> None:
        """Look for changes now (after this process changed an alert)."""
        self._wake.set()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def publish(self, rows: list[dict]) -> None:
        for q in list(self.subscribers):
            for row in rows:
                try:
                    q.put_nowait(row)
                except asyncio.QueueFull:
                    self.unsubscribe(q)
                    with contextlib.suppress(asyncio.QueueFull):
                        q.put_nowait(None)  # tells the stream to end: the client reconnects and reloads
                    break

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection; reconnect with a pause when it drops."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for note in conn.notifies():
                        self._pending_ids.add(note.payload)
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("alert feed: LISTEN connection lost (%s); polling meanwhile", exc)
                await asyncio.sleep(2.0)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), self.poll_s)
            self._wake.clear()
            ids, self._pending_ids = list(self._pending_ids), set()
            try:
                await self._fetch(ids)
            except asyncio.CancelledError:
                raise
            except Problem:
                pass  # no alerts table yet: nothing to watch
            except Exception as exc:
                log.warning("alert feed: poll failed: %s", exc)
                await asyncio.sleep(self.poll_s)

    async def _start_watermark(self) -> None:
        row = await self.db.fetchone("SELECT now() AS t")
        self.watermark = row["t"] if row else datetime.now(UTC)

    async def _fetch(self, ids: list[str]) -> None:
        if self.watermark is None:
            await self._start_watermark()
            return
        rows = await alerts.changed_since(self.db, self.watermark, ids or None) if ids else []
        # The last OVERLAP again: a change stamped before the newest one seen may have committed since. Quiet for
        # longer, only what is newer than the newest seen.
        now = (await self.db.fetchone("SELECT now() AS t"))["t"]
        since, after_id = (now - OVERLAP, "") if now - OVERLAP < self.watermark else (self.watermark,
                                                                                     self.watermark_id)
        while True:  # page by page: more than a page may share one change time (one transaction's now())
            page = await alerts.changed_since(self.db, since, after_id=after_id)
            rows += page
            if page:
                since, after_id = page[-1]["changed_at"], str(page[-1]["id"])
                if (since, after_id) > (self.watermark, self.watermark_id):
                    self.watermark, self.watermark_id = since, after_id
            if len(page) < alerts.CHANGED_PAGE:
                break
        fresh: dict[str, dict] = {}
        for r in rows:
            key, changed = str(r["id"]), r["changed_at"]
            if changed is not None and key in self._sent and self._sent[key] >= changed:
                continue  # this version went out already (the overlap reads it again)
            fresh[key] = r
            if changed is not None:
                self._sent[key] = changed
        self._sent = {k: t for k, t in self._sent.items() if t >= now - OVERLAP}
        if fresh and self.subscribers:
            self.publish(list(fresh.values()))
