"""Watchdog and clock jumps, with a gateway in this process against the fixture database and brokers.

Faults are real where they can be: a database lock stalls the forwarder's COPY, a SIGSTOPped broker
leaves the collector's connection open and silent. Only the "task dies" case injects an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from ops_support import Publisher, new_run, site_config, stored

from edge import settings
from edge.gateway import Gateway
from edge.records import Reading
from edge.spool import Spool
from edge.watchdog import Watchdog


def _config(tmp_path, dsn, port, run, **kw):
    path = tmp_path / "site.toml"
    path.write_text(site_config(dsn, port, run=run, **kw).replace("{HTTP_PORT}", "0"))
    return settings.load(path)


async def _until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not met within {timeout_s} s")


async def _stored(dsn: str) -> int:
    return await asyncio.to_thread(stored, dsn)


async def _until_stored(dsn: str, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    got = -1
    while time.monotonic() < deadline:
        got = await _stored(dsn)
        if got == n:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{n} readings not stored within {timeout_s} s (have {got})")


def _restarts(gw: Gateway, part: str, reason: str) -> float:
    return gw.metrics.watchdog_restarts.labels(part, reason)._value.get()


@contextlib.asynccontextmanager
async def running(cfg):
    """A started gateway plus a watchdog on it; both stopped at the end."""
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await asyncio.wait_for(gw.ready.wait(), 30)
    wd = Watchdog()
    wd_task = asyncio.create_task(wd.run(lambda: gw))
    try:
        yield gw, wd
    finally:
        wd_task.cancel()
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, wd_task, return_exceptions=True), 20)


def _subscribed(gw: Gateway) -> bool:
    return gw.collectors["plant"].connected and bool(gw.forwarder and gw.forwarder.connected)


async def test_forwarder_stalled_on_a_locked_table_is_restarted_and_nothing_is_lost(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    cfg = _config(tmp_path, pg_dsn, mosquitto.port, run, stall_s=2)
    async with running(cfg) as (gw, _wd):
        await _until(lambda: _subscribed(gw), what="gateway connected")
        locker = await psycopg.AsyncConnection.connect(pg_dsn)
        await locker.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # held until rollback
        pub = Publisher(mosquitto.port, run)
        try:
            await asyncio.to_thread(pub.publish, 200)
            await _until(lambda: _restarts(gw, "forwarder", "stalled") >= 1, 30, "a forwarder restart")
            assert gw.spool.readings == 200, "the stalled writes are still in the spool"
        finally:
            await locker.rollback()
            await locker.close()
            pub.close()
        await _until_stored(pg_dsn, 200)
        healthy, detail = gw.health()
        assert healthy, detail


async def test_dead_forwarder_task_is_restarted(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    cfg = _config(tmp_path, pg_dsn, mosquitto.port, run)
    async with running(cfg) as (gw, _wd):
        await _until(lambda: _subscribed(gw), what="gateway connected")
        fwd = gw.forwarder
        real = fwd._write
        failures = []

        async def failing_once(batches, sink=None) -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("injected: a bug that escapes the forwarder's error handling")
            await real(batches, sink)

        fwd._write = failing_once
        pub = Publisher(mosquitto.port, run)
        try:
            await asyncio.to_thread(pub.publish, 10)  # the first write meets the injected bug
            await _until(lambda: _restarts(gw, "forwarder", "died") == 1, 10, "restart of the dead forwarder")
            await asyncio.to_thread(pub.publish, 50)
        finally:
            pub.close()
        await _until_stored(pg_dsn, 60)
        assert gw.health()[0]


async def test_silent_collector_on_a_frozen_broker_is_restarted(tmp_path, pg_dsn, own_mosquitto):
    run = new_run()
    cfg = _config(tmp_path, pg_dsn, own_mosquitto.port, run, silence_s=2)
    async with running(cfg) as (gw, _wd):
        await _until(lambda: _subscribed(gw), what="gateway connected")
        pub = Publisher(own_mosquitto.port, run)
        try:
            await asyncio.to_thread(pub.publish, 20)
            await _until_stored(pg_dsn, 20)
            assert _restarts(gw, "collector:plant", "silent") == 0
            # SIGSTOP: the TCP connection stays open and nothing arrives (a hung broker or a dead link).
            os.kill(own_mosquitto.proc.pid, signal.SIGSTOP)
            try:
                await _until(lambda: _restarts(gw, "collector:plant", "silent") >= 1, 15, "collector restart")
            finally:
                os.kill(own_mosquitto.proc.pid, signal.SIGCONT)
            await _until(lambda: gw.collectors["plant"].connected, 30, "collector reconnected")
            await asyncio.to_thread(pub.publish, 20)
        finally:
            pub.close()
        await _until_stored(pg_dsn, 40)


@pytest.mark.parametrize("step_s", [-3600.0, 86400.0])
async def test_wall_clock_steps_do_not_stall_flushing_or_trigger_the_watchdog(tmp_path, pg_dsn, mosquitto,
                                                                             monkeypatch, step_s):
    run = new_run()
    cfg = _config(tmp_path, pg_dsn, mosquitto.port, run, flush_s=0.5, stall_s=2, silence_s=3)
    # Readings spooled before the step (their spool time is the old wall clock) ...
    now = datetime.now(UTC)
    spool = Spool(cfg.spool_path, max_bytes=10**8)
    spool.append_many([([Reading(tag="P-1.flow", time=now - timedelta(seconds=100 - i), value=float(i),
                                 receive_time=now) for i in range(100)], [])])
    spool.close()
    # ... then the wall clock steps (NTP correction, an RTC that was wrong at boot). Monotonic time does not.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step_s)
    t0 = time.monotonic()
    async with running(cfg) as (_gw, wd):
        await _until_stored(pg_dsn, 100, timeout_s=15)
        drained_s = time.monotonic() - t0
        pub = Publisher(mosquitto.port, run)
        try:
            for _ in range(10):  # keep the collector busy for ~3 s with the stepped clock
                await asyncio.to_thread(pub.publish, 10)
                await asyncio.sleep(0.3)
        finally:
            pub.close()
        await _until_stored(pg_dsn, 200, timeout_s=15)
        assert wd.restarts == 0
    assert drained_s < 10, f"spooled readings took {drained_s:.1f} s to drain after a {step_s:+.0f} s step"
