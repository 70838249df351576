"""Watchdog of a running gateway: restarts stalled or dead parts, counts it, watches the disk.

It runs beside the gateway on the same event loop (edge/service.py) and looks every
``service.watchdog_interval_s`` at what the gateway exposes for it:

- a task that died with an exception (ingest, forwarder, rollups, a collector's supervisor,
  a background job) is started again (``reason="died"``);
- the forwarder is *stalled* when the spool holds batches and its heartbeat (commit, connect,
  error) and counters have not moved for ``service.stall_after_s``: typically a write blocked
  on a half-open connection. The task is cancelled, the connection dropped, the task started
  again (``reason="stalled"``); what it was writing is still in the spool and is written again
  (the database key removes duplicates);
- a collector is *silent* when it emitted nothing and made no connection attempt for
  ``service.collector_silence_s`` (0 turns this off) while the pipeline was not applying
  back-pressure; it is closed and started again (``reason="silent"``);
- the ingest task is stalled when batches wait and nothing reaches the spool for
  ``stall_after_s`` while the spool is not full: restarting it could drop the batches it holds,
  so this fails /healthz (``problems.ingest``) and edge/service.py exits 1 for the supervisor to
  start the process again (neither systemd nor docker restarts on a failing health check); the
  spool on disk keeps everything acknowledged.

All intervals use the monotonic clock, so wall-clock steps (NTP, a wrong RTC at boot) neither
trigger nor suppress a restart. Every restart is logged (``event=watchdog_restart``) and counted
in ``valvoja_watchdog_restarts_total{part, reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edge.gateway import Gateway

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self) -> None:
        self._gw: Gateway | None = None
        # part -> (signature last seen, monotonic time it was first seen with work pending)
        self._seen: dict[str, tuple[object, float]] = {}
        self._pressure_at = 0.0  # last time the pipeline applied back-pressure
        self._disk_low: set[Path] = set()  # folders whose file system was last seen below min_free_disk_bytes
        self.restarts = 0

    async def run(self, current: Callable[[], Gateway | None]) -> None:
        """Check the gateway ``current()`` returns (it changes on reload) until cancelled."""
        while True:
            gw = current()
            await asyncio.sleep(gw.cfg.service.watchdog_interval_s if gw else 1.0)
            gw = current()
            if gw is None or not gw.ready.is_set():
                continue
            try:
                await self.check(gw)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watchdog must never take the process down
                log.exception("watchdog check failed", extra={"event": "watchdog_error"})

    async def check(self, gw: Gateway, now: float | None = None) -> list[tuple[str, str]]:
        """One round of checks; returns the (part, reason) pairs that were restarted."""
        opts = gw.cfg.service
        tasks = gw.tasks
        if gw is not self._gw:  # a reload built a new gateway: forget the old one's history
            self._gw, self._seen, self._pressure_at = gw, {}, 0.0
            # Each restart this watchdog can make is a series at 0 from now: the first restart of a part was a
            # series first seen at 1, a rise increase() (the guide's suggested alert) never counted.
            restarts = gw.metrics.watchdog_restarts
            for name in tasks:
                restarts.labels(name, "died")
            if gw.forwarder is not None:
                restarts.labels("forwarder", "stalled")
            for name in gw.collectors if opts.collector_silence_s > 0 else ():
                restarts.labels(f"collector:{name}", "silent")
        now = time.monotonic() if now is None else now
        actions: list[tuple[str, str]] = []

        for name, task in tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                actions.append((name, "died"))

        fwd = gw.forwarder
        if fwd is not None and "forwarder" in tasks and not tasks["forwarder"].done():
            work = gw.spool.batches > 0
            if self._stalled("forwarder", work, (fwd.heartbeat, fwd.stored, fwd.duplicates), opts.stall_after_s, now):
                actions.append(("forwarder", "stalled"))

        ingest = gw.ingest
        pressure = ingest.queue.full() or ingest.full_since is not None
        if pressure:
            self._pressure_at = now
        waiting = ingest.queue.qsize()
        # A commit in progress is work too: a stuck one may hold every batch that came (a quiet source, an MQTT
        # in-flight window), leaving the queue empty, and was never seen as a stall.
        work = (waiting > 0 or ingest.committing) and ingest.full_since is None
        if self._stalled("ingest", work, ingest.accepted, opts.stall_after_s, now):
            if "ingest" not in gw.problems:
                log.error("ingest stalled: nothing reached the spool for %.0f s while readings wait (%d batches "
                          "queued); reporting unhealthy, the process exits to be restarted", opts.stall_after_s,
                          waiting, extra={"event": "ingest_stalled"})
            gw.problems["ingest"] = (f"no readings spooled for {opts.stall_after_s:.0f} s while readings wait "
                                     f"({waiting} batches queued)")
        elif gw.problems.pop("ingest", None) is not None:
            log.warning("ingest moving again", extra={"event": "ingest_resumed"})

        silence = opts.collector_silence_s
        if silence > 0 and not pressure:
            for name in gw.collectors:
                part = f"collector:{name}"
                last = max(gw.progress.get(part, now), self._pressure_at)
                task = tasks.get(part)
                if task is not None and not task.done() and now - last >= silence:
                    actions.append((part, "silent"))

        for part, reason in actions:
            await self._restart(gw, part, reason, now)
        self._check_disk(gw)
        return actions

    def _stalled(self, part: str, work: bool, signature: object, after_s: float, now: float) -> bool:
        """True when ``part`` had work and showed the same ``signature`` for ``after_s`` seconds."""
        prev = self._seen.get(part)
        if not work or prev is None or prev[0] != signature:
            self._seen[part] = (signature, now)
            return False
        return now - prev[1] >= after_s

    async def _restart(self, gw: Gateway, part: str, reason: str, now: float) -> None:
        idle = now - self._seen.get(part, (None, now))[1] if reason == "stalled" else \
            now - gw.progress.get(part, now)
        log.warning("watchdog: restarting %s (%s%s)", part, reason,
                    f" for {idle:.0f} s" if reason != "died" else "",
                    extra={"event": "watchdog_restart", "part": part, "reason": reason})
        gw.metrics.watchdog_restarts.labels(part, reason).inc()
        self.restarts += 1
        await gw.restart(part)
        self._seen.pop(part, None)

    def _check_disk(self, gw: Gateway) -> None:
        """Free space where the spool lives (``valvoja_state_disk_free_bytes``, as documented) and, on a file system
        of its own, in the state folder (notification outbox, analytics state): ``disk_low`` / ``disk_ok`` per
        folder. Only the state folder was looked at, so a spool put on a volume of its own (``spool.path``) filled
        it without a warning, the gauge showing the state folder's free space."""
        seen: set[int] = set()
        for folder, what in ((gw.cfg.spool_path.parent, "spool"), (Path(gw.cfg.site.state_dir), "state")):
            try:
                device = folder.stat().st_dev
                free = shutil.disk_usage(folder).free
            except OSError:
                continue
            if device in seen:
                continue  # the state folder on the spool's file system: one measurement
            seen.add(device)
            if what == "spool":
                gw.metrics.disk_free.set(free)
            low = free < gw.cfg.service.min_free_disk_bytes
            if low and folder not in self._disk_low:
                log.warning("%s folder %s has only %d MB free%s", what, folder, free // 1_000_000,
                            "; the spool may not reach its budget" if what == "spool" else "",
                            extra={"event": "disk_low", "free_bytes": free, "folder": str(folder)})
                self._disk_low.add(folder)
            elif not low and folder in self._disk_low:
                log.info("free disk space of %s back to %d MB", folder, free // 1_000_000,
                         extra={"event": "disk_ok", "folder": str(folder)})
                self._disk_low.discard(folder)
