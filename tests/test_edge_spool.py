"""The durable spool: ordering, deletion, budget policies, crash safety (a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from edge.records import DeadLetter, Quality, Reading, utcnow
from edge.spool import Spool, SpoolFull, decode_readings


def _readings(n: int, tag: str = "t", start: int = 0) -> list[Reading]:
    now = utcnow()
    return [Reading(tag=tag, time=now + timedelta(milliseconds=i + start), value=float(i + start), receive_time=now)
            for i in range(n)]


def test_append_peek_delete_round_trip(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=10**8)
    rs = _readings(5)
    rs[1].value = "text"
    rs[2].value = None
    rs[3].value = True
    rs[4].quality = Quality.BAD
    rs[4].server_time = rs[4].time
    dl = DeadLetter("mqtt", "a/b", b"\x00junk", "not JSON", utcnow())
    seqs = sp.append_many([(rs[:3], [dl]), (rs[3:], [])])
    assert sp.readings == 5 and sp.batches == 2
    got = sp.peek(100)
    assert [b.seq for b in got] == seqs
    back = decode_readings(got[0].rows + got[1].rows)
    assert [(r.tag, r.time, r.value, r.quality, r.server_time) for r in back] == \
           [(r.tag, r.time, r.value, r.quality, r.server_time) for r in rs]
    assert got[0].dead_letters[0][:4] == ("mqtt", "a/b", b"\x00junk", "not JSON")
    sp.delete([seqs[0]])
    assert [b.seq for b in sp.peek(100)] == [seqs[1]]
    assert sp.readings == 2
    sp.close()
    # Counters are rebuilt from the file after a restart.
    sp2 = Spool(tmp_path / "s.db", max_bytes=10**8)
    assert (sp2.readings, sp2.batches) == (2, 1)


def test_peek_respects_row_budget_but_returns_at_least_one_batch(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=10**8)
    sp.append_many([(_readings(10), []), (_readings(10, start=10), []), (_readings(10, start=20), [])])
    assert len(sp.peek(25)) == 2
    assert len(sp.peek(5)) == 1  # a batch larger than the budget still moves


def test_reject_new_refuses_without_storing(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=1_000_000, policy="reject_new")
    big = _readings(20_000)
    with pytest.raises(SpoolFull):
        for _ in range(100):
            sp.append_many([(big, [])])
    held = sp.readings
    assert held > 0 and sp.bytes <= sp.max_bytes
    assert sp.rejected == 20_000
    # Nothing half-written: the file holds exactly what the counters say.
    assert sum(len(b.rows) for b in sp.peek(10**9)) == held


def test_collector_state_commits_with_its_readings_and_not_without_them(tmp_path):
    """`Batch.state` (the MQTT collector's remembered receive times) is written in the transaction of the readings
    it belongs to: a group the spool refuses changes no state either."""
    sp = Spool(tmp_path / "s.db", max_bytes=1_000_000, policy="reject_new")
    sp.append_many([(_readings(3), [], [], [("mq", b"\x00\x01", b"one"), ("mq", b"\x00\x02", b"two")])])
    sp.append_many([(_readings(3), [], [], [("mq", b"\x00\x01", None), ("other", b"\x00\x01", b"x")])])
    assert sp.load_state("mq") == {b"\x00\x02": b"two"} and sp.load_state("other") == {b"\x00\x01": b"x"}
    with pytest.raises(SpoolFull):
        for _ in range(100):
            sp.append_many([(_readings(20_000), [])])
    with pytest.raises(SpoolFull):
        sp.append_many([(_readings(20_000), [], [], [("mq", b"\x00\x05", b"five")])])
    assert sp.load_state("mq") == {b"\x00\x02": b"two"}  # the refused group changed nothing
    sp.save_state([("mq", None, None)])
    sp.close()
    sp = Spool(tmp_path / "s.db", max_bytes=1_000_000)
    assert sp.load_state("mq") == {} and sp.load_state("other") == {b"\x00\x01": b"x"}
    sp.close()


def test_drop_oldest_keeps_newest_within_budget(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=1_000_000, policy="drop_oldest")
    for i in range(60):
        sp.append_many([(_readings(2_000, tag=f"b{i}"), [])])
    assert sp.bytes <= sp.max_bytes
    assert sp.dropped > 0
    tags = [b.rows[0][0] for b in sp.peek(10**9)]
    assert tags[-1] == "b59" and "b0" not in tags
    assert sp.dropped + sp.readings == 60 * 2_000


CHILD = textwrap.dedent("""
    import sys, os
    from datetime import timedelta
    from edge.records import Reading, utcnow
    from edge.spool import Spool
    sp = Spool(sys.argv[1], max_bytes=10**9)
    now = utcnow()
    i = 0
    while True:
        rs = [Reading(tag="k", time=now + timedelta(microseconds=i * 100 + j), value=float(i), receive_time=now)
              for j in range(100)]
        sp.append_many([(rs, [])])
        # "acknowledge" only after the commit returned, like the pipeline does
        print(i, flush=True)
        i += 1
""")


def test_sigkill_loses_no_acknowledged_batch(tmp_path):
    path = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sp = Spool(path, max_bytes=10**9)
    values = sorted({r[2] for b in sp.peek(10**9) for r in b.rows})
    # Every acknowledged batch is there, in order, none twice.
    assert values[: acked + 1] == [float(i) for i in range(acked + 1)]
    assert sp.readings == 100 * len(values)


async def test_shutdown_mid_commit_loses_no_group(tmp_path):
    """Cancelling the ingest task while its group waits for the spool thread (busy with the forwarder's work) left
    the group neither in the queue nor in the spool; now the commit finishes and the ack follows it."""
    import asyncio
    import time

    from edge.metrics import Metrics
    from edge.pipeline import Ingest, SpoolWorker
    from edge.records import Batch
    from edge.settings import Validation
    from edge.validate import Validator

    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Validator({}, Validation()), Metrics(), queue_batches=16)
    acked = []
    task = asyncio.create_task(ingest.run())
    busy = asyncio.ensure_future(worker.call(time.sleep, 0.5))  # the forwarder's peek, say
    await asyncio.sleep(0.05)
    now = utcnow()
    await ingest.emit(Batch("mq", [Reading("A.x", now, 1.0, now)], ack=lambda: acked.append(1)))
    await asyncio.sleep(0.05)  # run() took the group; its spool write waits behind the busy thread
    assert ingest.queue.empty() and worker.spool.readings == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ingest.drain(5.0)
    await busy
    assert worker.spool.readings == 1 and acked == [1]
    worker.shutdown()


async def test_a_group_that_cannot_be_spooled_is_nacked(tmp_path):
    """A collector waiting for its batch's ack (OPC UA answers the server only then) is told when the batch
    cannot be spooled at all, instead of waiting for ever."""
    import asyncio

    from edge.metrics import Metrics
    from edge.pipeline import Ingest, SpoolWorker
    from edge.records import Batch
    from edge.settings import Validation
    from edge.validate import Validator

    class Broken(Validator):  # a bug that some value finds
        def apply(self, cols, now):
            raise RuntimeError("validator bug")

    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Broken({}, Validation()), Metrics(), queue_batches=16)
    told: list[BaseException] = []
    task = asyncio.create_task(ingest.run())
    now = utcnow()
    await ingest.emit(Batch("ua", [Reading("A.x", now, 1.0, now)], ack=lambda: told.append(None),
                            nack=told.append))
    with pytest.raises(RuntimeError, match="validator bug"):
        await asyncio.wait_for(task, 5)  # the task dies (the watchdog restarts it) ...
    assert [str(e) for e in told] == ["validator bug"]  # ... and the collector was told first
    worker.shutdown()


async def test_a_group_larger_than_the_whole_budget_is_stored_in_an_empty_spool(tmp_path):
    """After back-pressure the queue holds many batches and the ingest task takes them as one group of up to
    GROUP_MAX_READINGS readings. Under reject_new a group larger than the whole budget was refused even by an
    empty spool, and retried for ever: ingest stalled although the database had drained everything."""
    from edge.metrics import Metrics
    from edge.pipeline import Ingest, SpoolWorker
    from edge.records import Batch
    from edge.settings import Validation
    from edge.validate import Validator

    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=1_000_000, policy="reject_new"))  # config minimum
    ingest = Ingest(worker, Validator({}, Validation()), Metrics(), queue_batches=64)
    acked = []
    for i in range(50):  # what a collector queued while the spool was full: 50,000 readings, ~2 MB spooled
        await ingest.emit(Batch("mq", _readings(1_000, tag=f"g{i}"), ack=lambda: acked.append(1)))
    await ingest.drain(3.0)
    assert worker.spool.readings == 50_000 and len(acked) == 50
    # Beyond the budget by that one group only: the next is refused until the database drains the spool.
    with pytest.raises(SpoolFull):
        worker.spool.append_many([(_readings(10), [])])
    worker.shutdown()


def test_rollup_notes_of_an_older_spool_file_are_read(tmp_path):
    """A spool file written by the version before rollup work went by minute: its table gets the minutes column,
    and its notes (a span) are read as the minutes of that span; a span of decades (a clock at 1970) as its
    first day and its last ~70 days, not tens of millions of minutes."""
    import sqlite3

    import msgpack

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE rollup_pending (id INTEGER PRIMARY KEY AUTOINCREMENT, tags BLOB NOT NULL,"
               " start_us INTEGER NOT NULL, end_us INTEGER NOT NULL)")
    m = 60_000_000
    db.execute("INSERT INTO rollup_pending (tags, start_us, end_us) VALUES (?, ?, ?)",
               (msgpack.packb([1, 2]), 28_000_000 * m + 5, 28_000_002 * m + 7))
    db.commit()
    db.close()
    sp = Spool(path, max_bytes=10**8)
    assert sp.rollup_pending() == ({1, 2}, {28_000_000, 28_000_001, 28_000_002}, 1)
    note = sp.delete([1], ({3}, {29_000_000}))  # no such batch: only the note
    assert note == 2 and sp.rollup_pending()[1] == {28_000_000, 28_000_001, 28_000_002, 29_000_000}
    sp.rollup_done(2)
    sp._db.execute("INSERT INTO rollup_pending (tags, start_us, end_us) VALUES (?, ?, ?)",
                   (msgpack.packb([1]), 5 * m, 29_000_000 * m))
    minutes = sp.rollup_pending()[1]
    assert 5 in minutes and 29_000_000 in minutes and 100_000 < len(minutes) < 110_000
    sp.close()


def _fill_to(path, leave_bytes: int) -> None:
    """Take the free space of ``path``'s file system down to ``leave_bytes`` (other files on the volume)."""
    import shutil

    with open(path / "other-files", "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(path).free - leave_bytes))


@pytest.mark.parametrize("policy", ["reject_new", "drop_oldest"])
def test_the_disk_reserve_is_a_budget_and_drained_pages_are_used_again(tmp_path, policy):
    """Past its budget the spool could fill the disk, and then not even delete what the database had committed (see
    tests/test_ops_outages.py): it leaves DISK_RESERVE_BYTES free, with its full policy, and takes new groups again
    into the pages of drained batches without growing the file."""
    import shutil

    from ops_support import small_disk

    from edge.spool import DISK_RESERVE_BYTES

    with small_disk(tmp_path / "disk", size_mb=(DISK_RESERVE_BYTES >> 20) + 8) as disk:
        sp = Spool(disk / "s.db", max_bytes=10**9, policy=policy)
        _fill_to(disk, DISK_RESERVE_BYTES + (1 << 20))
        full = None
        for i in range(40):
            try:
                sp.append_many([(_readings(2000, start=i * 2000), [])])
            except SpoolFull as exc:
                full = exc
                break
        assert shutil.disk_usage(disk).free >= DISK_RESERVE_BYTES // 2
        if policy == "reject_new":
            assert full is not None and "MB free" in str(full)
            sp.delete([sp.peek(1)[0].seq])  # the forwarder drains one group ...
            sp.append_many([(_readings(2000, start=10**6), [])])  # ... and its pages take the next
        else:
            assert full is None and sp.dropped > 0
        sp.close()


def test_a_commit_that_fails_on_a_full_disk_raises_the_disk_error(tmp_path):
    """SQLite rolls a transaction back itself when its COMMIT fails for a full disk; the spool's own ROLLBACK then
    raised "cannot rollback - no transaction is active", which is what the logs and /healthz showed instead."""
    import sqlite3

    from ops_support import small_disk

    with small_disk(tmp_path / "disk", size_mb=4) as disk:
        sp = Spool(disk / "s.db", max_bytes=10**9)
        _fill_to(disk, 1 << 20)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            sp.append_many([(_readings(60_000), [])])  # an empty spool takes any group: the disk refuses it
        assert sp.batches == 0 and sp.readings == 0
        sp.close()
