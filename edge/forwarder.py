"""Forwarder: drains the spool into the database in batches; deletes only what was committed.

While the database is away the forwarder backs off and retries; the spool grows
within its budget. When the database returns it drains in large batches (up to
``database.batch_rows`` per transaction), which is what makes the backlog go fast.
A separate task refreshes rollups and applies retention on its own connection so
that they never hold up readings.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time

import numpy as np
import psycopg

from edge.backoff import Backoff
from edge.columns import Columns, to_us
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import utcnow
from edge.settings import Database, SiteConfig
from edge.sink.housekeeping import BATCH_ROWS, ROUND_BUDGET_S
from edge.sink.timescale import TimescaleSink, WriteResult
from edge.spool import SpooledBatch
from edge.timeouts import CANCEL_GRACE_S, within

log = logging.getLogger(__name__)
VACUUM_CHECK_S = 60.0  # how often an idle forwarder checks whether a drained spool has disk to give back

LATENCY_SAMPLES_PER_BATCH = 16
LATENCY_RESERVOIR = 200_000  # the latest commit latencies kept for /healthz percentiles and benchmarks


class LatencyReservoir:
    """The latest ``size`` latencies in seconds, in a ring allocated whole at the start.

    A ``deque(maxlen=...)`` of Python floats held the same: 32 bytes a sample against 8, and it grew until full,
    which at a plant's few readings a second took a day or more: the gateway's memory rose by 6.4 MB over that
    time, like a leak to anyone watching it (bench/bench_soak_plant.py measured it). Now 1.6 MB from the start.
    """

    def __init__(self, size: int = LATENCY_RESERVOIR) -> None:
        self._ring = np.zeros(size, dtype=np.float64)
        self._next = 0  # where the next sample goes
        self._count = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)[-self._ring.size:]
        size, n = self._ring.size, values.size
        first = min(n, size - self._next)
        self._ring[self._next:self._next + first] = values[:first]
        self._ring[:n - first] = values[first:]
        self._next = (self._next + n) % size
        self._count = min(size, self._count + n)

    def values(self) -> np.ndarray:
        """The samples kept, oldest first (a copy)."""
        if self._count < self._ring.size:
            return self._ring[:self._count].copy()
        return np.concatenate((self._ring[self._next:], self._ring[:self._next]))

    def __len__(self) -> int:
        return self._count
REFUSED_LOG_EVERY_S = 60.0  # db_refused / readings_refused at most this often (with the count meanwhile)
RETENTION_LOCK_TIMEOUT_S = 5  # retention holds writes off while it drops; never longer than this waiting for a lock
# Raw rows one retention transaction deletes on an ordinary table, and a round's time at most (the next refresh goes
# on): as for the other tables' retention.
RETENTION_BATCH_ROWS = BATCH_ROWS
RETENTION_BUDGET_S = ROUND_BUDGET_S
# What the database (or the encoding before it) raises for the content of a group rather than for the connection:
# retrying the same group would fail the same way, so it is written apart (`Forwarder._write_apart`).
# ProgramLimitExceeded is an OperationalError, but the limit is a value's size: a tag name longer than the ``tags``
# index can hold (about 2.7 kB), which anyone who may publish on the broker chooses (a topic level, a JSON field).
# Taken for an outage, that one reading blocked the spool for good.
DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, ValueError,
               OverflowError)


def _nul_rows(cols: Columns) -> list[int]:
    """Rows PostgreSQL will refuse for a NUL character in their tag name or text value."""
    bad_tags = {i for i, t in enumerate(cols.tags) if "\x00" in t}
    rows = [i for i, v in cols.other.items() if isinstance(v, str) and "\x00" in v]
    if bad_tags:
        rows += [i for i in range(len(cols)) if int(cols.tag_idx[i]) in bad_tags]
    return sorted(set(rows))


class Forwarder:
    def __init__(self, worker: SpoolWorker, conninfo: str, cfg: SiteConfig, metrics: Metrics,
                 wake: asyncio.Event):
        self._vacuum_check_at = 0.0  # monotonic time of the next idle check for free spool pages
        self.worker = worker
        self.conninfo = conninfo
        self.cfg = cfg
        self.db: Database = cfg.database
        self.metrics = metrics
        self.wake = wake
        # One COPY is one server process: past ~300k rows/s a backlog drains only as fast as one core of the
        # database. `writers` connections write groups side by side; the first also migrates and syncs tags.
        self.writers = [TimescaleSink(conninfo, connect_timeout_s=self.db.connect_timeout_s,
                                      application_name=f"valvoja-{cfg.site.gateway_id}",
                                      migration_lock_timeout_s=self.db.migration_lock_timeout_s)
                        for _ in range(self.db.writers)]
        self.sink = self.writers[0]
        self.backoff = Backoff()
        self.stored = 0
        self.duplicates = 0
        self.conflicting = 0  # of the duplicates, readings with another value than the one stored (`_note_conflicts`)
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.spool_error: str | None = None  # the last spool failure while forwarding, until one works again
        self._refused_logged_at = -math.inf  # monotonic time `_write_apart` last logged
        self._refused_quiet = [0, 0]  # groups, readings refused since then without a log line
        self._conflicts_logged_at = -math.inf  # monotonic time `_note_conflicts` last logged
        self._conflicts_quiet = 0  # conflicting readings since then without a log line
        # Monotonic time of the last sign of life (commit, connect, error): the watchdog's stall check.
        self.heartbeat = time.monotonic()
        # Set once the first connect has migrated the schema: jobs that query the database wait for it, or a fresh
        # database met them with "relation does not exist" (the emissions job died at every first start).
        self.schema_ready = asyncio.Event()
        # Reservoir of (commit time - source time) in seconds, for benchmarks and /status.
        self.latency_s = LatencyReservoir()
        # Rollup work: tag ids and the 1-minute buckets touched since the last refresh.
        self.dirty_tags: set[int] = set()
        self.dirty_minutes: set[int] = set()
        self.dirty_note: int | None = None  # the spool's last rollup note this work covers (Spool.rollup_done)
        # Writes committed (or, split in parts, committing) whose rollup note is not in the spool yet: retention
        # waits for them (`RollupWorker._apply_retention`).
        self.committed_unnoted = 0
        pending = worker.spool.rollup_pending()  # work a crash left undone (nothing runs yet: read it here)
        if pending is not None:
            self.add_rollup_work(*pending)

    def add_rollup_work(self, tags: set[int], minutes: set[int], note: int | None = None) -> None:
        """Owe the rollups of ``minutes`` for ``tags`` (up to the spool's note ``note``)."""
        self.dirty_tags |= tags
        self.dirty_minutes |= minutes
        if note is not None:
            self.dirty_note = max(note, self.dirty_note or 0)

    @property
    def connected(self) -> bool:
        return all(w.connected for w in self.writers)

    async def run(self) -> None:
        while True:
            try:
                if not self.connected:
                    await self._connect()
                await self._drain_forever()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._on_error(exc)
            except sqlite3.Error as exc:
                await self._on_spool_error(exc)

    async def _on_spool_error(self, exc: sqlite3.Error) -> None:
        """The spool failed (a full disk: a delete needs room in its write-ahead log), not the database: keep the
        connections, say it once per kind of failure, retry with back-off (the group written again is skipped by
        the database's key). It was a crash the watchdog restarted every round: a traceback, a reconnect and the
        same group written again each time."""
        self.heartbeat = time.monotonic()
        self.metrics.spool_errors.inc()
        error = f"{type(exc).__name__}: {exc}"
        if error != self.spool_error:
            log.error("spool read or delete failed, retrying with back-off: %s", error, extra={"event": "spool_error"})
        self.spool_error = error
        await asyncio.sleep(self.backoff.next_delay())

    async def _connect(self) -> None:
        features = await self.sink.connect(migrate_schema=self.db.migrate_on_start)
        await self.sink.sync_registry(self.cfg.assets, self.cfg.tags)
        for w in self.writers[1:]:
            await w.connect(migrate_schema=False)
        self.schema_ready.set()
        self.metrics.db_connected.set(1)
        self.heartbeat = time.monotonic()
        if self.down_since is None:
            log.info("database connected (%s edition)", features.edition, extra={"event": "db_up",
                                                                                 "edition": features.edition})
        # An outage ends (`_working`) at the first write that commits, not here: a database that takes connections
        # but refuses writes (a lock with lock_timeout, statement_timeout, a read-only failover) reset the back-off
        # at every connect, and was reconnected (with a migration check) every ~0.4 s, logging db_up and db_down
        # each time.

    def _working(self) -> None:
        """A write committed, or the spool is empty on a live connection: the outage (if any) is over."""
        if self.spool_error is not None:
            log.warning("spool deletes work again", extra={"event": "spool_recovered", "error": self.spool_error})
            self.spool_error = None
        if self.down_since is not None:
            log.warning("database reachable again after %.1f s", time.monotonic() - self.down_since,
                        extra={"event": "db_up"})
            self.down_since = None
        self.backoff.reset()

    async def _on_error(self, exc: BaseException) -> None:
        self.heartbeat = time.monotonic()
        self.metrics.db_connected.set(0)
        self.metrics.db_errors.labels(type(exc).__name__).inc()
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("database write failed, spooling until it returns: %s", self.last_error,
                      extra={"event": "db_down"})
        await self.close()
        await asyncio.sleep(self.backoff.next_delay())

    async def close(self) -> None:
        """Close every writer connection (errors, a stalled forwarder, shutdown)."""
        for w in self.writers:
            try:
                await w.close()
            except Exception as exc:  # a broken socket: the connection is gone either way
                log.debug("closing a database connection failed: %r", exc)
                w.conn = None

    async def _drain_forever(self) -> None:
        """Write groups to the database while the next group is read from the spool (a pipeline).

        Reading and decoding a group (spool thread) overlaps with the COPY of the previous ones; up to
        ``len(self.writers)`` groups of readings are written at once, each on its own connection and in its
        own transaction, and each is deleted from the spool only after its COMMIT. Groups carrying records
        (alert changes, predictions) are written alone, after everything before them has committed, because
        their order matters; readings have a key and no order.
        """
        ready: asyncio.Queue[list[SpooledBatch]] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read_ahead(ready))
        writing: dict[asyncio.Task, TimescaleSink] = {}
        get: asyncio.Future | None = None
        try:
            while True:
                get = asyncio.ensure_future(ready.get())
                while not get.done():
                    await asyncio.wait({get, reader, *writing}, return_when=asyncio.FIRST_COMPLETED)
                    if reader.done() and not get.done():
                        get.cancel()
                        reader.result()  # the reader died: raise its error here
                    self._reap(writing)
                batches = get.result()
                ordered = any(b.records for b in batches)
                while writing and (ordered or len(writing) >= len(self.writers)):
                    await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                    self._reap(writing)
                sink = next(w for w in self.writers if w not in writing.values())
                if ordered:
                    await self._write(batches, sink)
                else:
                    writing[asyncio.create_task(self._write(batches, sink))] = sink
        finally:
            # The pending read of the next group too: a failed write leaves here while it waits, and a task never
            # cancelled is reported by asyncio at ERROR ("Task was destroyed but it is pending!") once collected.
            # A group it read is still in the spool: the next run reads it again.
            pending = [t for t in (reader, get, *writing) if t is not None]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            # What they read waits again, in drop_oldest's budget. Not queued on the spool thread: at a stop it may be
            # shut down, and behind a locked spool this would wait. A read still running there claims its group
            # again: held beyond the budget (never dropped, never lost) until the next pass reads from the start.
            self.worker.spool.release()

    @staticmethod
    def _reap(writing: dict[asyncio.Task, TimescaleSink]) -> None:
        """Forget finished writes; a failed one raises its error (the caller reconnects and retries)."""
        for t in [t for t in writing if t.done()]:
            del writing[t]
            t.result()

    async def _read_ahead(self, ready: asyncio.Queue) -> None:
        after = 0
        while True:
            batches = await self._next_group(after, linger=True)
            if batches is None:
                if not self.worker.spool.batches:  # nothing spooled, nothing in flight: the connection works
                    self._working()
                if time.monotonic() >= self._vacuum_check_at:  # idle: give back what a drained backlog held
                    self._vacuum_check_at = time.monotonic() + VACUUM_CHECK_S
                    freed = await self.worker.call(self.worker.spool.vacuum_if_empty)
                    if freed:
                        log.info("spool drained: %.0f MB of disk given back", freed / 1e6,
                                 extra={"event": "spool_vacuumed", "bytes": freed})
                self.wake.clear()
                try:
                    await within(self.wake.wait(), self.db.flush_interval_s)
                except TimeoutError:
                    pass
                continue
            after = batches[-1].seq
            await ready.put(batches)

    async def _next_group(self, after: int, linger: bool) -> list[SpooledBatch] | None:
        spool = self.worker.spool
        batches = await self.worker.call(spool.peek, self.db.batch_rows, after, True)
        if not batches:
            return None
        n = sum(len(b.columns) for b in batches)
        if linger and n < self.db.batch_rows:
            # Let a small group grow for up to flush_interval (bounded latency, fewer transactions).
            # `created` is wall-clock time (it outlives the process); clamp so that a wall clock
            # stepped back cannot make this wait longer than flush_interval.
            age = time.time() - batches[0].created
            wait = min(self.db.flush_interval_s, self.db.flush_interval_s - age)
            if wait > 0:
                await asyncio.sleep(wait)
                batches = await self.worker.call(spool.peek, self.db.batch_rows, after, True)
        return batches

    async def _write(self, batches: list[SpooledBatch], sink: TimescaleSink | None = None) -> None:
        sink = sink or self.sink
        t0 = time.perf_counter()
        try:
            # Not screened here (the hot path): the database's refusal is the signal, and `_write_apart` sets NUL
            # texts aside at once, so such a group costs one failed transaction, not a split.
            result = self._committed(await sink.write(batches))
            self.committed_unnoted += 1  # no await since the COMMIT: retention cannot slip in between
        except DATA_ERRORS as exc:
            if not sink.connected:
                raise  # the connection went with it: an outage, retried as one
            self.committed_unnoted += 1  # its parts commit one by one
            try:
                result = await self._write_apart(batches, sink, exc)
            except BaseException:
                self.committed_unnoted -= 1  # written again later: its minutes are noted then
                raise
        try:
            self.metrics.db_write_seconds.observe(time.perf_counter() - t0)
            self._account(batches, result)
            rollup = (result.tag_ids, result.minutes) if result.minutes else None
            note = await self.worker.call(self.worker.spool.delete, [b.seq for b in batches], rollup)
        finally:
            self.committed_unnoted -= 1
        if note is not None:
            self.dirty_note = max(note, self.dirty_note or 0)
        for b in batches:
            if b.lost:  # said once, when its dead letter is committed and the batch gone
                self.metrics.spool_undecodable.inc(b.lost)
                self.metrics.dead_letters.labels("spool").inc()
                log.error("%s; kept in dead_letters (source 'spool'), the readings after it are forwarded",
                          b.dead_letters[0][3], extra={"event": "spool_batch_undecodable", "seq": b.seq,
                                                       "readings": b.lost})
        self.heartbeat = time.monotonic()
        self._working()
        self.metrics.spool_records.set(self.worker.spool.readings)
        self.metrics.spool_bytes.set(self.worker.spool.bytes)

    async def _write_apart(self, batches: list[SpooledBatch], sink: TimescaleSink,
                           exc: BaseException) -> WriteResult:
        """The database refused the group for its content (a text with NUL, a time out of its range...), so
        retrying it whole would block the spool for ever. Write it in halves down to the single readings it
        refuses; those become dead letters with the database's error. Every good reading is stored."""
        cols = Columns.concat([b.columns for b in batches])
        # A device that keeps sending what the database refuses (a PLC's NUL-padded strings) refuses a group every
        # flush: two error lines per group, all day, buried every other event. Said once a minute with the count;
        # valvoja_readings_refused_total counts every reading.
        now = time.monotonic()
        loud = now - self._refused_logged_at >= REFUSED_LOG_EVERY_S
        if loud:
            self._refused_logged_at = now
            more = (f" ({self._refused_quiet[0]} more groups with {self._refused_quiet[1]} refused readings since the "
                    "last report)" if self._refused_quiet[0] else "")
            self._refused_quiet = [0, 0]
            log.error("a group of %d readings cannot be stored whole (%s); writing it in parts to keep the good "
                      "ones%s", len(cols), f"{type(exc).__name__}: {exc}".strip(), more,
                      extra={"event": "db_refused", "seqs": [b.seq for b in batches]})
        else:
            self._refused_quiet[0] += 1
        total = WriteResult(rows=0, inserted=0, duplicates=0)
        refused: list[tuple] = []
        # Records and dead letters first, in one transaction as before (alert changes keep their order).
        extras = [SpooledBatch(b.seq, cols.take([]), b.dead_letters, b.created, b.records) for b in batches
                  if b.dead_letters or b.records]
        if extras:
            total.add(self._committed(await sink.write(extras)))
        nul = _nul_rows(cols)
        if nul:  # refused for certain: set aside at once (a PLC's NUL-padded strings would otherwise cost a split)
            nul_error = ValueError("a text with a NUL character (PostgreSQL text cannot hold one)")
            refused += [(cols.take([i]), nul_error) for i in nul]
            cols = cols.take(sorted(set(range(len(cols))) - set(nul)))
        await self._split(cols, sink, total, refused)
        if refused:
            await sink.write_refused(refused)
            self.metrics.readings_refused.inc(len(refused))
            if loud:
                log.error("database refused %d reading(s) of %d, stored as dead letters; first: %s = %r: %s",
                          len(refused), len(cols), refused[0][0].tags[0], refused[0][0].value_at(0), refused[0][1],
                          extra={"event": "readings_refused", "refused": len(refused)})
            else:
                self._refused_quiet[1] += len(refused)
        return total

    async def _split(self, cols: Columns, sink: TimescaleSink, total: WriteResult, refused: list[tuple]) -> None:
        if not len(cols):
            return
        try:
            total.add(self._committed(await sink.write([SpooledBatch(0, cols, [], 0.0)])))
            self.heartbeat = time.monotonic()  # a long split is progress, not a stall (edge/watchdog.py)
            return
        except DATA_ERRORS as exc:
            if not sink.connected:
                raise
            if len(cols) == 1:
                refused.append((cols, exc))
                return
        half = len(cols) // 2
        await self._split(cols.take(range(half)), sink, total, refused)
        await self._split(cols.take(range(half, len(cols))), sink, total, refused)

    async def drain_once(self, linger: bool = True) -> bool:
        """Write one group of spooled batches; returns False when the spool was empty (shutdown flush)."""
        batches = await self._next_group(0, linger)
        if batches is None:
            return False
        await self._write(batches)
        return True

    def _committed(self, result: WriteResult) -> WriteResult:
        """Count what a transaction committed (``valvoja_readings_stored_total``, /healthz), right at its COMMIT
        with no await in between: counted later, a write cancelled after it (a watchdog restart, the shutdown
        flush's deadline: while the spool thread deletes the group, or between the parts of a refused group) lost
        the count of readings that were stored (written again, they come back as duplicates)."""
        self.stored += result.inserted
        self.duplicates += result.duplicates
        self.metrics.readings_out.inc(result.inserted)
        if result.conflicts:
            self._note_conflicts(result)
        return result

    def _note_conflicts(self, result: WriteResult) -> None:
        """Readings dropped as duplicates that were none: a second value of a tag at a time the database holds
        (a device stamping whole seconds while it sends twice a second lost every second value without a word).
        Counted each; logged at most every REFUSED_LOG_EVERY_S with the first and the count meanwhile."""
        self.conflicting += result.conflicts
        self.metrics.readings_conflicting.inc(result.conflicts)
        now = time.monotonic()
        if now - self._conflicts_logged_at < REFUSED_LOG_EVERY_S:
            self._conflicts_quiet += result.conflicts
            return
        self._conflicts_logged_at = now
        quiet, self._conflicts_quiet = self._conflicts_quiet, 0
        tag, at, kept, dropped = result.conflict
        more = f" ({quiet} more since the last report)" if quiet else ""
        log.warning("%d reading(s) not stored: the database holds another value of their tag at the same time (the "
                    "first is kept); first: %s at %s, %s kept, %s not stored (a device whose timestamps are coarser "
                    "than its sending rate loses values this way)%s", result.conflicts, tag, at.isoformat(), kept,
                    dropped, more,
                    extra={"event": "readings_conflicting", "tag": tag, "count": result.conflicts})

    def _account(self, batches, result: WriteResult) -> None:
        now_us = to_us(utcnow())
        for kind, _ in result.refused:
            self.metrics.records_refused.labels(kind).inc()
        for b in batches:
            times = b.columns.time_us
            if not times.size:
                continue
            step = max(1, times.size // LATENCY_SAMPLES_PER_BATCH)
            lat = (now_us - times[::step]) / 1e6
            self.latency_s.add(lat)
            for v in np.maximum(lat, 0.0).tolist():
                self.metrics.latency_seconds.observe(v)
        if result.minutes:
            self.add_rollup_work(result.tag_ids, result.minutes)

    async def flush(self, timeout_s: float) -> bool:
        """Shutdown path: write what the spool holds, within ``timeout_s``. True if it emptied."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sink.connected:
                return False
            try:
                left = deadline - time.monotonic()
                # The grace: a write cancelled at the deadline on a database that does not answer (frozen, a network
                # cut) waited for psycopg's cancel request up to 10 s more, past the stop's deadline.
                if not await within(self.drain_once(linger=False), max(0.1, left), cancel_grace_s=CANCEL_GRACE_S):
                    return True
            except (psycopg.Error, OSError, TimeoutError, sqlite3.Error) as exc:
                # sqlite3: a spool that cannot delete (disk full) ends the flush as a database away does; it raised
                # out of the shutdown, leaving the spool and its thread open.
                log.warning("final flush stopped: %s", exc, extra={"event": "flush_incomplete"})
                return False
        return self.worker.spool.batches == 0


class RollupWorker:
    """Keeps readings_1m / readings_1h current and applies retention, on its own connection."""

    def __init__(self, forwarder: Forwarder, conninfo: str, db: Database):
        self.fwd = forwarder
        self.db = db
        self.sink = TimescaleSink(conninfo, connect_timeout_s=db.connect_timeout_s,
                                  application_name="valvoja-rollups")
        # None until the first round: a time.monotonic() of 0.0 is the machine's boot, so on a gateway started less
        # than an hour after boot (every start after a power cut) raw retention waited for an hour of uptime.
        self.last_retention: float | None = None
        self.last_trim: float | None = None  # predictions and dead letters: the last round that got through
        self.backoff = Backoff()
        self.refreshes = 0
        self.tail_checked = False  # the rollups of the newest raw readings recomputed once after start
        self.error: str | None = None  # the refresh failure last logged, until a refresh works

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.db.rollup_interval_s)
            try:
                done = self.refreshes
                await self.refresh_once()
                await self.trim_once()
                self.backoff.reset()
                if self.error is not None and self.refreshes > done:  # a refresh ran (not skipped: nothing owed)
                    log.warning("rollups refreshed again", extra={"event": "rollup_resumed", "error": self.error})
                    self.error = None
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                # A database outage is the forwarder's to log; a refresh failing while the forwarder is connected is
                # the rollups' own (a lock, statement_timeout, a permission): said once per kind of failure. It was a
                # debug line, and the rollups the console draws stayed stale for good without a word. Retried
                # later, keeping the work owed.
                error = f"{type(exc).__name__}: {exc}".strip()
                if self.fwd.connected:  # else an outage, the forwarder's to count (valvoja_db_errors_total)
                    self.fwd.metrics.rollup_errors.labels("refresh").inc()
                if self.fwd.connected and error != self.error:
                    log.error("rollup refresh failed, retrying with back-off (raw readings are stored): %s", error,
                              extra={"event": "rollup_error"})
                    self.error = error
                else:
                    log.debug("rollup refresh failed: %s", error)
                await self.sink.close()
                await asyncio.sleep(self.backoff.next_delay())
            except sqlite3.Error as exc:
                # The spool's notes of the work owed could not be read or marked done: another process holds the
                # spool's lock ("database is locked": a backup, the sqlite3 shell) or the disk fails. It escaped this
                # loop: the task died, the watchdog restarted it and it died again every round, with a traceback
                # each time. The database connection is fine; the work stays owed (in the spool and here).
                await self._spool_error(exc)

    async def _spool_error(self, exc: sqlite3.Error) -> None:
        """Say a spool failure once per kind (`rollup_error`; `rollup_resumed` when a refresh works again), count
        it in ``valvoja_spool_write_errors_total``, and back off."""
        self.fwd.metrics.spool_errors.inc()
        error = f"spool: {type(exc).__name__}: {exc}".strip()
        if error != self.error:
            log.error("rollup refresh cannot use the spool, retrying with back-off (raw readings are stored): %s",
                      error, extra={"event": "rollup_error"})
            self.error = error
        await asyncio.sleep(self.backoff.next_delay())

    async def refresh_once(self) -> None:
        fwd = self.fwd
        # The spool's notes are the record of what is owed: a write cancelled while the spool thread ran its
        # delete (shutdown, a watchdog restart, another writer's failure) left a note the forwarder never heard
        # of, and marking every note up to a later one done would lose it.
        pending = await fwd.worker.call(fwd.worker.spool.rollup_pending)
        if pending is not None:
            fwd.add_rollup_work(*pending)
        if not fwd.dirty_minutes and self.tail_checked:
            return
        if not self.sink.connected:
            if not fwd.connected:
                return
            await self.sink.connect(migrate_schema=False)
        if not self.tail_checked:
            # Owed work no spool note records: a database restored from a dump of a running gateway.
            from edge.sink.rollups import unrolled_tail

            fwd.add_rollup_work(*await unrolled_tail(self.sink.conn))
            self.tail_checked = True
            if not fwd.dirty_minutes:
                return
        note = await self._refresh_owed()
        if note is not None:
            await fwd.worker.call(fwd.worker.spool.rollup_done, note)
        if self.db.retention_days and (self.last_retention is None or time.monotonic() - self.last_retention > 3600):
            try:
                removed, done = await self._apply_retention(self.db.retention_days)
            except psycopg.Error as exc:
                if self.sink.conn.closed or self.sink.conn.broken:
                    raise  # the connection's failure: the refresh's back-off and reconnect
                # A refusal (a role that does not own the table drop_chunks needs, no DELETE, a statement_timeout)
                # repeats every round: raised, it was said as a rollup failure, put the rollups behind a growing
                # back-off and kept the hourly trim of the other tables (after the refresh) from ever running. Its
                # rollup work was put back (`_retention_locked`) and is done by the next refresh.
                self.fwd.metrics.rollup_errors.labels("retention").inc()
                log.error("retention of raw readings older than %d days failed, retried in an hour: %s",
                          self.db.retention_days, f"{type(exc).__name__}: {exc}".strip(),
                          extra={"event": "retention_error"})
                self.last_retention = time.monotonic()
                return
            if done:
                self.last_retention = time.monotonic()
            if done or removed:
                log.info("retention: removed %s older than %d days%s", removed, self.db.retention_days,
                         "" if done else " (more next round)", extra={"event": "retention"})

    async def trim_once(self) -> None:
        """Hourly, remove alerts, predictions, dead letters, emission runs (`edge.sink.housekeeping`) and 1-minute
        rollups (`edge.sink.rollups.retention_1m`) past their retention, within one round's time budget; a round
        cut short by it (the first one over years of rows) goes on at the next refresh instead.

        Apart from the raw readings' retention: that one runs only while readings come and only where
        ``retention_days`` is set, and predictions of a gateway whose readings are kept for good grew as fast."""
        db = self.db
        if not (db.predictions_retention_days or db.dead_letters_retention_days or db.emission_runs_retention_days
                or db.alerts_retention_days or db.rollups_1m_retention_days):
            return
        if self.last_trim is not None and time.monotonic() - self.last_trim < 3600:
            return
        if not self.sink.connected:
            if not self.fwd.connected:
                return
            await self.sink.connect(migrate_schema=False)
        from edge.sink.housekeeping import ROUND_BUDGET_S, trim
        from edge.sink.rollups import retention_1m

        deadline = time.monotonic() + ROUND_BUDGET_S
        rollups = (0, "rows", True)
        try:
            out = await trim(self.sink.conn, db.predictions_retention_days, db.dead_letters_retention_days,
                             db.emission_runs_retention_days, db.alerts_retention_days)
            if out.done and db.rollups_1m_retention_days:
                # What the tables before it left of the round's budget; one batch at least.
                rollups = await retention_1m(self.sink.conn, self.sink.features, db.rollups_1m_retention_days,
                                             deadline)
        except psycopg.Error as exc:
            if self.sink.conn.closed or self.sink.conn.broken:
                raise  # the connection's failure: the refresh's back-off and reconnect
            # A refusal (a role without DELETE, statement_timeout, a lock) repeats every round: raised, it put the
            # rollups themselves behind a growing back-off. Said once and tried again in an hour.
            self.fwd.metrics.rollup_errors.labels("retention").inc()
            log.error("retention of alerts, predictions, dead letters, emission runs and 1-minute rollups failed,"
                      " retried in an hour: %s", f"{type(exc).__name__}: {exc}".strip(),
                      extra={"event": "retention_error"})
            self.last_trim = time.monotonic()
            return
        if out.done and rollups[2]:
            self.last_trim = time.monotonic()
        if rollups[0]:
            log.info("retention: removed %d %s of 1-minute rollups older than %d days%s", rollups[0], rollups[1],
                     db.rollups_1m_retention_days, "" if rollups[2] else " (more next round)",
                     extra={"event": "retention_rollups"})
        if out.predictions or out.dead_letters or out.emission_runs or out.alerts or out.alert_events:
            log.info("retention: removed %d cleared alerts (with their history) and %d suppressed-condition events "
                     "older than %d days, %d predictions older than %d days, %d dead letters older than %d days, "
                     "%d emission runs older than %d days%s", out.alerts, out.alert_events, db.alerts_retention_days,
                     out.predictions, db.predictions_retention_days, out.dead_letters, db.dead_letters_retention_days,
                     out.emission_runs, db.emission_runs_retention_days, "" if out.done else " (more next round)",
                     extra={"event": "retention_tables"})

    async def _refresh_owed(self) -> int | None:
        """Recompute the rollups owed; returns the spool note they cover, to mark done once committed."""
        fwd = self.fwd
        tags, minutes, note = fwd.dirty_tags, fwd.dirty_minutes, fwd.dirty_note
        fwd.dirty_tags, fwd.dirty_minutes = set(), set()
        try:
            if minutes:
                await self.sink.refresh_minutes(tags, minutes)
                self.refreshes += 1
        except BaseException:
            fwd.add_rollup_work(tags, minutes)  # put the work back so nothing is missed after a failure
            raise
        return note

    async def _apply_retention(self, days: int) -> tuple[int, bool]:
        """Drop raw readings older than ``days``, never before the rollups they owe are made: (chunks or rows
        removed, done). Not done: a lock was not granted in time, or the round's time ran out; the next refresh
        goes on.

        A group the forwarder committed after the refresh before (a backlog drained after an outage longer than
        ``days``) was dropped with its chunk before its rollups were made, and was then in neither table. Writes
        are held off (``SHARE`` lock on ``readings``) while the work noted since is recomputed and the old rows go,
        in one transaction. Groups committed but not yet noted in the spool are waited for (a spool delete away).
        The community edition's retention policy runs in the server's own scheduler, outside this.

        An ordinary table (plain PostgreSQL) loses its rows by DELETE, ``RETENTION_BATCH_ROWS`` a transaction, each
        under that lock with its own refresh: the first round over months of rows deleted them in one transaction,
        writes held off throughout (1.2 M rows/s measured: minutes for a plant's months, past the watchdog's stall
        limit), and a ``statement_timeout`` on the role cancelled it every hour, so nothing was ever removed."""
        conn = self.sink.conn
        deadline = time.monotonic() + RETENTION_BUDGET_S
        removed = 0
        try:
            while True:
                n = await self._retention_locked(conn, days)
                if n is None:
                    return removed, False
                removed += n
                if n < RETENTION_BATCH_ROWS:
                    return removed, True
                if time.monotonic() > deadline:
                    return removed, False
        except psycopg.errors.LockNotAvailable:
            # A reader holds a chunk to drop (a long console query): writes must not wait behind it. Next round.
            log.debug("retention postponed: a lock on readings was not granted in time")
            return removed, False

    async def _retention_locked(self, conn: psycopg.AsyncConnection, days: int) -> int | None:
        fwd = self.fwd
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{RETENTION_LOCK_TIMEOUT_S}s'")
            await conn.execute("LOCK TABLE readings IN SHARE MODE")
            for _ in range(500):  # ~5 s: committed groups only (those not committed yet wait for this lock)
                if not fwd.committed_unnoted:
                    break
                await asyncio.sleep(0.01)
            else:
                return None
            pending = await fwd.worker.call(fwd.worker.spool.rollup_pending)
            if pending is not None:
                fwd.add_rollup_work(*pending)
            tags, minutes = set(fwd.dirty_tags), set(fwd.dirty_minutes)
            try:
                note = await self._refresh_owed()
                removed = await self.sink.apply_retention(days, RETENTION_BATCH_ROWS)
            except BaseException:
                fwd.add_rollup_work(tags, minutes)  # the refresh is rolled back with the rest
                raise
        if note is not None:
            await fwd.worker.call(fwd.worker.spool.rollup_done, note)
        return removed

    async def close(self) -> None:
        await self.sink.close()

