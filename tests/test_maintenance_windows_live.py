"""A window planned through the console API reaches a running gateway's analytics within its sync interval and
suppresses the raise (and so the notification) of an alert; ended early through the API, it stops suppressing
within the sync interval too. Real console server, real database, the gateway's `Analytics.run` loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from analytics_support import spool_emit
from console_support import ConsoleServer, fresh_database, seed_plant, seed_users

from edge import analytics
from edge.analytics import Analytics
from edge.metrics import Metrics
from edge.records import Reading
from edge.settings import SiteConfig

SYNC_S = 0.5
TAG = "P-101.bearing_temp"


def _changes(batches) -> list[tuple[str, str]]:
    return [(c["alert"]["asset"], c["event"]) for b in batches for kind, c in b.records if kind == "alert_change"]


async def _until(check, within: float) -> float:
    """Seconds until ``check()`` holds (polled); fails after ``within``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, "not within the bound"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def _hot(an: Analytics, batches: list) -> list[tuple[str, str]]:
    """One reading above the threshold; the alert changes it made."""
    before, n = len(_changes(batches)), an.processed
    t = datetime.now(UTC)
    an.offer([Reading(TAG, t, 95.0, t)], t)
    await _until(lambda: an.processed > n, 10)
    await asyncio.sleep(0.1)  # the batch is emitted after processing
    return _changes(batches)[before:]


async def test_a_window_planned_in_the_console_suppresses_in_a_running_gateway_and_ending_it_stops(
        pg_admin_dsn, tmp_path, monkeypatch):
    monkeypatch.setattr(analytics, "SYNC_INTERVAL_S", SYNC_S)
    batches: list = []

    emit = spool_emit(batches)

    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=1, step_s=600)
        site = SiteConfig(site={"state_dir": tmp_path},
                          rules=[{"name": "hot", "tag": TAG, "kind": "threshold", "high": 90.0}],
                          maintenance={"alerts": {"clear_after_s": 0.0}})
        an = Analytics(site, Metrics(), emit, dsn)
        task = asyncio.create_task(an.run())
        try:
            with ConsoleServer(dsn) as srv, srv.client("maintenance") as c:
                now = datetime.now(UTC)
                r = await asyncio.to_thread(c.post, "/api/maintenance-windows", json={
                    "assets": ["P-101"], "starts_at": (now - timedelta(minutes=5)).isoformat(),
                    "ends_at": (now + timedelta(hours=2)).isoformat(), "reason": "WO-77 bearing change"})
                assert r.status_code == 201, r.text
                wid = r.json()["items"][0]["id"]
                await _until(lambda: any(w.reason == "WO-77 bearing change" for w in an.manager.windows),
                             3 * SYNC_S)
                assert await _hot(an, batches) == [("P-101", "suppressed")]
                assert not an.manager.open  # no alert, so nothing to notify

                r = await asyncio.to_thread(c.post, f"/api/maintenance-windows/{wid}/end",
                                            json={"comment": "done early"})
                assert r.status_code == 200, r.text
                await _until(lambda: all(w.end <= datetime.now(UTC) for w in an.manager.windows), 3 * SYNC_S)
                assert await _hot(an, batches) == [("P-101", "raised")]
                assert len(an.manager.open) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_cancelled_window_is_dropped_by_the_sync(pg_admin_dsn, tmp_path, monkeypatch):
    """A window cancelled before it starts disappears from the gateway's windows at its next sync."""
    monkeypatch.setattr(analytics, "SYNC_INTERVAL_S", SYNC_S)

    emit = spool_emit()

    with fresh_database(pg_admin_dsn) as dsn:
        seed_users(dsn)
        seed_plant(dsn, hours=1, step_s=600)
        an = Analytics(SiteConfig(site={"state_dir": tmp_path},
                                  rules=[{"name": "hot", "tag": TAG, "kind": "threshold", "high": 90.0}]),
                       Metrics(), emit, dsn)
        task = asyncio.create_task(an.run())
        try:
            with ConsoleServer(dsn) as srv, srv.client("admin") as c:
                start = datetime.now(UTC) + timedelta(hours=1)
                r = await asyncio.to_thread(c.post, "/api/maintenance-windows", json={
                    "assets": ["P-101"], "starts_at": start.isoformat(),
                    "ends_at": (start + timedelta(hours=1)).isoformat(), "reason": "later"})
                wid = r.json()["items"][0]["id"]
                await _until(lambda: len(an.manager.windows) == 1, 3 * SYNC_S)
                r = await asyncio.to_thread(c.post, f"/api/maintenance-windows/{wid}/cancel", json={})
                assert r.status_code == 200, r.text
                await _until(lambda: not an.manager.windows, 3 * SYNC_S)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
