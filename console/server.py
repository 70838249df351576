"""uvicorn settings of the console, with deadlines uvicorn does not have for slow or idle clients.

uvicorn (h11, 0.54) closes a connection only when it has been idle for ``timeout_keep_alive`` *after a response*.
A connection that sends nothing, or a request head or body a byte at a time, stays open for ever (each byte
cancels that timer) and holds a file descriptor and, for a body, a request task: a few hundred such clients
(slowloris) and the console could neither take connections nor open its database ones. `GuardedH11Protocol`
adds the missing deadlines and a cap on open connections; `server_options` gives every place that serves the
console (``valvoja console serve``, the demo, the tests) the same settings.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0  # a request head, from the connection's start or the previous response
BODY_TIMEOUT_S = 30.0  # a request body once its head has arrived (at most console.app.MAX_BODY_BYTES, 1 MiB)
KEEP_ALIVE_S = 5  # idle after a response (uvicorn's own timer)
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is a 400 (h11's default, stated here)


def max_connections() -> int:
    """Open connections served at once: 1,000, or half the file descriptors the process may open if that is less
    (systemd gives services 1,024), so that the database pool and files always have some."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1000 if soft == resource.RLIM_INFINITY else max(16, min(1000, soft // 2))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and body, and a cap on open connections.

    A late client is disconnected without an answer: h11 cannot send a response before a request head, and
    for a body the handler is already reading it (it gets ``http.disconnect``).
    """

    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    max_connections = 1000
    _refused_logged = 0.0  # monotonic time of the last "too many connections" warning (one a minute)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            now = time.monotonic()
            if now - GuardedH11Protocol._refused_logged > 60:
                GuardedH11Protocol._refused_logged = now
                log.warning("console: %d connections open, more are closed at once (slow or idle clients?)",
                            self.max_connections, extra={"event": "console_connections_full"})
            transport.close()
            return
        self._arm(self.head_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before and self.cycle is not None:  # a request head arrived: now its body
            self._arm(self.body_timeout_s, self._body_late)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm(self.head_timeout_s, self._head_late)  # the next request (a pipelined one re-arms at once)
        super().on_response_complete()

    # -- deadlines ----------------------------------------------------------------------------------------
    def _arm(self, delay: float, late) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, late, self.cycle)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self, cycle: Any) -> None:
        if self.cycle is cycle and not self.transport.is_closing():
            self._close("no request head within %g s", self.head_timeout_s)

    def _body_late(self, cycle: Any) -> None:
        if self.cycle is cycle and self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._close("request body not complete within %g s", self.body_timeout_s)

    def _close(self, why: str, seconds: float) -> None:
        log.debug("console: closing %s: " + why, self.client, seconds)
        self.transport.close()


def server_options(*, head_timeout_s: float = HEAD_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                   max_conns: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (add app, host, port, log_level)."""
    protocol = type("ConsoleH11Protocol", (GuardedH11Protocol,), {
        "head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s,
        "max_connections": max_conns if max_conns is not None else max_connections()})
    # proxy_headers off: console.auth decides which X-Forwarded-* to believe (console.trusted_proxies).
    return {"http": protocol, "timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
            "proxy_headers": False, "server_header": False, "timeout_graceful_shutdown": 5, **overrides}
