"""The web console beside ``valvoja demo``: the alert the demo's bearing fault raises, seen where a plant engineer
would look for it.

It runs in the demo's event loop (uvicorn's ``Server.serve``) on a free loopback port, on the demo's database. On
the demo's own embedded database it creates (or resets) a user ``demo`` with a fresh random password, printed once;
on a database given with ``--db`` it creates no user (that database's users log in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from edge.embedded import free_port
from edge.timeouts import within

log = logging.getLogger(__name__)

DEMO_USER = "demo"


@dataclass
class DemoConsole:
    url: str
    password: str | None  # None: no demo user was made (a database of the user's own)
    server: object  # uvicorn.Server
    task: asyncio.Task

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await within(self.task, 10)
        except TimeoutError:
            self.task.cancel()


async def _demo_user(conninfo: str) -> str:
    """Create the user ``demo`` (role engineer: may acknowledge alerts) or give it a new password."""
    from console import users

    password = secrets.token_urlsafe(12)
    async with await psycopg.AsyncConnection.connect(conninfo, row_factory=dict_row) as conn:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT 1 FROM console_users WHERE username = %s", (DEMO_USER,))
            if await cur.fetchone():
                await users.change(cur, DEMO_USER, password=password, disabled=False)
            else:
                await users.add(cur, DEMO_USER, password, "engineer", "Valvoja demo")
    return password


async def start_console(conninfo: str, health_url: str, *, make_user: bool) -> DemoConsole:
    """Migrate, (optionally) make the demo user, and serve the console; returns once it answers."""
    import uvicorn

    from console.app import create_app
    from console.config import ConsoleConfig
    from console.server import server_options
    from edge.db.migrate import migrate

    def _migrate() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)

    await asyncio.to_thread(_migrate)
    password = await _demo_user(conninfo) if make_user else None
    port = free_port()
    cfg = ConsoleConfig.model_validate({"console": {"listen": f"127.0.0.1:{port}"},
                                        "gateways": [{"name": "demo-gw", "health_url": health_url}]})
    app = create_app(cfg, dsn=conninfo, migrate=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **server_options()))
    # uvicorn would take SIGINT/SIGTERM over while it serves (signal.signal) and hand them on only after it has
    # stopped; the demo's own handlers stop the gateway, then the console, the simulator and the servers.
    server.capture_signals = contextlib.nullcontext
    task = asyncio.create_task(server.serve(), name="demo-console")
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
            raise RuntimeError("the console stopped before it started")
        await asyncio.sleep(0.05)
    return DemoConsole(f"http://127.0.0.1:{port}/", password, server, task)
