"""The gateway process: collectors -> ingest -> spool -> forwarder -> database, plus health.

`Gateway.run(stop)` starts everything and returns after a clean shutdown once
``stop`` is set (SIGTERM / SIGINT in the CLI). Every long-running part has one owner
here: a collector's reconnect loop (`_supervise`), the ingest task, the forwarder and
the rollup worker. A part that fails is logged once, counted and restarted; the
process keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collectors.base import CollectorContext
from collectors.registry import module_for
from edge.backoff import Backoff
from edge.errors import ConfigError
from edge.forwarder import Forwarder, RollupWorker
from edge.http import HealthServer
from edge.metrics import Metrics
from edge.pipeline import Ingest, SourceState, SpoolWorker
from edge.secrets import is_reference, resolve_secret
from edge.settings import SiteConfig
from edge.spool import Spool
from edge.timeouts import CANCEL_GRACE_S, cancel_and_wait, within
from edge.validate import FROZEN_STATE_SOURCE, RULE_NAMES, Validator

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 6.0
DRAIN_TIMEOUT_S = 5.0  # spooling what is queued at shutdown: a full spool gives up (nothing unstored was acked)
# A collector that stayed up this long before failing starts its back-off afresh.
HEALTHY_RUN_S = 30.0


def describe_conninfo(conninfo: str) -> str:
    """Where a connection string points (user@host:port/dbname), never its password: for logs and messages."""
    try:
        d = conninfo_to_dict(conninfo)
    except ProgrammingError:
        return "(a connection string that cannot be parsed)"
    user = f"{d['user']}@" if d.get("user") else ""
    return f"{user}{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def _misplaced_at(url: str) -> bool:
    """True when a ``postgresql://`` URL has an ``@`` other than one just before its host (before the first ``/``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return False  # key=value form: libpq quotes values there, nothing to misread
    rest = rest.split("?", 1)[0]  # query values (file paths, options) may hold '@'
    return rest.count("@") > 1 or ("@" in rest and "/" in rest and rest.index("/") < rest.index("@"))


def database_conninfo(cfg: SiteConfig) -> str | None:
    """The libpq connection string with the password resolved from its reference, or None."""
    db = cfg.database
    if not db.url:
        return None
    url = resolve_secret(db.url, where="database.url") if is_reference(db.url) else db.url
    try:
        conninfo_to_dict(url)  # a ConfigError here, not a ProgrammingError out of a SIGHUP reload or check-config
    except ProgrammingError:
        # libpq's message quotes the whole URL, and one from env:/file: may hold a password: not repeated here.
        raise ConfigError(f"database.url: the value of {db.url} is not a connection string libpq can parse "
                          "(postgresql://user@host:port/dbname?param=value)") from None
    if _misplaced_at(url):
        # libpq reads "postgresql://u:p@ss@host/db" as host "ss@host" and "postgresql://u:p/ss@host/db" as host "u",
        # port "p": pieces of the password then stood in connection errors, the log and the unauthenticated /healthz.
        raise ConfigError(f"database.url: the value of {db.url} has an '@' that is not the one between the user "
                          "and the host: an '@' or '/' in the password must be percent-encoded (%40, %2F), or the "
                          "password given as database.password")
    if db.password:
        return make_conninfo(url, password=resolve_secret(db.password, where="database.password"))
    return url


class SpoolUnusable(RuntimeError):
    """The spool file cannot be opened or set up (a full or read-only file system, a damaged file); names the file."""


def _free_space(path: Path) -> str:
    """`` (N bytes free on its file system)`` for a message, or "" when that cannot be known."""
    try:
        return f" ({shutil.disk_usage(path.parent).free:,} bytes free on its file system)"
    except OSError:
        return ""


class Gateway:
    def __init__(self, cfg: SiteConfig, *, conninfo: str | None = None, http_port: int | None = None,
                 metrics: Metrics | None = None):
        self.cfg = cfg
        # edge.service passes one Metrics to each Gateway it builds, so counters survive a SIGHUP reload.
        self.metrics = metrics or Metrics()
        self.conninfo = conninfo if conninfo is not None else database_conninfo(cfg)
        state = Path(cfg.site.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        try:
            self.spool = Spool(cfg.spool_path, max_bytes=cfg.spool.max_bytes, policy=cfg.spool.full_policy,
                               synchronous=cfg.spool.synchronous)
        except sqlite3.Error as exc:
            # start_failed said "OperationalError: database or disk is full" (or "unable to open database file"),
            # naming neither the file nor the volume to look at. (A file SQLite cannot read is set aside by Spool.)
            raise SpoolUnusable(f"spool {cfg.spool_path} cannot be opened: {exc}{_free_space(cfg.spool_path)}") from exc
        if self.spool.damaged is not None:
            self.metrics.spool_damaged.inc()
        self.worker = SpoolWorker(self.spool)
        try:
            self.validator = Validator(cfg.tag_map(), cfg.validation,
                                       on_flagged=lambda rule, n: self.metrics.readings_flagged.labels(rule).inc(n),
                                       frozen_runs=self.spool.load_state(FROZEN_STATE_SOURCE))
            self.ingest = Ingest(self.worker, self.validator, self.metrics, queue_batches=cfg.spool.queue_batches)
            self.forwarder = (Forwarder(self.worker, self.conninfo, cfg, self.metrics, self.ingest.spooled)
                              if self.conninfo else None)
            self.rollups = RollupWorker(self.forwarder, self.conninfo, cfg.database) if self.forwarder else None
            self.collectors: dict[str, object] = {}
            self.metrics.known(collectors=[name for _, name, _ in cfg.collector_configs], rules=RULE_NAMES)
            for kind, name, ccfg in cfg.collector_configs:
                ctx = CollectorContext(name=name, state_dir=state / "collectors" / name, metrics=self.metrics,
                                       state=SourceState(self.worker, name))
                self.collectors[name] = module_for(kind).build(ccfg, ctx)
            host, port = cfg.http.address
            self.http = (HealthServer(host, int(port) if http_port is None else http_port, health=self.health,
                                      metrics=self._render_metrics) if cfg.http.enabled else None)
            self._tasks: dict[str, asyncio.Task] = {}
            # Watchdog hooks (edge/service.py): how to start each task again, the monotonic time of each
            # collector's last sign of life, and problems that make /healthz fail until they clear.
            self._factories: dict[str, Callable[[], Awaitable[None]]] = {}
            self.progress: dict[str, float] = {}
            self.problems: dict[str, str] = {}
            self.shutdown_flush_s = SHUTDOWN_FLUSH_S
            self.started = time.monotonic()
            self.ready = asyncio.Event()
            # Extra long-running jobs (analytics, the emissions averaging job) run and stop with the collectors.
            self.background: list[Callable[[], Awaitable[None]]] = []
            self.analytics = self._build_analytics()
        except BaseException:
            # Nothing runs yet to close them: a reload whose gateway could not be built (a collector, a model that
            # does not load) left the spool's SQLite connection open at every SIGHUP, beside the gateway started again.
            self.spool.close()
            self.worker.shutdown()
            raise

    def _build_analytics(self):
        if not (self.cfg.maintenance or self.cfg.rules or self.cfg.stacks):
            return None
        from edge.analytics import Analytics

        analytics = Analytics(self.cfg, self.metrics, self.ingest.emit, self.conninfo)
        analytics.spool_pending = lambda: self.spool.batches
        analytics.notifications.problems = self.problems  # a receiver failing its start-up probe fails /healthz
        if not analytics.enabled:
            return None
        self.ingest.on_spooled = analytics.offer
        self.ingest.analytics_tags = analytics.tags()
        self.background.append(analytics.run)
        if self.cfg.stacks and self.conninfo:
            from emissions.config import load_stacks
            from emissions.job import run_periodic

            stacks = load_stacks(self.cfg.stacks)
            self.metrics.known_stacks(stack.name for stack in stacks)
            self._emissions_stop = asyncio.Event()

            async def emissions_job() -> None:
                await self.forwarder.schema_ready.wait()
                await run_periodic(self.conninfo, stacks, self._emissions_stop, metrics=self.metrics,
                                   on_qal3=analytics.qal3_check)

            self.background.append(emissions_job)
        return analytics

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if self.http:
            await self.http.start()
        self._start("ingest", self.ingest.run)
        if self.forwarder:
            self._start("forwarder", self.forwarder.run)
            self._start("rollups", self.rollups.run)
        else:
            log.warning("no database configured: readings stay in the spool", extra={"event": "spool_only"})
        for name, collector in self.collectors.items():
            self._start(f"collector:{name}", lambda n=name, c=collector: self._supervise(n, c))
        for i, job in enumerate(self.background):
            self._start(f"background:{i}", job)
        log.info("gateway %s started with %d collectors", self.cfg.site.gateway_id, len(self.collectors),
                 extra={"event": "started", "spool_readings": self.spool.readings})
        self.ready.set()
        await stop.wait()
        await self.shutdown()

    @property
    def tasks(self) -> dict[str, asyncio.Task]:
        """The running parts by name (a copy, for the watchdog)."""
        return dict(self._tasks)

    def _start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self._factories[name] = factory
        self._spawn(name, factory())

    async def restart(self, name: str) -> None:
        """Cancel task ``name`` (a stalled or dead part) and start it again; its state objects are kept."""
        task = self._tasks.get(name)
        if task is not None and not task.done():
            # A task blocked in a database call may take a moment to unwind; do not wait forever (a second cancel
            # ends psycopg's wait for a server that does not answer).
            await cancel_and_wait(task)
        if name == "forwarder" and self.forwarder:
            # Drop the connection: a half-open socket is the usual reason for a stalled write.
            try:
                await within(self.forwarder.close(), 3)
            except Exception as exc:
                log.debug("closing the stalled database connections failed: %r", exc)
                for w in self.forwarder.writers:
                    w.conn = None
        elif name.startswith("collector:"):
            await self._close_collector(self.collectors[name.split(":", 1)[1]])
        self.progress[name] = time.monotonic()
        self._spawn(name, self._factories[name]())

    def _spawn(self, name: str, coro) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks[name] = task

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died: %r", task.get_name(), exc, exc_info=exc, extra={"event": "task_died"})

    async def _supervise(self, name: str, collector) -> None:
        """The one reconnect loop for every collector: back-off with jitter, log once per outage."""
        # A collector may cap its own back-off (OPC UA: resume within seconds of a server's return).
        max_s = getattr(collector, "reconnect_max_delay_s", None)
        backoff = Backoff() if max_s is None else Backoff(max_s=max_s)
        failing = False
        m = self.metrics
        part = f"collector:{name}"
        progress = self.progress
        ingest_emit = self.ingest.emit

        async def emit(batch) -> None:
            progress[part] = time.monotonic()
            await ingest_emit(batch)

        while True:
            t0 = progress[part] = time.monotonic()
            try:
                await collector.run(emit)
                raise ConnectionError("collector stopped without an error")
            except asyncio.CancelledError:
                raise
            except ConfigError:
                log.exception("collector %s has a configuration problem; not retrying", name,
                              extra={"event": "collector_config", "collector": name})
                return
            except Exception as exc:
                m.connected.labels(name).set(0)
                m.collector_errors.labels(name, type(exc).__name__).inc()
                if time.monotonic() - t0 > HEALTHY_RUN_S:
                    backoff.reset()
                    failing = False
                if not failing:
                    log.warning("collector %s lost: %s: %s; reconnecting with back-off", name,
                                type(exc).__name__, exc, extra={"event": "collector_lost", "collector": name})
                    failing = True
            try:
                await within(collector.aclose(), 5)
            except Exception as exc:  # closing a broken connection may fail; it is being replaced
                log.debug("collector %s close failed: %r", name, exc)
            m.reconnects.labels(name).inc()
            await asyncio.sleep(backoff.next_delay())

    async def shutdown(self) -> None:
        """Stop collectors, spool what is queued, flush the spool to the database, close."""
        t0 = time.monotonic()
        for name in [n for n in self._tasks if n.startswith(("collector:", "background:"))]:
            self._tasks.pop(name).cancel()
        await asyncio.gather(*(self._close_collector(c) for c in self.collectors.values()))
        ingest = self._tasks.pop("ingest", None)
        if ingest:
            ingest.cancel()
            await asyncio.gather(ingest, return_exceptions=True)
        await self.ingest.drain(DRAIN_TIMEOUT_S)
        flushed = True
        if self.forwarder:
            for name in ("forwarder", "rollups"):
                task = self._tasks.pop(name, None)
                if task:
                    # Cancelled in the middle of a write to a database that does not answer (frozen, a network cut
                    # with the connection open), psycopg waited up to 10 s for its cancel request: the stop overran
                    # its deadline (exit 1) and a reload ended the process.
                    await cancel_and_wait(task)
            flushed = await self.forwarder.flush(self.shutdown_flush_s)
            if flushed:  # else the database did not take the spool in time: the rollups would not be taken either
                try:
                    await within(self.rollups.refresh_once(), 2, cancel_grace_s=CANCEL_GRACE_S)
                except Exception as exc:  # the work is noted in the spool: the next start does it
                    log.debug("final rollup refresh skipped: %r", exc)
            await self.rollups.close()
            await self.forwarder.close()
        if self.http:
            await self.http.close()
        await self.worker.call(self.spool.close)
        self.worker.shutdown()
        log.info("gateway stopped in %.2f s; %d readings left in the spool%s", time.monotonic() - t0,
                 self.spool.readings, "" if flushed else " (database not reachable)",
                 extra={"event": "stopped"})

    async def _close_collector(self, collector) -> None:
        try:
            await within(collector.aclose(), 3)
        except Exception as exc:
            log.warning("collector close failed: %r", exc, extra={"event": "collector_close"})

    # -- health ------------------------------------------------------------------------
    def status(self) -> dict:
        fwd = self.forwarder
        return {
            "gateway": self.cfg.site.gateway_id,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "readings_spooled": self.ingest.accepted,
            "readings_stored": fwd.stored if fwd else 0,
            "duplicates_skipped": fwd.duplicates if fwd else 0,
            "conflicting_not_stored": fwd.conflicting if fwd else 0,
            "spool": {"readings": self.spool.readings, "batches": self.spool.batches, "bytes": self.spool.bytes,
                      "max_bytes": self.spool.max_bytes, "policy": self.spool.policy,
                      "full": self.ingest.full_since is not None, "dropped": self.spool.dropped},
            "database": {"configured": fwd is not None, "connected": bool(fwd and fwd.connected),
                         "edition": fwd.sink.features.edition if fwd and fwd.sink.features else None,
                         "last_error": fwd.last_error if fwd else None},
            "collectors": {name: _safe_status(c) for name, c in self.collectors.items()},
            "queue_batches": self.ingest.queue.qsize(),
            "latency_s": _percentiles(fwd.latency_s.values()) if fwd else None,
            "analytics": self.analytics.status() if self.analytics else None,
        }

    def _render_metrics(self) -> bytes:
        self.metrics.spool_records.set(self.spool.readings)
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.queue_depth.set(self.ingest.queue.qsize())
        return self.metrics.render()

    def health(self) -> tuple[bool, dict]:
        detail = self.status()
        dead = [n for n, t in self._tasks.items() if t.done()]
        detail["dead_tasks"] = dead
        problems = dict(self.problems)
        # Refusing readings is trouble the site must see (the image's HEALTHCHECK, the console's gateway page): /healthz
        # answered 200 while a full spool refused every new reading for as long as the database stayed away.
        if (full_since := self.ingest.full_since) is not None:
            problems["spool"] = (f"spool full ({self.spool.bytes} of {self.spool.max_bytes} bytes) for "
                                 f"{time.monotonic() - full_since:.0f} s: new readings refused until the database "
                                 "drains it")
        detail["problems"] = problems
        return not dead and not problems, detail


def _percentiles(arr) -> dict | None:
    """p50/p99/max of the recent source-time-to-commit latencies (`edge.forwarder.LatencyReservoir.values`)."""
    if not arr.size:
        return None
    import numpy as np

    p50, p99 = np.percentile(arr, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(float(arr.max()), 4),
            "n": int(arr.size)}


def _safe_status(collector) -> dict:
    try:
        return collector.status()
    except Exception as exc:
        return {"error": repr(exc)}
