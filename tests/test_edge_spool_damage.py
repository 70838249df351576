"""A damaged spool against a real PostgreSQL + TimescaleDB: what can still be forwarded is, what cannot is kept and
said, and nothing blocks the readings behind it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
from datetime import timedelta

import msgpack
import psycopg
import pytest
from gateway_proc import GatewayProcess
from opcua_support import until
from ops_support import Publisher, new_run, site_config, stored, wait_for

from edge.columns import Columns
from edge.forwarder import Forwarder
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import Reading, utcnow
from edge.settings import SiteConfig
from edge.spool import Spool


def _cols(tag: str, start, n: int) -> Columns:
    return Columns.from_readings([Reading(tag, start + timedelta(seconds=i), float(i), start) for i in range(n)])


def _unequal_columns(payload: bytes) -> bytes:
    """The batch with one reading's time missing: bytes that unpack, into columns of unequal length."""
    (body, dead) = msgpack.unpackb(payload, raw=False)
    body[2] = body[2][:-8]
    return msgpack.packb([body, dead], use_bin_type=True)


def _side_row_out_of_range(payload: bytes) -> bytes:
    """The batch with a text value for a row it does not have: it unpacks, and the COPY encoding failed on it."""
    (body, dead) = msgpack.unpackb(payload, raw=False)
    body[8] = [[10_000, "text"]]  # (row, value) pairs
    return msgpack.packb([body, dead], use_bin_type=True)


# What a damaged page does to a stored batch: cut short (a torn write), bytes overwritten (bit rot on an SD card:
# SQLite keeps no checksum), bytes that still unpack but into columns of unequal length.
DAMAGE = {
    "cut_short": lambda b: b[:len(b) // 2],
    "overwritten": lambda b: b[:40] + bytes((x ^ 0xA5) for x in b[40:]),
    "unequal_columns": _unequal_columns,
    "side_row_out_of_range": _side_row_out_of_range,
}


def _forward(path, dsn: str, later: Columns | None = None) -> tuple[Metrics, dict[str, int], list[tuple]]:
    """Run a forwarder on the spool file ``path`` until it is drained (then spool ``later`` and drain again): its
    metrics, the readings stored per tag, the dead letters of source 'spool' (topic, payload, error)."""

    async def go() -> Metrics:
        spool = Spool(path, max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        metrics = Metrics()
        fwd = Forwarder(worker, dsn, SiteConfig(), metrics, asyncio.Event())
        task = asyncio.create_task(fwd.run())
        try:
            await until(lambda: not spool.batches or task.done(), what="the spool drained")
            assert not task.done(), f"the forwarder died: {task.exception()!r}"
            if later is not None:
                await worker.call(spool.append_many, [(later, [])])
                await until(lambda: not spool.batches, what="a later batch forwarded")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fwd.close()
            worker.shutdown()
            spool.close()
        return metrics

    metrics = asyncio.run(go())
    with psycopg.connect(dsn) as conn:
        stored = dict(conn.execute("SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id"
                                   " GROUP BY 1").fetchall())
        dead = conn.execute("SELECT topic, payload, error FROM dead_letters WHERE source = 'spool'").fetchall()
    return metrics, stored, dead


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_spool_batch_that_does_not_decode_becomes_a_dead_letter_and_the_rest_flows(damage, pg_dsn, tmp_path,
                                                                                    caplog):
    """A batch whose stored bytes do not decode raised out of the spool's read: the forwarder died at it, the
    watchdog restarted it into the same failure, and every reading spooled after it waited behind it until the
    spool was full. Now its bytes become a dead letter (source 'spool'), counted and logged, and the batches around
    it are stored."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=100 << 20)
    seqs = spool.append_many([(_cols("dmg.before", t0, 10), []), (_cols("dmg.bad", t0, 10), []),
                              (_cols("dmg.after", t0, 10), [])])
    spool.close()
    with sqlite3.connect(path) as side:
        stored = side.execute("SELECT payload FROM batches WHERE seq = ?", (seqs[1],)).fetchone()[0]
        damaged = DAMAGE[damage](stored)
        side.execute("UPDATE batches SET payload = ? WHERE seq = ?", (damaged, seqs[1]))

    with caplog.at_level(logging.ERROR, logger="edge.forwarder"):
        metrics, stored, dead = _forward(path, pg_dsn)
    assert stored == {"dmg.before": 10, "dmg.after": 10}
    assert len(dead) == 1 and dead[0][0] == str(path) and bytes(dead[0][1]) == damaged, dead
    assert f"spool batch {seqs[1]} " in dead[0][2] and "10 readings" in dead[0][2]
    assert metrics.spool_undecodable._value.get() == 10
    assert metrics.dead_letters.labels("spool")._value.get() == 1
    said = [r for r in caplog.records if getattr(r, "event", None) == "spool_batch_undecodable"]
    assert len(said) == 1 and said[0].readings == 10


@pytest.mark.slow
def test_a_spool_file_sqlite_cannot_read_is_set_aside_and_the_gateway_collects(tmp_path, pg_dsn, mosquitto):
    """A spool file that is not an SQLite database any more (a damaged disk, a bad restore): the gateway exited at
    every start with "gateway failed to start: DatabaseError: file is not a database", read as PostgreSQL, naming no
    file, and collected nothing until someone found and moved it. Now the file is renamed aside (its bytes kept for
    recovery), said (spool_damaged) and counted, and the gateway collects and stores on a new spool."""
    run = new_run()
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"not a spool " * 4096
    (state / "spool.db").write_bytes(garbage)
    gw = GatewayProcess(tmp_path / "gw", site_config(pg_dsn, mosquitto.port, run=run, state_dir=str(state)))
    gw.start()
    pub = Publisher(mosquitto.port, run)
    try:
        gw.wait_for(lambda: gw.health()["collectors"]["plant"]["connected"])
        pub.publish(50)
        wait_for(lambda: stored(pg_dsn) >= 50, timeout_s=30, what="readings stored on the new spool")
        kept = list(state.glob("spool.db.damaged-*"))
        assert [k.read_bytes() == garbage for k in kept] == [True], kept
        assert "valvoja_spool_damaged_total 1.0" in gw.metrics()
    finally:
        pub.close()
        assert gw.terminate() == 0
    assert stored(pg_dsn) == 50
    log = gw.log.read_text()
    assert "spool_damaged" in log or f"renamed to {kept[0]}" in log, log[-2000:]


def test_a_spool_file_cut_short_is_set_aside_whole_and_a_locked_one_is_not(tmp_path):
    """A file cut short (SQLITE_CORRUPT, "database disk image is malformed") is set aside with its write-ahead log,
    as one that is no database at all; a spool another process holds locked is the operator's to see, not damage:
    its file stays where it is."""
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=100 << 20)
    t0 = utcnow()
    spool.append_many([(_cols(f"cut.{i}", t0, 200), []) for i in range(40)])
    spool.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    again = Spool(path, max_bytes=100 << 20)
    assert again.damaged is not None and again.damaged.read_bytes() == whole[:len(whole) // 2]
    assert again.batches == 0 and again.append_many([(_cols("cut.new", t0, 5), [])])
    again.close()

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError):
            Spool(path, max_bytes=100 << 20)
    finally:
        holder.close()
    assert len(list(tmp_path.glob("spool.db.damaged-*"))) == 1


def _break_overflow_chain(path, value: float) -> None:
    """Point one overflow page of the batch whose readings all have ``value`` at a page the file does not have: what
    a damaged page in a large payload's chain is. SQLite then reports the file malformed when it reads or deletes
    that batch's payload, and only then (the table's own pages, which a start reads, are whole)."""
    with sqlite3.connect(path) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    fill = struct.pack("<d", value) * (page // 8)
    pages = [i for i in range(len(data) // page) if data[i * page + 8:(i + 1) * page - 8] in fill]
    assert pages, "no overflow page of the batch found"
    at = pages[len(pages) // 2] * page
    data[at:at + 4] = struct.pack(">I", 10**6)  # the next page of the chain
    path.write_bytes(bytes(data))


def test_a_batch_sqlite_reports_damaged_is_passed_over_and_the_rest_flows(pg_dsn, tmp_path):
    """A batch whose payload's overflow chain is broken: SQLite answers "database disk image is malformed" when it
    is read, and when it is deleted. The forwarder's read stopped at it for good (spool_error, retried with back-off
    for ever), every batch after it waited until the spool was full, and a restart did not help (the start reads
    only the table's own pages). Now it becomes a dead letter naming the error, is marked unreadable in the spool
    (out of its counts, its reads and drop_oldest), and the batches around it are stored."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=100 << 20)

    def batch(tag: str, value: float) -> Columns:
        return Columns.from_readings([Reading(tag, t0 + timedelta(milliseconds=i), value, t0) for i in range(3000)])

    seqs = spool.append_many([(batch("ovf.before", 1.5), []), (batch("ovf.bad", 4242.4242), []),
                              (batch("ovf.after", 2.5), [])])
    spool.close()
    _break_overflow_chain(path, 4242.4242)

    at_start = Spool(path, max_bytes=100 << 20)
    assert at_start.damaged is None and at_start.batches == 3  # nothing to see at the start
    at_start.close()
    metrics, stored, dead = _forward(path, pg_dsn, later=batch("ovf.later", 3.5))
    assert stored == {"ovf.before": 3000, "ovf.after": 3000, "ovf.later": 3000}
    assert len(dead) == 1 and bytes(dead[0][1]) == b"" and "malformed" in dead[0][2], dead
    assert f"spool batch {seqs[1]} " in dead[0][2] and "cannot be read" in dead[0][2]
    assert metrics.spool_undecodable._value.get() == 3000
    again = Spool(path, max_bytes=100 << 20)  # the next start counts nothing of it, and can still drop the oldest
    assert (again.batches, again.readings, again.oldest_age_s()) == (0, 0, 0.0)
    again.close()


def test_drop_oldest_makes_room_past_a_batch_sqlite_reports_damaged(tmp_path):
    """drop_oldest deletes the oldest batches to make room; one SQLite cannot delete (its pages damaged) failed the
    whole append, and the ingest retried it for ever, acknowledging nothing. It is marked unreadable (counted
    dropped) and the others go."""
    t0 = utcnow()
    path = tmp_path / "spool.db"

    def batch(value: float) -> Columns:
        return Columns.from_readings([Reading("drop.t", t0 + timedelta(milliseconds=i), value, t0)
                                      for i in range(3000)])

    spool = Spool(path, max_bytes=100 << 20)
    spool.append_many([(batch(4242.4242), []), (batch(1.5), [])])
    one = spool.bytes // 2
    spool.close()
    _break_overflow_chain(path, 4242.4242)
    spool = Spool(path, max_bytes=round(2.5 * one), policy="drop_oldest")
    spool.append_many([(batch(2.5), [])])  # over the budget: the damaged (oldest) batch goes
    assert (spool.batches, spool.readings, spool.dropped) == (2, 6000, 3000)
    assert [b.columns.value[0] for b in spool.peek(10**6)] == [1.5, 2.5]
    spool.close()
