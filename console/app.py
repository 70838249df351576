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

from console import problems
from console.config import ConsoleConfig, conninfo
from console.db import Database

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")

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
    problems.install(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        if request.url.path.startswith("/api/"):
            h.setdefault("Cache-Control", "no-store")
        return response

    from console.routes import admin, alerts, assets, auth, emissions, gateways, models, pages, predictions, windows

    for module in (auth, admin, assets, alerts, windows, predictions, emissions, models, gateways, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
