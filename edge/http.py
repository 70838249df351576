"""Health and metrics over HTTP: ``/healthz`` (JSON, 200 or 503) and ``/metrics`` (Prometheus text).

A deliberately tiny asyncio server: the gateway needs two read-only endpoints and
should not carry a web framework's signal handling and worker model for them (the
console, a separate process, uses FastAPI).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from edge.timeouts import within

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # to read a request's head, and again to send the answer
MAX_HEADER_LINES = 100
MAX_CONNECTIONS = 32  # served at once; more are closed at once (health checks and scrapers need a few)


class HealthServer:
    def __init__(self, host: str, port: int, *, health: Callable[[], tuple[bool, dict]],
                 metrics: Callable[[], bytes]):
        self.host, self.port = host, port
        self._health = health
        self._metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self._open = 0  # connections being served

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:  # a flood of idle clients must not eat the gateway's file descriptors
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # the whole request head, not each line (slow clients)
                line = await reader.readline()
                for _ in range(MAX_HEADER_LINES):
                    if await reader.readline() in (b"\r\n", b"\n", b""):
                        break
                else:
                    raise ValueError("too many header lines")
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
            elif path == "/healthz":
                ok, detail = self._health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(detail, default=str).encode()
            elif path == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._metrics()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /healthz or /metrics\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (b"" if parts and parts[0] == "HEAD" else body))
            await within(writer.drain(), REQUEST_TIMEOUT_S)  # a client that never reads
        except (TimeoutError, ConnectionError):
            pass
        except ValueError as exc:  # a line over the stream's limit, too many headers: not worth an error log
            log.debug("health endpoint: bad request: %s", exc)
        except Exception:
            log.exception("health endpoint failed", extra={"event": "http_error"})
        finally:
            self._open -= 1
            writer.close()
