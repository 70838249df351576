"""Web pages: one HTML shell per page with its own script; the scripts read the JSON API.

A page needs a session; without one the browser is sent to the log-in form and back.
Nothing is loaded from elsewhere: shell, styles, scripts and the chart code are in console/static.
"""

from __future__ import annotations

import asyncio
import errno
import html
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from console.app import STATIC
from console.auth import login_redirect, optional_principal
from console.problems import Problem

router = APIRouter(include_in_schema=False)

PAGES = {  # path -> (title, script, nav key)
    "/": ("Alert board", "board.js", "alerts"),
    "/alerts": ("Alert board", "board.js", "alerts"),
    "/assets": ("Assets", "assets.js", "assets"),
    "/maintenance": ("Maintenance windows", "windows.js", "maintenance"),
    "/emissions": ("Emissions", "emissions.js", "emissions"),
    "/models": ("Models", "models.js", "models"),
    "/gateways": ("Gateways", "gateways.js", "gateways"),
    "/admin": ("Administration", "admin.js", "admin"),
}
NAV = [("alerts", "/alerts", "Alerts"), ("assets", "/assets", "Assets"),
       ("maintenance", "/maintenance", "Maintenance"), ("emissions", "/emissions", "Emissions"),
       ("models", "/models", "Models"), ("gateways", "/gateways", "Gateways"), ("admin", "/admin", "Admin")]


PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]`` (already escaped by the caller), in one pass.

    One ``str.replace`` per placeholder in turn also replaced placeholders inside the values put in before: an asset
    page ``/assets/{{csrf}}`` had the session's CSRF token in its title (the browser's history keeps titles), and a
    log-in link with ``next=/{{error}}`` put the error paragraph's markup inside the form's ``value="..."``."""
    return PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


def _render(title: str, script: str, nav_key: str, principal, time_zone: str | None = None) -> str:
    nav = "".join(f'<a href="{href}"{" class=active aria-current=page" if key == nav_key else ""}>{label}</a>'
                  for key, href, label in NAV if key != "admin" or principal.role == "admin")
    return fill((STATIC / "shell.html").read_text(), {
        "title": html.escape(title), "nav": nav, "user": html.escape(principal.name),
        "role": html.escape(principal.role), "csrf": html.escape(principal.csrf or ""), "script": script,
        "time_zone": html.escape(time_zone or "")})


async def _page(request: Request, title: str, script: str, nav_key: str):
    principal = await optional_principal(request)
    if principal is None or principal.kind != "user":
        # The query is the page's state (the board's site, asset and state filters, the emissions page's stack and
        # month, a search): a wall screen's session that ended came back from the log-in form to the unfiltered board.
        query = request.url.query
        return login_redirect(request.url.path + (f"?{query}" if query else ""))
    return HTMLResponse(_render(title, script, nav_key, principal, request.app.state.config.console.time_zone))


def _make(path: str, title: str, script: str, nav_key: str):
    async def handler(request: Request):
        return await _page(request, title, script, nav_key)

    handler.__name__ = "page_" + (path.strip("/") or "home")
    router.add_api_route(path, handler, methods=["GET"], response_class=HTMLResponse)


for _path, (_title, _script, _nav) in PAGES.items():
    _make(_path, _title, _script, _nav)


@router.get("/assets/{name:path}", response_class=HTMLResponse)
async def asset_page(request: Request, name: str):
    return await _page(request, f"Asset {name}", "asset.js", "assets")


@router.get("/reports/{path:path}")
async def report_file(request: Request, path: str):
    """A report file from console.reports_dir (log-in required; no path outside the folder)."""
    principal = await optional_principal(request)
    if principal is None:
        raise Problem(401, "log in first")
    root = request.app.state.config.console.reports_dir
    if root is None:
        raise Problem(404, "no reports folder configured (console.reports_dir)")
    target = await asyncio.to_thread(report_path, Path(root), path)
    if target is None:
        raise Problem(404, f"no report {path!r}")
    response = FileResponse(target)
    mime = response.media_type or ""
    response.headers["Content-Security-Policy"] = (
        REPORT_CSP if mime in ("application/pdf", "text/csv", "text/plain") else "sandbox; " + REPORT_CSP)
    return response


# A report file is a document of its own, not a console page. Under the console's policy its <style> (emissions'
# report_html writes one) was refused and the report showed unstyled; and a file in the folder with a
# <script src="x.js"> beside it ran in the console's origin ('self'), with the user's session. Files get inline
# styles and nothing else: no script, no request to the console, and documents a browser could script (HTML, SVG,
# XML) are sandboxed into an origin of their own. PDF and text are not sandboxed: browsers' PDF viewers refuse to
# run in a sandboxed document, and text cannot run anything.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
              "base-uri 'none'; form-action 'none'")


def report_path(root: Path, path: str) -> Path | None:
    """The file ``path`` under ``root``, or None if it is missing, outside (``..``, symlinks) or no file's name.

    A name with NUL (``/reports/%00``) or longer than the file system allows is no file's, but `Path` raised for
    them (ValueError, ENAMETOOLONG): any logged-in user got a 500 and a traceback in the console's log."""
    if "\x00" in path:
        return None
    try:
        target = (root / path).resolve()
        return target if target.is_relative_to(root.resolve()) and target.is_file() else None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return None
        raise


@router.get("/favicon.ico")
async def favicon():
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")
