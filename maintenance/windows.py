"""Planning maintenance windows: the rules the console API and ``valvoja maintenance window`` share.

A window is a row of ``maintenance_windows`` (m0200, history columns m0202); the gateway's sync reads the
windows that are not cancelled (`store.windows`) every ``SYNC_INTERVAL_S`` and suppresses the alerts of their
assets in [starts_at, ends_at).

**Times.** A start or end is an ISO-8601 instant with an offset (``2026-10-24T22:00:00+03:00``, ``...Z``), or a
local date-time without one plus an IANA zone (``2026-10-24T22:00`` and ``Europe/Helsinki``): the local time is
the site's wall clock, converted with that zone's rules *at that date*. So a window asked "from Saturday 22:00 to
Sunday 06:00 Helsinki time" across the end of summer time (last Sunday of October, 04:00 EEST -> 03:00 EET)
starts at 22:00 +03:00 and ends at 06:00 +02:00: it ends when the plant's clocks say 06:00, and lasts 9 hours
of real time for 8 hours on the clock face. A local time that does not exist (the hour skipped in March) or
that happens twice (03:00-03:59 on the last Sunday of October) is refused with the two candidate offsets
rather than guessed: a crew would be on the machine an hour before or after the window.

**History.** Nothing is deleted: ending early moves ``ends_at`` earlier (``planned_ends_at`` keeps the plan,
``ended_by`` / ``ended_at`` who and when); cancelling a window that has not started marks it cancelled (it
suppresses nothing from then on). A started window cannot be cancelled, only ended: what it suppressed stays
explained. Every change calls the caller's ``audit`` within the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.rows import dict_row

MAX_LENGTH = timedelta(days=14)  # longer needs ``long`` (an overhaul of weeks), so a typo in a year is caught
HARD_MAX = timedelta(days=366)  # never: one forgotten window would silence an asset for good
PAST_SLACK = timedelta(minutes=1)  # an end "now" typed a few seconds ago is still now
MAX_REASON = 500
STATES = ("current", "upcoming", "past", "cancelled")
COLUMNS = ("id, asset, tag, starts_at, ends_at, reason, created_by, created_at, time_zone, planned_ends_at, "
           "ended_at, ended_by, cancelled_at, cancelled_by, cancel_reason")
STATE_SQL = ("CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled' WHEN ends_at <= now() THEN 'past' "
             "WHEN starts_at <= now() THEN 'current' ELSE 'upcoming' END")
# In a change, by the clock: now() is the transaction's start, earlier than a concurrent change it waited for.
STATE_CLOCK = STATE_SQL.replace("now()", "clock_timestamp()")

Audit = Callable[[psycopg.AsyncCursor, str, int, dict], Awaitable[None]]


class WindowError(ValueError):
    """A refused request: ``status`` 422 (the request is wrong), 404 (no such window), 409 (its state forbids it)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone ``name`` (None for none given); 422 when it is not one."""
    if not name:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(422, f"time_zone: {name!r} is not an IANA time zone such as Europe/Helsinki",
                          "time_zone") from None


def parse_when(text: str, tz: ZoneInfo | None, *, name: str) -> datetime:
    """An instant from ISO-8601 with an offset, or a local time in ``tz`` (see the module doc); in UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise WindowError(422, f"{name}: {text!r} is not an ISO-8601 date-time such as 2026-10-24T22:00:00+03:00 "
                               "or 2026-10-24T22:00 with a time_zone", name) from None
    if t.tzinfo is not None:
        return t.astimezone(UTC)
    if tz is None:
        raise WindowError(422, f"{name}: {text!r} has no UTC offset; add one (+03:00, Z) or give time_zone "
                               "(CLI --tz; an IANA zone such as Europe/Helsinki) to read it as local time", name)
    early, late = t.replace(tzinfo=tz, fold=0), t.replace(tzinfo=tz, fold=1)
    if early.utcoffset() != late.utcoffset():
        # fold=0/1 differ on both sides of a change: inside a gap the round trip through UTC changes the wall time.
        if early.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != t:
            raise WindowError(422, f"{name}: {text} does not exist in {tz.key} (the clocks skip it); give a time "
                                   "outside the skipped hour or an offset", name)
        raise WindowError(422, f"{name}: {text} happens twice in {tz.key} (the clocks go back); say which with an "
                               f"offset: {early.isoformat()} or {late.isoformat()}", name)
    return early.astimezone(UTC)


@dataclass(slots=True)
class Plan:
    """A window asked for, before it is checked: one row per asset is created."""

    assets: list[str]
    starts_at: str
    ends_at: str
    reason: str
    time_zone: str | None = None
    tag: str | None = None
    long: bool = False
    start: datetime = field(init=False)
    end: datetime = field(init=False)


def check(plan: Plan, now: datetime) -> Plan:
    """Times parsed and the rules that need no database checked (422 otherwise); returns ``plan``."""
    assets = list(dict.fromkeys(a.strip() for a in plan.assets))
    if not assets or "" in assets:
        raise WindowError(422, "assets: name at least one asset, none empty ('*' for every asset)", "assets")
    if "*" in assets and len(assets) > 1:
        raise WindowError(422, "assets: '*' (every asset) already covers the others; give it alone", "assets")
    if plan.tag is not None and (len(assets) > 1 or assets == ["*"]):
        raise WindowError(422, "tag: a window for one tag names exactly one asset", "tag")
    plan.assets = assets
    plan.reason = plan.reason.strip()
    if not plan.reason:
        raise WindowError(422, "reason: say why (work order, job), it is shown with every suppressed alert", "reason")
    if len(plan.reason) > MAX_REASON:
        raise WindowError(422, f"reason: at most {MAX_REASON} characters", "reason")
    tz = zone(plan.time_zone)
    plan.time_zone = tz.key if tz else None
    plan.start = parse_when(plan.starts_at, tz, name="starts_at")
    plan.end = parse_when(plan.ends_at, tz, name="ends_at")
    if plan.end <= plan.start:
        raise WindowError(422, f"ends_at ({plan.end.isoformat()}) must be after starts_at "
                               f"({plan.start.isoformat()})", "ends_at")
    if plan.end <= now:
        raise WindowError(422, f"ends_at ({plan.end.isoformat()}) is in the past: a window that has ended "
                               "suppresses nothing", "ends_at")
    length = plan.end - plan.start
    if length > HARD_MAX:
        raise WindowError(422, f"the window lasts {_days(length)}; at most {HARD_MAX.days} days", "ends_at")
    if length > MAX_LENGTH and not plan.long:
        raise WindowError(422, f"the window lasts {_days(length)}, more than {MAX_LENGTH.days} days: if that is "
                               "meant, say so with long=true (CLI --long)", "long")
    return plan


def _days(d: timedelta) -> str:
    return f"{d.total_seconds() / 86400:.1f} days"


def _row(r: dict) -> dict:
    """A row for the API and the CLI: its times also in the planner's zone when one was given."""
    tz = zone(r["time_zone"]) if r.get("time_zone") else None
    if tz is not None:
        r["starts_local"] = r["starts_at"].astimezone(tz).isoformat()
        r["ends_local"] = r["ends_at"].astimezone(tz).isoformat()
    return r


async def _known(cur, plan: Plan) -> None:
    if plan.assets != ["*"]:
        await cur.execute("SELECT name FROM assets WHERE name = ANY(%s)", (plan.assets,))
        found = {r["name"] for r in await cur.fetchall()}
        unknown = [a for a in plan.assets if a not in found]
        if unknown:
            raise WindowError(422, f"assets: unknown asset(s) {', '.join(unknown)} (not in the assets table: "
                                   "a gateway registers its assets when it starts)", "assets")
    if plan.tag is not None:
        await cur.execute("SELECT 1 FROM tags WHERE name = %s AND asset = %s", (plan.tag, plan.assets[0]))
        if await cur.fetchone() is None:
            raise WindowError(422, f"tag: {plan.tag!r} is not a tag of asset {plan.assets[0]}", "tag")


async def create(conn: psycopg.AsyncConnection, plan: Plan, by: str, audit: Audit) -> list[dict]:
    """Check ``plan`` and insert one window per asset with its audit entry, in one transaction."""
    check(plan, datetime.now(UTC))
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await _known(cur, plan)
        rows = []
        for asset in plan.assets:
            await cur.execute(
                "INSERT INTO maintenance_windows (asset, tag, starts_at, ends_at, planned_ends_at, reason, "
                f"created_by, time_zone) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}, "
                f"{STATE_SQL} AS state",
                (asset, plan.tag, plan.start, plan.end, plan.end, plan.reason, by, plan.time_zone or ""))
            row = _row(await cur.fetchone())
            await audit(cur, "maintenance_window.create", row["id"],
                        {"asset": asset, "tag": plan.tag, "starts_at": plan.start.isoformat(),
                         "ends_at": plan.end.isoformat(), "time_zone": plan.time_zone, "reason": plan.reason})
            rows.append(row)
    return rows


async def _locked(cur, window_id: int) -> dict:
    # The state after the lock (a concurrent end it waited for would otherwise still look current: ended twice).
    await cur.execute(f"SELECT {COLUMNS}, {STATE_CLOCK} AS state, "
                      "clock_timestamp() AS now FROM maintenance_windows WHERE id = %s FOR UPDATE", (window_id,))
    row = await cur.fetchone()
    if row is None:
        raise WindowError(404, f"no maintenance window {window_id}")
    return row


async def end_early(conn: psycopg.AsyncConnection, window_id: int, by: str, audit: Audit, *,
                    at: str | None = None, time_zone: str | None = None, comment: str = "") -> dict:
    """End a window now, or shorten it to ``at`` (not in the past, before its end, after its start)."""
    tz = zone(time_zone)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        w = await _locked(cur, window_id)
        now = w.pop("now")
        if w["state"] in ("cancelled", "past"):
            raise WindowError(409, f"maintenance window {window_id} is {w['state']}; nothing to end")
        if at is None:
            if w["state"] == "upcoming":
                raise WindowError(409, f"maintenance window {window_id} has not started (it starts "
                                       f"{w['starts_at'].isoformat()}): cancel it, or give the new end (at)")
            new_end = now
        else:
            new_end = parse_when(at, tz or zone(w["time_zone"]), name="at")
            if new_end < now - PAST_SLACK:
                raise WindowError(422, f"at ({new_end.isoformat()}) is in the past: what the window suppressed "
                                       "until now stays suppressed; give a time from now on", "at")
            new_end = max(new_end, now)
            if new_end >= w["ends_at"]:
                raise WindowError(422, f"at ({new_end.isoformat()}) is not before the window's end "
                                       f"({w['ends_at'].isoformat()}); to lengthen it, plan another window", "at")
            if new_end <= w["starts_at"]:
                raise WindowError(422, f"at ({new_end.isoformat()}) is not after the window's start "
                                       f"({w['starts_at'].isoformat()}): cancel it instead", "at")
        await cur.execute(f"UPDATE maintenance_windows SET ends_at = %s, ended_at = now(), ended_by = %s "
                          f"WHERE id = %s RETURNING {COLUMNS}, {STATE_CLOCK} AS state", (new_end, by, window_id))
        row = _row(await cur.fetchone())
        await audit(cur, "maintenance_window.end", window_id,
                    {"asset": w["asset"], "ends_at_was": w["ends_at"].isoformat(), "ends_at": new_end.isoformat(),
                     "comment": comment})
    return row


async def cancel(conn: psycopg.AsyncConnection, window_id: int, by: str, audit: Audit, *, reason: str = "") -> dict:
    """Cancel a window that has not started; it stays as a row and suppresses nothing."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        w = await _locked(cur, window_id)
        if w["state"] != "upcoming":
            hint = ": end it early instead (what it suppressed stays explained)" if w["state"] == "current" else ""
            raise WindowError(409, f"maintenance window {window_id} is {w['state']}, only an upcoming window can be "
                                   f"cancelled{hint}")
        await cur.execute(f"UPDATE maintenance_windows SET cancelled_at = now(), cancelled_by = %s, "
                          f"cancel_reason = %s WHERE id = %s RETURNING {COLUMNS}, {STATE_CLOCK} AS state",
                          (by, reason.strip(), window_id))
        row = _row(await cur.fetchone())
        await audit(cur, "maintenance_window.cancel", window_id, {"asset": w["asset"], "reason": reason.strip()})
    return row


def ascending(states: list[str] | None) -> bool:
    """Current and upcoming windows are listed soonest first; lists with past or cancelled ones newest first."""
    return bool(states) and set(states) <= {"current", "upcoming"}


async def list_windows(conn: psycopg.AsyncConnection, *, assets: list[str] | None = None,
                       states: list[str] | None = None, limit: int = 100,
                       after: tuple[str, int] | None = None) -> list[dict]:
    """Up to ``limit + 1`` windows (one more tells there is a next page) after the keyset ``after``
    (starts_at, id) in the order of `ascending`. ``assets`` matches windows of those assets and of every
    asset ('*')."""
    where, params = [], {}
    if assets:
        where.append("(asset = ANY(%(assets)s) OR asset = '*')")
        params["assets"] = list(assets)
    if states:
        where.append(f"{STATE_SQL} = ANY(%(states)s)")
        params["states"] = list(states)
    up = ascending(states)
    if after is not None:
        where.append(f"(starts_at, id) {'>' if up else '<'} (%(at)s::timestamptz, %(aid)s::int)")
        params["at"], params["aid"] = after
    order = "ASC" if up else "DESC"
    params["n"] = limit + 1
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {COLUMNS}, {STATE_SQL} AS state FROM maintenance_windows "
                          f"WHERE {' AND '.join(where) or 'true'} ORDER BY starts_at {order}, id {order} "
                          "LIMIT %(n)s", params)
        return [_row(r) for r in await cur.fetchall()]


async def get(conn: psycopg.AsyncConnection, window_id: int) -> dict:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {COLUMNS}, {STATE_SQL} AS state FROM maintenance_windows WHERE id = %s",
                          (window_id,))
        row = await cur.fetchone()
    if row is None:
        raise WindowError(404, f"no maintenance window {window_id}")
    return _row(row)
