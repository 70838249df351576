"""A damaged spool against a real PostgreSQL + TimescaleDB: what can still be forwarded is, what cannot is kept and
said, and nothing blocks the readings behind it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
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

    async def go():
        spool = Spool(path, max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), metrics, asyncio.Event())
        task = asyncio.create_task(fwd.run())
        try:
            await until(lambda: not spool.batches or task.done(), what="the spool drained")
            assert not task.done(), f"the forwarder died: {task.exception()!r}"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fwd.close()
            worker.shutdown()
            spool.close()
        return metrics

    with caplog.at_level(logging.ERROR, logger="edge.forwarder"):
        metrics = asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        stored = dict(conn.execute("SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id"
                                   " GROUP BY 1").fetchall())
        dead = conn.execute("SELECT topic, payload, error FROM dead_letters WHERE source = 'spool'").fetchall()
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
