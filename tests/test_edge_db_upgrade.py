"""Upgrading, downgrading and moving a populated database, as an operator does it (docs/operations.md)."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from test_forward_rollups import _cols

from edge import cli
from edge.db.migrate import SchemaMismatch, available, migrate
from edge.records import utcnow
from edge.sink.timescale import TimescaleSink
from edge.spool import SpooledBatch


def _migrate(dsn: str, **kw):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return migrate(conn, **kw)


def _write(dsn: str, tag: str, start, n: int, *, migrate_schema: bool = True, dead: list | None = None):
    async def go():
        sink = TimescaleSink(dsn)
        await sink.connect(migrate_schema=migrate_schema)
        try:
            res = await sink.write([SpooledBatch(1, _cols(tag, start, n), dead or [], 0.0)])
            await sink.refresh_minutes(res.tag_ids, res.minutes)
            return res
        finally:
            await sink.close()

    return asyncio.run(go())


def _count(dsn: str, sql: str, *args) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_an_older_gateway_refuses_a_schema_a_newer_version_migrated(pg_dsn, capsys):
    """After an upgrade (or a second gateway of a newer version on the same database), an older gateway found
    every migration it knew applied and went on writing to a schema it does not know, as if up to date; `valvoja
    db migrate` even said "schema up to date". It must refuse, naming the migrations it does not know, and the
    readings it holds stay where they are (the spool) rather than be written with the wrong meaning."""
    _migrate(pg_dsn)
    newest = max(m.version for m in available())
    with psycopg.connect(pg_dsn) as conn:  # what a newer version's migration leaves behind
        conn.execute("INSERT INTO valvoja_migrations (version, name, edition) VALUES (%s, 'from_the_future', 'x')",
                     (newest + 1,))
    with pytest.raises(SchemaMismatch, match=f"{newest + 1:04d}_from_the_future"):
        _migrate(pg_dsn)
    assert cli.main(["db", "migrate", "--db", pg_dsn]) == 1
    err = capsys.readouterr().err
    assert "newer than this program" in err and f"{newest + 1:04d}_from_the_future" in err
    for migrate_schema in (True, False):  # migrate_on_start, and the writer connections that never migrate
        with pytest.raises(SchemaMismatch):
            _write(pg_dsn, "old.gw", utcnow(), 3, migrate_schema=migrate_schema)
    assert _count(pg_dsn, "SELECT count(*) FROM readings") == 0


def test_a_gateway_told_not_to_migrate_refuses_a_schema_behind_it(pg_dsn):
    """`database.migrate_on_start = false` and the upgrade's `valvoja db migrate` step forgotten: the gateway
    wrote to the old schema, and every group carrying a dead letter failed on the missing ``digest`` column, over
    and over. It must refuse to connect and say which migrations are pending and how to apply them."""
    _migrate(pg_dsn, target=1)
    dead = [("mqtt", "t/x", b"\x00junk", "bad payload", 1_700_000_000_000_000)]
    with pytest.raises(SchemaMismatch, match=r"0002_dead_letter_digest.*valvoja db migrate"):
        _write(pg_dsn, "behind.t", utcnow(), 3, migrate_schema=False, dead=dead)
    _migrate(pg_dsn)
    _write(pg_dsn, "behind.t", utcnow(), 3, migrate_schema=False, dead=dead)
    assert _count(pg_dsn, "SELECT count(*) FROM dead_letters") == 1


def test_a_database_never_migrated_is_refused_by_a_gateway_that_does_not_migrate(pg_dsn):
    with pytest.raises(SchemaMismatch, match="no Valvoja schema"):
        _write(pg_dsn, "none.t", utcnow(), 1, migrate_schema=False)


def test_every_migration_runs_on_a_populated_database_and_keeps_its_data(pg_dsn):
    """An installation of the first release, with readings, rollups and dead letters in it, upgraded to this one:
    every later migration runs on tables that hold rows, nothing is lost, and a replayed batch adds nothing."""
    _migrate(pg_dsn, target=1)
    start = (utcnow() - timedelta(hours=2)).replace(second=0, microsecond=0)
    with psycopg.connect(pg_dsn) as conn:  # written as the first release wrote them (no digest column yet)
        conn.execute("INSERT INTO tags (name) VALUES ('pop.t')")
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time) SELECT %s + i * interval"
                     " '1 second', 1, i, 0, now() FROM generate_series(0, 599) i", (start,))
        conn.execute("INSERT INTO dead_letters (time, source, topic, payload, error) VALUES (now(), 's', 't',"
                     " 'x', 'e'), (now(), 's', 't', 'x', 'e')")
    _, applied = _migrate(pg_dsn)
    assert [m.version for m in applied] == [m.version for m in available()][1:]
    assert _migrate(pg_dsn)[1] == []  # idempotent: a second run applies nothing
    assert _write(pg_dsn, "pop.t", start, 600).inserted == 0  # the old rows, replayed: no duplicates
    assert _write(pg_dsn, "pop.t", start + timedelta(minutes=10), 60).inserted == 60
    assert _count(pg_dsn, "SELECT count(*) FROM readings") == 660
    assert _count(pg_dsn, "SELECT count(*) FROM dead_letters") == 2
    assert _count(pg_dsn, "SELECT sum(count) FROM readings_1m") == 660


def test_a_migration_interrupted_half_way_leaves_nothing_behind_and_runs_again(pg_dsn):
    """Power lost (or the connection cut) inside a migration: its transaction rolls back as a whole, so the next
    start applies it again from the beginning instead of failing on the half of its tables already made."""
    _migrate(pg_dsn, target=199)
    outcome: list[BaseException] = []
    with psycopg.connect(pg_dsn, autocommit=True) as victim, psycopg.connect(pg_dsn) as blocker:
        pid = victim.info.backend_pid
        # An uncommitted table of the name 0200 makes second: the migration waits there, its first table made.
        blocker.execute("CREATE TABLE alert_events (x int)")

        def run():
            try:
                migrate(victim)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=run)
        t.start()
        with psycopg.connect(pg_dsn, autocommit=True) as killer:
            for _ in range(100):
                row = killer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    break
                time.sleep(0.05)
            assert row and row[0] == "Lock", "migration 0200 never reached the table it waits for"
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            t.join(10)
        blocker.rollback()
    assert outcome, "the interrupted migration did not fail"
    assert _count(pg_dsn, "SELECT max(version) FROM valvoja_migrations") < 200
    assert _count(pg_dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'alerts'") == 0
    _, applied = _migrate(pg_dsn)
    assert applied[0].version == 200
    assert _count(pg_dsn, "SELECT count(*) FROM pg_tables WHERE tablename IN ('alerts', 'alert_events')") == 2


def test_two_gateways_migrating_an_empty_database_at_once(pg_server):
    """Two gateways started together on a new database (no extension yet): both come up, the schema is made once
    and on TimescaleDB (the second one must not see the extension half made and take the database for plain)."""
    dsn = pg_server.create_database()
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _migrate(dsn), range(4)))
        assert sum(len(applied) for _, applied in results) == len(available())
        assert {f.edition for f, _ in results} == {"apache"} or {f.edition for f, _ in results} == {"community"}
        assert _count(dsn, "SELECT count(*) FROM timescaledb_information.hypertables"
                           " WHERE hypertable_name = 'readings'") == 1
    finally:
        pg_server.drop_database(conninfo_to_dict(dsn)["dbname"])


def test_a_gateway_that_meets_the_extension_made_by_another_at_its_start_does_not_say_it_goes_on_without_it(
        pg_server, caplog):
    """Two gateways (or a gateway and `valvoja db migrate`) starting together on a new database: both try CREATE
    EXTENSION, the one that waited for the other's fails on the duplicate, and it logged "timescaledb is available but
    could not be created: duplicate key ...; continuing without TimescaleDB" although it goes on with it
    (hypertables, edition apache): a warning that sent the operator looking for a fault that was not there."""
    import logging

    dsn = pg_server.create_database()
    try:
        holder = psycopg.connect(dsn)  # another gateway's CREATE EXTENSION, not yet committed
        holder.execute("SET client_min_messages = warning")
        holder.execute("CREATE EXTENSION timescaledb")
        outcome: list = []

        def start():
            try:
                outcome.append(_migrate(dsn))
            except BaseException as exc:
                outcome.append(exc)

        with caplog.at_level(logging.WARNING, logger="edge.db.migrate"):
            t = threading.Thread(target=start)
            t.start()
            with psycopg.connect(dsn, autocommit=True) as watcher:  # it waits behind the other's extension
                for _ in range(200):
                    if watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                       " AND wait_event_type = 'Lock'").fetchone()[0]:
                        break
                    time.sleep(0.05)
            holder.commit()
            holder.close()
            t.join(60)
        (features, applied), = outcome
        assert features.edition in ("apache", "community") and len(applied) == len(available())
        said = [r.getMessage() for r in caplog.records]
        assert not any("without TimescaleDB" in m for m in said), said
    finally:
        pg_server.drop_database(conninfo_to_dict(dsn)["dbname"])


def _pg_tool(server, tool: str) -> str:
    return str(server.bindir / tool)


def test_retention_works_on_a_plain_database_moved_to_timescaledb(plain_pg_server, pg_server, plain_pg_dsn, pg_dsn):
    """A site starts on plain PostgreSQL and moves to TimescaleDB (pg_dump, pg_restore into a database with the
    extension; or TimescaleDB installed on the same server, which the gateway then enables). ``readings`` stays
    an ordinary table, but retention asked the edition only and ran ``drop_chunks`` on it: every hourly run
    failed, and raw readings were never removed until the disk filled."""
    old = (utcnow() - timedelta(days=10)).replace(second=0, microsecond=0)
    _write(plain_pg_dsn, "moved.t", old, 120)
    _write(plain_pg_dsn, "moved.t", utcnow().replace(microsecond=0), 5)
    plain = conninfo_to_dict(plain_pg_dsn)
    ts = conninfo_to_dict(pg_dsn)
    dump = subprocess.run([_pg_tool(plain_pg_server, "pg_dump"), "-h", "127.0.0.1", "-p", str(plain["port"]),
                           "-U", plain["user"], "-Fc", plain["dbname"]], capture_output=True, check=True).stdout
    subprocess.run([_pg_tool(pg_server, "pg_restore"), "-h", "127.0.0.1", "-p", str(ts["port"]), "-U", ts["user"],
                    "-d", ts["dbname"], "--no-owner"], input=dump, capture_output=True, check=True)

    async def go():
        sink = TimescaleSink(pg_dsn)
        features = await sink.connect()
        try:
            assert features.timescaledb
            return await sink.apply_retention(7)
        finally:
            await sink.close()

    assert asyncio.run(go()) == 120
    assert _count(pg_dsn, "SELECT count(*) FROM readings") == 5
    assert _count(pg_dsn, "SELECT sum(count) FROM readings_1m") == 125  # the rollups are kept


def _restore_as_documented(server, dump: bytes, dbname: str) -> str:
    """docs/operations.md, "Backup and restore": drop, create, extension + pre-restore, pg_restore, post-restore."""
    psql = [_pg_tool(server, "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(server.port),
            "-U", server.user]
    subprocess.run([*psql, "-d", "postgres", "-c", f"DROP DATABASE {dbname} WITH (FORCE)", "-c",
                    f"CREATE DATABASE {dbname}"], capture_output=True, check=True)
    subprocess.run([*psql, "-d", dbname, "-c", "CREATE EXTENSION IF NOT EXISTS timescaledb", "-c",
                    "SELECT timescaledb_pre_restore()"], capture_output=True, check=True)
    subprocess.run([_pg_tool(server, "pg_restore"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user,
                    "-d", dbname, "--no-owner"], input=dump, capture_output=True, check=True)
    subprocess.run([*psql, "-d", dbname, "-c", "SELECT timescaledb_post_restore()"], capture_output=True, check=True)
    return server.dsn(dbname)


def test_rollups_equal_the_raw_readings_after_a_restore_of_a_dump_taken_while_the_gateway_ran(pg_server, pg_dsn,
                                                                                                 tmp_path):
    """The documented backup is a pg_dump of the running database. Readings committed after the last rollup refresh
    (every `rollup_interval_s`) are in the dump without their rollups; the work they owed is noted in the spool of the
    gateway that wrote them, not in the dump. After the documented restore, those minutes' rollups stayed short of
    their raw readings for good (trends and hourly counts disagreeing with the stored data)."""
    from edge.forwarder import Forwarder, RollupWorker
    from edge.metrics import Metrics
    from edge.pipeline import SpoolWorker
    from edge.settings import SiteConfig
    from edge.spool import Spool

    t0 = (utcnow() - timedelta(minutes=30)).replace(second=0, microsecond=0)
    _write(pg_dsn, "dump.a", t0, 150)  # 2.5 minutes, rolled up

    async def unrolled():  # committed by a writer whose rollup refresh had not run yet when pg_dump started
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        await sink.write([SpooledBatch(2, _cols("dump.a", t0 + timedelta(seconds=150), 50), [], 0.0)])
        await sink.write([SpooledBatch(3, _cols("dump.b", t0 + timedelta(seconds=100), 20, value=3.0), [], 0.0)])
        await sink.close()

    asyncio.run(unrolled())
    info = conninfo_to_dict(pg_dsn)
    dump = subprocess.run([_pg_tool(pg_server, "pg_dump"), "-h", "127.0.0.1", "-p", str(info["port"]), "-U",
                           info["user"], "-Fc", info["dbname"]], capture_output=True, check=True).stdout
    dsn = _restore_as_documented(pg_server, dump, info["dbname"])

    async def gateway_starts():  # with an empty spool: what it owed went with the old one, or never existed
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        fwd = Forwarder(worker, dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, dsn, fwd.db)
        try:
            await rollups.refresh_once()
        finally:
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    asyncio.run(gateway_starts())
    with psycopg.connect(dsn) as conn:
        raw = conn.execute("SELECT t.name, time_bucket('1 minute', r.time) b, count(*), sum(r.value) FROM readings r"
                           " JOIN tags t ON t.id = r.tag_id GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        rolled = conn.execute("SELECT t.name, r.bucket, r.count, r.sum FROM readings_1m r JOIN tags t"
                              " ON t.id = r.tag_id ORDER BY 1, 2").fetchall()
        hours = conn.execute("SELECT sum(count) FROM readings_1h").fetchone()[0]
    assert rolled == raw
    assert hours == 220


def test_db_migrate_with_the_site_configuration_as_documented(pg_dsn, tmp_path, capsys):
    """operations.md, Upgrade step 4: `valvoja db migrate --config SITE.toml`, first on a new database, then again."""
    from ops_support import site_config

    site = tmp_path / "site.toml"
    site.write_text(site_config(pg_dsn, 1883, state_dir=str(tmp_path / "state")).replace("{HTTP_PORT}", "9108"))
    assert cli.main(["db", "migrate", "--config", str(site)]) == 0
    out = capsys.readouterr().out
    assert f"applied {len(available())} migration(s): 0001_core" in out and "database edition: " in out
    assert cli.main(["db", "migrate", "--config", str(site)]) == 0
    assert "applied 0 migration(s) (schema up to date)" in capsys.readouterr().out


def test_a_migration_check_that_meets_the_migration_lock_gives_up_at_its_timeout_and_is_retried(pg_dsn):
    """Another session holds the migration lock (another gateway upgrading the schema, `valvoja db migrate`): the
    gateway's connect waited for it without end in a worker thread (no error in /healthz, no db_down) that a watchdog
    restart could not cancel, a new one each restart, until every thread of the pool waited. Now it gives up after
    `migration_lock_timeout_s` with an error that says why (the forwarder retries it); once free, it connects."""
    from edge.db.migrate import _LOCK_KEY

    async def connect(timeout_s: float):
        sink = TimescaleSink(pg_dsn, migration_lock_timeout_s=timeout_s)
        try:
            async with asyncio.timeout(15):  # the old code never returns: fail instead of hanging the run
                return await sink.connect()
        finally:
            await sink.close()

    with psycopg.connect(pg_dsn, autocommit=True) as locker:
        locker.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="migration check waited 1 s for a lock another session holds"):
            asyncio.run(connect(1.0))
        waited = time.monotonic() - t0
        waiting = locker.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND application_name LIKE '%-migrate'").fetchone()[0]
        locker.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    assert 0.9 < waited < 10 and waiting == 0  # its session ended with the wait, no thread left waiting
    assert asyncio.run(connect(1.0)).edition


def test_the_documented_backup_and_restore_without_containers_keeps_the_gateways_role_the_owner(own_pg_server,
                                                                                                tmp_path):
    """docs/operations.md, "Install" and "Backup and restore" without containers: the gateway's role owns its
    database but is no superuser; it takes the dump (`pg_dump -U valvoja -Fc valvoja`), PostgreSQL's superuser
    restores it with the guide's commands (no `--no-owner`), and the gateway's role goes on writing readings and
    their rollups to the restored hypertables, which it still owns. Run here with the guide's own lines (`runuser -u
    postgres --` is the server's superuser over TCP); nothing tested this path, only the compose stack's (where
    `valvoja` is the superuser)."""
    server = own_pg_server
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    install = guide.split("### Without containers", 1)[1].split("\n## ", 1)[0]
    restore = guide.split("## Backup and restore", 1)[1].split("### Spool and state", 1)[0]
    restore = restore.split("Without containers", 1)[1]
    setup_lines = re.search(r"```bash\n(printf .*?)```", install, re.S).group(1).splitlines()
    restore_lines = [x for x in re.search(r"```bash\n(.*?)```", restore, re.S).group(1).splitlines()
                     if not x.startswith("systemctl")]
    dump_line = re.search(r"\(`(pg_dump [^`]*)`", restore).group(1)
    tcp = ["-h", "127.0.0.1", "-p", str(server.port)]

    def run(line: str, *, user: str = "postgres", stdin: bytes | None = None) -> bytes:
        """One documented line: `runuser -u postgres -- TOOL ...` as the server's superuser, `TOOL -U valvoja` as
        the role; `printf ... |` and `< FILE` become standard input."""
        if line.startswith("printf "):
            text, line = line.split(" | ", 1)
            stdin = (shlex.split(text)[2] + "\n").encode()
        line = line.replace("runuser -u postgres -- ", "").split(" > ", 1)[0]
        if " < " in line:
            line, dump = line.split(" < ", 1)
            stdin = (tmp_path / dump.strip()).read_bytes()
        words = [w for w in shlex.split(line, comments=True) if w not in ("-h", "db.example")]
        words = [str(server.bindir / words[0]), *tcp, *(["-U", user] if "-U" not in words else []), *words[1:]]
        words = [w.replace('"$DB_PASSWORD"', "pw").replace("$DB_PASSWORD", "pw") for w in words]
        res = subprocess.run(words, input=stdin, capture_output=True)
        assert res.returncode == 0, (line, res.stderr.decode())
        return res.stdout

    for line in setup_lines:  # CREATE ROLE valvoja, createdb --owner valvoja valvoja, CREATE EXTENSION
        run(line)
    dsn = server.dsn("valvoja").replace("user=postgres", "user=valvoja")
    assert "user=valvoja" in dsn
    assert cli.main(["db", "migrate", "--db", dsn]) == 0
    t0 = (utcnow() - timedelta(hours=2)).replace(second=0, microsecond=0)
    _write(dsn, "restore.a", t0, 120)
    (tmp_path / "valvoja-2026-01-31.dump").write_bytes(run(dump_line, user="valvoja"))
    for line in restore_lines:
        run(line)
    _write(dsn, "restore.a", t0 + timedelta(minutes=2), 60)  # the gateway's role writes on after the restore
    assert cli.main(["db", "migrate", "--db", dsn]) == 0
    assert _count(dsn, "SELECT count(*) FROM valvoja_migrations") == len(available())
    assert _count(dsn, "SELECT count(*) FROM readings") == 180
    assert _count(dsn, "SELECT sum(count) FROM readings_1m") == 180
    assert _count(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings' AND tableowner = 'valvoja'") == 1
