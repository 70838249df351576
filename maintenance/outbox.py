"""The notification outbox on disk: alert changes each receiver has not taken yet, kept across restarts.

The gateway's notifiers send from one in-memory queue per receiver, and a receiver that is down holds its
changes there until it is back (edge/analytics.py). Held only in memory, they were lost by every stop of the
gateway: a reload (SIGHUP builds a new gateway), an upgrade, a watchdog exit, a power cut. A critical alert raised
while the paging webhook was restarting, or a second before a crash, was then stored but never paged. Here each
change is written (SQLite, WAL, synchronous FULL) before it is queued, deleted once its receiver took or refused
it, and the rows left at the next start are queued first, in their order.

Delivery is at least once: a stop between a receiver's acknowledgement and the delete sends that change again at
the next start. Every notification carries an id derived from the change (`maintenance.notify.notification_id`,
also the webhook's ``Idempotency-Key`` header), the same for each copy, so a receiver can drop repeats.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import msgpack

from edge.records import Alert
from edge.spool import _msgpack_default  # numpy values in evidence, as the spool packs them
from maintenance.alerts import AlertChange

OUTBOX_FILE = "notify_outbox.db"


def encode(ch: AlertChange) -> bytes:
    return msgpack.packb(dataclasses.asdict(ch), use_bin_type=True, datetime=True, default=_msgpack_default)


def decode(blob: bytes) -> AlertChange:
    d = msgpack.unpackb(blob, raw=False, timestamp=3)  # times come back as aware datetimes
    return AlertChange(**(d | {"alert": Alert(**d["alert"])}))


class Outbox:
    """Rows ``(seq, receiver, change)``; thread-safe (called from worker threads, one call at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a change is acknowledged as queued only once it is on disk
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                         " receiver TEXT NOT NULL, change BLOB NOT NULL)")

    def add(self, rows: list[tuple[str, AlertChange]]) -> list[int]:
        """Keep ``(receiver, change)`` rows, in one transaction; their sequence numbers in order."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                seqs = [self._db.execute("INSERT INTO pending (receiver, change) VALUES (?, ?)",
                                         (r, encode(ch))).lastrowid for r, ch in rows]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seqs

    def done(self, seqs: list[int]) -> None:
        """Forget changes their receiver took (or refused for good)."""
        if seqs:
            with self._lock:
                self._db.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in seqs])

    def pending(self, receiver: str) -> list[tuple[int, AlertChange]]:
        """What ``receiver`` has not taken yet, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, change FROM pending WHERE receiver = ? ORDER BY seq",
                                    (receiver,)).fetchall()
        return [(seq, decode(blob)) for seq, blob in rows]

    def forget_others(self, receivers: set[str]) -> int:
        """Drop the changes of receivers no longer configured; how many."""
        with self._lock:
            names = [r for (r,) in self._db.execute("SELECT DISTINCT receiver FROM pending")]
            gone = [r for r in names if r not in receivers]
            n = 0
            for r in gone:
                n += self._db.execute("DELETE FROM pending WHERE receiver = ?", (r,)).rowcount
            return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
