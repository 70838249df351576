"""uvicorn settings of the console, with deadlines uvicorn does not have for slow or idle clients.

uvicorn (h11, 0.54) closes a connection only when it has been idle for ``timeout_keep_alive`` *after a response*.
A connection that sends nothing, or a request head or body a byte at a time, stays open for ever (each byte
cancels that timer) and holds a file descriptor and, for a body, a request task: a few hundred such clients
(slowloris) and the console could neither take connections nor open its database ones. `GuardedH11Protocol`
adds the missing deadlines (a client cut off in the middle of a request is answered 408) and a cap on open
connections; `server_options` gives every place that serves the
console (``valvoja console serve``, the demo, the tests) the same settings.
"""

from __future__ import annotations

import asyncio
import logging
import math
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

    A client cut off in the middle of a request (part of its head, or a head and part of its body, arrived) is
    answered ``408 Request Timeout`` with ``Connection: close`` first, unless a response was already started: it
    is told why, instead of a connection that ends for no reason it can see. One that sent nothing (a browser's
    spare connection, an idle keep-alive one) is closed without an answer. The handler reading a cut-off body gets
    ``http.disconnect``.
    """

    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    max_connections = 1000
    _refused_logged = 0.0  # monotonic time of the last "too many connections" warning (one a minute)
    # Requests answered 408 since start (all connections), and the "console_request_timeout" warning's state: at
    # most one a minute, with the count meanwhile (a slowloris attack makes thousands).
    request_timeouts = 0
    _timeouts_logged = -math.inf
    _timeouts_quiet = 0

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
            why = f"no request head within {self.head_timeout_s:g} s"
            if self.conn.trailing_data[0]:  # part of a head arrived: a request was started
                self._request_timeout(why)
            else:
                log.debug("console: closing %s: %s", self.client, why)
                self.transport.close()

    def _body_late(self, cycle: Any) -> None:
        if self.cycle is cycle and self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            why = f"request body not complete within {self.body_timeout_s:g} s"
            if cycle.response_started:  # the handler answered before reading the whole body: nothing to add
                log.debug("console: closing %s: %s", self.client, why)
                self.transport.close()
                return
            # The handler gets http.disconnect, and a response it sends meanwhile is dropped, not written after ours.
            cycle.disconnected = True
            cycle.message_event.set()
            self._request_timeout(why)

    def _request_timeout(self, why: str) -> None:
        """Answer 408 and close; counted, and warned about at most once a minute."""
        # Written directly: before a request head h11 has no response to send, and the connection ends here.
        body = f"408 Request Timeout: {why}\n".encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()
        cls = GuardedH11Protocol
        cls.request_timeouts += 1
        now = time.monotonic()
        if now - cls._timeouts_logged < 60:
            cls._timeouts_quiet += 1
            return
        more = f" ({cls._timeouts_quiet} more since the last report)" if cls._timeouts_quiet else ""
        cls._timeouts_logged, cls._timeouts_quiet = now, 0
        log.warning("console: answered 408 to %s: %s%s (slow clients or a slowloris attack)",
                    self.client[0] if self.client else "a client", why, more,
                    extra={"event": "console_request_timeout", "client": self.client[0] if self.client else None,
                           "total": cls.request_timeouts})


def server_options(*, head_timeout_s: float = HEAD_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                   max_conns: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (add app, host, port, log_level)."""
    protocol = type("ConsoleH11Protocol", (GuardedH11Protocol,), {
        "head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s,
        "max_connections": max_conns if max_conns is not None else max_connections()})
    # proxy_headers off: console.auth decides which X-Forwarded-* to believe (console.trusted_proxies).
    return {"http": protocol, "timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
            "proxy_headers": False, "server_header": False, "timeout_graceful_shutdown": 5, **overrides}
