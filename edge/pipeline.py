"""Ingest: collectors' batches -> validation -> durable spool -> upstream acknowledgement.

Collectors call `Ingest.emit`, which waits while the bounded queue is full: that is
the back-pressure (MQTT stops being read and the broker keeps the messages; OPC UA
notifications wait). One task drains the queue, validates every batch it finds and
commits them to the spool in one transaction (group commit: one fsync however many
batches arrived meanwhile), and only then calls each batch's ``ack``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge.columns import Columns, Rows, from_us
from edge.metrics import Metrics
from edge.records import Batch, DeadLetter, Flag, Reading, utcnow
from edge.spool import Spool, SpoolFull
from edge.validate import TAG_PREFIX_BYTES, TEXT_PREFIX_BYTES, Validator, oversized_tags, oversized_texts, text_prefix

log = logging.getLogger(__name__)

GROUP_MAX_READINGS = 50_000
FULL_RETRY_S = 0.5
TOO_LARGE_LOG_EVERY_S = 60.0  # reading_too_large, tag_name_too_long at most this often (with the count meanwhile)
TEXT_LIMIT, TAG_LIMIT = "max_text_bytes", "max_tag_bytes"  # the validation key a set-aside reading was over
FUTURE_LOG_EVERY_S = 60.0  # readings_ahead_of_clock at most this often (with the count meanwhile)


class SpoolWorker:
    """Runs every spool call on one thread: SQLite work never blocks the event loop."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class SourceState:
    """A collector's small durable state in the spool (`CollectorContext.state`). What must hold exactly when some
    readings do goes with their batch (`Batch.state`, the same transaction); `save` is for the rest."""

    def __init__(self, worker: SpoolWorker, source: str):
        self.worker = worker
        self.source = source

    async def load(self) -> dict[bytes, bytes]:
        return await self.worker.call(self.worker.spool.load_state, self.source)

    async def save(self, changes: list[tuple[bytes | None, bytes | None]]) -> None:
        """``(key, value)`` changes; a None value deletes the key, a None key every key. Sent to the spool thread
        before the first await, so a batch emitted after this call is committed after these changes."""
        await self.worker.call(self.worker.spool.save_state, [(self.source, k, v) for k, v in changes])


class Ingest:
    def __init__(self, worker: SpoolWorker, validator: Validator, metrics: Metrics, *, queue_batches: int):
        self.worker = worker
        self.validator = validator
        self.metrics = metrics
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=queue_batches)
        self.spooled = asyncio.Event()  # set after each commit; wakes the forwarder
        self.full_since: float | None = None
        self.accepted = 0  # readings durable in the spool since start
        self.last_error: str | None = None
        self._committing: asyncio.Future | None = None
        self._dropped_seen = 0  # the spool's drop_oldest count already reported
        self._drop_logged = -math.inf  # monotonic time of the last log line about dropping
        # Per limit (TEXT_LIMIT, TAG_LIMIT): monotonic time of its last log line, readings set aside since without one.
        self._too_large_logged = {TEXT_LIMIT: -math.inf, TAG_LIMIT: -math.inf}
        self._too_large_quiet = {TEXT_LIMIT: 0, TAG_LIMIT: 0}
        self._future_logged = -math.inf  # monotonic time of the last readings_ahead_of_clock line
        self._future_quiet = 0  # readings kept from analytics for their future time since, without a line
        # Called as on_spooled(readings, latest) for each committed group (live analytics): the readings of the
        # `analytics_tags` (None: all) not made by analytics itself, and the group's latest reading time (which
        # keeps analytics' clock going when none of its tags is in the group); must not block.
        self.on_spooled = None
        self.analytics_tags: frozenset[str] | None = None

    @property
    def committing(self) -> bool:
        """A group is being written to the spool (taken from the queue: the queue may be empty meanwhile)."""
        return self._committing is not None and not self._committing.done()

    async def emit(self, batch: Batch) -> None:
        """Hand a batch over; waits while the queue is full (back-pressure)."""
        await self.queue.put(batch)
        self.metrics.queue_depth.set(self.queue.qsize())

    async def run(self) -> None:
        while True:
            group = [await self.queue.get()]
            # Shielded: cancelling this task (shutdown) must not cut a commit in two (taken from the queue, its
            # spool write cancelled while waiting for the spool thread: in neither place). `drain` finishes it.
            self._committing = asyncio.ensure_future(self._commit(self._take_more(group)))
            await asyncio.shield(self._committing)

    def _take_more(self, group: list[Batch]) -> list[Batch]:
        n = len(group[0].readings)
        while n < GROUP_MAX_READINGS and not self.queue.empty():
            b = self.queue.get_nowait()
            group.append(b)
            n += len(b.readings)
        return group

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Spool whatever is still queued (shutdown path, collectors already stopped), within ``timeout_s``: a
        spool that stays full gives up; what it could not store was never acknowledged upstream."""
        give_up = time.monotonic() + timeout_s
        if self._committing is not None and not self._committing.done():
            # The group `run` was writing when it was cancelled: let it finish, within the same time.
            await asyncio.wait({self._committing}, timeout=timeout_s)
            if not self._committing.done():
                self._committing.cancel()
                # No error yet and not full: the write is still waiting in the spool thread (a lock, a hung disk).
                why = self.last_error or ("spool full" if self.full_since is not None else "the spool did not answer")
                log.error("shutting down: a group could not be spooled in %.0f s (%s); not acknowledged upstream",
                          timeout_s, why, extra={"event": "drain_gave_up"})
        while not self.queue.empty():
            await self._commit(self._take_more([self.queue.get_nowait()]), give_up_at=give_up)

    async def _commit(self, group: list[Batch], give_up_at: float | None = None) -> None:
        # The group becomes one Columns, validated and spooled as one row: array work over tens of
        # thousands of readings at once costs far less per reading than per message.
        try:
            cols = Columns.concat(_columns_of(group))
            counts = [len(b.readings) for b in group]  # readings of each batch in `cols`, in order
            too_large: list[tuple[str, DeadLetter]] = []
            texts = oversized_texts(cols, self.validator.max_text_bytes)
            names = oversized_tags(cols, self.validator.max_tag_bytes)
            if texts or names:
                cols, counts, too_large = self._set_aside(group, cols, counts, texts, names)
            self.validator.apply(cols, utcnow())
        except Exception as exc:  # a bug some value found: the group cannot be spooled; tell who waits, then fail
            _nack(group, exc)
            raise
        # The frozen-value rule's runs go in the commit of the readings they describe (a restart goes on from them).
        items = [(cols, [d for b in group for d in b.dead_letters] + [d for _, d in too_large],
                  [r for b in group for r in b.records],
                  [(b.source, k, v) for b in group if b.state for k, v in b.state] + self.validator.take_state_ops())]
        n = len(cols)
        rejected = failed = False
        while True:
            try:
                await self.worker.call(self.worker.spool.append_many, items)
                break
            except SpoolFull as exc:
                # reject_new: nothing is acknowledged that is not stored; collectors wait.
                if self.full_since is None:
                    self.full_since = time.monotonic()
                    log.error("spool full, refusing new readings until the database drains it",
                              extra={"event": "spool_full", "detail": str(exc)})
                if not rejected:  # a group is refused once, however long it waits
                    rejected = True
                    self.metrics.spool_rejected.inc(n)
            except Exception as exc:  # disk error, locked database: retry, never ack unstored data
                error = f"{type(exc).__name__}: {exc}"
                self.metrics.spool_errors.inc()
                if error != self.last_error:  # once per kind of failure, not every retry
                    log.exception("spool write failed; retrying every %.1f s", FULL_RETRY_S,
                                  extra={"event": "spool_error", "readings": n})
                self.last_error = error
                failed = True
            if give_up_at is not None and time.monotonic() > give_up_at:
                log.error("shutting down: %d readings could not be spooled (%s); not acknowledged upstream, so "
                          "MQTT brokers send them again", n, self.last_error or "spool full",
                          extra={"event": "drain_gave_up", "readings": n})
                _nack(group, RuntimeError("not spooled at shutdown"))
                return
            await asyncio.sleep(FULL_RETRY_S)
        self._report_dropped()
        if failed:
            log.warning("spool writes work again", extra={"event": "spool_recovered", "error": self.last_error})
            self.last_error = None
        if self.full_since is not None:
            log.warning("spool accepting readings again after %.1f s full", time.monotonic() - self.full_since,
                        extra={"event": "spool_resumed"})
            self.full_since = None
        self.accepted += n
        self.metrics.queue_depth.set(self.queue.qsize())
        for limit, d in too_large:
            self.metrics.dead_letters.labels(d.source).inc()
            too_long = self.metrics.tag_names_too_long if limit == TAG_LIMIT else self.metrics.readings_too_large
            too_long.labels(d.source).inc()
        for b, k in zip(group, counts, strict=True):
            self.metrics.readings_in.labels(b.source).inc(k)
            if b.dead_letters:
                self.metrics.dead_letters.labels(b.source).inc(len(b.dead_letters))
            if b.ack is not None:
                try:
                    b.ack()
                except Exception:
                    # The data is safe in the spool; a failed ack means the peer may redeliver,
                    # which the database key de-duplicates.
                    log.exception("upstream acknowledgement failed", extra={"event": "ack_error",
                                                                            "collector": b.source})
        self.spooled.set()
        if self.on_spooled is not None and n:
            # Analytics' clock is the data's (a replay escalates as it happened), but never ahead of receipt:
            # one device with its clock far ahead must not escalate every open alert.
            latest = from_us(int(min(cols.time_us.max(), cols.recv_us.max())))
            self.on_spooled(self._for_analytics(group, cols, counts), latest)

    def _set_aside(self, group: list[Batch], cols: Columns, counts: list[int], texts: list[tuple[int, int]],
                   names: list[tuple[int, int]]) -> tuple[Columns, list[int], list[tuple[str, DeadLetter]]]:
        """Readings with a text value over ``validation.max_text_bytes`` or a tag name over
        ``validation.max_tag_bytes`` (``(row, size)`` each) leave the group as dead letters of their batch's source
        (size, time and first bytes; never the whole text or name); every other reading goes on. Returns the
        readings left, each batch's count of them, and the dead letters with the limit each was over (spooled in the
        same commit)."""
        owner = np.repeat(np.arange(len(group)), counts)
        dead: dict[int, tuple[str, DeadLetter]] = {}
        for i, size in names:
            name = text_prefix(cols.tags[int(cols.tag_idx[i])], TAG_PREFIX_BYTES).decode()
            value = cols.value_at(i)
            payload = text_prefix(value) if isinstance(value, str) else b"" if value is None else str(value).encode()
            dead[i] = TAG_LIMIT, _dead_letter(
                group[int(owner[i])].source, name, payload, cols, i,
                f"tag name of {size} bytes is over validation.max_tag_bytes ({self.validator.max_tag_bytes})",
                f"topic = its first {len(name.encode())} bytes, payload = the value (of a text its first "
                f"{TEXT_PREFIX_BYTES} bytes at most)")
        for i, size in texts:
            if i in dead:
                continue  # one dead letter a reading: its name's, which keeps the text's first bytes too
            prefix = text_prefix(cols.other[i])
            dead[i] = TEXT_LIMIT, _dead_letter(
                group[int(owner[i])].source, cols.tags[int(cols.tag_idx[i])], prefix, cols, i,
                f"text value of {size} bytes is over validation.max_text_bytes ({self.validator.max_text_bytes})",
                f"its first {len(prefix)} bytes kept")
        self._log_set_aside(TAG_LIMIT, names, dead)
        self._log_set_aside(TEXT_LIMIT, [(i, n) for i, n in texts if dead[i][0] == TEXT_LIMIT], dead)
        keep = [i for i in range(len(cols)) if i not in dead]
        counts = np.bincount(owner[keep], minlength=len(group)).tolist() if keep else [0] * len(group)
        return cols.take(keep), counts, [dead[i] for i in sorted(dead)]

    def _log_set_aside(self, limit: str, rows: list[tuple[int, int]], dead: dict[int, tuple[str, DeadLetter]]) -> None:
        """One warning per limit at most every TOO_LARGE_LOG_EVERY_S, with the first of ``rows`` and the count of
        those set aside meanwhile without a line."""
        if not rows:
            return
        now = time.monotonic()
        if now - self._too_large_logged[limit] < TOO_LARGE_LOG_EVERY_S:
            self._too_large_quiet[limit] += len(rows)
            return
        self._too_large_logged[limit] = now
        quiet, self._too_large_quiet[limit] = self._too_large_quiet[limit], 0
        more = f" ({quiet} more since the last report)" if quiet else ""
        first, size = dead[rows[0][0]][1], rows[0][1]
        if limit == TEXT_LIMIT:
            log.warning("%d text value(s) over validation.max_text_bytes (%d) kept as dead letters, not readings; "
                        "first: %s from %s, %d bytes%s", len(rows), self.validator.max_text_bytes, first.topic,
                        first.source, size, more, extra={"event": "reading_too_large", "collector": first.source,
                                                          "tag": first.topic, "bytes": size, "count": len(rows)})
        else:
            shown = first.topic[:80] + "..."  # the dead letter keeps more; a log line need not be kilobytes
            log.warning("%d reading(s) with a tag name over validation.max_tag_bytes (%d) kept as dead letters, not "
                        "readings; first: %s from %s, %d bytes%s", len(rows), self.validator.max_tag_bytes, shown,
                        first.source, size, more, extra={"event": "tag_name_too_long", "collector": first.source,
                                                          "tag": shown, "bytes": size, "count": len(rows)})

    def _report_dropped(self) -> None:
        """drop_oldest discarded spooled readings to make room: count them, and say so (at most once a minute)."""
        dropped = self.worker.spool.dropped
        if dropped == self._dropped_seen:
            return
        self.metrics.spool_dropped.inc(dropped - self._dropped_seen)
        self._dropped_seen = dropped
        if time.monotonic() - self._drop_logged >= 60.0:
            self._drop_logged = time.monotonic()
            log.error("spool full: oldest readings dropped to make room (%d since start); the database is not "
                      "draining the spool", dropped, extra={"event": "spool_dropped", "dropped": dropped})

    def _for_analytics(self, group: list[Batch], cols: Columns, counts: list[int]) -> list[Reading]:
        """`Reading` objects for analytics: only the rows of tags it uses (a `Reading` costs more to make than
        the whole ingest of a reading), never what analytics made itself, never a reading from the future.
        ``counts``: each batch's readings in ``cols``."""
        keep = np.repeat(np.array([b.source != "analytics" for b in group]), counts)
        if self.analytics_tags is not None:
            want = np.fromiter((t in self.analytics_tags for t in cols.tags), bool, len(cols.tags))
            keep &= want[cols.tag_idx]
        # A reading stamped ahead of the gateway's clock is stored (flagged) but not analysed: analyses run on the
        # data's time, and one such reading would move their windows and clocks into the future.
        future = keep & ((cols.flags & int(Flag.FUTURE_TIME)) != 0)
        if future.any():
            keep &= ~future
            self._log_future(group, cols, counts, future)
        return cols.readings(np.flatnonzero(keep)) if keep.any() else []

    def _log_future(self, group: list[Batch], cols: Columns, counts: list[int], future: np.ndarray) -> None:
        """Say which device's clock is ahead, at most every FUTURE_LOG_EVERY_S: its readings were kept from
        analytics with nothing but a counter, and its asset's anomaly scores, zones and rules stopped while the
        console showed its values (a PLC without time synchronisation, a few seconds ahead)."""
        rows = np.flatnonzero(future)
        now = time.monotonic()
        if now - self._future_logged < FUTURE_LOG_EVERY_S:
            self._future_quiet += len(rows)
            return
        self._future_logged = now
        quiet, self._future_quiet = self._future_quiet, 0
        i = int(rows[0])
        source = group[int(np.searchsorted(np.cumsum(counts), i, side="right"))].source
        tag = cols.tags[int(cols.tag_idx[i])]
        ahead = (int(cols.time_us[i]) - int(cols.recv_us[i])) / 1e6
        more = f" ({quiet} more since the last report)" if quiet else ""
        log.warning("%d reading(s) stamped ahead of the gateway clock (beyond validation.future_tolerance_s) are "
                    "stored, flagged future_time, but not analysed; first: %s from %s, %.1f s ahead of its receipt: "
                    "the device's clock%s", len(rows), tag, source, ahead, more,
                    extra={"event": "readings_ahead_of_clock", "collector": source, "tag": tag, "ahead_s": ahead,
                           "count": len(rows)})


def _nack(group: list[Batch], exc: BaseException) -> None:
    """Tell the collectors waiting for these batches' acks that they will not come (the batches are gone)."""
    for b in group:
        if b.nack is not None:
            b.nack(exc)


def _dead_letter(source: str, topic: str, payload: bytes, cols: Columns, i: int, why: str,
                 kept: str) -> DeadLetter:
    """Row ``i`` of ``cols`` set aside as a dead letter: ``why``, then the reading's time and quality, then what
    of it was ``kept``."""
    when = from_us(int(cols.time_us[i])).isoformat()
    return DeadLetter(source, topic, payload, f"{why}; not stored as a reading (time {when}, quality "
                                              f"{int(cols.quality[i])}); {kept}", from_us(int(cols.recv_us[i])))


def _columns_of(group: list[Batch]) -> list[Columns]:
    """The group's readings as few `Columns`, in order: runs of decoder `Rows` become one each."""
    parts: list[Columns] = []
    run: list[Rows] = []
    for b in group:
        r = b.readings
        if r.__class__ is Rows:
            run.append(r)
            continue
        if run:
            parts.append(Columns.from_rows(run))
            run = []
        parts.append(r if r.__class__ is Columns else Columns.from_readings(r))
    if run:
        parts.append(Columns.from_rows(run))
    return parts
