"""The long-running gateway process behind ``valvoja run``: signals, reload, watchdog, stop deadline.

- **SIGTERM / SIGINT**: stop the collectors, spool what is queued, flush the spool to the
  database and exit 0, all within ``service.stop_timeout_s`` (10 s). What the database did not
  take stays in the spool on disk for the next start. A process that cannot finish in time logs
  ``stop_timeout`` and exits 1 (nothing acknowledged is lost: it is in the spool). Worker threads
  still busy at the deadline are left (``stop_threads_left``). A second signal exits at once.
- **SIGHUP**: read the configuration file again. A file with any problem (syntax, schema, a
  secret reference that cannot be resolved, a certificate that does not load) is rejected with
  one log line naming every problem (``event=config_rejected``) and the running gateway carries
  on untouched. A good one replaces the running gateway: the old one stops gracefully (its
  collectors close, its queue goes to the spool), the new one starts on the same spool, so no
  reading is lost; secrets and certificates are read again too, which is how they are rotated.
  If the new gateway cannot start (a port in use ...) the previous configuration is started again.
- **Watchdog** (edge/watchdog.py): dead or stalled parts are restarted and counted; a stalled
  ingest (nothing can be written to the spool) ends the process with exit code 1 (``stall_exit``)
  for systemd or the container runtime to start it again.
- **Blocked event loop** (edge/loopwatch.py): no heartbeat from the loop for ``service.loop_stall_exit_s``
  writes every thread's stack to stderr and exits 1 (``loop_stall_exit``): docker does not restart an
  unhealthy container.
- **systemd**: with ``Type=notify`` the process reports READY / RELOADING / STOPPING and, when
  ``WatchdogSec`` is set, pings the service manager from the event loop, so a blocked loop gets
  the process restarted.

All intervals use ``time.monotonic``; a wall-clock step changes no timing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from collectors.base import CollectorContext
from collectors.registry import module_for
from edge import logs, settings
from edge.errors import ConfigError
from edge.gateway import SHUTDOWN_FLUSH_S, Gateway, database_conninfo
from edge.loopwatch import LoopWatch
from edge.metrics import Metrics
from edge.settings import SiteConfig
from edge.timeouts import within
from edge.watchdog import Watchdog

log = logging.getLogger("valvoja.service")

# Spool flush budget when a reload replaces the gateway (the spool is on disk; the new one drains it).
RELOAD_FLUSH_S = 2.0
# Time kept back from the stop deadline for the steps after the flush (rollups, closing, exit).
STOP_MARGIN_S = 4.0


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd when run under ``Type=notify``; False otherwise."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract socket namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
        return True
    except OSError:
        return False


def preflight(cfg: SiteConfig) -> None:
    """Checks a parsed configuration must pass before it may replace a running one.

    Resolves the database and collector secrets and builds each collector (which loads TLS
    files); raises ConfigError listing every problem. Nothing is connected or started.
    """
    problems: list[str] = state_folder_problems(cfg)
    try:
        database_conninfo(cfg)
    except ConfigError as exc:
        problems += exc.problems
    # The alert notifiers' secrets and files (MQTT password and TLS files, webhook URLs and headers):
    # edge/notifications.py.
    from edge.analytics import maintenance_config
    from edge.notifications import notify_secrets

    try:
        notify_secrets(maintenance_config(cfg))
    except ConfigError as exc:
        problems += exc.problems
    metrics = Metrics()  # throw-away: no labels leak into the running gateway's metrics
    for kind, name, ccfg in cfg.collector_configs:
        ctx = CollectorContext(name=name, state_dir=Path(cfg.site.state_dir) / "collectors" / name, metrics=metrics)
        try:
            module_for(kind).build(ccfg, ctx)
        except ConfigError as exc:
            own = f"collectors ({name})"  # secrets already name their setting with it
            problems += [p if p.startswith(own) else f"{own}: {p}" for p in exc.problems]
        except Exception as exc:  # a collector constructor that fails would fail at start too
            problems.append(f"collectors ({name}): cannot be built: {type(exc).__name__}: {exc}")
    if problems:
        raise ConfigError(problems)


def state_folder_problems(cfg: SiteConfig) -> list[str]:
    """The state folder and the spool's folder must be folders this user can write, or creatable where they would be
    made: the gateway failed to start with a bare FileNotFoundError / PermissionError (`start_failed`) that did not
    name the setting, after check-config had said OK (as systemd's ExecStartPre, run as the service's user)."""
    import os

    out: list[str] = []
    seen: set[Path] = set()
    for key, folder in (("site.state_dir", Path(cfg.site.state_dir)), ("spool.path", cfg.spool_path.parent)):
        if folder.absolute() in seen:
            continue  # the spool in the state folder (the default): one problem, named once
        seen.add(folder.absolute())
        nearest = folder
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent  # where the missing folders would be created
        if not nearest.is_dir():
            problem = f"{key}: {folder}: cannot be created: {nearest} is not a folder"
        elif not os.access(nearest, os.W_OK | os.X_OK):
            what = "not writable" if nearest == folder else f"cannot be created in {nearest}"
            problem = f"{key}: {folder}: {what} by this user (uid {os.getuid()})"
        else:
            continue
        out.append(problem)
    return out


def in_file(path: Path, problems: list[str]) -> list[str]:
    """Problems found after parsing (secrets, collector files) named with the configuration file, as parsing's are."""
    return [p if p.startswith(f"{path}:") else f"{path}: {p}" for p in problems]


class Service:
    """Runs one gateway for ``config_path`` until stopped; see the module docstring."""

    def __init__(self, config_path: str | Path, *, log_format: str | None = None):
        self.config_path = Path(config_path)
        self.log_format = log_format
        self.cfg = settings.load(self.config_path)  # a bad file at start-up: ConfigError to the CLI
        self.metrics = Metrics()
        self.gateway: Gateway | None = None
        self.watchdog = Watchdog()
        self.exit_code = 0
        self._gw_stop: asyncio.Event | None = None
        self._gw_task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._reload: asyncio.Event | None = None
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None
        self._loop_watch: tuple[LoopWatch, asyncio.Task] | None = None  # (watch, its heartbeat task), `_watch_loop`

    # -- entry points ----------------------------------------------------------------------
    def run(self) -> int:
        """Set up logging, run until stopped, return the exit code."""
        self._setup_logging(self.cfg)
        self._unused_keys(self.cfg)
        asyncio.run(self.main())
        return self.exit_code

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        # The loop's worker threads (asyncio.to_thread: migrations, emissions runs, state files) in an executor of our
        # own, so that the stop can bound its wait for them (`_end_worker_threads`).
        self._executor = ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(self._executor)
        self._stop, self._reload = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        try:
            if problems := state_folder_problems(self.cfg):
                raise ConfigError(problems)
            await self._start_gateway(self.cfg)
        except ConfigError as exc:  # the CLI prints every problem, one per line, each naming the file
            raise ConfigError(in_file(self.config_path, exc.problems)) from None
        except Exception as exc:
            log.critical("gateway failed to start: %s: %s", type(exc).__name__, exc, exc_info=exc,
                         extra={"event": "start_failed"})
            self.exit_code = 1
            return
        sd_notify(f"READY=1\nSTATUS=running {self.cfg.site.gateway_id}\nMAINPID={os.getpid()}")
        helpers = [asyncio.create_task(self.watchdog.run(lambda: self.gateway), name="watchdog"),
                   asyncio.create_task(self._exit_on_stalled_ingest(), name="stall-exit")]
        if os.environ.get("WATCHDOG_USEC"):
            helpers.append(asyncio.create_task(self._systemd_pings(), name="systemd-watchdog"))
        self._watch_loop(self.cfg.service.loop_stall_exit_s)
        try:
            await self._serve()
        finally:
            if self._loop_watch is not None:
                helpers.append(self._loop_watch[1])
            self._watch_loop(0)
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        sd_notify("STOPPING=1")
        await self._stop_final()

    async def _serve(self) -> None:
        """Wait for a stop or reload request, or for the gateway to end by itself."""
        while not self._stop.is_set():
            waiters = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._reload.wait()),
                       self._gw_task}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters - {self._gw_task}:
                w.cancel()
            if self._stop.is_set():
                return
            if self._gw_task.done():
                exc = None if self._gw_task.cancelled() else self._gw_task.exception()
                log.critical("gateway ended unexpectedly: %r; exiting so the supervisor restarts the process", exc,
                             exc_info=exc, extra={"event": "gateway_died"})
                self.exit_code = 1
                return
            if self._reload.is_set():
                self._reload.clear()
                sd_notify("RELOADING=1")
                await self.reload()
                sd_notify("READY=1")

    # -- signals ---------------------------------------------------------------------------
    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stopping:
            log.warning("%s again while stopping: exiting now (the spool keeps what was acknowledged)", name,
                        extra={"event": "stop_forced"})
            _hard_exit(130)
        self._stopping = True
        log.info("%s received: stopping within %.0f s", name, self.cfg.service.stop_timeout_s,
                 extra={"event": "stop_requested"})
        self._stop.set()

    def _on_reload_signal(self) -> None:
        log.info("SIGHUP received: reloading %s", self.config_path, extra={"event": "reload_requested"})
        self._reload.set()

    # -- gateway lifecycle -----------------------------------------------------------------
    async def _start_gateway(self, cfg: SiteConfig) -> None:
        """Build and start a gateway; returns once it runs; raises if it fails on the way."""
        gw = Gateway(cfg, metrics=self.metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop), name="gateway")
        ready = asyncio.create_task(gw.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not gw.ready.is_set():
            ready.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _release(gw)
            task.result()  # raises what stopped it
            raise RuntimeError("gateway returned before it was ready")
        self.gateway, self._gw_stop, self._gw_task = gw, stop, task

    async def _stop_gateway(self, timeout_s: float, flush_s: float, cancel_wait_s: float = 0.0) -> bool:
        """Stop the running gateway gracefully within ``timeout_s``; True if it finished in time. Else it is
        cancelled and awaited up to ``cancel_wait_s`` more (a reload; the final stop exits the process anyway)."""
        gw, task = self.gateway, self._gw_task
        self.gateway = None
        if gw is None or task is None:
            return True
        gw.shutdown_flush_s = flush_s
        self._gw_stop.set()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()  # stop its flush and tasks; it must not go on writing to the spool beside a new one
            if cancel_wait_s:
                await asyncio.wait({task}, timeout=cancel_wait_s)
            return False
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway shutdown failed: %r", task.exception(), exc_info=task.exception(),
                      extra={"event": "shutdown_error"})
        return True

    async def _stop_final(self) -> None:
        timeout = self.cfg.service.stop_timeout_s
        t0 = time.monotonic()
        flush = min(SHUTDOWN_FLUSH_S, max(0.5, timeout - STOP_MARGIN_S))
        if not await self._stop_gateway(timeout - 0.5, flush):
            log.error("gateway did not stop within %.1f s; exiting anyway (unsent readings stay in the spool)",
                      timeout, extra={"event": "stop_timeout"})
            _hard_exit(1)
        left = await self._end_worker_threads(t0 + timeout - 0.5)
        log.info("stopped in %.2f s", time.monotonic() - t0, extra={"event": "exit", "code": self.exit_code})
        if left:
            _hard_exit(self.exit_code)

    async def _end_worker_threads(self, deadline: float) -> list[str]:
        """Let the other tasks and the worker threads end, until ``deadline``; the names of the threads still busy
        then (logged: ``stop_threads_left``), which the process exits without.

        asyncio.run waited for them without a limit after the stop: a forwarder's migration check waiting for the
        lock of another session's migration (another gateway's upgrade, `valvoja db migrate`) kept the process up
        after ``exit code=0`` until the supervisor's SIGKILL (systemd: a unit failed on TimeoutStopSec). Leaving them
        loses nothing: the spool is closed by now, a thread's database work is rolled back with its connection, and
        state files are written atomically."""
        if self._executor is None:
            return []
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in others:  # as asyncio.run would, but within the deadline
            t.cancel()
        if others:
            await asyncio.wait(others, timeout=max(0.1, deadline - time.monotonic()))
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shut_down() -> None:
            self._executor.shutdown(wait=True)
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut_down, name="executor-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await within(done.wait(), max(0.1, deadline - time.monotonic()))
        if done.is_set():
            return []
        busy = sorted(t.name for t in threading.enumerate() if t.name.startswith("asyncio_") and t.is_alive())
        log.warning("worker threads still busy at the stop's deadline (%s); exiting without them (the spool is "
                    "closed; their database work is rolled back)", ", ".join(busy) or "?",
                    extra={"event": "stop_threads_left"})
        return busy or ["?"]

    async def reload(self) -> bool:
        """Apply the configuration file again; True if a new configuration is running."""
        path = self.config_path
        try:
            new = await asyncio.to_thread(settings.load, path)
            await asyncio.to_thread(preflight, new)
        except ConfigError as exc:
            self._rejected(in_file(path, exc.problems))
            return False
        except Exception as exc:
            # Any other error of the checks (it was a UnicodeDecodeError of a secret file) escaped `_serve` and ended
            # the running gateway; whatever is wrong with the new file, only the file is rejected.
            log.debug("checking the new configuration raised", exc_info=exc)
            self._rejected([f"{path}: cannot be checked: {type(exc).__name__}: {exc}"])
            return False
        old = self.cfg
        gw = self.gateway
        if gw is not None and new.spool_path.resolve() != old.spool_path.resolve() and gw.spool.batches:
            # The new gateway would start on another (empty) spool and nothing would ever forward what waits in this
            # one (a database away while the spool moves to a bigger volume): refused, with what to do instead.
            self._rejected([f"{path}: spool.path: the spool moves from {old.spool_path} to {new.spool_path} while "
                            f"{gw.spool.readings} readings wait in it for the database; reload again once they are "
                            "forwarded, or stop the gateway and move the file (with its -wal file) first"])
            return False
        t0 = time.monotonic()
        if not await self._stop_gateway(old.service.stop_timeout_s, RELOAD_FLUSH_S, STOP_MARGIN_S):
            # A cancelled shutdown leaves parts of the old gateway open (HTTP port, spool, its tasks): a new one beside
            # it would be two gateways on one spool. A restart by the supervisor is clean.
            log.critical("the running gateway did not stop within %.0f s for the reload; exiting so the supervisor "
                         "restarts the process with the new configuration", old.service.stop_timeout_s,
                         extra={"event": "reload_stop_timeout"})
            self.exit_code = 1
            self._stop.set()
            return False
        # Series about parts the old gateway had stayed at their last value for good when the new file removed or
        # renamed them (metrics outlive a gateway): an alert receiver fixed by a new host, the old one's
        # valvoja_alert_receiver_up 0 firing for ever; an OPC UA server taken out of a redundant set still "active".
        # The gateway set up next sets its own: a redundant set when it is built, a receiver at its start-up probe (a
        # webhook without one at its next notification).
        self.metrics.notify_receiver_up.clear()
        self.metrics.notify_waiting.clear()
        self.metrics.active_server.clear()
        try:
            await self._start_gateway(new)
        except Exception as exc:
            problem = f"{path}: the new configuration failed to start: {type(exc).__name__}: {exc}"
            try:
                await self._start_gateway(old)
            except Exception as again:
                log.critical("the previous configuration failed to start again: %r; exiting so the supervisor "
                             "restarts the process", again, extra={"event": "gateway_died"})
                self.exit_code = 1
                self._stop.set()
            self._rejected([problem])
            return False
        self.cfg = new
        # The gauge of a collector the new file removed or renamed stayed at 0 for good (the metrics outlive the
        # gateway) and fired "collector down" alerts for a collector that no longer exists. Counters stay: flat.
        for name in {n for _, n, _ in old.collector_configs} - {n for _, n, _ in new.collector_configs}:
            try:
                self.metrics.connected.remove(name)
            except KeyError:  # never connected
                pass
        self._setup_logging(new)
        self._unused_keys(new)
        # Read once at the start, a new limit (or turning the watch on or off) was applied only by a restart, while
        # the reload said "configuration reloaded".
        self._watch_loop(new.service.loop_stall_exit_s)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("configuration reloaded from %s in %.2f s%s", path, time.monotonic() - t0,
                 "" if new != old else " (unchanged; secrets and certificates read again)",
                 extra={"event": "config_applied", "changed": new != old})
        return True

    def _rejected(self, problems: list[str]) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
        log.error("configuration %s rejected, still running the previous one: %s", self.config_path,
                  "; ".join(problems), extra={"event": "config_rejected", "problems": len(problems)})

    # -- helpers ---------------------------------------------------------------------------
    def _watch_loop(self, limit_s: float) -> None:
        """Watch the event loop with ``service.loop_stall_exit_s`` = ``limit_s`` (0: not at all): at the start, at each
        reload (a new limit replaces the watch) and at the stop (0)."""
        if self._loop_watch is not None:
            watch, beat = self._loop_watch
            if watch.limit_s == limit_s:
                return
            watch.stop()
            beat.cancel()
            self._loop_watch = None
        if limit_s > 0:
            watch = LoopWatch(limit_s, _exit_on_blocked_loop)
            self._loop_watch = watch, asyncio.create_task(watch.beat(), name="loop-watch")
            watch.start()

    def _setup_logging(self, cfg: SiteConfig) -> None:
        logs.setup(cfg.logging.level, self.log_format or cfg.logging.format)

    def _unused_keys(self, cfg: SiteConfig) -> None:
        for note in cfg.unused_keys():
            log.warning("%s: %s", self.config_path, note, extra={"event": "config_key_unused"})

    async def _exit_on_stalled_ingest(self) -> None:
        """Exit 1 once the watchdog reports a stalled ingest (edge/watchdog.py: restarting the task could lose the
        batches it holds). It only failed /healthz, "so that the supervisor restarts the process", but none did:
        systemd does not read /healthz (and the WATCHDOG=1 pings go on), docker and compose do not restart an
        unhealthy container. An exit is what `Restart=always` and `restart: unless-stopped` act on; nothing
        unspooled was acknowledged, so brokers send it again to the next process."""
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            gw = self.gateway
            problem = gw.problems.get("ingest") if gw is not None else None
            if problem is not None:
                log.critical("ingest stalled (%s); exiting so the supervisor starts the process again", problem,
                             extra={"event": "stall_exit"})
                self.exit_code = 1
                self._stop.set()
                return

    async def _systemd_pings(self) -> None:
        """WATCHDOG=1 at half the interval systemd asks for; stops when the event loop is blocked."""
        interval = max(0.5, int(os.environ["WATCHDOG_USEC"]) / 2e6)
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)


async def _release(gw: Gateway) -> None:
    """Close what a gateway that failed to start had opened (spool, worker thread, HTTP)."""
    try:
        if gw.http:
            await gw.http.close()
    except Exception as exc:  # the spool is closed all the same
        log.debug("cleanup after a failed start: %r", exc)
    try:
        await gw.worker.call(gw.spool.close)
    except Exception as exc:
        log.debug("cleanup after a failed start: %r", exc)
    gw.worker.shutdown()


def _exit_on_blocked_loop(seconds: float) -> None:
    """(the watch thread) The loop has been blocked ``seconds``: the stacks to stderr, a log line, exit 1."""
    faulthandler.dump_traceback(all_threads=True)
    log.critical("event loop blocked for %.0f s; exiting so the supervisor starts the process again (the threads' "
                 "stacks are on stderr)", seconds, extra={"event": "loop_stall_exit"})
    _hard_exit(1)


def _hard_exit(code: int) -> None:
    """Exit now, skipping interpreter shutdown (which would wait for threads that may hang)."""
    logging.shutdown()
    os._exit(code)
