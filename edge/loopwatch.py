"""Exit when the event loop stays blocked: a thread watches a heartbeat the loop writes.

Everything of the gateway runs on one event loop (collectors' hand-over, spool commits, the forwarder, the
health server), so a loop blocked by a call that never returns (a hung C library call, a deadlock, a bug
looping without an await) stops all of it while the process stays up. systemd's ``WatchdogSec`` notices (its
pings come from the loop, `edge.service`), but docker and compose do not restart an unhealthy container: the
gateway sat there collecting nothing. After ``service.loop_stall_exit_s`` without a heartbeat the watch thread
writes every thread's stack to stderr (where the blocking call is), logs ``loop_stall_exit`` and ends the
process with exit code 1, which ``restart: unless-stopped`` and ``Restart=always`` act on. Nothing is lost:
what was not spooled was not acknowledged upstream, so brokers and servers send it again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


class LoopWatch:
    """``beat()`` runs on the loop (a task); ``start()`` the watching thread; ``on_stall(seconds)`` is called from
    that thread once the heartbeat is older than ``limit_s``, and the watch ends."""

    def __init__(self, limit_s: float, on_stall: Callable[[float], None], *, check_s: float = 1.0) -> None:
        self.limit_s = limit_s
        self.on_stall = on_stall
        self.check_s = min(check_s, limit_s / 4)
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def beat(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(self.check_s)

    def start(self) -> None:
        self.last = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_s):
            age = time.monotonic() - self.last
            if age > self.limit_s:
                self.on_stall(age)
                return
