"""Emissions: stacks with their permit limits, live values against limits, averages, daily compliance
calendar, exceedance events and the report files. Reads the tables of emissions/ (migration m0300);
the limits come from the configuration stored with the newest computation of each stack
(``emission_runs.config``), so the page shows the numbers the averages were judged by."""

from __future__ import annotations

import asyncio
import calendar
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request

from console.auth import require
from console.jsonresp import FastJSON
from console.params import decode_cursor, page, time_range
from console.problems import Problem
from console.routes.pages import report_path

router = APIRouter(prefix="/api/emissions", tags=["emissions"], default_response_class=FastJSON,
                   dependencies=[Depends(require("read"))])
Period = Literal["ten_min", "half_hour", "hour", "day", "month", "year"]
LIVE_PERIODS = ("ten_min", "half_hour", "hour", "day", "month")
OWNER = "emissions"
# The newest reading of a tag named by the configuration: the tag first, then one probe of its (tag_id, time) key. As
# a join ordered by r.time the planner walked every tag's readings newest first until one of this tag came: 17-25 s
# for a configured tag without readings at 200 tags for two days (bench/bench_tsdb_plans.py).
LATEST_BY_NAME = ("SELECT r.time, r.value, r.quality, t.unit FROM tags t CROSS JOIN LATERAL (SELECT time, value, "
                  "quality FROM readings WHERE tag_id = t.id ORDER BY time DESC LIMIT 1) r WHERE t.name = %s")

# Status codes of emission_averages and emission_revisions: 0 valid, 1 invalid, 2 not operating.
# run_reason: who ran a recomputation by hand and why (`valvoja emissions compute --reason`); '' for scheduled runs.
REVISION_COLUMNS = ("pollutant, period, period_start, period_end, old_value, new_value, old_status, new_status, "
                    "run_id, (SELECT r.reason FROM emission_runs r WHERE r.id = emission_revisions.run_id)"
                    " AS run_reason, revised_at")


async def _stacks(db) -> dict[str, dict]:
    await db.require("emission_averages", "emission_runs", owner=OWNER)
    rows = await db.fetch("SELECT DISTINCT ON (stack) stack, config, config_sha256, computed_at FROM emission_runs "
                          "ORDER BY stack, computed_at DESC")
    out = {r["stack"]: r for r in rows}
    for r in await db.fetch("SELECT DISTINCT stack FROM emission_averages"):
        out.setdefault(r["stack"], {"stack": r["stack"], "config": None, "config_sha256": None, "computed_at": None})
    return out


def limits(config: dict | None, pollutant: str) -> list[dict]:
    """The compliance rules that apply to ``pollutant``, each with its limit in mg/Nm³, strictest first.

    Strictest first because that is the limit a value is judged against first: a waste incinerator's half-hour
    under its 100 % limit (A) can be over its 97 % one (B), and a large plant's 110 %-of-monthly-ELV day rule can
    be under another day rule's limit. The sort is stable, so rules of equal limits keep the configuration's order.
    """
    if not config:
        return []
    pol = next((p for p in config.get("pollutants", []) if p["name"] == pollutant), None)
    if pol is None:
        return []
    out = []
    for rule in config.get("compliance", []):
        if rule["elv"] not in pol.get("elv", {}) or (rule.get("pollutants") and pollutant not in rule["pollutants"]):
            continue
        if pollutant in rule.get("exclude", []):
            continue
        out.append({"rule": rule["name"], "period": rule["period"], "elv": pol["elv"][rule["elv"]],
                    "limit": pol["elv"][rule["elv"]] * rule.get("percent", 100.0) / 100.0,
                    "share": rule.get("share", 100.0), "window": rule.get("window", "each"),
                    "reference": rule.get("reference", "")})
    return sorted(out, key=lambda x: x["limit"])


async def _stack(db, stack: str) -> dict:
    stacks = await _stacks(db)
    if stack not in stacks:
        raise Problem(404, f"no stack {stack!r} with stored averages (known: {', '.join(sorted(stacks)) or 'none'})")
    return stacks[stack]


@router.get("/stacks")
async def stacks(request: Request):
    """Stacks with their pollutants, analyser tags, limit values and rules (from the newest computation)."""
    out = []
    for name, s in sorted((await _stacks(request.app.state.db)).items()):
        cfg = s["config"] or {}
        out.append({"stack": name, "description": cfg.get("description", ""), "regime": cfg.get("regime"),
                    "timezone": cfg.get("timezone", "UTC"), "computed_at": s["computed_at"],
                    "config_sha256": s["config_sha256"],
                    "pollutants": [{"name": p["name"], "tag": p["tag"], "elv": p.get("elv", {}),
                                    "rules": limits(cfg, p["name"])} for p in cfg.get("pollutants", [])]})
    return {"items": out}


def _projection(subs: list[dict], total: int) -> float | None:
    """Day average if the rest of the day continues at the newest valid sub-average's level."""
    valid = [r["value"] for r in subs if r["valid"] and r["value"] is not None]
    if not valid or total <= 0:
        return None
    remaining = max(total - len(subs), 0)
    return (sum(valid) + valid[-1] * remaining) / (len(valid) + remaining)


def subs_in_day(day: date, tz: ZoneInfo, sub_s: int) -> int:
    """Sub-periods of ``sub_s`` seconds in the local calendar ``day``: 46 half-hours on the day clocks go forward,
    50 on the day they go back. (Aware datetimes of one zone subtract as wall clock: always 24 h.)"""
    start = datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz).astimezone(UTC)
    return int((end - start).total_seconds() // sub_s)


@router.get("/{stack}/live")
async def live(request: Request, stack: str):
    """Per pollutant: the newest analyser reading (raw unit), the newest stored average of every period
    (normalised, validated), each against its limits (strictest first; ``percent_of_limit`` against that one), and
    the running day with a projection to its end."""
    db = request.app.state.db
    s = await _stack(db, stack)
    cfg = s["config"] or {}
    tz = ZoneInfo(cfg.get("timezone", "UTC"))
    now = datetime.now(UTC)
    day_start = datetime.combine(now.astimezone(tz).date(), datetime.min.time(), tz)
    day_from = (cfg.get("regulatory") or {}).get("day_from", "hour")
    total_subs = subs_in_day(now.astimezone(tz).date(), tz, 1800 if day_from == "half_hour" else 3600)
    pollutants = [p["name"] for p in cfg.get("pollutants", [])] or [
        r["pollutant"] for r in await db.fetch("SELECT DISTINCT pollutant FROM emission_averages WHERE stack = %s",
                                               (stack,))]
    latest = await db.fetch(
        "SELECT DISTINCT ON (pollutant, period) pollutant, period, period_start, period_end, value, validated, raw, "
        "valid, status, availability, substituted_share, ci FROM emission_averages WHERE stack = %s "
        "AND period = ANY(%s) AND period_start <= now() ORDER BY pollutant, period, period_start DESC",
        (stack, list(LIVE_PERIODS)))
    subs = await db.fetch("SELECT pollutant, period_start, value, valid FROM emission_averages WHERE stack = %s "
                          "AND period = %s AND period_start >= %s ORDER BY period_start", (stack, day_from, day_start))
    out = []
    for pol in pollutants:
        pcfg = next((p for p in cfg.get("pollutants", []) if p["name"] == pol), {})
        reading = None
        if pcfg.get("tag"):
            reading = await db.fetchone(LATEST_BY_NAME, (pcfg["tag"],))
        rules = limits(cfg, pol)
        periods = {}
        for r in (x for x in latest if x["pollutant"] == pol):
            lims = [x for x in rules if x["period"] == r["period"]]  # strictest first, as `limits` gives them
            check = r["validated"] if r["validated"] is not None else r["value"]
            r["limits"] = lims
            r["percent_of_limit"] = (100.0 * check / lims[0]["limit"]) if lims and check is not None else None
            r["running"] = r["period_end"] > now
            periods[r["period"]] = r
        day_subs = [x for x in subs if x["pollutant"] == pol]
        day_lims = [x for x in rules if x["period"] == "day"]
        proj = _projection(day_subs, total_subs)
        out.append({"pollutant": pol, "tag": pcfg.get("tag"), "reading": reading, "averages": periods,
                    "day": {"start": day_start, "sub_period": day_from, "subs_done": len(day_subs),
                            "subs_total": total_subs, "projection": proj,
                            "limit": day_lims[0]["limit"] if day_lims else None,
                            "projected_over": bool(day_lims and proj is not None and proj > day_lims[0]["limit"])}})
    return {"stack": stack, "time": now, "timezone": str(tz), "items": out}


@router.get("/{stack}/averages")
async def averages(request: Request, stack: str, pollutant: str | None = None, period: Period = "half_hour",
                   from_: str | None = Query(None, alias="from"), to: str | None = None, last: str | None = None,
                   limit: int = Query(500, ge=1, le=5000), cursor: str | None = None):
    """Stored averages of one period, oldest first (value: normalised mg/Nm³; validated: minus the CI)."""
    db = request.app.state.db
    await _stack(db, stack)
    tr = time_range(from_, to, last, default=timedelta(days=2))
    where = ["stack = %(stack)s", "period = %(period)s", "period_start >= %(start)s", "period_start < %(end)s"]
    params = {"stack": stack, "period": period, "start": tr.start, "end": tr.end, "n": limit + 1}
    if pollutant:
        where.append("pollutant = %(pollutant)s")
        params["pollutant"] = pollutant
    if cursor:
        params["cs"], params["cp"] = decode_cursor(cursor, n=2)
        where.append("(period_start, pollutant) > (%(cs)s::timestamptz, %(cp)s)")
    # A stored mass of 0 where an operating period had no rate at all (no flow meter, no flow or concentration
    # reading) is not a measured zero: null, as the reports' "–" (emissions/README.md, mass).
    rows = await db.fetch(
        "SELECT pollutant, period, period_start, period_end, value, validated, raw, valid, status, availability, "
        "n_expected, n_valid, n_substituted, substituted_share, ci, mass_kg_h, "
        "CASE WHEN mass_kg_h IS NULL AND n_operating > 0 THEN NULL ELSE mass_kg END AS mass_kg, config_sha256 "
        f"FROM emission_averages WHERE {' AND '.join(where)} ORDER BY period_start, pollutant LIMIT %(n)s", params)
    return page(rows, limit, ("period_start", "pollutant"))


@router.get("/{stack}/calendar")
async def compliance_calendar(request: Request, stack: str,
                              month: str | None = Query(None, pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")):
    """Daily compliance for a month in the stack's time zone: per day and pollutant the validated day
    average, its validity, and the exceedances (events) of that day (its own average, its hours or half-hours, a
    daily window); ``period_events``: those of longer periods that overlap the month (a monthly average over its
    ELV, a year's share window or invalid-day count), which are no day's."""
    db = request.app.state.db
    s = await _stack(db, stack)
    cfg = s["config"] or {}
    tz = ZoneInfo(cfg.get("timezone", "UTC"))
    today = datetime.now(tz).date()
    y, m = (int(month[:4]), int(month[5:])) if month else (today.year, today.month)
    if not 1 <= m <= 12 or not 1 <= y <= 9998:  # year 0 or a month ending in 10000: no date (it was a 500)
        raise Problem(422, f"month: {month!r} is not a month", param="month")
    start = datetime(y, m, 1, tzinfo=tz)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=tz)
    days = await db.fetch("SELECT pollutant, period_start, value, validated, valid, status, sub_valid, sub_invalid "
                          "FROM emission_averages WHERE stack = %s AND period = 'day' AND period_start >= %s "
                          "AND period_start < %s ORDER BY period_start, pollutant", (stack, start, end))
    events = await db.fetch("SELECT pollutant, rule, kind, period, period_start, period_end, value, limit_value, "
                            "breach, provisional "
                            "FROM emission_events WHERE stack = %s AND period_start < %s AND period_end > %s "
                            "ORDER BY period_start", (stack, end, start))
    await db.require("emission_revisions", owner=OWNER)
    revised = await db.fetch(f"SELECT {REVISION_COLUMNS} FROM emission_revisions WHERE stack = %s AND period = 'day' "
                             "AND period_start >= %s AND period_start < %s ORDER BY revised_at", (stack, start, end))
    out, placed = [], set()
    now = datetime.now(UTC)
    for d in range(1, calendar.monthrange(y, m)[1] + 1):
        ds = datetime(y, m, d, tzinfo=tz)
        de = ds + timedelta(days=1)
        dayrows = [r for r in days if r["period_start"].astimezone(tz).date() == ds.date()]
        # The day's own events only: a month's or year's event starts on the 1st, and marked that day as an
        # exceedance (a valid day within its limits shown red on 1 January for the year's invalid-day count).
        ev = [e for e in events if ds <= e["period_start"] and e["period_end"] <= de]
        placed.update(id(e) for e in ev)
        changed = [r for r in revised if ds <= r["period_start"] < de]
        status = ("none" if not dayrows else "exceed" if any(e["breach"] for e in ev)
                  else "invalid" if any(r["status"] == 1 for r in dayrows)
                  else "off" if all(r["status"] == 2 for r in dayrows) else "valid")
        # The stack's today is not over: its day average so far is no verdict. Marked "invalid" (too few hours yet),
        # it read as an invalid day, which a permit counts (IED Annex VI: at most 10 a year); an exceedance of one of
        # its hours or half-hours is final and stays "exceed".
        running = de > now
        if running and status in ("valid", "invalid"):
            status = "running"
        out.append({"date": ds.date().isoformat(), "status": status, "running": running, "pollutants": dayrows,
                    "events": ev, "revisions": changed})
    longer = [e for e in events if id(e) not in placed]
    return {"stack": stack, "month": f"{y:04d}-{m:02d}", "timezone": str(tz), "days": out, "period_events": longer}


@router.get("/{stack}/revisions")
async def revisions(request: Request, stack: str, from_: str | None = Query(None, alias="from"), to: str | None = None,
                    last: str | None = None, period: Period | None = None, limit: int = Query(200, ge=1, le=2000),
                    cursor: str | None = None):
    """Stored averages of closed periods that a later run changed (late readings, a recomputation), newest change
    first, with the value and status before and after: a report of such a period made before the change differs from
    one made now. The range is over when the change was made (``revised_at``); ``next_cursor`` pages on (a backlog
    taken over many 5-minute runs revises the same days again and again: the list stopped at ``limit``)."""
    db = request.app.state.db
    await _stack(db, stack)
    await db.require("emission_revisions", owner=OWNER)
    tr = time_range(from_, to, last, default=timedelta(days=31))
    where = "stack = %(stack)s AND revised_at >= %(start)s AND revised_at < %(end)s"
    params = {"stack": stack, "start": tr.start, "end": tr.end, "n": limit + 1}
    if period:
        where += " AND period = %(period)s"
        params["period"] = period
    if cursor:
        params["ct"], params["cid"] = decode_cursor(cursor, n=2)
        where += " AND (revised_at, id) < (%(ct)s::timestamptz, %(cid)s::bigint)"
    rows = await db.fetch(f"SELECT {REVISION_COLUMNS}, id FROM emission_revisions WHERE {where} "
                          "ORDER BY revised_at DESC, id DESC LIMIT %(n)s", params)
    return page(rows, limit, ("revised_at", "id"))


@router.get("/{stack}/compliance")
async def compliance(request: Request, stack: str, from_: str | None = Query(None, alias="from"), to: str | None = None,
                     last: str | None = None):
    """Results of the compliance rules per window (passed, share within the limit, provisional)."""
    db = request.app.state.db
    await _stack(db, stack)
    tr = time_range(from_, to, last, default=timedelta(days=400))
    return {"items": await db.fetch(
        "SELECT pollutant, rule, window_start, window_end, n_valid, n_over, limit_value, required_share, share_within, "
        "passed, provisional, reference FROM emission_compliance WHERE stack = %s AND window_end > %s "
        "AND window_start < %s ORDER BY window_start DESC, pollutant, rule", (stack, tr.start, tr.end))}


@router.get("/{stack}/events")
async def events(request: Request, stack: str, from_: str | None = Query(None, alias="from"), to: str | None = None,
                 last: str | None = None, limit: int = Query(200, ge=1, le=2000), cursor: str | None = None):
    """Exceedances and breached windows, newest first; ``next_cursor`` pages on (a month of a waste incinerator's
    half-hours over a limit is more than a page: the rest was left out without a word)."""
    db = request.app.state.db
    await _stack(db, stack)
    tr = time_range(from_, to, last, default=timedelta(days=31))
    params = {"stack": stack, "start": tr.start, "end": tr.end, "n": limit + 1}
    after = ""
    if cursor:
        params["cs"], params["cp"], params["cr"], params["ck"] = decode_cursor(cursor, n=4)
        # The table's key after the stack: events of one start (a half-hour over several rules) are one page or the
        # next, none skipped or repeated.
        after = " AND (period_start, pollutant, rule, kind) < (%(cs)s::timestamptz, %(cp)s, %(cr)s, %(ck)s)"
    rows = await db.fetch(
        "SELECT pollutant, rule, kind, period, period_start, period_end, value, limit_value, elv, breach, provisional "
        "FROM emission_events WHERE stack = %(stack)s AND period_start >= %(start)s AND period_start < %(end)s"
        f"{after} ORDER BY period_start DESC, pollutant DESC, rule DESC, kind DESC LIMIT %(n)s", params)
    return page(rows, limit, ("period_start", "pollutant", "rule", "kind"))


@router.get("/reports/files")
async def reports(request: Request):
    """Report files in ``console.reports_dir`` (newest first, at most ``REPORTS_LISTED``), each with its download
    link; ``total``: how many the folder holds (more than listed: the page says so)."""
    root = request.app.state.config.console.reports_dir
    if root is None:
        return {"items": [], "configured": False, "total": 0}
    items, total = await asyncio.to_thread(_list_reports, Path(root))
    return {"configured": True, "items": items, "total": total}


REPORTS_LISTED = 500


def _list_reports(root: Path) -> tuple[list[dict], int]:
    """The newest ``REPORTS_LISTED`` files /reports/ serves, and how many there are. Only the newest were listed,
    and the page gave no sign of the others: a folder of two stacks' daily reports is past 500 within the year."""
    if not root.is_dir():
        return [], 0
    # What /reports/ serves (`report_path`): a symlink out of the folder was listed with its target's size and time
    # and a link that answered 404.
    files = sorted((p for p in root.rglob("*") if report_path(root, p.relative_to(root).as_posix())),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    # The href URL-encoded: a name with a space, '#' or '?' otherwise ends the path where the browser reads it.
    return [{"name": str(p.relative_to(root)), "bytes": p.stat().st_size,
             "href": "/reports/" + quote(p.relative_to(root).as_posix()),
             "modified": datetime.fromtimestamp(p.stat().st_mtime, UTC)} for p in files[:REPORTS_LISTED]], len(files)
