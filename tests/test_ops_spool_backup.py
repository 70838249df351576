"""docs/operations.md, "Backup and restore", "Spool and state": the online copy of a running gateway's spool with the
command the guide gives, and its restore, as an operator does them."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
from test_forward_rollups import _cols

from edge.records import utcnow
from edge.sink.timescale import TimescaleSink
from edge.spool import Spool

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
STATE = "/var/lib/valvoja"


def documented_copy_command() -> str:
    """The Python of the guide's `docker compose exec gateway python3 -c "..."` line (the same line runs without
    containers as `/opt/valvoja/bin/python3 -c "..."`)."""
    section = GUIDE.read_text(encoding="utf-8").split("### Spool and state", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in section.splitlines() if "docker compose exec gateway python3 -c" in x)
    return shlex.split(line.split("python3", 1)[1])[1]


def test_the_documented_copy_of_a_running_spool_restores_what_waits_and_forwards_it_once(pg_dsn, tmp_path):
    """The copy is taken while the gateway has the spool open, with batches in the write-ahead log that no checkpoint
    has put into `spool.db` yet: a file copy would miss them, the SQLite backup API must not. Restored as the guide
    says (the copy as `spool.db`, its `-wal` and `-shm` removed), the spool holds every batch that waited, and
    forwarding them to a database that already has some of them stores each reading once."""
    code = documented_copy_command()
    assert f"'{STATE}/spool.db'" in code and f"'{STATE}/spool-copy.db'" in code, code
    state = tmp_path / "state"
    t0 = (utcnow() - timedelta(hours=1)).replace(microsecond=0)
    running = Spool(state / "spool.db", max_bytes=100 << 20)
    try:
        running.append_many([(_cols("backup.a", t0, 100), []), (_cols("backup.b", t0, 50), [])])
        assert Path(str(running.path) + "-wal").stat().st_size > 0, "the batches should still be in the WAL"
        # The operator's command, run by another process while the gateway holds the file open.
        res = subprocess.run([sys.executable, "-c", code.replace(STATE, str(state))], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        running.append_many([(_cols("backup.late", t0, 10), [])])  # after the copy: not in it
        waiting = running.peek(1000)
        first = waiting[0]
    finally:
        running.close()

    async def forward(batches) -> None:
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        try:
            await sink.write(batches)
        finally:
            await sink.close()

    asyncio.run(forward([first]))  # the database had committed the first batch before the stop
    # Restore: stopped gateway, the copy in place as spool.db, the old -wal and -shm removed.
    for suffix in ("-wal", "-shm"):
        Path(f"{state}/spool.db{suffix}").unlink(missing_ok=True)
    os.replace(state / "spool-copy.db", state / "spool.db")
    restored = Spool(state / "spool.db", max_bytes=100 << 20)
    try:
        assert (restored.batches, restored.readings) == (2, 150)
        asyncio.run(forward(restored.peek(1000)))
    finally:
        restored.close()
    with psycopg.connect(pg_dsn) as conn:
        stored = dict(conn.execute("SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id"
                                   " GROUP BY 1").fetchall())
    assert stored == {"backup.a": 100, "backup.b": 50}
    assert len(waiting) == 3
