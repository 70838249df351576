"""``valvoja maintenance window add|list|end|cancel``: plan maintenance windows from a shell or a CMMS script.

    valvoja maintenance window add --asset P-101 --asset F-201 --from 2027-10-30T22:00 --to 2027-10-31T06:00 \\
        --tz Europe/Helsinki --reason "WO-4711 coupling alignment" [--tag TAG] [--long] [--by anna] [--json]
    valvoja maintenance window list [--asset P-101] [--state current --state upcoming] [--limit 50] [--json]
    valvoja maintenance window end ID [--at 2027-10-31T04:00 --tz Europe/Helsinki] [--comment ...] [--by anna]
    valvoja maintenance window cancel ID [--reason "parts late"] [--by anna]

The same rules as the console API (`maintenance.windows`), written straight to the database (``--db``, default
``$VALVOJA_DB_URL``), each change with its entry in the console's audit log (actor ``--by``, default the login
name; ``detail.via`` = ``cli``) in the same transaction. A running gateway picks a change up at its next sync
(15 s). Exit status (also in ``--help``): 0, 1 when the database cannot be used, 2 for a refused request (the
reason on stderr), 3 for an unknown window or one whose state forbids the change.
"""

from __future__ import annotations

import asyncio
import sys

from edge.operator import who


def add_parser(sub, db_arg) -> None:
    """Register ``window`` and its actions on the ``maintenance`` sub-command parser."""
    w = sub.add_parser("window", help="plan, list, end and cancel maintenance windows (alerts suppressed)",
                       description="Plan maintenance windows from a shell or a CMMS script: alerts of the assets "
                                   "are suppressed while a window runs. The same rules as the console's API; each "
                                   "change is audited; a running gateway picks it up at its next sync (15 s). "
                                   "Exit status 0 done; 1 the database cannot be used; 2 a refused request (the "
                                   "reason on stderr) or no database given; 3 an unknown window or one whose "
                                   "state forbids the change.")
    ws = w.add_subparsers(dest="window_command", required=True, metavar="ACTION")
    by_default = who()

    add = ws.add_parser("add", help="plan a window on one or several assets")
    add.add_argument("--asset", action="append", required=True, help="repeatable; '*' for every asset")
    add.add_argument("--from", dest="start", required=True,
                     help="start: ISO-8601 with an offset, or local time with --tz")
    add.add_argument("--to", dest="end", required=True, help="end, as --from (local: the site's wall clock)")
    add.add_argument("--tz", help="IANA zone of local times, e.g. Europe/Helsinki")
    add.add_argument("--reason", required=True, help="work order or job")
    add.add_argument("--tag", help="only this tag of the (single) asset")
    add.add_argument("--long", action="store_true", help="the window lasts more than 14 days on purpose")
    ls = ws.add_parser("list", help="windows by asset and state")
    ls.add_argument("--asset", action="append", help="repeatable; also lists '*' windows")
    ls.add_argument("--state", action="append", choices=["current", "upcoming", "past", "cancelled"],
                    help="repeatable (default: every state)")
    ls.add_argument("--limit", type=int, default=100, help="most windows shown (default 100)")
    end = ws.add_parser("end", help="end a current window now, or shorten a window to --at")
    end.add_argument("id", type=int)
    end.add_argument("--at", help="new end (default now)")
    end.add_argument("--tz", help="IANA zone of a local --at (default the window's own)")
    end.add_argument("--comment", default="")
    cancel = ws.add_parser("cancel", help="cancel a window that has not started (it is kept, marked)")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--reason", default="")
    for p in (add, ls, end, cancel):
        db_arg(p)
        p.add_argument("--json", action="store_true", help="print the window(s) as JSON")
        if p is not ls:
            p.add_argument("--by", default=by_default, help=f"who plans (audit log; default {by_default})")
        p.set_defaults(func=cmd_window)


async def _run(args) -> list[dict]:
    import psycopg

    from console import audit
    from maintenance import windows

    async def record(cur, action: str, window_id: int, detail: dict) -> None:
        await audit.record(cur, None, action, target_kind="maintenance_window", target_id=window_id,
                           detail=detail | {"via": "cli"}, actor=args.by)

    from edge.db.migrate import check_schema

    with psycopg.connect(args.db, autocommit=True) as sync_conn:  # a schema of another version: refused, unused
        check_schema(sync_conn)
    async with await psycopg.AsyncConnection.connect(args.db, autocommit=True) as conn:
        if args.window_command == "add":
            plan = windows.Plan(assets=args.asset, starts_at=args.start, ends_at=args.end, reason=args.reason,
                                time_zone=args.tz, tag=args.tag, long=args.long)
            return await windows.create(conn, plan, args.by, record)
        if args.window_command == "list":
            return (await windows.list_windows(conn, assets=args.asset, states=args.state,
                                               limit=args.limit))[:args.limit]
        if args.window_command == "end":
            return [await windows.end_early(conn, args.id, args.by, record, at=args.at, time_zone=args.tz,
                                            comment=args.comment)]
        return [await windows.cancel(conn, args.id, args.by, record, reason=args.reason)]


def _line(w: dict) -> str:
    start = w.get("starts_local") or w["starts_at"].isoformat()
    end = w.get("ends_local") or w["ends_at"].isoformat()
    tag = f" tag {w['tag']}" if w["tag"] else ""
    by = (f" ended by {w['ended_by']}" if w["ended_by"] else "") + \
         (f" cancelled by {w['cancelled_by']}" if w["cancelled_by"] else "")
    return f"#{w['id']:<6} {w['state']:9} {w['asset']}{tag}  {start} -> {end}  {w['reason']}  " \
           f"(by {w['created_by']}{by})"


def cmd_window(args) -> int:
    from edge.jsontext import api_json
    from maintenance.windows import WindowError

    if not args.db:
        print("no database: give --db URL or set VALVOJA_DB_URL", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(_run(args))
    except WindowError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2 if exc.status == 422 else 3
    if args.json:
        print(api_json(rows, indent=True))
    else:
        for w in rows:
            print(_line(w))
        if args.window_command == "list" and not rows:
            print("no windows")
    return 0

