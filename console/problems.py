"""Errors as RFC 9457 problem details (``application/problem+json``).

Every 4xx/5xx the API returns has ``type``, ``title``, ``status`` and ``detail``; validation
errors also list each bad parameter under ``errors`` so a client can say which one was wrong.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

_TITLES = {400: "Bad request", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Request too large", 422: "Invalid request",
           429: "Too many requests", 500: "Internal error", 503: "Service unavailable"}


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, type_: str = "about:blank", headers: dict | None = None,
                 **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.type, self.headers, self.extra = status, detail, type_, headers, extra


def problem_response(status: int, detail: str, *, type_: str = "about:blank", instance: str | None = None,
                     headers: dict | None = None, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "path", "body", "header", "cookie"):
        return f"{parts[0]}: " + ".".join(parts[1:])
    return ".".join(parts)


def _guards(dependant) -> list:
    """The log-in and permission dependencies of a route (``current_principal``, ``require(...)``'s), in the order
    FastAPI runs them."""
    from console.auth import current_principal

    out = []
    for d in dependant.dependencies:
        out += _guards(d)
        if d.call is current_principal or getattr(d.call, "__name__", "").startswith("require_"):
            out.append(d.call)
    return out


async def _guarded(request: Request) -> Problem | None:
    """What the matched route's guards say to this caller (401, 403), or None when they let it through or the route
    has none (the log-in form)."""
    from console.auth import current_principal

    route = request.scope.get("route")
    guards = _guards(route.dependant) if hasattr(route, "dependant") else []
    if not guards:
        return None
    try:
        principal = await current_principal(request)
        for guard in guards:
            if guard is not current_principal:
                await guard(principal)
    except Problem as exc:
        return exc
    return None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        if exc.status == 401:
            from console.auth import download_login_redirect

            if (redirect := download_login_redirect(request)) is not None:
                return redirect
        return problem_response(exc.status, exc.detail, type_=exc.type, instance=request.url.path,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            # FastAPI decodes a JSON body before it runs the route's dependencies: malformed JSON was answered 422
            # to a caller with no credentials, no CSRF token or the wrong role. Who may call comes first.
            refused = await _guarded(request)
            if refused is not None:
                return await _problem(request, refused)
        errors = [{"where": _loc(e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
        return problem_response(422, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), instance=request.url.path,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("console: unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error; see the console log", instance=request.url.path)

    @app.exception_handler(psycopg.OperationalError)
    async def _database_away(request: Request, exc: psycopg.OperationalError):
        # The database restarting, unreachable or refusing connections (psycopg_pool.PoolTimeout is one too): the
        # pages said "internal error; see the console log" as if the console were broken. A 503 says it is the
        # database and that trying again is right; the details (host names) stay in the log.
        log.warning("console: database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, "the database is not available (restarting, unreachable or refusing "
                                     "connections); try again shortly", type_="/problems/database-unavailable",
                                instance=request.url.path, headers={"Retry-After": "5"})

    @app.exception_handler(psycopg.DataError)
    async def _unstorable(request: Request, exc: psycopg.DataError):
        # PostgreSQL text cannot hold NUL and psycopg refuses to send it: a filter, name or comment with %00 in it
        # (a scanner, a paste from a binary log) was a 500 and a traceback, wherever no model checked for it.
        if "NUL" in str(exc):
            return problem_response(422, "text in the request must not contain NUL characters",
                                    instance=request.url.path)
        return await _crash(request, exc)
