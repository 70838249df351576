"""Durable store-and-forward spool: SQLite in WAL mode (DESIGN.md §3, §5).

Every batch is committed here before it is acknowledged upstream; the forwarder
reads the oldest batches, writes them to the database, and deletes only what the
database committed. A gateway killed with SIGKILL at any moment therefore loses
nothing it acknowledged; at worst a batch is written to the database twice, which
the database's (tag, time) key makes harmless.

Rows are stored as one msgpack blob per batch (columnar-ish tuples), which keeps
SQLite work per reading tiny. Tag *names* are stored, not database ids, so a spool
survives a database being rebuilt.

A batch whose stored bytes no longer decode (SQLite has no page checksums: a failing SD card) is handed out as one
dead letter holding those bytes (`SpooledBatch.lost` readings), so the batches after it still flow; so is one whose
pages SQLite reports damaged when they are read, which is then marked ``unreadable`` (it cannot be deleted either).

The class is synchronous; `edge.pipeline` runs it on one dedicated thread.

Disk budget: ``max_bytes`` bounds the payload bytes held. When full,
``reject_new`` refuses appends (the pipeline then applies back-pressure: nothing is
acknowledged that was not stored) and ``drop_oldest`` deletes the oldest batches to
make room (counted as dropped); its budget is what waits, not the batches the
forwarder is writing at that moment (`peek` with ``writing``), which are on their way
out. Either way an empty spool takes a commit group larger than the whole budget (it
exceeds the budget by that group), since nothing else could ever make room for it.
The free space of the disk is a second budget with the same policies: the spool
leaves ``DISK_RESERVE_BYTES`` free, so that it can always drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from edge.columns import Columns, from_us, to_us
from edge.files import fsync_path
from edge.records import Quality, Reading

# Payload formats (spools outlive program versions, so old ones stay readable):
# 1: [rows, dead_letters, records?], rows = (tag, time_us, value, receive_time_us, quality, flags, status, server_us)
# 2: [Columns.to_payload(), dead_letters, records?]
_FORMAT_VERSION = 2

log = logging.getLogger(__name__)


def _msgpack_default(obj):
    """Values msgpack does not know: numpy scalars and arrays (model outputs), anything else as text."""
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(obj)


LEGACY_SPAN_MINUTES = 100_000  # ~70 days: the longest rollup span of an older spool note taken whole

VACUUM_MIN_FREE_BYTES = 64 << 20  # free pages worth giving back to the file system (`Spool.vacuum_if_empty`)
# Free space the spool leaves on its file system, whatever its budget: when the disk filled up, even the DELETE of
# batches the database had committed failed (SQLite's write-ahead log and the checkpoint into the file need room), so
# the spool could never drain again by itself. Covers the log (~4 MB between checkpoints) plus the largest commit
# group, twice over. Appends that fit in the file's free pages (those of drained batches) need no room.
DISK_RESERVE_BYTES = 32 << 20


class SpoolFull(Exception):
    """The disk budget is reached and the policy is ``reject_new``."""


@dataclass(slots=True)
class SpooledBatch:
    seq: int
    columns: Columns
    dead_letters: list[tuple]  # (source, topic, payload, error, receive_time_us)
    created: float
    records: list[tuple] = ()  # (kind, dict) of other record types (edge/analytics.py)
    lost: int = 0  # readings of a batch whose stored bytes do not decode (then held as one dead letter)

    @property
    def rows(self) -> list[tuple]:
        """The readings as tuples (tools and tests)."""
        return self.columns.rows()


def encode_readings(readings: list[Reading]) -> list[tuple]:
    # `round(timestamp() * 1e6)` is exact to the microsecond for any date within centuries of now
    # (the double's error is < 0.25 µs there) and several times faster than timedelta arithmetic.
    out = []
    append = out.append
    last_rt = rt_us = None  # a message's readings share one receive time: convert it once
    for r in readings:
        v = r.value
        if v is not None and v.__class__ not in _NATIVE:
            v = v if isinstance(v, bool | int | float | str) else str(v)
        rt = r.receive_time
        if rt is not last_rt:
            last_rt, rt_us = rt, round(rt.timestamp() * 1e6)
        st = r.server_time
        append((r.tag, round(r.time.timestamp() * 1e6), v, rt_us, int(r.quality), r.flags, r.status,
                None if st is None else round(st.timestamp() * 1e6)))
    return out


_NATIVE = (float, int, str, bool)


def decode_readings(rows: list[tuple]) -> list[Reading]:
    """Spool rows back into Readings (used by tools and tests; the sink reads rows directly)."""
    return [Reading(tag=t, time=from_us(ts), value=v, receive_time=from_us(rt), quality=Quality(q),
                    flags=f, status=s, server_time=None if st is None else from_us(st))
            for t, ts, v, rt, q, f, s, st in rows]


def _decode(seq: int, fmt: int, n: int, created: float, payload: bytes) -> SpooledBatch:
    """A stored batch (format 1 or 2) back as a `SpooledBatch`; raises on damaged bytes."""
    body, dead, *records = msgpack.unpackb(payload, raw=False, use_list=False, timestamp=3)
    cols = Columns.from_payload(body) if fmt == 2 else Columns.from_readings(decode_readings(body))
    # Damaged bytes can still unpack: columns of unequal length or tag indexes out of range would fail later, in
    # the COPY encoding, taken there for the database refusing the readings.
    sizes = {a.size for a in (cols.tag_idx, cols.time_us, cols.value, cols.recv_us, cols.quality, cols.flags,
                              cols.status)}
    if sizes != {n} or (n and not 0 <= int(cols.tag_idx.min()) <= int(cols.tag_idx.max()) < len(cols.tags)):
        raise ValueError(f"columns of {sorted(sizes)} rows for {n} readings, or tag indexes out of range")
    if not (all(t.__class__ is str for t in cols.tags)
            and all(i.__class__ is int and 0 <= i < n for i in (*cols.other, *cols.server_us))
            and all(t.__class__ is int for t in cols.server_us.values())):
        raise ValueError("tag names that are not text, or side-table rows out of range")
    return SpooledBatch(seq, cols, list(dead), created, list(records[0]) if records else [])


def _undecodable(path: Path, seq: int, fmt: int, n: int, created: float, payload: bytes,
                 exc: Exception) -> SpooledBatch:
    """A batch that cannot be decoded (or, with no ``payload``, not even read), as one dead letter holding its stored
    bytes (``lost``: its readings)."""
    when = from_us(round(created * 1e6)).isoformat()
    what = ("cannot be decoded", "its stored bytes are this payload") if payload else (
        "cannot be read from the spool file", "its bytes cannot be read")
    error = (f"spool batch {seq} (format {fmt}, {n} readings, spooled {when}) {what[0]}: "
             f"{type(exc).__name__}: {exc}; its readings are lost, {what[1]}")
    return SpooledBatch(seq, Columns.from_readings([]), [("spool", str(path), bytes(payload), error,
                                                          round(created * 1e6))], created, [], lost=n)


def _damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file's content damaged (not a lock, a full disk or permissions)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


# Batches SQLite can neither read nor delete (table ``unreadable``) are left out of everything else.
_LIVE = "seq NOT IN (SELECT seq FROM unreadable)"


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, policy: str = "reject_new",
                 synchronous: str = "full"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.policy = policy
        self._synchronous = synchronous
        # The damaged file set aside at this start (`_set_aside`), or None.
        self.damaged: Path | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if not _damage(exc):
                raise  # not the file's content (a lock, permissions, a full disk): the operator's to fix
            self.damaged = self._set_aside(exc)
            self._open()
        self.dropped = 0  # readings dropped by drop_oldest since start
        # seq -> payload bytes of the batches `peek` handed out and no `delete` took yet: what the forwarder is writing.
        # Replaced whole, never changed in place: `release` comes from the event loop's thread.
        self._in_flight: dict[int, int] = {}
        self.rejected = 0  # readings refused by reject_new since start

    def _open(self) -> None:
        """Open (or create) the file and read what it holds; the connection is closed again if that fails."""
        self._db = db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._synchronous == 'full' else 'NORMAL'}")
            db.execute("PRAGMA busy_timeout=10000")
            # Large outages write GBs; `vacuum_if_empty` gives the disk back once drained. (An auto_vacuum pragma here
            # never took effect: it must come before the file is created, and journal_mode=WAL creates it.)
            db.execute(
                "CREATE TABLE IF NOT EXISTS batches ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, fmt INTEGER NOT NULL, n INTEGER NOT NULL,"
                " nbytes INTEGER NOT NULL, created REAL NOT NULL, payload BLOB NOT NULL)"
            )
            # Rollup buckets the database's readings changed in and that are not recomputed yet. Written in the
            # transaction that deletes the committed batches, so a crash before the refresh cannot lose the work
            # (the batches are gone from here, their rollups not yet made): the next start does it.
            db.execute("CREATE TABLE IF NOT EXISTS rollup_pending ("
                       " id INTEGER PRIMARY KEY AUTOINCREMENT, tags BLOB NOT NULL, start_us INTEGER NOT NULL,"
                       " end_us INTEGER NOT NULL, minutes BLOB)")
            if "minutes" not in {r[1] for r in db.execute("PRAGMA table_info(rollup_pending)")}:
                db.execute("ALTER TABLE rollup_pending ADD COLUMN minutes BLOB")  # a spool file of an older version
            # Small durable state of collectors (`Batch.state`), kept here because it must commit with the readings it
            # belongs to: the MQTT collector's receive times of messages the broker may send again.
            db.execute("CREATE TABLE IF NOT EXISTS source_state (source TEXT NOT NULL, key BLOB NOT NULL,"
                       " value BLOB NOT NULL, PRIMARY KEY (source, key)) WITHOUT ROWID")
            # Batches whose pages SQLite reports damaged when their payload is read or deleted (a broken overflow chain:
            # the table's own pages, read here, are whole). They stay in the file, out of every count and read.
            db.execute("CREATE TABLE IF NOT EXISTS unreadable (seq INTEGER PRIMARY KEY)")
            # The condition every read of batches adds: none while no batch is unreadable (the hot path's reads).
            self._live = f"AND {_LIVE}" if db.execute("SELECT EXISTS (SELECT 1 FROM unreadable)").fetchone()[0] else ""
            row = db.execute("SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) FROM batches"
                             f" WHERE true {self._live}").fetchone()
            self.batches, self.readings, self.bytes = row
        except BaseException:
            self._db.close()
            raise

    def _set_aside(self, exc: sqlite3.DatabaseError) -> Path:
        """Rename a spool file SQLite cannot read (with its -wal and -shm) to ``<name>.damaged-<UTC time>`` and say
        so: the gateway starts on a new spool instead of exiting at every start, collecting nothing, with "file is
        not a database" (read as the PostgreSQL database) and no name of the file. The renamed file is kept for
        ``sqlite3 .recover``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, str(kept) + suffix)
        fsync_path(self.path.parent)
        log.error("spool file %s cannot be read (%s: %s): renamed to %s and a new spool started; the readings it "
                  "held are not forwarded (try `sqlite3 %s .recover`)", self.path, type(exc).__name__, exc, kept, kept,
                  extra={"event": "spool_damaged", "path": str(self.path), "kept": str(kept)})
        return kept

    # -- writing -------------------------------------------------------------------------
    def append_many(self, items: list[tuple]) -> list[int]:
        """Store several batches in one transaction (one fsync); returns their sequence numbers.

        Each item is ``(readings, dead_letters)``, ``(readings, dead_letters, records)`` or ``(readings,
        dead_letters, records, state)``; ``readings`` is a `Columns` (what the ingest stage hands over) or a list
        of `Reading`; ``state`` is ``(source, key, value)`` changes for `save_state`, made in the same transaction.
        Raises SpoolFull (nothing stored) when the budget is reached under ``reject_new`` (an empty spool takes
        even a group larger than the whole budget).
        """
        payloads = []
        state = [op for _, _, *rest in items if len(rest) > 1 for op in rest[1]]
        for readings, dead, *rest in items:
            cols = readings if readings.__class__ is Columns else Columns.from_readings(readings)
            parts = [cols.to_payload(),
                     [(d.source, d.topic, d.payload, d.error, to_us(d.receive_time)) for d in dead]]
            if rest and rest[0]:
                parts.append(rest[0])
            body = msgpack.packb(parts, use_bin_type=True, datetime=True, default=_msgpack_default)
            payloads.append((len(readings), body))
        incoming = sum(len(b) for _, b in payloads)
        n_in = sum(n for n, _ in payloads)
        # Under drop_oldest the budget is what waits: the batches being written are on their way out. Counted, the
        # oldest batches (the ones being written) were dropped and counted lost, and then their COPY committed: stored
        # and counted as lost both (tests/test_edge_spool_budget.py), while the batches that waited were not kept any
        # longer for it. They are held beyond the budget for the time of their write (`Forwarder` writes at most
        # `database.writers` groups at once, and reads one ahead).
        writing = self._in_flight if self.policy == "drop_oldest" else {}
        waiting = self.bytes - sum(writing.values())
        if waiting + incoming > self.max_bytes:
            if self.policy == "drop_oldest":
                self._drop_oldest(waiting + incoming - self.max_bytes, keep=writing)
            elif self.batches:
                # An empty spool takes even a group larger than the whole budget: refusing it would stall the
                # ingest for ever, since nothing can make room for it.
                self.rejected += n_in
                raise SpoolFull(f"spool at {self.bytes} of {self.max_bytes} bytes")
        # The disk as a second budget (DISK_RESERVE_BYTES), with the same policies; an empty spool, again, takes it.
        short = self._disk_short(incoming) if self.batches else None
        if short is not None:
            if self.policy == "drop_oldest":
                self._drop_oldest(incoming)  # their pages are free for this group: the file need not grow
            else:
                self.rejected += n_in
                raise SpoolFull(short)
        now = time.time()
        seqs = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for n, body in payloads:
                cur = db.execute(
                    "INSERT INTO batches (fmt, n, nbytes, created, payload) VALUES (?, ?, ?, ?, ?)",
                    (_FORMAT_VERSION, n, len(body), now, body))
                seqs.append(cur.lastrowid)
            self._state_ops(state)
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.batches += len(payloads)
        self.readings += n_in
        self.bytes += incoming
        return seqs

    def _disk_short(self, incoming: int) -> str | None:
        """Why ``incoming`` payload bytes would eat into the disk's reserve, or None (a statvfs and two pragmas)."""
        db = self._db
        free_pages = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        grow = incoming - free_pages
        if grow <= 0:
            return None
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return None
        if free - grow >= DISK_RESERVE_BYTES:
            return None
        return (f"the disk of {self.path.parent} has {free / 1e6:.1f} MB free; the spool keeps "
                f"{DISK_RESERVE_BYTES / 1e6:.1f} MB of it so that it can still drain")

    def _rollback(self) -> None:
        # A COMMIT that failed for a full disk has already rolled back: a second ROLLBACK raised "cannot rollback -
        # no transaction is active" in place of the real error.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _state_ops(self, ops) -> None:
        for source, key, value in ops:
            if key is None:
                self._db.execute("DELETE FROM source_state WHERE source = ?", (source,))
            elif value is None:
                self._db.execute("DELETE FROM source_state WHERE source = ? AND key = ?", (source, key))
            else:
                self._db.execute("INSERT OR REPLACE INTO source_state (source, key, value) VALUES (?, ?, ?)",
                                 (source, key, value))

    def save_state(self, ops: list[tuple[str, bytes | None, bytes | None]]) -> None:
        """Change collectors' state on its own: ``(source, key, value)``; a None value deletes the key, a None key
        every key of the source."""
        if not ops:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._state_ops(ops)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def load_state(self, source: str) -> dict[bytes, bytes]:
        """A collector's state as committed: key -> value."""
        return dict(self._db.execute("SELECT key, value FROM source_state WHERE source = ?", (source,)).fetchall())

    def _drop_oldest(self, need: int, keep: dict[int, int] | None = None) -> None:
        """Delete the oldest batches, but those in ``keep``, until ``need`` payload bytes are freed."""
        freed = 0
        dropped = 0
        gone = set()
        rows = self._db.execute(f"SELECT seq, n, nbytes FROM batches WHERE true {self._live} ORDER BY seq").fetchall()
        for seq, n, nbytes in rows:
            if freed >= need:
                break
            if keep and seq in keep:
                continue
            freed += nbytes
            dropped += n
            gone.add(seq)
        self._delete_batches(sorted(gone))
        self.batches -= len(gone)
        if gone & self._in_flight.keys():  # the disk's reserve takes even batches being written
            self._in_flight = {s: b for s, b in self._in_flight.items() if s not in gone}
        self.bytes -= freed
        self.readings -= dropped
        self.dropped += dropped

    # -- reading -------------------------------------------------------------------------
    def peek(self, max_rows: int, after_seq: int = 0, writing: bool = False) -> list[SpooledBatch]:
        """The oldest batches (after ``after_seq``) holding up to ``max_rows`` readings (at least one batch).
        ``writing``: the forwarder reads them to write them (outside the budget of ``drop_oldest`` until `delete`
        or `release`); a read from the start (``after_seq`` 0) begins a new pass, releasing what earlier ones read."""
        out: list[SpooledBatch] = []
        total = 0
        claimed = (dict(self._in_flight) if after_seq else {}) if writing else None
        rows = self._rows(after_seq)
        for seq, fmt, n, created, payload in rows:
            if out and total + n > max_rows:
                break
            if fmt not in (1, 2):
                # Written by a newer version (a downgrade with a backlog): readable by it, so not damage to set aside.
                raise RuntimeError(f"spool batch {seq} has unknown format {fmt}")
            if isinstance(payload, sqlite3.DatabaseError):
                # Its pages are damaged (SQLite says so reading it): nothing to keep but the error.
                out.append(_undecodable(self.path, seq, fmt, n, created, b"", payload))
                payload = b""
            else:
                try:
                    out.append(_decode(seq, fmt, n, created, payload))
                except Exception as exc:  # whatever damaged bytes make the decoder raise
                    # SQLite keeps no checksum of a page: bit rot on an SD card or eMMC, or a file restored from a
                    # damaged copy, gives a payload that does not decode. Raised, it stopped the forwarder at this
                    # batch for good (a crash, restarted by the watchdog into the same crash) and every reading
                    # spooled after it waited behind it until the spool was full. Its bytes go to the database as a
                    # dead letter instead (a later version or a person may still read them) and the batches after it
                    # flow.
                    out.append(_undecodable(self.path, seq, fmt, n, created, payload, exc))
            if claimed is not None:
                claimed[seq] = len(payload)
            total += n
        rows.close()
        if claimed is not None:
            self._in_flight = claimed
        return out

    def release(self) -> None:
        """The forwarder stopped writing what it read (a failed write, a stop): those batches wait again."""
        self._in_flight = {}

    def _rows(self, after_seq: int):
        """``(seq, fmt, n, created, payload)`` of the batches after ``after_seq``, oldest first; the payload is the
        SQLite error where damaged pages keep it from being read. One statement while the file reads whole, then
        each payload on its own: raised, one such batch stopped the forwarder's every read at it (a retry with
        back-off for ever, every batch after it waiting until the spool was full), and no restart cured it."""
        db = self._db
        last = after_seq
        try:
            cur = db.execute(f"SELECT seq, fmt, n, created, payload FROM batches WHERE seq > ? {self._live}"
                             " ORDER BY seq", (after_seq,))  # its first step reads the first payload already
            try:
                for row in cur:
                    yield row
                    last = row[0]
                return
            finally:
                cur.close()
        except sqlite3.DatabaseError as exc:
            if not _damage(exc):
                raise
        cur = db.execute(f"SELECT seq, fmt, n, created FROM batches WHERE seq > ? {self._live} ORDER BY seq",
                         (last,))
        try:
            for seq, fmt, n, created in cur:
                try:
                    payload = db.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    if not _damage(exc):
                        raise
                    payload = exc
                yield seq, fmt, n, created, payload
        finally:
            cur.close()

    def _note(self, rollup: tuple[set[int], set[int]] | None) -> int | None:
        """Note the rollup work ``rollup`` (tag ids, 1-minute buckets) in the caller's transaction; its id."""
        if rollup is None or not rollup[1]:
            return None
        tags, minutes = rollup
        return self._db.execute("INSERT INTO rollup_pending (tags, start_us, end_us, minutes) VALUES (?, ?, ?, ?)",
                                (msgpack.packb(sorted(tags)), min(minutes) * 60_000_000, max(minutes) * 60_000_000,
                                 msgpack.packb(sorted(minutes)))).lastrowid

    def _delete_batches(self, seqs: list[int], rollup: tuple[set[int], set[int]] | None = None) -> int | None:
        """Delete ``seqs`` with the note of ``rollup`` in one transaction; returns the note's id.

        A batch whose pages SQLite reports damaged cannot be deleted (freeing its pages reads them), and the error
        leaves the transaction unusable: then the note goes first, on its own (a crash before the deletes writes the
        batches again, which the database's key makes harmless; never the other way round), and each batch alone,
        a damaged one marked `unreadable` instead, out of the way for good."""
        db = self._db
        if not seqs:
            return None
        q = ",".join("?" * len(seqs))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(f"DELETE FROM batches WHERE seq IN ({q})", seqs)
            note = self._note(rollup)
            db.execute("COMMIT")
            return note
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if not _damage(exc):
                raise
        except BaseException:
            self._rollback()
            raise
        note = self._in_transaction(lambda: self._note(rollup))
        for seq in seqs:
            try:
                self._in_transaction(lambda s=seq: db.execute("DELETE FROM batches WHERE seq = ?", (s,)))
            except sqlite3.DatabaseError as exc:
                if not _damage(exc):
                    raise
                self._in_transaction(lambda s=seq: db.execute("INSERT OR IGNORE INTO unreadable (seq) VALUES (?)",
                                                              (s,)))
                self._live = f"AND {_LIVE}"
        return note

    def _in_transaction(self, fn):
        """``fn()`` in a transaction of its own; its result."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return out

    def delete(self, seqs: list[int], rollup: tuple[set[int], set[int]] | None = None) -> int | None:
        """Forget batches the database has committed, and note in the same transaction the rollup work they
        caused (``rollup``: tag ids, the 1-minute buckets as minutes since the epoch); returns the note's id."""
        if not seqs:
            return None
        q = ",".join("?" * len(seqs))
        cnt, n, nbytes = self._db.execute(
            f"SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) FROM batches WHERE seq IN ({q})"
            f" {self._live}", seqs).fetchone()
        note = self._delete_batches(seqs, rollup)
        self.batches -= cnt
        self.readings -= n
        self.bytes -= nbytes
        if self._in_flight:
            self._in_flight = {s: b for s, b in self._in_flight.items() if s not in set(seqs)}
        return note

    def rollup_pending(self) -> tuple[set[int], set[int], int] | None:
        """The rollup work noted and not done: (tag ids, 1-minute buckets, last note id), or None."""
        rows = self._db.execute("SELECT id, tags, start_us, end_us, minutes FROM rollup_pending").fetchall()
        if not rows:
            return None
        tags = {t for _, blob, _, _, _ in rows for t in msgpack.unpackb(blob)}
        minutes: set[int] = set()
        for _, _, start, end, blob in rows:
            if blob is not None:
                minutes.update(msgpack.unpackb(blob))
                continue
            # A note of an older version holds the span only: every minute of it, but a span longer than
            # LEGACY_SPAN_MINUTES is a clock far off (readings at its two ends, not between): its first day and
            # the last LEGACY_SPAN_MINUTES, rather than tens of millions of minutes in memory.
            first, last = start // 60_000_000, end // 60_000_000
            if last - first <= LEGACY_SPAN_MINUTES:
                minutes.update(range(first, last + 1))
            else:
                minutes.update(range(first, first + 1440))
                minutes.update(range(last - LEGACY_SPAN_MINUTES, last + 1))
        return tags, minutes, max(r[0] for r in rows)

    def rollup_done(self, upto: int) -> None:
        """The rollups of every note up to id ``upto`` are recomputed."""
        self._db.execute("DELETE FROM rollup_pending WHERE id <= ?", (upto,))

    def oldest_age_s(self) -> float:
        row = self._db.execute(f"SELECT min(created) FROM batches WHERE true {self._live}").fetchone()
        return 0.0 if row[0] is None else max(0.0, time.time() - row[0])

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return total

    def vacuum_if_empty(self, min_free_bytes: int | None = None) -> int:
        """Give disk back after a drained backlog (the forwarder calls it when idle): with no batch held and at least
        ``min_free_bytes`` of free pages, free them and truncate the write-ahead log. Returns the bytes freed (0:
        nothing done; a stat of two pragmas otherwise). Without it the file stayed at the size of the largest
        outage's backlog for good, also crowding the disk the next outage needs."""
        if self.batches or self._live:
            return 0  # a VACUUM copies every row: it would fail on the damaged ones, every minute
        min_free_bytes = VACUUM_MIN_FREE_BYTES if min_free_bytes is None else min_free_bytes
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0] * page
        if free < min_free_bytes:
            return 0
        before = self.file_bytes()
        # A full VACUUM rewrites only what is left (no batch, the rollup notes): milliseconds, whatever the file's
        # size, and it works on spool files of every age (incremental vacuum needs auto_vacuum from creation).
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return max(0, before - self.file_bytes())

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # a full disk: the write-ahead log stays and the next open recovers it; the stop must go on
        finally:
            self._db.close()
