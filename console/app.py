"""The console process: REST API (OpenAPI at /api/openapi.json) and web pages, one FastAPI app.

`create_app(cfg)` builds it; `console serve` (console/cli.py) runs it under uvicorn. Pages are
static HTML + JS from console/static (nothing from a CDN: the Content-Security-Policy allows
only this origin), and read the same JSON API as machines do.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from console import problems
from console.config import ConsoleConfig, conninfo
from console.csvexport import Slots
from console.db import Database

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")

MAX_BODY_BYTES = 1 << 20  # a request body: a log-in, a comment, a window, a user; far more than any of them needs

TAGS = [
    {"name": "auth", "description": "log-in, log-out, who am I"},
    {"name": "assets", "description": "assets, tags and their calibration records"},
    {"name": "readings", "description": "readings and rollups over a time range, downsampled on the server"},
    {"name": "alerts", "description": "the alert board: list, filter, acknowledge, clear, comment, live feed"},
    {"name": "maintenance windows", "description": "planned maintenance: alerts of the asset are suppressed; "
                                                   "plan, end early, cancel"},
    {"name": "predictions", "description": "model predictions with intervals, and their review"},
    {"name": "emissions", "description": "emission averages, compliance, exceedances"},
    {"name": "models", "description": "model registry, cards, uncertainty reports"},
    {"name": "gateways", "description": "gateway health"},
    {"name": "admin", "description": "users, API tokens, audit log"},
]


def create_app(cfg: ConsoleConfig, *, dsn: str | None = None, migrate: bool | None = None) -> FastAPI:
    """Build the app; the database pool opens in the lifespan (``dsn`` overrides the config's)."""
    from console.alerts_feed import AlertFeed

    db = Database(dsn or conninfo(cfg), min_size=cfg.console.pool_min, max_size=cfg.console.pool_max)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await db.open(migrate=cfg.database.migrate_on_start if migrate is None else migrate)
        app.state.feed = AlertFeed(db, poll_s=cfg.console.alert_poll_s)
        await app.state.feed.start()
        try:
            yield
        finally:
            await app.state.feed.stop()
            await db.close()

    app = FastAPI(title="Valvoja console API", version="1", lifespan=lifespan, openapi_tags=TAGS,
                  openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
                  description="REST API of the Valvoja console. Authenticate with a session cookie "
                              "(POST /api/auth/login) or `Authorization: Bearer <API token>`. Times are "
                              "ISO-8601 with an offset; errors are RFC 9457 problem documents.")
    app.state.config = cfg
    app.state.db = db
    app.state.csv_slots = Slots(cfg.console.csv_limit)
    problems.install(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # added first: the security headers wrap its answers too

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        add_security_headers(request.url.path, response.headers)
        return response

    # An unhandled error is answered by Starlette's outermost middleware, outside the one above: its 500 went out
    # without the security headers and without no-store.
    crash = app.exception_handlers[Exception]

    async def crash_with_headers(request: Request, exc: Exception):
        response = await crash(request, exc)
        add_security_headers(request.url.path, response.headers)
        return response

    app.add_exception_handler(Exception, crash_with_headers)

    from console.routes import admin, alerts, assets, auth, emissions, gateways, models, pages, predictions, windows

    # predictions before assets: /api/assets/{name:path}/predictions is matched before /api/assets/{name:path}, which
    # would take P-101/predictions for an asset's name (names may hold "/", as tags do: routes take them encoded)
    for module in (auth, admin, predictions, assets, alerts, windows, emissions, models, gateways, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def add_security_headers(path: str, headers) -> None:
    """The console's security headers on an answer to ``path`` (a header the route set itself is kept).

    Everything but the static files is ``no-store``: the API's plant data, the pages (each holds its session's CSRF
    token and the user's name), the log-in form (its CSRF token) and report files. Only /api/ had it: a report file
    came with Last-Modified and nothing else, which lets a shared cache (a site proxy) keep it heuristically and
    hand it to someone not logged in, and a page could be shown from the browser's cache after log-out."""
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if not path.startswith("/static/") and path != "/favicon.ico":
        headers.setdefault("Cache-Control", "no-store")


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413: one that says so (Content-Length) before it is read, a
    streamed one (chunked) once that much has arrived. uvicorn passes on whatever a client sends, and the log-in
    form (no session needed), the CSRF form field and JSON bodies are read whole: anyone who could reach the
    console could make it hold gigabytes."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = problems.problem_response(413, self._detail(), instance=scope.get("path"))
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # raised where the body is read; the app's handler answers (problems.py)
                    raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"the request body is over {self.limit} bytes"
