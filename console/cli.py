"""``valvoja console ...``: run the web console, manage its users and API tokens.

    valvoja console serve --config console.toml [--listen HOST:PORT]
    valvoja console user add NAME --role ROLE [--password-file FILE]   (else $VALVOJA_PASSWORD, else prompt)
    valvoja console user passwd NAME | user list | user disable NAME
    valvoja console token add NAME --role ROLE                          (prints the token once)

Commands that change users write the audit log as actor ``cli:<OS user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path

ROLES = ("viewer", "engineer", "maintenance", "admin")


def add_parser(subparsers) -> None:
    """Register ``console`` and its actions on the ``valvoja`` parser."""
    p = subparsers.add_parser("console", help="web console and REST API",
                              description="Run the console (REST API + web pages) and manage its users.")
    sub = p.add_subparsers(dest="console_command", required=True, metavar="ACTION")

    s = sub.add_parser("serve", help="run the console HTTP server")
    _config(s)
    s.add_argument("--listen", metavar="HOST:PORT", help="override console.listen (HOST:PORT or [IPV6]:PORT)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one JSON object per line, uvicorn's lines too (containers; the compose stack)")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("user", help="manage local users")
    usub = u.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    a = usub.add_parser("add", help="create a user")
    _config(a)
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--display-name", default="")
    a.add_argument("--password-file", type=Path, help="read the password from this file, checked as the gateway's "
                                                      "secret files: others may not change it, nor read it if it is "
                                                      "yours (chmod 600) (else $VALVOJA_PASSWORD, else ask)")
    a.set_defaults(func=cmd_user_add)
    pw = usub.add_parser("passwd", help="set a user's password")
    _config(pw)
    pw.add_argument("name")
    pw.add_argument("--password-file", type=Path, help="as for user add")
    pw.set_defaults(func=cmd_user_passwd)
    ls = usub.add_parser("list", help="list users")
    _config(ls)
    ls.set_defaults(func=cmd_user_list)
    d = usub.add_parser("disable", help="disable a user and end their sessions")
    _config(d)
    d.add_argument("name")
    d.set_defaults(func=cmd_user_disable)

    t = sub.add_parser("token", help="manage API tokens")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    ta = tsub.add_parser("add", help="create an API token (printed once)")
    _config(ta)
    ta.add_argument("name")
    ta.add_argument("--role", default="viewer", choices=ROLES, help="(default viewer)")
    ta.set_defaults(func=cmd_token_add)


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True, metavar="CONSOLE.toml",
                   help="console configuration (see console/console-example.toml)")


def _load(args):
    from console.config import conninfo, load

    cfg = load(args.config)
    return cfg, conninfo(cfg)


def _stopped(_signum: int, _frame) -> None:
    raise SystemExit(0)


def cmd_serve(args) -> int:
    import uvicorn

    from console.app import create_app
    from console.db import wait_until_reachable
    from console.server import server_options
    from edge import logs
    from edge.errors import ConfigError
    from edge.settings import host_port

    cfg, dsn = _load(args)
    try:
        # Not split at the last colon: "[::1]:8080" would hand "[::1]" with its brackets to the socket layer.
        host, port = host_port(args.listen) if args.listen else cfg.console.address
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    logs.setup("INFO", args.log_format)
    try:
        wait_until_reachable(dsn)
    except KeyboardInterrupt:
        return 130
    app = create_app(cfg)
    # json: uvicorn's loggers left to the root handler (its own configuration writes plain "INFO:     ..." lines).
    log_config = {"log_config": None} if args.log_format == "json" else {}
    # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found, to exit "by the signal"
    # (143): a stop asked for and done is a success (exit 0) to systemd and to the container engine.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, **server_options(**log_config))
    return 0


def _password(args, *, confirm: bool = True) -> str:
    if getattr(args, "password_file", None):
        from edge.secrets import read_secret_file

        # The gateway's rule for secret files: a password file others can read is refused (the message says chmod).
        return read_secret_file(args.password_file, where="--password-file")
    if os.environ.get("VALVOJA_PASSWORD"):
        return os.environ["VALVOJA_PASSWORD"]
    if not sys.stdin.isatty():
        raise SystemExit("no password: give --password-file FILE or set VALVOJA_PASSWORD")
    pw = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != pw:
        raise SystemExit("passwords differ")
    return pw


async def _with_cursor(dsn: str, work, action: str, target: str):
    import psycopg
    from psycopg.rows import dict_row

    from console import audit
    from console.auth import Principal
    from edge.db.migrate import migrate

    with psycopg.connect(dsn, autocommit=True) as sync_conn:
        migrate(sync_conn)
    actor = Principal(name=f"cli:{getpass.getuser()}", kind="user", role="admin")
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        async with conn.transaction(), conn.cursor() as cur:
            result = await work(cur)
            if action:
                await audit.record(cur, actor, action, target_kind="user" if action.startswith("user") else "token",
                                   target_id=target, client="cli")
    return result


def _run(coro) -> int:
    from console.problems import Problem

    try:
        asyncio.run(coro)
    except Problem as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def cmd_user_add(args) -> int:
    from console import users

    _, dsn = _load(args)
    password = _password(args)

    async def work(cur):
        row = await users.add(cur, args.name, password, args.role, args.display_name)
        print(f"user {row['username']} ({row['role']}) created")

    return _run(_with_cursor(dsn, work, "user.create", args.name))


def _change_user(args, message: str, **changes) -> int:
    from console import users

    _, dsn = _load(args)

    async def work(cur):
        await users.change(cur, args.name, **changes)
        print(message)

    return _run(_with_cursor(dsn, work, "user.change", args.name))


def cmd_user_passwd(args) -> int:
    return _change_user(args, f"password of {args.name} changed; their sessions were ended", password=_password(args))


def cmd_user_disable(args) -> int:
    return _change_user(args, f"user {args.name} disabled; their sessions were ended", disabled=True)


def cmd_user_list(args) -> int:
    from console import users

    _, dsn = _load(args)

    async def work(cur):
        await cur.execute(f"SELECT {users.PUBLIC} FROM console_users ORDER BY username")
        rows = await cur.fetchall()
        for r in rows:
            state = "disabled" if r["disabled"] else "active"
            print(f"{r['username']:24} {r['role']:12} {state:9} last log-in: {r['last_login'] or 'never'}")
        if not rows:  # an empty output read as a failure (or the wrong database) on the first day
            print("no users yet: add one with `valvoja console user add NAME --role admin --config ...`")

    return _run(_with_cursor(dsn, work, "", ""))


def cmd_token_add(args) -> int:
    from console import users

    _, dsn = _load(args)

    async def work(cur):
        token, row = await users.add_token(cur, args.name, args.role, f"cli:{getpass.getuser()}")
        print(token)
        print(f"(API token {row['name']}, role {row['role']}; shown once, store it now)", file=sys.stderr)

    return _run(_with_cursor(dsn, work, "token.create", args.name))
